/// A validated Linux kernel image, ready to be planned into guest memory.
///
/// `LinuxKernel.parse` recognises, in this order:
/// 1. a 64-bit ELF `vmlinux` with a PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`): booted through
///    the PVH ABI in 32-bit protected mode, loaded by physical address (`p_paddr`);
/// 2. a 64-bit ELF `vmlinux` without the note: booted through the 64-bit boot protocol at its
///    entry point translated to a physical address;
/// 3. a bzImage (boot protocol 2.12 or later, `LOADED_HIGH`, `XLF_KERNEL_64`): its
///    protected-mode part loaded at its preferred address and entered at `startup_64`
///    (load address + 0x200) through the 64-bit boot protocol.
///
/// Every field used is checked against the file and against the other fields with checked
/// arithmetic: the image may come from a tenant. Only `parse` makes a `LinuxKernel`, and its
/// fields are constants, so the planner can rely on what parse checked.
public struct LinuxKernel: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        /// PVH: 32-bit protected mode at this physical address, `ebx` = hvm_start_info.
        case pvh(entry32: UInt32)
        /// vmlinux through the 64-bit boot protocol: long mode at this physical address.
        case elf64(entry: UInt64)
        /// bzImage through the 64-bit boot protocol: long mode at `startup_64`.
        case bzImage(entry64: UInt64)
    }

    /// File bytes to place at a guest-physical address; memory past `fileSize` up to
    /// `memorySize` is zero (fresh guest RAM).
    public struct Segment: Equatable, Sendable {
        public let physicalAddress: UInt64
        public let fileOffset: UInt64
        public let fileSize: UInt64
        public let memorySize: UInt64
        public let executable: Bool

        public var end: UInt64 { physicalAddress + memorySize }
    }

    /// The fields of a bzImage setup header that the planner uses, plus the raw header bytes
    /// (from 0x1f1 to its end) that are copied into the zero page.
    public struct SetupHeader: Equatable, Sendable {
        public let protocolVersion: UInt16
        public let setupSectors: Int
        public let loadFlags: UInt8
        public let xloadFlags: UInt16
        public let kernelAlignment: UInt32
        public let relocatable: Bool
        public let preferredAddress: UInt64
        public let initSize: UInt32
        public let commandLineSize: UInt32
        public let initrdAddressMax: UInt32
        /// Bytes `0x1f1 ..< 0x202 + image[0x201]` of the image.
        public let bytes: [UInt8]
    }

    public let kind: Kind
    /// The loadable parts: one for a bzImage (its protected-mode code), the PT_LOAD segments of
    /// a vmlinux, sorted by address.
    public let segments: [Segment]
    /// The memory the kernel needs to itself from the moment it starts: for a bzImage its
    /// `init_size` from the load address, for a vmlinux the span of its segments.
    public let footprint: Range<UInt64>
    /// The longest command line (without its NUL) this kernel accepts.
    public let commandLineMaximum: Int
    /// The highest address (inclusive) the initrd may occupy.
    public let initrdAddressMax: UInt64
    /// Present for a bzImage.
    public let setupHeader: SetupHeader?
    /// The image itself; segments refer to it by offset.
    public let image: [UInt8]

    /// The physical address the kernel is entered at.
    public var entry: UInt64 {
        switch kind {
        case .pvh(let e): return UInt64(e)
        case .elf64(let e): return e
        case .bzImage(let e): return e
        }
    }
}

// Setup-header offsets (Documentation/arch/x86/boot.rst), the same in the image and in the
// zero page, where the header lives at 0x1f1.
enum SetupOffsets {
    static let setupSects = 0x1f1
    static let bootFlag = 0x1fe
    static let jump = 0x200
    static let header = 0x202
    static let version = 0x206
    static let typeOfLoader = 0x210
    static let loadFlags = 0x211
    static let code32Start = 0x214
    static let ramdiskImage = 0x218
    static let ramdiskSize = 0x21c
    static let cmdLinePtr = 0x228
    static let initrdAddrMax = 0x22c
    static let kernelAlignment = 0x230
    static let relocatableKernel = 0x234
    static let xloadFlags = 0x236
    static let cmdlineSize = 0x238
    static let hardwareSubarch = 0x23c
    static let hardwareSubarchData = 0x240
    static let setupData = 0x250
    static let prefAddress = 0x258
    static let initSize = 0x260
    /// The setup header must end by here: struct boot_params continues at 0x290.
    static let headerLimit = 0x290
    /// ... and must reach at least the end of init_size (0x264), present since protocol 2.10.
    static let headerMinimumEnd = 0x264

    static let bootFlagMagic: UInt16 = 0xaa55
    static let headerMagic: UInt32 = 0x5372_6448 // "HdrS"
    static let loadedHigh: UInt8 = 1 << 0
    static let xlfKernel64: UInt16 = 1 << 0
    static let minimumProtocol: UInt16 = 0x020c
    /// startup_64 is 0x200 bytes into the protected-mode kernel.
    static let startup64Offset: UInt64 = 0x200
}

