import HostOS
import CKVM
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// The KVM system file descriptor (`/dev/kvm`): capability checks and VM creation.
public final class KVMSystem: @unchecked Sendable {
    // Sendable: only immutable state; the fd is thread-safe in the kernel.
    public let fd: FileDescriptor
    /// Size of each vCPU's shared `kvm_run` mapping.
    public let vcpuMapSize: Int

    /// Opens `/dev/kvm` (or `path`) and checks the API version and the capabilities Bulkhead needs.
    /// A fixed system path: symbolic links are followed; anything but a character device is refused.
    public convenience init(path: String = "/dev/kvm") throws(KVMError) {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.openChecked(path, what: "the KVM device", access: .readWrite, kind: .characterDevice, followSymlinks: true) } catch {
            if case .wrongKind = error.reason { throw .deviceUnavailable(path: path, errno: ENODEV) }
            throw .deviceUnavailable(path: path, errno: error.errno)
        }
        try self.init(adopting: fd)
    }

    /// Uses an already-open `/dev/kvm` descriptor (how a jailed worker receives it).
    public init(adopting fd: FileDescriptor) throws(KVMError) {
        self.fd = fd
        let version = clinux_ioctl(fd.rawValue, CKVM_GET_API_VERSION, 0)
        guard version == CKVM_API_VERSION else { throw .unsupportedAPIVersion(version) }
        for (cap, name) in [(CKVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
                            (CKVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"),
                            (CKVM_CAP_SYNC_REGS, "KVM_CAP_SYNC_REGS")] {
            guard clinux_ioctl(fd.rawValue, CKVM_CHECK_EXTENSION, UInt(cap)) > 0 else {
                throw .missingCapability(name)
            }
        }
        let size = try check("KVM_GET_VCPU_MMAP_SIZE") { clinux_ioctl(fd.rawValue, CKVM_GET_VCPU_MMAP_SIZE, 0) }
        self.vcpuMapSize = Int(size)
    }

    /// The value of a capability (0 when absent).
    public func checkExtension(_ cap: Int32) -> Int32 {
        max(0, clinux_ioctl(fd.rawValue, CKVM_CHECK_EXTENSION, UInt(cap)))
    }

    /// Recommended maximum number of vCPUs per VM.
    public var maxVCPUs: Int {
        let n = checkExtension(CKVM_CAP_MAX_VCPUS)
        return Int(n > 0 ? n : max(checkExtension(CKVM_CAP_NR_VCPUS), 1))
    }

    /// The CPUID leaves this host's KVM can present to a guest.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        let count = Int(CKVM_MAX_CPUID_ENTRIES)
        let stride = MemoryLayout<kvm_cpuid_entry2>.stride
        let bytes = 8 + count * stride
        // SAFETY: a scratch buffer owned by this function, large enough for the kvm_cpuid2 header
        // (nent, padding) plus `count` entries; freed before return.
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        buffer.storeBytes(of: UInt32(count), as: UInt32.self)
        _ = try check("KVM_GET_SUPPORTED_CPUID") { clinux_ioctl_ptr(fd.rawValue, CKVM_GET_SUPPORTED_CPUID, buffer) }
        // SAFETY: the kernel wrote `nent` (≤ count) entries after the 8-byte header.
        let nent = min(Int(buffer.load(as: UInt32.self)), count)
        return (0..<nent).map { i in
            let e = buffer.load(fromByteOffset: 8 + i * stride, as: kvm_cpuid_entry2.self)
            return CPUIDEntry(function: e.function, index: e.index, flags: e.flags,
                              eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
        }
    }

    /// Creates an empty virtual machine.
    public func createVM() throws(KVMError) -> VirtualMachine {
        let raw = try check("KVM_CREATE_VM") { clinux_ioctl(fd.rawValue, CKVM_CREATE_VM, 0) }
        return VirtualMachine(fd: FileDescriptor(owning: raw), system: self)
    }
}

/// One CPUID leaf as KVM takes it (`struct kvm_cpuid_entry2`, without padding).
public struct CPUIDEntry: Equatable, Hashable, Sendable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }
}

/// A KVM virtual machine: memory slots and vCPUs.
public final class VirtualMachine: @unchecked Sendable {
    // Sendable: immutable after init; KVM VM ioctls are thread-safe in the kernel.
    public let fd: FileDescriptor
    public let system: KVMSystem

