import GuestInterface
import Testing
@testable import VMM

@Suite struct FaultReportTests {
    func pf(_ code: UInt64, guardHit: Bool = false) -> FaultReport {
        FaultReport(vcpu: 1, vector: 14, errorCode: code, rip: 0x40_1000, rsp: 0, address: 0x8000_0000, guardPageHit: guardHit)
    }

    @Test func explainsPageFaults() {
        #expect(pf(0x4).pageFaultDetail == "read at unmapped address 0x80000000")
        #expect(pf(0x6).pageFaultDetail == "write at unmapped address 0x80000000")
        #expect(pf(0x7).pageFaultDetail == "write at 0x80000000 in a read-only page")
        #expect(pf(0x15).pageFaultDetail == "instruction fetch at 0x80000000 in a no-execute page")
        #expect(pf(0x5).pageFaultDetail == "read at 0x80000000 in a page not accessible to the guest program")
        #expect(pf(0x6, guardHit: true).pageFaultDetail == "stack overflow: write at 0x80000000 hit the stack guard page")
    }

    @Test func describesOtherVectors() {
        let ud = FaultReport(vcpu: 0, vector: 6, errorCode: nil, rip: 0x40_0050, rsp: 0, address: nil)
        #expect(ud.description == "vCPU 0: invalid opcode (#UD) at rip 0x400050")
        let gp = FaultReport(vcpu: 2, vector: 13, errorCode: 0x10, rip: 1, rsp: 0, address: nil)
        #expect(gp.description == "vCPU 2: general protection fault (#GP) at rip 0x1 (error code 0x10)")
        #expect(FaultReport.name(of: 31) == "exception 31")
    }

    @Test func exitCodes() {
        #expect(RunOutcome.exited(status: 7).exitCode == 7)
        #expect(RunOutcome.tripleFault(vcpu: 0, state: nil).exitCode == 134)
        #expect(RunOutcome.timedOut(seconds: 1).exitCode == 124)
        #expect(RunOutcome.vcpuFailure(vcpu: 0, reason: "x").exitCode == 125)
    }
}
