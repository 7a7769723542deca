import GuestInterface
import Boot
import HostTestSupport
import HostOS
import KVM
import Testing
@testable import VMM

/// 64-bit CPL3 code: CPUID leaf 1, then exit with ECX bit 26 (XSAVE) as the status.
let xsaveBitProgram: [UInt8] = {
    let page = GuestLayout.hypercallPage
    return [0xb8, 1, 0, 0, 0, 0x0f, 0xa2]                  // mov eax, 1; cpuid
        + [0x89, 0xcf, 0xc1, 0xef, 26, 0x83, 0xe7, 1]      // mov edi, ecx; shr edi, 26; and edi, 1
        + [0xb8, UInt8(Hypercall.exit.rawValue), 0, 0, 0]  // mov eax, exit
        + [0x48, 0xa1] + (0..<8).map { UInt8(truncatingIfNeeded: page >> (8 * UInt64($0))) } // movabs rax, [page]
        + [0xeb, 0xfe]                                     // jmp $
}()

func runProgram(_ code: [UInt8], cpuid: CPUIDPolicy = CPUIDPolicy()) throws -> RunReport {
    let config = MachineConfiguration(boot: BootConfiguration(memorySize: 8 << 20, vcpus: 1, commandLine: ""),
                                      timeout: 10, cpuid: cpuid)
    return try Machine.run(image: CPUIDProbe.programImage(code), configuration: config)
}

@Suite struct CPUIDProbeTableTests {
    /// The probe's table: the marker in leaf 0x8000_0002, reachable through leaf 0x8000_0000,
    /// the rest as the policy makes it; a real guest's table never has it.
    @Test func markerTable() {
        let host = [CPUIDEntry(function: 1, ecx: 1 << 26), CPUIDEntry(function: 0x8000_0000, eax: 0x8000_0001),
                    CPUIDEntry(function: 0x8000_0002, eax: 0x6574_6e49)]
        var policy = CPUIDPolicy(hidden: [.xsave])
        #expect(!policy.apply(to: host, vcpu: 0).contains { $0.eax == CPUIDProbe.marker[0] })
        policy.probeMarker = true
        let t = policy.apply(to: host, vcpu: 0)
        let leaf = t.filter { $0.function == 0x8000_0002 }
        #expect(leaf.count == 1 && [leaf[0].eax, leaf[0].ebx, leaf[0].ecx, leaf[0].edx] == CPUIDProbe.marker)
        #expect(t.first { $0.function == 0x8000_0000 }?.eax == 0x8000_0002)
        #expect(t.first { $0.function == 1 }.map { $0.ecx & (1 << 26) } == 0)
        // A host table without the extended leaves gets them.
        let bare = policy.apply(to: [CPUIDEntry(function: 0)], vcpu: 0)
        #expect(bare.first { $0.function == 0x8000_0000 }?.eax == 0x8000_0002)
        #expect(Array(String(decoding: CPUIDProbe.marker.flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } },
                             as: UTF8.self).utf8) == Array("BULKHEADPROBE!!!".utf8))
    }
}

@Suite struct CPUIDProbeReportTests {
    /// The report byte: 0x40, bit 0 the marker seen, bit 1+i feature i still visible.
    @Test func reportByteDecodes() {
        #expect(CPUIDProbe.Measurement(report: 0x41) == .init(sawTable: true, visibleDespiteHiding: []))
        #expect(CPUIDProbe.Measurement(report: 0x40 | 1 | 4 | 8) == .init(sawTable: true, visibleDespiteHiding: [.xsave, .rdrand]))
        #expect(CPUIDProbe.Measurement(report: 0x40 | 2 | 16) == .init(sawTable: false, visibleDespiteHiding: [.cx16, .tsx]))
        for bad: UInt8 in [0, 0x01, 0x24, 0x42 | 0x80, 0x60] { #expect(CPUIDProbe.Measurement(report: bad) == nil) }
        let m = CPUIDProbe.Measurement(sawTable: true, visibleDespiteHiding: [.xsave, .rdrand])
        #expect(m.ineffective([.cx16, .xsave]) == [.xsave])
        #expect(m.ineffective([.tsx]).isEmpty)
    }
}

@Suite(.requiresKVM)
struct CPUIDProbeTests {
    /// A guest program reads CPUID leaf 1 with XSAVE hidden and exits with ECX bit 26: clear where
    /// the program-kind probe found the table enforced, else what it is with nothing hidden.
    @Test func hiddenCPUIDFeatureAsAGuestProgramSeesIt() throws {
        let hidden = try runProgram(xsaveBitProgram, cpuid: CPUIDPolicy(hidden: [.xsave]))
        let shown = try runProgram(xsaveBitProgram)
        guard let probe = CPUIDProbe.measured(for: .program) else { Issue.record("the program-kind CPUID probe gave no answer"); return }
        let enforced = !probe.visibleDespiteHiding.contains(.xsave)
        guard case .exited(let h) = hidden.outcome, case .exited(let s) = shown.outcome else {
            Issue.record("outcomes: \(hidden.outcome), \(shown.outcome)")
            return
        }
        #expect(h == (enforced ? 0 : s), "probe: \(probe); shown \(s)")
    }

    /// The probe runs at most one VM per kind in a process; later calls return the cached answer.
    @Test func probeResultIsCached() throws {
        for kind in [CPUIDProbe.GuestKind.program, .kernel] {
            let first = CPUIDProbe.measured(for: kind)
            #expect(first != nil, "\(kind): no answer")
            #expect(CPUIDProbe.probeRuns(kind) == 1)
            let start = monotonicNanoseconds()
            for _ in 0..<100 { #expect(CPUIDProbe.measured(for: kind) == first) }
            #expect(CPUIDProbe.probeRuns(kind) == 1)
            // 100 cached answers cost less than one VM (about 2 ms to create, here).
            #expect(monotonicNanoseconds() - start < 1_000_000)
        }
    }
}
