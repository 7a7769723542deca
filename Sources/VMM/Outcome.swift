import Boot
import Devices
import GuestInterface
import HostOS
import KVM
import Synchronization
import Virtio

/// A vCPU's registers where it stopped for good (a triple fault): what a person debugging the
/// guest needs first, since the fault that started it is lost.
public struct StoppedCPUState: Equatable, Sendable, CustomStringConvertible {
    public var rip: UInt64, rsp: UInt64, rflags: UInt64
    public var cs: UInt16
    public var cr0: UInt64, cr2: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64
    public var idtBase: UInt64, idtLimit: UInt16

    public init(_ r: Registers, _ s: SpecialRegisters) {
        rip = r.rip; rsp = r.rsp; rflags = r.rflags
        cs = s.cs.selector
        cr0 = s.cr0; cr2 = s.cr2; cr3 = s.cr3; cr4 = s.cr4; efer = s.efer
        idtBase = s.idt.base; idtLimit = s.idt.limit
    }

    /// The registers are the architectural reset state (CS F000, RIP FFF0, real mode): AMD's SVM
    /// leaves the VMCB undefined after a shutdown, so KVM reinitialises the vCPU before it returns
    /// KVM_EXIT_SHUTDOWN, and where the guest stood is lost. (Intel's VMX keeps it.)
    public var isResetState: Bool { cs == 0xf000 && rip == 0xfff0 && cr0 & 1 == 0 }

    public var description: String {
        if isResetState { return "an unknown place (KVM reset the vCPU's registers on the shutdown)" }
        func h<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
        return "rip \(h(rip)) rsp \(h(rsp)) rflags \(h(rflags)) cs \(h(cs)) cr0 \(h(cr0)) cr2 \(h(cr2)) "
            + "cr3 \(h(cr3)) cr4 \(h(cr4)) efer \(h(efer)) idt \(h(idtBase))/\(h(idtLimit))"
    }
}

/// How a VM ended.
public enum RunOutcome: Equatable, Sendable, CustomStringConvertible {
    /// The guest called `exit` with this status.
    case exited(status: UInt8)
    /// The guest took a CPU exception (reported by the fault stubs).
    case fault(FaultReport)
    /// The vCPU triple-faulted (KVM_EXIT_SHUTDOWN): the fault reason is lost; `state` is where
    /// the vCPU stood (nil if KVM could not say).
    case tripleFault(vcpu: Int, state: StoppedCPUState?)
    /// `--timeout` expired; every vCPU was stopped.
    case timedOut(seconds: Double)
    /// The vCPU could not continue for another reason (invalid state, unexpected exit, halt).
    case vcpuFailure(vcpu: Int, reason: String)
    /// A kernel guest reset the machine through the i8042 (command 0xFE to port 0x64, how Linux
    /// reboots with `reboot=k`). Bulkhead does not reboot: the VM ends, as a clean exit.
    case reset(vcpu: Int)
    /// A kernel guest powered the machine off (ACPI S5 through the FADT's sleep control
    /// register, how Linux's `poweroff` ends): the VM ends, as a clean exit.
    case poweredOff(vcpu: Int)
    /// A kernel guest reported a panic through the pvpanic device (Linux's pvpanic-mmio driver):
    /// the VM ends as a crash, with that reason, before the kernel reboots or spins.
    case panicked(vcpu: Int)

    /// Process exit status for the command line (documented in README.md).
    public var exitCode: Int32 {
        switch self {
        case .exited(let s): return Int32(s)
        case .reset, .poweredOff: return 0
        case .fault, .tripleFault, .panicked: return 134
        case .timedOut: return 124
        case .vcpuFailure: return 125
        }
    }

    public var description: String {
        switch self {
        case .exited(let s): return "guest exited with status \(s)"
        case .fault(let f): return "guest fault: \(f)"
        case .tripleFault(let v, let state):
            return "guest fault: vCPU \(v): triple fault (KVM_EXIT_SHUTDOWN)"
                + (state.map { " at \($0)" } ?? "") + "; the VM cannot continue"
        case .timedOut(let s): return "timeout: the guest was still running after \(s) s and was stopped"
        case .vcpuFailure(let v, let r): return "vCPU \(v) failed: \(r)"
        case .reset(let v): return "vCPU \(v) reset the machine (i8042 command 0xFE); the VM ended"
        case .poweredOff(let v): return "vCPU \(v) powered the machine off (ACPI S5); the VM ended"
        case .panicked(let v): return "the guest kernel panicked (reported by vCPU \(v) through pvpanic); the VM was stopped"
        }
    }
}
