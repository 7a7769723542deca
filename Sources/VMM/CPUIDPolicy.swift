import KVM

/// Which CPU features a guest is shown. Starts from what the host's KVM supports and hides what
/// the policy names; sets the per-vCPU APIC ID and the hypervisor bit.
public struct CPUIDPolicy: Equatable, Sendable {
    public enum Feature: String, CaseIterable, Sendable {
        /// cmpxchg16b (leaf 1 ECX bit 13): not emulated at CPL0 on nested PVM hosts.
        case cx16
        /// xsave/xrstor and OSXSAVE (leaf 1 ECX bits 26, 27; leaf 0xd dropped).
        case xsave
        /// RDRAND (leaf 1 ECX bit 30).
        case rdrand
        /// Transactional memory (leaf 7 EBX bits 4 and 11).
        case tsx

        /// (leaf, bits cleared in EBX, bits cleared in ECX)
        var masks: [(leaf: UInt32, ebx: UInt32, ecx: UInt32)] {
            switch self {
            case .cx16: return [(1, 0, 1 << 13)]
            case .xsave: return [(1, 0, (1 << 26) | (1 << 27))]
            case .rdrand: return [(1, 0, 1 << 30)]
            case .tsx: return [(7, (1 << 4) | (1 << 11), 0)]
            }
        }
    }

    public var hidden: Set<Feature>

    /// Whether the guest's CPUID comes from the table the VMM gives KVM. Not on a host whose KVM
    /// is PVM (kvm_pvm: guest kernels run in the host's user mode) on a CPU without CPUID
    /// faulting: there the CPUID instruction never leaves the guest, which sees the host's own
    /// values, and `hidden` has no effect (checked by KernelGuestTests).
    public static let enforcedByHost: Bool = {
        guard isDirectory("/sys/module/kvm_pvm") else { return true }
        let cpuinfo = String(decoding: (try? readFile("/proc/cpuinfo", limit: 1 << 20)) ?? [], as: UTF8.self)
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
        return flags.split(separator: " ").contains("cpuid_fault")
    }()

    public init(hidden: Set<Feature> = []) { self.hidden = hidden }

    public func apply(to entries: [CPUIDEntry], vcpu: Int) -> [CPUIDEntry] {
        var out: [CPUIDEntry] = []
        for var e in entries {
            if hidden.contains(.xsave) && e.function == 0xd { continue }
            for f in hidden {
                for m in f.masks where m.leaf == e.function {
                    e.ebx &= ~m.ebx
                    e.ecx &= ~m.ecx
                }
            }
            if e.function == 1 {
                e.ecx |= 1 << 31                                   // running under a hypervisor
                e.ebx = (e.ebx & 0x00ff_ffff) | UInt32(vcpu & 0xff) << 24 // initial APIC ID
            }
            if e.function == 0xb || e.function == 0x1f { e.edx = UInt32(vcpu) } // x2APIC ID
            out.append(e)
        }
        return out
    }
}
