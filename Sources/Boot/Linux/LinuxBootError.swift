/// Why a Linux kernel image, or a plan to boot it, was refused.
///
/// The kernel image, the initrd and the command line may all come from a tenant: every case here
/// is a clean refusal of input the planner does not fully understand, never a trap.
public enum LinuxBootError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Neither a 64-bit ELF `vmlinux` nor a bzImage.
    case notAKernel(String)
    /// The file ends before a structure it declares.
    case truncated(what: String, needed: UInt64, available: UInt64)
    /// A bzImage whose boot protocol is older than 2.12 (the 64-bit entry and `init_size` are
    /// only dependable from there).
    case unsupportedProtocol(version: UInt16)
    /// A setup-header field that is inconsistent or out of range.
    case badSetupHeader(String)
    /// The bzImage's `loadflags` lack `LOADED_HIGH`: its protected-mode code wants 0x10000.
    case notLoadedHigh
    /// The bzImage's `xloadflags` lack `XLF_KERNEL_64`: it has no 64-bit entry point.
    case no64BitEntry
    /// `kernel_alignment` is zero, not a power of two or below 4 KiB.
    case badAlignment(UInt32)
    /// A malformed or unsupported `vmlinux` ELF file (reuses the ELF loader's reasons).
    case elf(ELFError)
    /// A malformed ELF note area, or a PVH entry note that cannot be used.
    case badNote(String)
    /// The entry point does not lie in the file-backed, executable part of the kernel.
    case entryOutsideImage(UInt64)
    /// The kernel's memory footprint is outside what Linux direct boot allows (1 MiB up to the
    /// MMIO hole), independent of the guest's RAM size.
    case kernelOutOfRange(start: UInt64, end: UInt64)
    /// The kernel's memory footprint (`init_size` from its load address) does not fit in RAM.
    case kernelDoesNotFit(start: UInt64, end: UInt64, memorySize: UInt64)
    /// No place for the initrd: `[lowest, highest)` was the window it had to fit in.
    case initrdDoesNotFit(size: UInt64, lowest: UInt64, highest: UInt64)
    case emptyInitrd
    /// The final command line (with the devices appended) is longer than the kernel accepts.
    case commandLineTooLong(length: Int, maximum: Int)
    case badCommandLine(String)
    case badMemorySize(String)
    case badDevice(index: Int, reason: String)
    /// The MADT can list 1...`LinuxBootLayout.maxVCPUs` processors.
    case badVCPUCount(Int)
    case pageTables(PageTableError)

    public var description: String {
        func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .notAKernel(let why): return "not a Linux kernel image: \(why)"
        case .truncated(let what, let needed, let available):
            return "truncated kernel image: \(what) needs \(needed) bytes, the file has \(available)"
        case .unsupportedProtocol(let v):
            let minor = v & 0xff
            return "bzImage boot protocol \(v >> 8).\(minor < 10 ? "0" : "")\(minor) is too old (need 2.12 or later, Linux 3.8+)"
        case .badSetupHeader(let why): return "malformed bzImage setup header: \(why)"
        case .notLoadedHigh: return "the bzImage does not set LOADED_HIGH in loadflags (a zImage loaded at 0x10000 is not supported)"
        case .no64BitEntry: return "the bzImage has no 64-bit entry point (XLF_KERNEL_64 is not set in xloadflags)"
        case .badAlignment(let a): return "kernel_alignment \(hex(UInt64(a))) is not a power of two of at least 4 KiB"
        case .elf(let e): return "bad vmlinux: \(e)"
        case .badNote(let why): return "bad ELF note: \(why)"
        case .entryOutsideImage(let e): return "entry point \(hex(e)) is not inside the kernel's loaded executable code"
        case .kernelOutOfRange(let s, let e):
            return "the kernel would occupy \(hex(s))–\(hex(e)); it must lie between 1 MiB and the MMIO hole at \(hex(GuestLayout.mmioHole))"
        case .kernelDoesNotFit(let s, let e, let m):
            return "the kernel needs \(hex(s))–\(hex(e)) (its init_size from the load address) but the guest has only \(m >> 20) MiB of RAM"
        case .initrdDoesNotFit(let size, let lo, let hi):
            return "no room for an initrd of \(size) bytes: it must fit in \(hex(lo))–\(hex(hi)), outside the kernel"
        case .emptyInitrd: return "the initrd is empty"
        case .commandLineTooLong(let n, let max):
            return "the command line (with the parameters Bulkhead adds: pci=off, reboot=k, virtio_mmio.device=) is \(n) bytes; this kernel accepts at most \(max)"
        case .badCommandLine(let why): return "bad command line: \(why)"
        case .badMemorySize(let why): return "bad memory size: \(why)"
        case .badVCPUCount(let n): return "\(n) vCPUs: a Linux guest can have 1 to \(LinuxBootLayout.maxVCPUs)"
        case .badDevice(let i, let why): return "virtio-mmio device \(i): \(why)"
        case .pageTables(let e): return "cannot build the boot page tables: \(e)"
        }
    }
}
