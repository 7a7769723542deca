import GuestInterface
import Boot
import HostTestSupport
import HostOS
import KVM
import Testing
@testable import VMM

// `pvhKernel(_:)` (the minimal PVH kernel these tests run) lives in VMM: CPUIDProbe uses it too.

/// 32-bit code: `out` the byte `value` to `port` (an 8-bit port number).
func outByte(_ value: UInt8, port: UInt8) -> [UInt8] { [0xb0, value, 0xe6, port] } // mov al, v; out port, al
/// 32-bit code: write `text` to COM1's transmit register.
func com1(_ text: String) -> [UInt8] {
    [0x66, 0xba, 0xf8, 0x03] + text.utf8.flatMap { [0xb0, $0, 0xee] } // mov dx, 0x3f8; (mov al, c; out dx, al)*
}
let haltForever: [UInt8] = [0xf4, 0xeb, 0xfd] // hlt; jmp back to hlt

func runKernel(_ code: [UInt8], timeout: Double = 10, cpuid: CPUIDPolicy = CPUIDPolicy(), vcpus: Int = 1) throws -> GuestRun {
    let sink = ConsoleSink(fd: try FileDescriptor.open(writing: "/dev/null"))
    sink.startCapture()
    let config = MachineConfiguration(boot: BootConfiguration(memorySize: 32 << 20, vcpus: vcpus, commandLine: ""),
                                      timeout: timeout, cpuid: cpuid, console: sink)
    let report = try Machine.runLinux(kernel: pvhKernel(code), initrd: nil, configuration: config)
    return GuestRun(report: report, console: String(decoding: sink.captured, as: UTF8.self))
}

@Suite(.requiresKVM)
struct KernelGuestTests {
    @Test func i8042ResetEndsTheVMCleanly() throws {
        let r = try runKernel(com1("up\n") + outByte(0xfe, port: 0x64) + haltForever)
        #expect(r.report.outcome == .reset(vcpu: 0))
        #expect(r.report.outcome.exitCode == 0)
        #expect(r.console == "up\n")
    }

    /// A reset while the other vCPUs still wait for their start-up IPI (blocked in KVM_RUN in
    /// the in-kernel LAPIC, UNINITIALIZED): every run ends at once, cleanly (issue 10: a 2-vCPU
    /// Linux reboot once did not end the VM). Many runs, 2 and 4 vCPUs.
    @Test(.timeLimit(.minutes(2)), arguments: [2, 4])
    func resetWithWaitingVCPUsEndsTheVMEveryTime(vcpus: Int) throws {
        for _ in 0..<15 {
            let r = try runKernel(com1("up\n") + outByte(0xfe, port: 0x64) + haltForever, timeout: 30, vcpus: vcpus)
            #expect(r.report.outcome == .reset(vcpu: 0))
            #expect(r.console == "up\n")
        }
    }

    /// ACPI S5 (issue 10): the byte 0x34 (SLP_EN, sleep type 5) at the FADT's sleep control
    /// register ends the VM cleanly; other sleep writes are ignored (the guest runs on, and the
    /// timeout stops it).
    @Test func acpiPowerOffEndsTheVMCleanly() throws {
        let powerOff: [UInt8] = [0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee]   // mov dx, 0x600; mov al, 0x34; out dx, al
        let r = try runKernel(com1("off\n") + powerOff + haltForever, vcpus: 2)
        #expect(r.report.outcome == .poweredOff(vcpu: 0))
        #expect(r.report.outcome.exitCode == 0)
        #expect(r.console == "off\n")
        let s3: [UInt8] = [0x66, 0xba, 0x00, 0x06, 0xb0, 0x2c, 0xee]         // sleep type 3 (S3): not implemented
        let other = try runKernel(s3 + com1("on") + haltForever, timeout: 1)
        #expect(other.report.outcome == .timedOut(seconds: 1))
        #expect(other.console == "on")
    }

    /// Linux's reset path waits for the controller's input buffer to be empty before each 0xfe
    /// (`kb_wait`): the status port says it is, so the reset follows the first read (an absent
    /// controller's 0xff kept Linux polling 65536 times, one exit each).
    @Test func theResetPathDoesNotWaitForAController() throws {
        let kbWait: [UInt8] = [0xe4, 0x64, 0xa8, 0x02, 0x75, 0xfa]   // wait: in al, 0x64; test al, 2; jnz wait
        let r = try runKernel(kbWait + outByte(0xfe, port: 0x64) + haltForever, timeout: 10)
        #expect(r.report.outcome == .reset(vcpu: 0))
        #expect(r.report.exits.pio == 2)
        #expect(r.report.exits.unassignedPIO == 0)
    }

