import Testing
import HostTestSupport
import HostOS
@testable import KVM

@Suite(.requiresKVM)
struct SpecialRegistersTests {
    /// Setting segments and control registers from a fresh `SpecialRegisters` keeps the local
    /// APIC as KVM made it (enabled at 0xfee00000, BSP on vCPU 0). Writing 0 there, as an earlier
    /// version did, disabled the APIC, and Linux guests then found no APIC and ran on one CPU.
    @Test func settingSpecialRegistersKeepsTheAPICEnabled() throws {
        let vm = try KVMSystem().createVM()
        try vm.createInterruptController()
        let bsp = try vm.createVCPU(id: 0), ap = try vm.createVCPU(id: 1)
        for (vcpu, bspFlag) in [(bsp, UInt64(0x100)), (ap, 0)] {
            var s = SpecialRegisters()
            s.cr0 = 0x11; s.cs = Segment(base: 0, limit: 0xffff_ffff, selector: 8, type: 0xb, present: true, dpl: 0,
                                         db: true, s: true, l: false, g: true)
            try vcpu.setSpecialRegisters(s)
            let after = try vcpu.specialRegisters()
            #expect(after.apicBase == 0xfee0_0800 | bspFlag)
            #expect(after.cr0 & 0x11 == 0x11)
        }
    }
}
