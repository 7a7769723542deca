/// The ioctl requests a policy may name, with their numbers computed the way the kernel's
/// headers define them (`_IO`, `_IOR`, `_IOW`, `_IOWR` of `<asm-generic/ioctl.h>`): direction in
/// bits 30–31, argument size in bits 16–29, type in bits 8–15, number in bits 0–7.
///
/// Every KVM request Bulkhead issues is here, plus a few generic ones. A policy can also give a
/// request as a number (`ioctl 0xae80`). SeccompTests (IoctlTableTests) compares every entry
/// with the value CKVM takes from `<linux/kvm.h>` (or Glibc's), so a wrong size or number fails.
public enum IoctlTable {
    static let none: UInt32 = 0, write: UInt32 = 1, read: UInt32 = 2

    /// `_IOC(dir, type, nr, size)`.
    static func ioc(_ direction: UInt32, _ type: UInt32, _ number: UInt32, _ size: UInt32) -> UInt32 {
        direction << 30 | size << 16 | type << 8 | number
    }
    static func io(_ type: UInt32, _ number: UInt32) -> UInt32 { ioc(none, type, number, 0) }
    static func ior(_ type: UInt32, _ number: UInt32, size: UInt32) -> UInt32 { ioc(read, type, number, size) }
    static func iow(_ type: UInt32, _ number: UInt32, size: UInt32) -> UInt32 { ioc(write, type, number, size) }
    static func iowr(_ type: UInt32, _ number: UInt32, size: UInt32) -> UInt32 { ioc(read | write, type, number, size) }

    /// KVMIO, the KVM requests' type byte.
    static let kvm: UInt32 = 0xae

    // Sizes of the structures the requests carry (x86_64, from <linux/kvm.h>; checked by the
    // comparison test, since a wrong size makes a wrong request number).
    static let sizeofKvmRegs: UInt32 = 144
    static let sizeofKvmSregs: UInt32 = 312
    static let sizeofKvmFpu: UInt32 = 416
    static let sizeofKvmCpuid2: UInt32 = 8          // the header; entries follow it
    static let sizeofKvmUserspaceMemoryRegion: UInt32 = 32
    static let sizeofKvmIoeventfd: UInt32 = 64
    static let sizeofKvmIrqfd: UInt32 = 32
    static let sizeofKvmIrqLevel: UInt32 = 8
    static let sizeofKvmPitConfig: UInt32 = 64
    static let sizeofKvmMpState: UInt32 = 4
    static let sizeofU64: UInt32 = 8

    /// Every named request, by name.
    public static let all: [(name: String, request: UInt32)] = [
        // /dev/kvm (system) requests.
        ("KVM_GET_API_VERSION", io(kvm, 0x00)),
        ("KVM_CREATE_VM", io(kvm, 0x01)),
        ("KVM_CHECK_EXTENSION", io(kvm, 0x03)),
        ("KVM_GET_VCPU_MMAP_SIZE", io(kvm, 0x04)),
        ("KVM_GET_SUPPORTED_CPUID", iowr(kvm, 0x05, size: sizeofKvmCpuid2)),
        // VM requests.
        ("KVM_CREATE_VCPU", io(kvm, 0x41)),
        ("KVM_SET_USER_MEMORY_REGION", iow(kvm, 0x46, size: sizeofKvmUserspaceMemoryRegion)),
        ("KVM_SET_TSS_ADDR", io(kvm, 0x47)),
        ("KVM_SET_IDENTITY_MAP_ADDR", iow(kvm, 0x48, size: sizeofU64)),
        ("KVM_CREATE_IRQCHIP", io(kvm, 0x60)),
        ("KVM_IRQ_LINE", iow(kvm, 0x61, size: sizeofKvmIrqLevel)),
        ("KVM_IRQFD", iow(kvm, 0x76, size: sizeofKvmIrqfd)),
        ("KVM_CREATE_PIT2", iow(kvm, 0x77, size: sizeofKvmPitConfig)),
        ("KVM_IOEVENTFD", iow(kvm, 0x79, size: sizeofKvmIoeventfd)),
        // vCPU requests.
        ("KVM_RUN", io(kvm, 0x80)),
        ("KVM_GET_REGS", ior(kvm, 0x81, size: sizeofKvmRegs)),
        ("KVM_SET_REGS", iow(kvm, 0x82, size: sizeofKvmRegs)),
        ("KVM_GET_SREGS", ior(kvm, 0x83, size: sizeofKvmSregs)),
        ("KVM_SET_SREGS", iow(kvm, 0x84, size: sizeofKvmSregs)),
        ("KVM_GET_FPU", ior(kvm, 0x8c, size: sizeofKvmFpu)),
        ("KVM_SET_FPU", iow(kvm, 0x8d, size: sizeofKvmFpu)),
        ("KVM_SET_CPUID2", iow(kvm, 0x90, size: sizeofKvmCpuid2)),
        ("KVM_GET_MP_STATE", ior(kvm, 0x98, size: sizeofKvmMpState)),
        ("KVM_SET_MP_STATE", iow(kvm, 0x99, size: sizeofKvmMpState)),
        // Generic requests (<asm-generic/ioctls.h>: old-style numbers, type 'T' = 0x54).
        ("TCGETS", 0x5401),
        ("FIONREAD", 0x541b),
        ("FIONBIO", 0x5421),
    ]

    private static let byName: [String: UInt32] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0.request) })
    private static let byRequest: [UInt32: String] = Dictionary(uniqueKeysWithValues: all.map { ($0.request, $0.name) })

    /// The request number of `name` (`"KVM_RUN"` → 0xae80); nil for names not in the table.
    public static func request(named name: String) -> UInt32? { byName[name] }

    /// The name of `request`; nil for numbers not in the table.
    public static func name(of request: UInt32) -> String? { byRequest[request] }
}
