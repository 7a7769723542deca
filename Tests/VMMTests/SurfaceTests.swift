@testable import GuestInterface
import TestSupport
import Testing
import HostOS
import KVM
@testable import VMM

@Suite struct SurfaceTests {
    /// The pinned file changes only together with the code: CI fails otherwise.
    @Test func pinnedSurfaceMatchesTheCode() throws {
        let pinned = try readFile(repositoryRoot + "/docs/attack-surface.json", limit: 1 << 20)
        let current = Array(AttackSurface.json().utf8)
        #expect(pinned == current, """
            The attack surface changed. If this is intended, update the pinned file with
            `swift run bulkhead surface --json > docs/attack-surface.json` and add a row to docs/threat-model.md.
            """)
    }

    @Test func everyHypercallIsRegistered() {
        for call in Hypercall.allCases {
            #expect(AttackSurface.hypercalls.contains { $0.name == call.name && $0.location == "nr \(call.rawValue)" })
        }
    }

    @Test func everyHandledExitIsRegistered() {
        let names = Set(AttackSurface.exits.map(\.name))
        for n in ["KVM_EXIT_MMIO", "KVM_EXIT_IO", "KVM_EXIT_HLT", "KVM_EXIT_SHUTDOWN", "KVM_EXIT_FAIL_ENTRY",
                  "KVM_EXIT_INTR", "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_SYSTEM_EVENT"] {
            #expect(names.contains(n))
        }
    }

    @Test func everyChannelHasAThreatNoteAndTheThreatModelListsIt() throws {
        let model = String(decoding: try readFile(repositoryRoot + "/docs/threat-model.md", limit: 1 << 20), as: UTF8.self)
        for c in AttackSurface.all {
            #expect(!c.threat.isEmpty)
            #expect(model.contains("`\(c.name)`"), "docs/threat-model.md has no row for \(c.name)")
        }
        #expect(Set(AttackSurface.all.map(\.name)).count == AttackSurface.all.count)
    }

    @Test func jsonEscapes() {
        #expect(AttackSurface.quote("a\"b\\c\nd\u{1}") == "\"a\\\"b\\\\c\\nd\\u0001\"")
    }
}

@Suite struct CPUIDPolicyTests {
    let leaves = [
        CPUIDEntry(function: 0, eax: 0xd),
        CPUIDEntry(function: 1, ebx: 0x0000_0800, ecx: (1 << 13) | (1 << 26) | (1 << 27) | (1 << 30) | 1),
        CPUIDEntry(function: 7, ebx: (1 << 4) | (1 << 11) | 1),
        CPUIDEntry(function: 0xd, eax: 7),
        CPUIDEntry(function: 0xb, edx: 0),
    ]

    @Test func hidesFeatures() {
        let out = CPUIDPolicy(hidden: [.cx16, .xsave, .tsx, .rdrand]).apply(to: leaves, vcpu: 0)
        let l1 = out.first { $0.function == 1 }
        #expect(l1?.ecx == UInt32(0x8000_0001))
        #expect(out.first { $0.function == 7 }?.ebx == 1)
        #expect(!out.contains { $0.function == 0xd })
    }

    @Test func setsAPICIDAndHypervisorBit() {
        let out = CPUIDPolicy().apply(to: leaves, vcpu: 5)
        let l1 = out.first { $0.function == 1 }
        #expect(l1.map { $0.ebx >> 24 } == 5)
        #expect(l1.map { $0.ebx & 0xffffff } == 0x800)
        #expect(l1.map { $0.ecx & (1 << 31) != 0 } == true)
        #expect(l1.map { $0.ecx & (1 << 13) != 0 } == true) // nothing hidden by default
        #expect(out.first { $0.function == 0xb }?.edx == 5)
        #expect(out.count == leaves.count)
    }
}
