/// The fixed guest-physical layout of a Linux direct boot (docs/linux-boot.md).
///
/// ```
/// 0x0000_0000 – 0x0000_0fff   RAM (real-mode IVT and BIOS data area; left untouched)
/// 0x0000_1000 – 0x0002_ffff   reserved in the e820 map: the VMM's boot structures
///   0x0000_1000                 GDT: null, null, 0x08 code32, 0x10 code64, 0x18 data, 0x20 TSS
///   0x0000_2000                 PVH: hvm_start_info (+0x000), module list (+0x040), memory map (+0x100)
///   0x0000_7000                 zero page (struct boot_params), bzImage and vmlinux only
///   0x0000_8000 – 0x0000_8fff   boot stack (rsp = 0x9000 at entry)
///   0x0000_9000 – 0x0001_0fff   page-table pool: identity map of the first 4 GiB, 2 MiB pages
///   0x0002_0000 – 0x0002_ffff   command line, NUL-terminated
/// 0x0003_0000 – 0x0009_fbff   RAM
/// 0x0009_fc00 – 0x000f_ffff   reserved: EBDA, VGA hole, BIOS ROM
///   0x000e_0000                 ACPI tables: RSDP, XSDT, FADT, MADT, DSDT (`ACPITables`)
/// 0x0010_0000 – RAM end       RAM: the kernel (at its preferred address, 16 MiB for stock
///                             kernels), the initrd as high as the kernel allows
/// 0xc000_0000 – 0xfebf_ffff   virtio-mmio devices (never RAM: RAM ends below 3 GiB)
/// 0xfec0_0000 – 0xffff_ffff   IOAPIC, local APIC, firmware: no devices here
/// ```
///
/// Everything the VMM writes below 1 MiB sits in the reserved range, so the kernel never hands
/// it out as free memory; the kernel copies the zero page, command line and start_info early and
/// replaces the GDT and page tables with its own.
public enum LinuxBootLayout {
    public static let pageSize: UInt64 = 4096
    public static let gdt: UInt64 = 0x1000
    public static let startInfo: UInt64 = 0x2000
    public static let moduleListOffset: UInt64 = 0x40
    public static let memoryMapOffset: UInt64 = 0x100
    public static let zeroPage: UInt64 = 0x7000
    public static let stackBottom: UInt64 = 0x8000
    public static let stackTop: UInt64 = 0x9000
    public static let pageTablePool: UInt64 = 0x9000
    public static let pageTablePoolPages = 8
    public static let commandLine: UInt64 = 0x2_0000
    public static let commandLineAreaSize: UInt64 = 0x1_0000
    /// The VMM's boot structures: reserved in the e820 map.
    public static let bootAreaStart: UInt64 = 0x1000
    public static let bootAreaEnd: UInt64 = 0x3_0000
    /// The extended BIOS data area and the legacy ROM/VGA hole: reserved in the e820 map.
    public static let ebda: UInt64 = 0x9_fc00
    public static let highMemory: UInt64 = 0x10_0000
    /// The x86 reset vector (F000:FFF0 in real mode), in the reserved legacy hole. There is no
    /// BIOS; what Bulkhead puts there ends the VM as a reset, for a kernel whose reboot falls
    /// back to a BIOS restart (Linux's `reboot=b`, or its last resort).
    public static let resetVector: UInt64 = 0xf_fff0
    /// mov al, 0xfe; out 0x64, al (the i8042 reset, i8042-reset); hlt; jmp back to the hlt.
    /// The same bytes in real, 32- and 64-bit mode.
    public static let resetVectorCode: [UInt8] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]
    /// Guest RAM must end at or below the MMIO hole; devices live above it.
    public static let mmioHole: UInt64 = GuestLayout.mmioHole
    /// Where virtio-mmio devices may be placed: from the MMIO hole up to the IOAPIC.
    public static let deviceWindowEnd: UInt64 = 0xfec0_0000
    /// The identity map built for the 64-bit entry covers this much.
    public static let identityMapSize: UInt64 = 4 << 30
    /// Linux's x86 COMMAND_LINE_SIZE is 2048 including the NUL; a `vmlinux` has no setup header
    /// that says so, so this is the limit for ELF kernels.
    public static let elfCommandLineMaximum = 2047
    public static let maxDevices = 32
    /// vCPUs the MADT can list (APIC IDs fit a byte; the VMM's own limit is lower).
    public static let maxVCPUs = 254
    /// x86 legacy interrupt lines usable for devices with the in-kernel irqchip (IOAPIC pins);
    /// 0 (timer) and 2 (PIC cascade) are never device lines.
    public static let deviceIRQs: ClosedRange<UInt32> = 1...23
    public static let reservedIRQs: Set<UInt32> = [0, 2]
}

/// One entry of the BIOS-style memory map given to the kernel (`boot_params.e820_table`, or the
/// PVH `hvm_memmap_table_entry` array: both use these type numbers).
public struct E820Entry: Equatable, Sendable {
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
    }

    public var address: UInt64
    public var size: UInt64
    public var kind: Kind

    public init(address: UInt64, size: UInt64, kind: Kind) {
        self.address = address
        self.size = size
        self.kind = kind
    }

    public var end: UInt64 { address + size }
}

/// A virtio-mmio device as the guest kernel is told about it on its command line
/// (`virtio_mmio.device=<size>@<base>:<irq>`).
public struct VirtioMMIODeviceInfo: Equatable, Sendable {
    public var base: UInt64
    public var size: UInt64
    public var irq: UInt32

    public init(base: UInt64, size: UInt64, irq: UInt32) {
        self.base = base
        self.size = size
        self.irq = irq
    }

    /// The same window the VMM attaches a device at (`GuestLayout.deviceWindow(i)`).
    public init(_ window: DeviceWindow) {
        self.init(base: window.base, size: window.size, irq: window.irq)
    }

    /// The command-line parameter in Linux's syntax, e.g. `virtio_mmio.device=4K@0xd0000000:5`.
    public var commandLineParameter: String {
        let sizeText: String
        if size % (1 << 20) == 0 {
            sizeText = "\(size >> 20)M"
        } else if size % (1 << 10) == 0 {
            sizeText = "\(size >> 10)K"
        } else {
            sizeText = "\(size)"
        }
        return "virtio_mmio.device=\(sizeText)@0x\(String(base, radix: 16)):\(irq)"
    }
}
