import GuestABI

/// The fixed guest-physical layout of a Bulkhead guest program (docs/guest-abi.md).
public enum GuestLayout {
    public static let pageSize: UInt64 = 4096
    public static let idt: UInt64 = 0x1000
    public static let faultStubs: UInt64 = 0x2000
    /// Per vCPU: one page holding its GDT (offset 0) and TSS (offset 0x100).
    public static let cpuTables: UInt64 = 0x3000
    public static let tssOffset: UInt64 = 0x100
    /// Per vCPU: one supervisor stack page used by the fault handlers.
    public static let kernelStacks: UInt64 = 0x4_3000
    public static let maxVCPUs = 64
    public static let pageTablePool: UInt64 = 0x10_0000
    public static let pageTablePoolPages = 256
    public static let systemEnd: UInt64 = 0x20_0000
    public static let bootInfo: UInt64 = 0x20_0000
    public static let bootInfoSize: UInt64 = 0x2000
    public static let deviceListOffset: UInt64 = 0x100
    public static let maxDevices = 32
    public static let memoryMapOffset: UInt64 = 0x400
    public static let maxMemoryMapEntries = 128
    public static let commandLineOffset: UInt64 = 0x1000
    public static let maxCommandLine = 4095
    public static let programStart: UInt64 = 0x40_0000
    public static let stackSize: UInt64 = 64 * 1024
    public static let guardSize: UInt64 = 4096
    public static let mmioHole: UInt64 = 0xC000_0000
    public static let hypercallPage = GuestABI.hypercallPage
    public static let faultPage = GuestABI.faultReportPage
    public static let maxMemory: UInt64 = mmioHole
    /// Virtio-mmio windows, one page each from here (docs/guest-abi.md, "Devices").
    public static let deviceWindows: UInt64 = 0xD000_0000
    public static let deviceWindowsEnd: UInt64 = 0xD000_0000 + UInt64(maxDevices) * pageSize
    public static func deviceWindow(_ i: Int) -> UInt64 { deviceWindows + UInt64(i) * pageSize }
    public static let bootInfoMagic: UInt64 = 0x3154_4F4F_424B_4842 // "BHKBOOT1"
    public static let abiVersion: UInt32 = 1

    public static func cpuTablePage(_ vcpu: Int) -> UInt64 { cpuTables + UInt64(vcpu) * pageSize }
    public static func kernelStackTop(_ vcpu: Int) -> UInt64 { kernelStacks + UInt64(vcpu + 1) * pageSize }

    /// Top of vCPU `index`'s user stack; the stack is `[top - stackSize, top)` with an unmapped
    /// guard page below it.
    public static func stackTop(_ index: Int, memorySize: UInt64) -> UInt64 {
        memorySize - UInt64(index) * (stackSize + guardSize)
    }

    /// Where the program may be loaded: from 4 MiB up to the lowest guard page.
    public static func programEnd(memorySize: UInt64, vcpus: Int) -> UInt64 {
        let stacks = UInt64(vcpus) * (stackSize + guardSize)
        return memorySize > stacks ? memorySize - stacks : 0
    }
}

/// Kinds of memory-map entries in the boot-information block.
public enum MemoryKind: UInt32, Sendable {
    case free = 1, program = 2, stack = 3, bootInfo = 4, reserved = 5
}
