import HostOS
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

    /// Whether `hidden` has any effect on this host is measured, not guessed: `CPUIDProbe`.
    /// The probe's own table: leaf 0x8000_0002 holds `CPUIDProbe.marker`, a value no real CPU
    /// returns (never set for a real guest).
    var probeMarker = false

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
        if probeMarker {
            let m = CPUIDProbe.marker, leaf = CPUIDProbe.markerLeaf
            out.removeAll { $0.function == leaf }
            out.append(CPUIDEntry(function: leaf, eax: m[0], ebx: m[1], ecx: m[2], edx: m[3]))
            // The extended range must reach the leaf, or the CPU answers with another one.
            if let i = out.firstIndex(where: { $0.function == 0x8000_0000 }) {
                out[i].eax = max(out[i].eax, leaf)
            } else {
                out.append(CPUIDEntry(function: 0x8000_0000, eax: leaf))
            }
        }
        return out
    }
}