extension LinuxKernel {
    /// Recognises and validates a kernel image (see the type's documentation for the order).
    public static func parse(_ bytes: [UInt8]) throws(LinuxBootError) -> LinuxKernel {
        if bytes.count >= 4, bytes[0..<4] == [0x7f, 0x45, 0x4c, 0x46] {
            return try parseVmlinux(bytes)
        }
        let r = ByteReader(bytes)
        if bytes.count >= SetupOffsets.header + 4, r.u16(SetupOffsets.bootFlag) == SetupOffsets.bootFlagMagic {
            guard r.u32(SetupOffsets.header) == SetupOffsets.headerMagic else {
                throw .badSetupHeader("boot sector without the \"HdrS\" setup header (a pre-2.00 zImage)")
            }
            return try parseBzImage(bytes)
        }
        if bytes.count > SetupOffsets.bootFlag + 1, r.u16(SetupOffsets.bootFlag) == SetupOffsets.bootFlagMagic {
            throw .truncated(what: "the bzImage setup header", needed: UInt64(SetupOffsets.header + 4), available: UInt64(bytes.count))
        }
        throw .notAKernel("expected a 64-bit ELF vmlinux or a bzImage (0xaa55 at 0x1fe and \"HdrS\" at 0x202)")
    }

    static func parseBzImage(_ bytes: [UInt8]) throws(LinuxBootError) -> LinuxKernel {
        let r = ByteReader(bytes)
        let fileSize = UInt64(bytes.count)
        let version = r.u16(SetupOffsets.version)
        guard version >= SetupOffsets.minimumProtocol else { throw .unsupportedProtocol(version: version) }

        // setup_sects == 0 means 4 (boot.rst); the protected-mode kernel follows the boot sector
        // and the setup sectors. A u8, so at most 256 * 512 bytes: no overflow.
        let rawSects = Int(r.u8(SetupOffsets.setupSects))
        let setupSectors = rawSects == 0 ? 4 : rawSects
        let setupSize = (setupSectors + 1) * 512
        guard setupSize <= bytes.count else {
            throw .truncated(what: "the \(setupSectors) setup sectors", needed: UInt64(setupSize), available: fileSize)
        }
        let headerEnd = 0x202 + Int(r.u8(SetupOffsets.jump + 1))
        guard headerEnd >= SetupOffsets.headerMinimumEnd else {
            throw .badSetupHeader("the setup header ends at 0x\(String(headerEnd, radix: 16)), before init_size (protocol 2.10+ headers reach 0x264)")
        }
        guard headerEnd <= SetupOffsets.headerLimit else {
            throw .badSetupHeader("the setup header would end at 0x\(String(headerEnd, radix: 16)), past its place in boot_params (0x290)")
        }

        let loadFlags = r.u8(SetupOffsets.loadFlags)
        guard loadFlags & SetupOffsets.loadedHigh != 0 else { throw .notLoadedHigh }
        let xloadFlags = r.u16(SetupOffsets.xloadFlags)
        guard xloadFlags & SetupOffsets.xlfKernel64 != 0 else { throw .no64BitEntry }

        let alignment = r.u32(SetupOffsets.kernelAlignment)
        guard alignment >= 4096, alignment.nonzeroBitCount == 1 else { throw .badAlignment(alignment) }
        let relocatable = r.u8(SetupOffsets.relocatableKernel) != 0
        let preferred = r.u64(SetupOffsets.prefAddress)
        let initSize = r.u32(SetupOffsets.initSize)
        let commandLineSize = r.u32(SetupOffsets.cmdlineSize)
        let initrdAddressMax = r.u32(SetupOffsets.initrdAddrMax)

        // Load at the preferred address (the kernel decompresses itself there in any case: a
        // relocatable kernel loaded lower still runs at LOAD_PHYSICAL_ADDR), aligned up to
        // kernel_alignment when relocatable, as the kernel itself would round it.
        var load = preferred == 0 ? LinuxBootLayout.highMemory : preferred
        if relocatable {
            let a = UInt64(alignment)
            let (bumped, o) = load.addingReportingOverflow(a - 1)
            guard !o else { throw .kernelOutOfRange(start: load, end: UInt64.max) }
            load = bumped / a * a
        }
        guard load % LinuxBootLayout.pageSize == 0 else {
            throw .badSetupHeader("pref_address 0x\(String(preferred, radix: 16)) of a non-relocatable kernel is not 4 KiB aligned")
        }

        let payloadSize = fileSize - UInt64(setupSize)
        guard payloadSize > SetupOffsets.startup64Offset else {
            throw .entryOutsideImage(load &+ SetupOffsets.startup64Offset)
        }
        guard UInt64(initSize) >= payloadSize else {
            throw .badSetupHeader("init_size \(initSize) is smaller than the \(payloadSize)-byte protected-mode kernel")
        }
        let (end, o) = load.addingReportingOverflow(UInt64(initSize))
        guard !o, load >= LinuxBootLayout.highMemory, end <= LinuxBootLayout.mmioHole else {
            throw .kernelOutOfRange(start: load, end: o ? UInt64.max : end)
        }

        let header = SetupHeader(
            protocolVersion: version, setupSectors: setupSectors, loadFlags: loadFlags, xloadFlags: xloadFlags,
            kernelAlignment: alignment, relocatable: relocatable, preferredAddress: preferred, initSize: initSize,
            commandLineSize: commandLineSize, initrdAddressMax: initrdAddressMax,
            bytes: Array(bytes[SetupOffsets.setupSects..<headerEnd]))
        let segment = Segment(physicalAddress: load, fileOffset: UInt64(setupSize), fileSize: payloadSize,
                              memorySize: payloadSize, executable: true)
        return LinuxKernel(
            kind: .bzImage(entry64: load + SetupOffsets.startup64Offset), segments: [segment], footprint: load..<end,
            commandLineMaximum: Int(min(UInt64(commandLineSize), LinuxBootLayout.commandLineAreaSize - 1)),
            initrdAddressMax: UInt64(initrdAddressMax), setupHeader: header, image: bytes)
    }
}
