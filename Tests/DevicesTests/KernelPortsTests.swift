import Testing
@testable import Devices

struct KernelPortsTests {
    @Test func com1WritesGoToTheUART() {
        #expect(KernelPorts.write(port: 0x3f8, data: [0x41]) == .serial(offset: 0, bytes: [0x41]))
        #expect(KernelPorts.write(port: 0x3ff, data: [1, 2]) == .serial(offset: 7, bytes: [1, 2]))
        #expect(KernelPorts.write(port: 0x3f8, data: []) == .ignored)
    }

    @Test func onlyTheExactResetCommandResets() {
        #expect(KernelPorts.write(port: 0x64, data: [0xfe]) == .reset)
        // A hostile or confused guest: other commands, other widths, the data port, near misses.
        #expect(KernelPorts.write(port: 0x64, data: [0xfe, 0x00]) == .ignored)
        #expect(KernelPorts.write(port: 0x64, data: [0xff]) == .ignored)
        #expect(KernelPorts.write(port: 0x64, data: []) == .ignored)
        #expect(KernelPorts.write(port: 0x60, data: [0xfe]) == .ignored)
        #expect(KernelPorts.write(port: 0x3f7, data: [0xfe]) == .ignored)
        #expect(KernelPorts.write(port: 0x400, data: [0xfe]) == .ignored)
    }

    /// ACPI S5 (issue 10): SLP_EN with sleep type 5, one byte at the sleep control register,
    /// and nothing else, powers off.
    @Test func onlyTheExactS5WritePowersOff() {
        #expect(KernelPorts.write(port: 0x600, data: [0x34]) == .powerOff)
        for data: [UInt8] in [[0x14], [0x20], [0x30], [0x3c], [0x35], [0x34, 0x00], [], [0xff]] {
            #expect(KernelPorts.write(port: 0x600, data: data) == .ignored, "\(data)")   // no SLP_EN, other types, other widths
        }
        #expect(KernelPorts.write(port: 0x601, data: [0x34]) == .ignored)
        #expect(KernelPorts.write(port: 0x64, data: [0x34]) == .ignored)
    }

    /// pvpanic (issue 10): a one-byte write with bit 0 is a panic; reads give the capability byte
    /// (panic only); nothing else there does anything, and no other port reads as a device.
    @Test func pvpanicTakesOnlyAPanicEvent() {
        for v: UInt8 in [0x01, 0x03, 0xff] { #expect(KernelPorts.write(port: 0x505, data: [v]) == .panicked, "\(v)") }
        for data: [UInt8] in [[0x00], [0x02], [0xfe], [0x01, 0x01], []] {
            #expect(KernelPorts.write(port: 0x505, data: data) == .ignored, "\(data)")   // crash-loaded, other widths
        }
        #expect(KernelPorts.write(port: 0x504, data: [0x01]) == .ignored)
        #expect(KernelPorts.write(port: 0x506, data: [0x01]) == .ignored)
        #expect(KernelPorts.read(port: 0x505) == 0x01)
        // The i8042 status: both buffers empty, so Linux's reset path writes 0xfe at once.
        #expect(KernelPorts.read(port: 0x64) == 0x00)
        for port: UInt16 in [0x504, 0x506, 0x600, 0x60, 0x3f8, 0x0, 0xffff] { #expect(KernelPorts.read(port: port) == nil, "\(port)") }
    }
}
