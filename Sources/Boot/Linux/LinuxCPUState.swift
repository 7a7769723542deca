/// A segment register as the VMM loads it (the fields of `struct kvm_segment`): the hidden part
/// is decoded from the same GDT descriptor the guest could reload it from.
public struct SegmentState: Equatable, Sendable {
    public var selector: UInt16
    public var base: UInt64
    /// The limit in bytes (already scaled by the granularity bit), as KVM expects it.
    public var limit: UInt32
    /// The 4-bit descriptor type (code/data: accessed, read/write, conforming/expand-down, code).
    public var type: UInt8
    public var present: Bool
    public var dpl: UInt8
    /// D/B: 32-bit default operand size.
    public var defaultSize32: Bool
    /// S: a code or data segment (false for system segments such as the TSS).
    public var codeOrData: Bool
    /// L: 64-bit code.
    public var long: Bool
    public var granularity: Bool

    /// Decodes an 8-byte GDT descriptor.
    public init(selector: UInt16, descriptor d: UInt64) {
        self.selector = selector
        base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24)
        let rawLimit = UInt32(truncatingIfNeeded: (d & 0xffff) | (((d >> 48) & 0xf) << 16))
        granularity = (d >> 55) & 1 == 1
        limit = granularity ? (rawLimit << 12) | 0xfff : rawLimit
        type = UInt8(truncatingIfNeeded: (d >> 40) & 0xf)
        codeOrData = (d >> 44) & 1 == 1
        dpl = UInt8(truncatingIfNeeded: (d >> 45) & 3)
        present = (d >> 47) & 1 == 1
        long = (d >> 53) & 1 == 1
        defaultSize32 = (d >> 54) & 1 == 1
    }
}

/// The register state the boot vCPU starts a Linux kernel with. Secondary vCPUs are started by
/// the kernel itself (INIT/SIPI through the in-kernel local APIC).
public struct LinuxCPUState: Equatable, Sendable {
    public enum Mode: Equatable, Sendable {
        /// 64-bit boot protocol: long mode, paging on, CPL0.
        case long64
        /// PVH: 32-bit protected mode, paging off, CPL0.
        case protected32
    }

    public var mode: Mode
    public var rip: UInt64
    public var rsp: UInt64
    /// 64-bit boot protocol: the zero page.
    public var rsi: UInt64
    /// PVH: the hvm_start_info.
    public var rbx: UInt64
    public var rflags: UInt64 = 0x2 // interrupts off
    public var cr0: UInt64
    public var cr3: UInt64
    public var cr4: UInt64
    public var efer: UInt64
    public var cs: SegmentState
    public var ds: SegmentState
    public var es: SegmentState
    public var fs: SegmentState
    public var gs: SegmentState
    public var ss: SegmentState
    public var tr: SegmentState
    public var gdtBase: UInt64
    public var gdtLimit: UInt16
    /// No IDT: the kernel installs its own before it enables interrupts.
    public var idtBase: UInt64 = 0
    public var idtLimit: UInt16 = 0
}

/// The boot GDT at `LinuxBootLayout.gdt`, shared by both entry modes.
public enum LinuxGDT {
    /// Flat 32-bit code, for the PVH entry.
    public static let code32: UInt16 = 0x08
    /// Flat 64-bit code: `__BOOT_CS` of the 64-bit boot protocol.
    public static let code64: UInt16 = 0x10
    /// Flat data: `__BOOT_DS` of the 64-bit boot protocol, also the PVH data segment.
    public static let data: UInt16 = 0x18
    /// A busy TSS at base 0, limit 0x67 (PVH asks for one; KVM needs a usable TR in any mode).
    public static let tss: UInt16 = 0x20

    static let descriptors: [UInt64] = [
        0,
        0x00cf_9b00_0000_ffff, // 0x08: P, DPL0, code exec/read accessed, D, G, limit 4 GiB
        0x00af_9b00_0000_ffff, // 0x10: P, DPL0, code exec/read accessed, L, G
        0x00cf_9300_0000_ffff, // 0x18: P, DPL0, data read/write accessed, D/B, G
        0x0000_8b00_0000_0067, // 0x20: P, DPL0, busy TSS, base 0, limit 0x67 (16-byte system descriptor:
        0,                     // 0x28: its upper half, base bits 63:32 = 0)
    ]

    public static var limit: UInt16 { UInt16(descriptors.count * 8 - 1) }

    public static func bytes() -> [UInt8] {
        var w = ByteWriter(size: descriptors.count * 8)
        for (i, d) in descriptors.enumerated() { w.put(d, at: i * 8) }
        return w.bytes
    }

    public static func segment(_ selector: UInt16) -> SegmentState {
        let index = Int(selector >> 3)
        return SegmentState(selector: selector, descriptor: index < descriptors.count ? descriptors[index] : 0)
    }
}

extension LinuxCPUState {
    static let cr0PE: UInt64 = 1 << 0
    static let cr0ET: UInt64 = 1 << 4
    static let cr0NE: UInt64 = 1 << 5
    static let cr0PG: UInt64 = 1 << 31
    static let cr4PAE: UInt64 = 1 << 5
    static let eferLME: UInt64 = 1 << 8
    static let eferLMA: UInt64 = 1 << 10

    /// The 64-bit boot protocol (boot.rst, "64-bit BOOT PROTOCOL"): long mode with the given
    /// identity-mapping page tables, CS = `__BOOT_CS` (0x10), the data segments `__BOOT_DS`
    /// (0x18), interrupts off, `rsi` = the zero page.
    static func longMode(entry: UInt64, pageTableRoot: UInt64, zeroPage: UInt64) -> LinuxCPUState {
        let data = LinuxGDT.segment(LinuxGDT.data)
        return LinuxCPUState(
            mode: .long64, rip: entry, rsp: LinuxBootLayout.stackTop, rsi: zeroPage, rbx: 0,
            cr0: cr0PG | cr0NE | cr0ET | cr0PE, cr3: pageTableRoot, cr4: cr4PAE, efer: eferLME | eferLMA,
            cs: LinuxGDT.segment(LinuxGDT.code64), ds: data, es: data, fs: data, gs: data, ss: data,
            tr: LinuxGDT.segment(LinuxGDT.tss), gdtBase: LinuxBootLayout.gdt, gdtLimit: LinuxGDT.limit)
    }

    /// The PVH entry (xen/include/public/arch-x86/hvm/start_info.h and Xen's docs/misc/pvh.pandoc):
    /// 32-bit protected mode, paging off, CR0 = PE (ET reads as one), CR4 = 0, flat 32-bit code
    /// and data, a TSS with base 0 and limit 0x67, interrupts off, `ebx` = the start_info.
    static func protectedMode(entry: UInt32, startInfo: UInt64) -> LinuxCPUState {
        let data = LinuxGDT.segment(LinuxGDT.data)
        return LinuxCPUState(
            mode: .protected32, rip: UInt64(entry), rsp: LinuxBootLayout.stackTop, rsi: 0, rbx: startInfo,
            cr0: cr0ET | cr0PE, cr3: 0, cr4: 0, efer: 0,
            cs: LinuxGDT.segment(LinuxGDT.code32), ds: data, es: data, fs: data, gs: data, ss: data,
            tr: LinuxGDT.segment(LinuxGDT.tss), gdtBase: LinuxBootLayout.gdt, gdtLimit: LinuxGDT.limit)
    }
}
