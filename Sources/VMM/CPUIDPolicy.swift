import GuestInterface
import HostOS
import KVM

extension CPUIDPolicy {
    /// The table a guest gets: the host KVM's `entries` with the hidden features cleared, the
    /// hypervisor bit and `vcpu`'s APIC IDs set (and, for the probe, its marker leaf).
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
