/// Which CPU features a guest is shown: the policy, pure. The VMM applies it to what the host's
/// KVM supports (`CPUIDPolicy.apply(to:vcpu:)` in VMM): it hides what the policy names and sets
/// the per-vCPU APIC ID and the hypervisor bit.
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
        public var masks: [(leaf: UInt32, ebx: UInt32, ecx: UInt32)] {
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
    public var probeMarker = false

    public init(hidden: Set<Feature> = []) { self.hidden = hidden }

    /// Bit i for `Feature.allCases[i]` (how a worker reports features in a counter), and back.
    public static func mask(of features: [Feature]) -> UInt64 {
        Feature.allCases.enumerated().reduce(0) { features.contains($1.element) ? $0 | 1 << UInt64($1.offset) : $0 }
    }
    public static func features(mask: UInt64) -> [Feature] {
        Feature.allCases.enumerated().filter { $0.offset < 64 && mask & (1 << UInt64($0.offset)) != 0 }.map(\.element)
    }
}
