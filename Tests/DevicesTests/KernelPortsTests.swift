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
}
