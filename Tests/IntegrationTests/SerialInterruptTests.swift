import HostOS
import HostTestSupport
import KVM
import Testing
@testable import VMM

/// COM1's interrupt line (issue 10): a change the UART makes that KVM refuses is reported, never
/// dropped; the vCPU loop then ends the VM with that reason.
@Suite(.requiresKVM)
struct SerialInterruptTests {
    static let com1 = SerialPort.com1.lowerBound
    static let interruptEnable = com1 + 1

    func port(interruptController: Bool) throws -> (SerialPort, VirtualMachine) {
        let system = try KVMSystem()
        let vm = try system.createVM()
        if interruptController { try vm.createInterruptController() }
        let sink = ConsoleSink(fd: FileDescriptor(borrowing: -1))
        sink.startCapture()
        return (try SerialPort(console: sink, vm: vm), vm)
    }

    @Test func aLineKVMRefusesIsAnError() throws {
        // No in-kernel interrupt controller: KVM_IRQ_LINE has nowhere to go.
        let (serial, vm) = try port(interruptController: false)
        // Enabling the transmit-empty interrupt with the transmitter empty raises the line.
        let failure = serial.write(port: Self.interruptEnable, value: 0x02)
        let error = try #require(failure, "the refused interrupt was dropped")
        #expect(SerialPort.interruptFailure(error).contains("IRQ 4"))
        withExtendedLifetime(vm) {}
    }

    @Test func aLineKVMTakesIsNoError() throws {
        let (serial, vm) = try port(interruptController: true)
        #expect(serial.write(port: Self.interruptEnable, value: 0x02) == nil)
        let (_, readFailure) = serial.read(port: Self.com1 + 2)   // IIR: reading it acknowledges THRE
        #expect(readFailure == nil)
        #expect(serial.write(port: Self.interruptEnable, value: 0x00) == nil)
        withExtendedLifetime(vm) {}
    }
}