    /// pvpanic (issue 10): the kernel reads the capabilities (panic only), then reports a panic;
    /// the VM ends as a crash (134) with that reason. A crash-loaded event alone changes nothing.
    @Test func pvpanicEndsTheVMAsACrash() throws {
        // mov dx, 0x505; in al, dx; out 0x3f8 ... : print the capability byte as a digit, then panic.
        let readCapabilities: [UInt8] = [0x66, 0xba, 0x05, 0x05, 0xec, 0x04, 0x30, 0x66, 0xba, 0xf8, 0x03, 0xee]
        let panic: [UInt8] = [0x66, 0xba, 0x05, 0x05, 0xb0, 0x01, 0xee]
        let r = try runKernel(readCapabilities + com1("\n") + panic + haltForever, vcpus: 2)
        #expect(r.report.outcome == .panicked(vcpu: 0))
        #expect(r.report.outcome.exitCode == 134)
        #expect(r.report.outcome.description.contains("panicked"))
        #expect(r.console == "1\n")
        #expect(r.report.exits.unassignedPIO == 0)
        let crashLoaded: [UInt8] = [0x66, 0xba, 0x05, 0x05, 0xb0, 0x02, 0xee]
        let other = try runKernel(crashLoaded + com1("on") + haltForever, timeout: 1)
        #expect(other.report.outcome == .timedOut(seconds: 1))
        #expect(other.console == "on")
    }

    /// Hostile input on the channel: every other command byte is ignored (the kernel keeps
    /// running and is stopped by the timeout), and so is 0xfe written to the data port 0x60.
    @Test func otherI8042WritesAreIgnored() throws {
        var code = com1("a")
        for v: UInt8 in [0x00, 0x01, 0xd1, 0xfd, 0xff] { code += outByte(v, port: 0x64) }
        code += outByte(0xfe, port: 0x60) + com1("b") + haltForever
        let r = try runKernel(code, timeout: 1)
        #expect(r.report.outcome == .timedOut(seconds: 1))
        #expect(r.console == "ab")
        #expect(r.report.exits.unassignedPIO == 6 && r.report.exits.lastUnassignedPort == 0x60)
    }

    /// The kernel reads CPUID leaf 1 with XSAVE hidden and prints ECX bit 26. Where the host
    /// enforces the VMM's CPUID table for that bit the bit is clear; where it does not (a PVM host
    /// that does not trap CPUID, or not for this bit: these machines) the guest sees what it sees
    /// with nothing hidden. Two measurements compared: the kernel-kind probe's, and this guest's.
    @Test func hiddenCPUIDFeatureAsTheGuestSeesIt() throws {
        let code: [UInt8] = [0xb8, 1, 0, 0, 0, 0x0f, 0xa2,   // mov eax, 1; cpuid
                             0x89, 0xc8, 0xc1, 0xe8, 26,          // mov eax, ecx; shr eax, 26
                             0x83, 0xe0, 1, 0x04, 0x30,           // and eax, 1; add al, '0'
                             0x66, 0xba, 0xf8, 0x03, 0xee]        // mov dx, 0x3f8; out dx, al
            + outByte(0xfe, port: 0x64) + haltForever
        let hidden = try runKernel(code, cpuid: CPUIDPolicy(hidden: [.xsave]))
        let shown = try runKernel(code)
        guard let probe = CPUIDProbe.measured(for: .kernel) else { Issue.record("the kernel-kind CPUID probe gave no answer"); return }
        let enforced = !probe.visibleDespiteHiding.contains(.xsave)
        #expect(hidden.report.outcome == .reset(vcpu: 0) && shown.report.outcome == .reset(vcpu: 0))
        #expect(hidden.console == (enforced ? "0" : shown.console), "probe: \(probe); shown \(shown.console)")
    }

    /// Probes of absent hardware are answered (all ones, writes dropped) and counted for audit.
    @Test func unassignedAccessesAreCounted() throws {
        let code: [UInt8] = [0xa1, 0x00, 0x00, 0x00, 0xd0]   // mov eax, [0xd0000000]
            + [0xa3, 0x00, 0x10, 0x00, 0xd0]                   // mov [0xd0001000], eax
            + [0x83, 0xf8, 0xff, 0x75, 0x03]                   // cmp eax, -1; jne +3 (skip the 'y')
            + com1("y")
            + [0xe4, 0x61]                                     // in al, 0x61
            + outByte(0xfe, port: 0x64) + haltForever
        let r = try runKernel(code)
        #expect(r.report.outcome == .reset(vcpu: 0))
        #expect(r.console == "y")                             // the read gave all ones
        let e = r.report.exits
        #expect(e.unassignedMMIO == 2 && e.lastUnassignedMMIO == 0xd000_1000)
        #expect(e.unassignedPIO == 1 && e.lastUnassignedPort == 0x61)
        #expect(e.mmio == 2 && e.pio == 3)   // out "y", in 0x61, out 0x64
    }
}
