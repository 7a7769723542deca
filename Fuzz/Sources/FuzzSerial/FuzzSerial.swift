import Devices
import FuzzSupport

// FuzzSerial: the input is a sequence of guest register accesses and host input on a
// Serial16550. A small model of the parts the 16550 datasheet pins down (the receive FIFO and
// its overrun flag, the scratch, divisor and control registers, transmit) is run alongside, and
// the interrupt line the device reports is checked against the device's own IIR.
//
// Input: a stream of operations, each starting with one byte `op`:
//   op >> 6 == 0: read register (op & 0x3f; the device must mask the offset itself)
//   op >> 6 == 1: write register (op & 0x3f) with the next byte
//   op >> 6 == 2: host receive of (op & 0x3f) bytes that follow
//   op >> 6 == 3: host receive of 64 + (op & 0x3f) bytes that follow (overflows an empty FIFO)

struct Model {
    var fifo: [UInt8] = []
    var overrun = false
    var scratch: UInt8 = 0
    var divisor: UInt16 = 12
    var lineControl: UInt8 = 0x03
    var modemControl: UInt8 = 0x08
    var interruptEnable: UInt8 = 0
    var fifoControl: UInt8 = 0
    var line = false
    var dlab: Bool { lineControl & 0x80 != 0 }
    var loopback: Bool { modemControl & 0x10 != 0 }
}

func checkState(_ s: Serial16550, _ m: Model, _ context: () -> String) {
    check(s.receiveFIFO.count <= Serial16550.fifoCapacity, "FIFO holds \(s.receiveFIFO.count) bytes after \(context())")
    check(s.receiveFIFO == m.fifo, "FIFO \(s.receiveFIFO) != model \(m.fifo) after \(context())")
    check(s.scratch == m.scratch && s.divisor == m.divisor && s.lineControl == m.lineControl
          && s.modemControl == m.modemControl && s.interruptEnable == m.interruptEnable && s.fifoControl == m.fifoControl,
          "registers differ from the model after \(context())")
    // The line the VMM was told about must match the interrupt the device has pending (read
    // IIR on a copy, so the probe has no effect on the device under test).
    var probe = s
    let iir = probe.read(offset: 2).value
    let pending = iir & 0x0f != 0x01
    check(m.line == (pending && s.modemControl & 0x08 != 0), "interrupt line \(m.line) but IIR \(iir), MCR \(s.modemControl) after \(context())")
    if s.interruptEnable & 1 != 0 && !s.receiveFIFO.isEmpty {
        check(iir & 0x0f == 0x04, "received data pending and enabled, IIR \(iir) after \(context())")
    }
    check((iir & 0xc0 == 0xc0) == (s.fifoControl & 1 != 0), "IIR FIFO bits \(iir) with FCR \(s.fifoControl)")
}

func apply(_ e: Serial16550.Effects, _ m: inout Model, _ context: () -> String) {
    trace("\(context()): output \(e.output.map { String($0) } ?? "-"), interrupt \(e.interrupt.map { String($0) } ?? "-"), FIFO \(m.fifo.count)")
    if let level = e.interrupt {
        check(level != m.line, "interrupt reported as changed to \(level) but it already was, after \(context())")
        m.line = level
    }
}

