import CKVM
import Seccomp
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The ioctl table's numbers against the ones the C headers define (CKVM takes them from
/// <linux/kvm.h>; Glibc imports the generic ones): a wrong structure size or number fails here.
struct IoctlTableTests {
    /// Every table entry with the header's value, where CKVM or Glibc has one.
    static let fromHeaders: [String: UInt] = [
        "KVM_GET_API_VERSION": CKVM_GET_API_VERSION,
        "KVM_CREATE_VM": CKVM_CREATE_VM,
        "KVM_CHECK_EXTENSION": CKVM_CHECK_EXTENSION,
        "KVM_GET_VCPU_MMAP_SIZE": CKVM_GET_VCPU_MMAP_SIZE,
        "KVM_GET_SUPPORTED_CPUID": CKVM_GET_SUPPORTED_CPUID,
        "KVM_CREATE_VCPU": CKVM_CREATE_VCPU,
        "KVM_SET_USER_MEMORY_REGION": CKVM_SET_USER_MEMORY_REGION,
        "KVM_SET_TSS_ADDR": CKVM_SET_TSS_ADDR,
        "KVM_SET_IDENTITY_MAP_ADDR": CKVM_SET_IDENTITY_MAP_ADDR,
        "KVM_CREATE_IRQCHIP": CKVM_CREATE_IRQCHIP,
        "KVM_IRQ_LINE": CKVM_IRQ_LINE,
        "KVM_IRQFD": CKVM_IRQFD,
        "KVM_CREATE_PIT2": CKVM_CREATE_PIT2,
        "KVM_IOEVENTFD": CKVM_IOEVENTFD,
        "KVM_RUN": CKVM_RUN,
        "KVM_GET_REGS": CKVM_GET_REGS,
        "KVM_SET_REGS": CKVM_SET_REGS,
        "KVM_GET_SREGS": CKVM_GET_SREGS,
        "KVM_SET_SREGS": CKVM_SET_SREGS,
        "KVM_SET_FPU": CKVM_SET_FPU,
        "KVM_SET_CPUID2": CKVM_SET_CPUID2,
        "KVM_GET_MP_STATE": CKVM_GET_MP_STATE,
        "KVM_SET_MP_STATE": CKVM_SET_MP_STATE,
        "FIONREAD": UInt(FIONREAD),
        "FIONBIO": UInt(FIONBIO),
        "TCGETS": UInt(TCGETS),
    ]

    @Test func everyEntryMatchesItsHeader() {
        for (name, request) in IoctlTable.all {
            if let header = Self.fromHeaders[name] {
                #expect(UInt(request) == header, "\(name): table 0x\(String(request, radix: 16)), header 0x\(String(header, radix: 16))")
            } else {
                // KVM_GET_FPU: CKVM does not declare it; the number is _IOR(KVMIO, 0x8c, struct kvm_fpu).
                #expect(name == "KVM_GET_FPU" && request == 0x81a0_ae8c, "\(name) has no header value to compare with")
            }
        }
    }

    /// Every KVM request constant the VMM uses (Sources/KVM) has an entry, so a policy can name it.
    @Test func everyRequestCKVMDeclaresIsInTheTable() {
        for (name, header) in Self.fromHeaders {
            #expect(IoctlTable.request(named: name).map(UInt.init) == header, "\(name)")
        }
    }

    @Test func lookupsBothWays() {
        #expect(IoctlTable.request(named: "KVM_RUN") == 0xae80)
        #expect(IoctlTable.name(of: 0xae80) == "KVM_RUN")
        #expect(IoctlTable.request(named: "KVM_NOPE") == nil)
        #expect(IoctlTable.name(of: 0x1234_5678) == nil)
        #expect(Set(IoctlTable.all.map(\.request)).count == IoctlTable.all.count, "no two names share a number")
    }
}
