/// The CPU tables a guest program needs to run at CPL3 with precise fault reports: a GDT and TSS
/// per vCPU, one IDT, and the CPL0 fault stubs. All of it lives in supervisor-only pages.
public enum SystemTables {
    public static let kernelCode: UInt16 = 0x08
    public static let kernelData: UInt16 = 0x10
    public static let userData: UInt16 = 0x18 | 3
    public static let userCode: UInt16 = 0x20 | 3
    public static let tss: UInt16 = 0x28
    public static let gdtLimit: UInt16 = 0x37
    public static let tssLimit: UInt32 = 103
    public static let vectors = 32
    public static let stubSize = 16

    /// Exceptions for which the CPU pushes an error code.
    public static let vectorsWithErrorCode: Set<Int> = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]

    /// One vCPU's GDT (at offset 0) and TSS (at `GuestLayout.tssOffset`) in a 4 KiB page.
    public static func cpuTablePage(vcpu: Int) -> [UInt8] {
        var w = ByteWriter(size: Int(GuestLayout.pageSize))
        // Flat 64-bit descriptors: G=1, limit 0xfffff.
        w.put(UInt64(0), at: 0)
        w.put(UInt64(0x00af_9b00_0000_ffff), at: 8)   // kernel code: P, DPL0, code exec/read accessed, L
        w.put(UInt64(0x00cf_9300_0000_ffff), at: 16)  // kernel data: P, DPL0, data r/w accessed, D/B
        w.put(UInt64(0x00cf_f300_0000_ffff), at: 24)  // user data: P, DPL3
        w.put(UInt64(0x00af_fb00_0000_ffff), at: 32)  // user code: P, DPL3, L
        let tssBase = GuestLayout.cpuTablePage(vcpu) + GuestLayout.tssOffset
        // 16-byte system descriptor: type 0xB (busy 64-bit TSS), present, DPL0.
        var low = UInt64(tssLimit & 0xffff)
        low |= (tssBase & 0xff_ffff) << 16
        low |= UInt64(0x8b) << 40
        low |= UInt64((tssLimit >> 16) & 0xf) << 48
        low |= ((tssBase >> 24) & 0xff) << 56
        w.put(low, at: 40)
        w.put(UInt64(tssBase >> 32), at: 48)
        // TSS: RSP0 at offset 4; I/O map base beyond the limit (no I/O permission bitmap).
        let tss = Int(GuestLayout.tssOffset)
        w.put(GuestLayout.kernelStackTop(vcpu), at: tss + 4)
        w.put(UInt16(tssLimit + 1), at: tss + 102)
        return w.bytes
    }

    /// The IDT: 32 interrupt gates (DPL0, so `int n` from CPL3 is itself a #GP) to the stubs.
    public static func idt() -> [UInt8] {
        var w = ByteWriter(size: Int(GuestLayout.pageSize))
        for v in 0..<vectors {
            let handler = GuestLayout.faultStubs + UInt64(v * stubSize)
            var low = handler & 0xffff
            low |= UInt64(kernelCode) << 16
            low |= UInt64(0x8e) << 40          // present, DPL0, 64-bit interrupt gate
            low |= ((handler >> 16) & 0xffff) << 48
            w.put(low, at: v * 16)
            w.put(UInt64(handler >> 32), at: v * 16 + 8)
        }
        return w.bytes
    }

    public static var idtLimit: UInt16 { UInt16(vectors * 16 - 1) }

    /// The CPL0 fault stubs, one per vector, `stubSize` bytes each:
    /// `mov $vector, %al; movabs %al, faultPage; 1: hlt; jmp 1b`.
    /// The VMM learns the vector from the MMIO write and reads the exception frame itself.
    public static func faultStubs() -> [UInt8] {
        var w = ByteWriter(size: Int(GuestLayout.pageSize))
        for v in 0..<vectors {
            let o = v * stubSize
            w.put([0xb0, UInt8(v), 0xa2], at: o)
            w.put(GuestLayout.faultPage, at: o + 3)
            w.put([0xf4, 0xeb, 0xfd], at: o + 11)
        }
        return w.bytes
    }
}