/// The same bytes as one kernel `out`: a 16-bit port, then the data. Only COM1 and the exact
/// i8042 reset, ACPI power-off and pvpanic panic commands may be acted on; only the pvpanic port
/// and the i8042 status port read as something other than an absent device.
func checkPortDecode(_ bytes: [UInt8]) {
    guard bytes.count >= 2 else { return }
    let port = UInt16(bytes[0]) | UInt16(bytes[1]) << 8
    let data = Array(bytes.dropFirst(2).prefix(8))
    switch KernelPorts.write(port: port, data: data) {
    case .serial(let offset, let out):
        check(KernelPorts.com1.contains(port) && offset == UInt8(port - 0x3f8) && out == data && !data.isEmpty,
              "port 0x\(String(port, radix: 16)) \(data) decoded as serial offset \(offset)")
    case .reset:
        check(port == 0x64 && data == [0xfe], "port 0x\(String(port, radix: 16)) \(data) decoded as reset")
    case .powerOff:
        check(port == 0x600 && data == [0x34], "port 0x\(String(port, radix: 16)) \(data) decoded as power off")
    case .panicked:
        check(port == 0x505 && data.count == 1 && data[0] & 1 == 1, "port 0x\(String(port, radix: 16)) \(data) decoded as a panic")
    case .ignored:
        check(!KernelPorts.com1.contains(port) || data.isEmpty, "a COM1 write was ignored")
        check(!(port == 0x64 && data == [0xfe]), "the reset command was ignored")
        check(!(port == 0x600 && data == [0x34]), "the power-off command was ignored")
        check(!(port == 0x505 && data.count == 1 && data[0] & 1 == 1), "a panic event was ignored")
    }
    let read = KernelPorts.read(port: port)
    check(read == nil || (port == 0x505 && read == 0x01) || (port == 0x64 && read == 0x00),
          "port 0x\(String(port, radix: 16)) reads \(String(describing: read))")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSerial(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    checkPortDecode(Array(input.bytes.prefix(10)))
    var uart = Serial16550()
    var m = Model()
    checkState(uart, m, { "init" })
    var steps = 0
    while !input.isEmpty && steps < 4096 {
        steps += 1
        let op = input.u8()
        let offset = op & 0x3f
        switch op >> 6 {
        case 0:
            let (value, effects) = uart.read(offset: offset)
            let ctx = { "read \(offset) = \(value)" }
            check(effects.output == nil, "a read transmitted")
            switch offset & 7 {
            case 0:
                if m.dlab { check(value == UInt8(truncatingIfNeeded: m.divisor), "DLL \(value)") }
                else if m.fifo.isEmpty { check(value == 0, "empty RBR read \(value)") }
                else { check(value == m.fifo.removeFirst(), "RBR read \(value) out of order") }
            case 1:
                check(value == (m.dlab ? UInt8(m.divisor >> 8) : m.interruptEnable), "IER/DLM read \(value)")
            case 3: check(value == m.lineControl, "LCR read \(value)")
            case 4: check(value == m.modemControl, "MCR read \(value)")
            case 5:
                check(value & 0x60 == 0x60, "LSR \(value): transmitter not empty")
                check((value & 1 != 0) == !m.fifo.isEmpty, "LSR \(value): data ready wrong")
                check((value & 2 != 0) == m.overrun, "LSR \(value): overrun wrong (model \(m.overrun))")
                m.overrun = false
            case 7: check(value == m.scratch, "SCR read \(value)")
            default: break
            }
            apply(effects, &m, ctx)
            checkState(uart, m, ctx)
        case 1:
            let value = input.u8()
            let ctx = { "write \(offset) = \(value)" }
            let effects = uart.write(offset: offset, value: value)
            let transmits = offset & 7 == 0 && !m.dlab && !m.loopback
            check(effects.output == (transmits ? value : nil), "write output \(String(describing: effects.output))")
            switch offset & 7 {
            case 0:
                if m.dlab { m.divisor = m.divisor & 0xff00 | UInt16(value) }
                else if m.loopback {
                    if m.fifo.count < Serial16550.fifoCapacity { m.fifo.append(value) } else { m.overrun = true }
                }
            case 1:
                if m.dlab { m.divisor = m.divisor & 0x00ff | UInt16(value) << 8 } else { m.interruptEnable = value & 0x0f }
            case 2:
                m.fifoControl = value & 0xc9
                if value & 2 != 0 { m.fifo.removeAll(); m.overrun = false }
            case 3: m.lineControl = value
            case 4: m.modemControl = value & 0x1f
            case 7: m.scratch = value
            default: break
            }
            apply(effects, &m, ctx)
            checkState(uart, m, ctx)
        default:
            let count = Int(offset) + (op >> 6 == 3 ? 64 : 0)
            let bytes = input.take(count)
            let ctx = { "receive \(bytes.count)" }
            let room = Serial16550.fifoCapacity - m.fifo.count
            let (accepted, effects) = uart.receive(bytes)
            check(accepted == min(room, bytes.count), "accepted \(accepted) of \(bytes.count) with room \(room)")
            check(effects.output == nil, "receive transmitted")
            m.fifo += bytes.prefix(accepted)
            if accepted < bytes.count { m.overrun = true }
            apply(effects, &m, ctx)
            checkState(uart, m, ctx)
        }
    }
    return 0
}
