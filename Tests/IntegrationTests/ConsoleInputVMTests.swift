import Boot
import HostOS
import KVM
import Testing
import HostTestSupport
@testable import VMM

#if canImport(Glibc)
import Glibc
#endif

/// Host input through COM1's receive side, into a real VM (issue 10, point 2).
@Suite(.requiresKVM)
struct ConsoleInputVMTests {
    func run(feeding input: [UInt8], timeout: Double = 60) throws -> (RunOutcome, [UInt8]) {
        var source: OSPipe? = try OSPipe()
        let sink = ConsoleSink(fd: FileDescriptor(borrowing: -1))
        sink.startCapture()
        var config = MachineConfiguration(boot: BootConfiguration(memorySize: 32 << 20, vcpus: 1, commandLine: ""),
                                          timeout: timeout, console: sink)
        config.consoleInput = source!.readEnd
        let writer = try OSThread.spawn { [w = source!.writeEnd] in try? w.writeAll(input) }
        source = nil
        let report = try Machine.runLinux(kernel: echoKernel, initrd: nil, configuration: config)
        writer.join()
        return (report.outcome, sink.captured)
    }

    @Test func whatTheHostTypesReachesTheGuest() throws {
        let (outcome, output) = try run(feeding: Array("hello, guest.".utf8))
        #expect(outcome == .poweredOff(vcpu: 0))
        #expect(output == Array("hello, guest".utf8))
    }

    /// Far more than the 64-byte FIFO: the pump reads only what fits, so nothing is lost or
    /// reordered however fast the host writes, every byte value included.
    @Test func aFloodArrivesWholeAndInOrder() throws {
        var rng = SystemRandomNumberGenerator()
        let flood = (0..<16384).map { _ in UInt8.random(in: 0...255, using: &rng) }.map { $0 == 0x2e ? 0x2f : $0 }
        let (outcome, output) = try run(feeding: flood + [0x2e])
        #expect(outcome == .poweredOff(vcpu: 0))
        #expect(output.count == flood.count)
        #expect(output == flood)
    }

    /// Input that ends (end of file) before the guest is done: the VM runs on, here to its
    /// timeout, with what it had.
    @Test func inputThatEndsLeavesTheVMRunning() throws {
        let (outcome, output) = try run(feeding: Array("abc".utf8), timeout: 1)
        #expect(outcome == .timedOut(seconds: 1))
        #expect(output == Array("abc".utf8))
    }
}