    init(fd: FileDescriptor, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    /// Registers `memory` as guest RAM in memory slot `slot`.
    public func map(_ memory: GuestMemory, slot: UInt32) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: 0, guest_phys_addr: memory.base,
            memory_size: memory.size, userspace_addr: memory.hostAddress)
        // SAFETY: `region` lives on the stack for the duration of the ioctl.
        _ = try check("KVM_SET_USER_MEMORY_REGION") {
            withUnsafeMutablePointer(to: &region) { clinux_ioctl_ptr(fd.rawValue, CKVM_SET_USER_MEMORY_REGION, $0) }
        }
    }

    /// Creates vCPU number `id` and maps its `kvm_run` structure.
    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let raw = try check("KVM_CREATE_VCPU") { clinux_ioctl(fd.rawValue, CKVM_CREATE_VCPU, UInt(id)) }
        let owned = FileDescriptor(owning: raw)
        let size = system.vcpuMapSize
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, raw, 0)
        guard let p, p != MAP_FAILED else {
            throw .system(SystemError("mmap of the kvm_run structure", errno: errno))
        }
        return VCPU(id: id, fd: owned, run: p, runSize: size)
    }
}

extension VirtualMachine {
    /// Makes a guest write of `length` bytes of `value` to `address` (MMIO) signal `eventfd`
    /// inside the kernel, without an exit to user space: the doorbell of a virtqueue.
    public func registerDoorbell(address: UInt64, length: UInt32, value: UInt64, eventfd: EventFD) throws(KVMError) {
        var req = kvm_ioeventfd()
        req.datamatch = value
        req.addr = address
        req.len = length
        req.fd = eventfd.fd.rawValue
        req.flags = CKVM_IOEVENTFD_FLAG_DATAMATCH
        // SAFETY: `req` lives on the stack for the duration of the ioctl.
        _ = try check("KVM_IOEVENTFD") {
            withUnsafeMutablePointer(to: &req) { clinux_ioctl_ptr(fd.rawValue, CKVM_IOEVENTFD, $0) }
        }
    }
}

/// Capability numbers the VMM asks about.
public enum CKVMCapabilities {
    public static let ioeventfd = CKVM_CAP_IOEVENTFD
    public static let irqfd = CKVM_CAP_IRQFD
}

extension VirtualMachine {
    /// Creates the in-kernel PIC, IOAPIC and local APICs (Linux guests). Secondary vCPUs then
    /// start in the wait-for-SIPI state and are brought up by the guest.
    public func createInterruptController() throws(KVMError) {
        _ = try check("KVM_CREATE_IRQCHIP") { clinux_ioctl(fd.rawValue, CKVM_CREATE_IRQCHIP, 0) }
    }

    /// Creates the in-kernel i8254 timer (Linux calibrates against it).
    public func createTimer() throws(KVMError) {
        var config = kvm_pit_config()
        // SAFETY: `config` lives on the stack for the duration of the ioctl.
        _ = try check("KVM_CREATE_PIT2") {
            withUnsafeMutablePointer(to: &config) { clinux_ioctl_ptr(fd.rawValue, CKVM_CREATE_PIT2, $0) }
        }
    }

    /// Where KVM may put the three pages it needs for real-mode emulation on Intel hosts.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        _ = try check("KVM_SET_TSS_ADDR") { clinux_ioctl(fd.rawValue, CKVM_SET_TSS_ADDR, UInt(address)) }
    }

    /// Drives interrupt line `irq` of the in-kernel irqchip to `level`.
    public func setInterruptLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var req = kvm_irq_level()
        req.irq = irq
        req.level = level ? 1 : 0
        // SAFETY: `req` lives on the stack for the duration of the ioctl.
        _ = try check("KVM_IRQ_LINE") {
            withUnsafeMutablePointer(to: &req) { clinux_ioctl_ptr(fd.rawValue, CKVM_IRQ_LINE, $0) }
        }
    }

    /// Makes a signal on `eventfd` inject interrupt `gsi` inside the kernel (no ioctl per interrupt).
    public func registerInterrupt(gsi: UInt32, eventfd: EventFD) throws(KVMError) {
        var req = kvm_irqfd()
        req.fd = UInt32(bitPattern: eventfd.fd.rawValue)
        req.gsi = gsi
        // SAFETY: `req` lives on the stack for the duration of the ioctl.
        _ = try check("KVM_IRQFD") {
            withUnsafeMutablePointer(to: &req) { clinux_ioctl_ptr(fd.rawValue, CKVM_IRQFD, $0) }
        }
    }
}
