import Testing
@testable import Devices

@Suite struct SerialTests {
    @Test func transmitsBytes() {
        var s = Serial16550()
        #expect(s.write(offset: 0, value: 0x41).output == 0x41)
        let lsr = s.read(offset: 5).value
        #expect(lsr & 0x60 == 0x60) // THR and transmitter empty
        #expect(lsr & 0x01 == 0)
    }

    @Test func divisorLatch() {
        var s = Serial16550()
        _ = s.write(offset: 3, value: 0x83) // DLAB
        #expect(s.write(offset: 0, value: 0x01).output == nil)
        _ = s.write(offset: 1, value: 0x00)
        #expect(s.divisor == 1)
        #expect(s.read(offset: 0).value == 1)
        _ = s.write(offset: 3, value: 0x03)
        #expect(s.write(offset: 0, value: 0x42).output == 0x42)
    }

    @Test func receiveFIFOIsBounded() {
        var s = Serial16550()
        let (accepted, _) = s.receive([UInt8](repeating: 7, count: 1000))
        #expect(accepted == Serial16550.fifoCapacity)
        #expect(s.receiveFIFO.count == Serial16550.fifoCapacity)
        #expect(s.read(offset: 5).value & 0x03 == 0x03) // data ready + overrun
        #expect(s.read(offset: 5).value & 0x02 == 0)    // overrun clears on read
        for _ in 0..<Serial16550.fifoCapacity { #expect(s.read(offset: 0).value == 7) }
        #expect(s.read(offset: 5).value & 0x01 == 0)
        #expect(s.read(offset: 0).value == 0)
    }

    @Test func interrupts() {
        var s = Serial16550()
        #expect(s.read(offset: 2).value & 0x0f == 0x01) // none pending
        let e = s.write(offset: 1, value: 0x03)         // enable RX and THR-empty
        #expect(e.interrupt == true)
        #expect(s.read(offset: 2).value & 0x0f == 0x02) // THR empty; reading IIR clears it
        #expect(s.read(offset: 2).value & 0x0f == 0x01)
        #expect(s.receive([1]).effects.interrupt == true)
        #expect(s.read(offset: 2).value & 0x0f == 0x04)
        #expect(s.read(offset: 0).effects.interrupt == false)
        _ = s.write(offset: 4, value: 0x00) // OUT2 off gates the line
        #expect(s.receive([1]).effects.interrupt == nil)
    }

    @Test func loopback() {
        var s = Serial16550()
        _ = s.write(offset: 4, value: 0x10)
        #expect(s.write(offset: 0, value: 0x5a).output == nil)
        #expect(s.read(offset: 0).value == 0x5a)
    }

    @Test func hostileRegisterAccessesKeepTheStateValid() {
        var s = Serial16550()
        var x: UInt32 = 0x1234_5678
        var outputs = 0
        for _ in 0..<20_000 {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5
            let offset = UInt8(truncatingIfNeeded: x >> 8)
            let value = UInt8(truncatingIfNeeded: x >> 16)
            switch x % 3 {
            case 0: if s.write(offset: offset, value: value).output != nil { outputs += 1 }
            case 1: _ = s.read(offset: offset)
            default: _ = s.receive([value, value])
            }
            #expect(s.receiveFIFO.count <= Serial16550.fifoCapacity)
            #expect(s.interruptEnable & 0xf0 == 0)
            #expect(s.modemControl & 0xe0 == 0)
        }
        #expect(outputs > 0)
    }
}
