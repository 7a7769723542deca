/// Everything the VMM must do to start a Linux kernel: bytes to copy into guest RAM (RAM not
/// covered by a chunk must read as zero, as fresh guest memory does) and the boot vCPU's
/// registers. Pure data, built by `LinuxBootPlanner.plan`.
public struct LinuxBootPlan: Sendable {
    public typealias Chunk = BootPlan.Chunk

    public var kind: LinuxKernel.Kind
    /// Disjoint, each inside guest RAM.
    public var chunks: [Chunk]
    public var cpu: LinuxCPUState
    /// Sorted, disjoint, covering exactly `[0, memorySize)`.
    public var e820: [E820Entry]
    /// The final command line, without its NUL, as written at `commandLineAddress`.
    public var commandLine: String
    public var commandLineAddress: UInt64
    public var commandLineMaximum: Int
    /// The memory the kernel owns from its first instruction (see `LinuxKernel.footprint`).
    public var kernel: Range<UInt64>
    public var initrd: Range<UInt64>?
    /// 0 for PVH (paging is off).
    public var pageTablePages: Int
    public var memorySize: UInt64
    public var devices: [VirtioMMIODeviceInfo]
}

/// Turns a parsed kernel, an optional initrd, a command line, the RAM size and the virtio-mmio
/// devices into a `LinuxBootPlan`. Pure: no I/O, no KVM. Layout: `LinuxBootLayout`.
public enum LinuxBootPlanner {
    // struct boot_params offsets (Documentation/arch/x86/zero-page.rst).
    static let acpiRSDPAddress = 0x070
    static let extRamdiskImage = 0x0c0
    static let extRamdiskSize = 0x0c4
    static let extCmdLinePtr = 0x0c8
    static let e820Entries = 0x1e8
    static let e820Table = 0x2d0
    static let e820MaxEntries = 128
    static let e820EntrySize = 20
    static let loaderTypeUndefined: UInt8 = 0xff

    // struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).
    public static let startInfoMagic: UInt32 = 0x336e_c578
    static let startInfoVersion: UInt32 = 1
    static let memmapEntrySize = 24

    public static func plan(kernel: LinuxKernel, initrd: [UInt8]?, commandLine: String, memorySize: UInt64,
                            devices: [VirtioMMIODeviceInfo], vcpus: Int = 1) throws(LinuxBootError) -> LinuxBootPlan {
        try validate(memorySize: memorySize)
        guard vcpus >= 1, vcpus <= LinuxBootLayout.maxVCPUs else { throw .badVCPUCount(vcpus) }
        try validate(devices: devices)
        let line = try LinuxCommandLine.compose(commandLine, devices: devices)
        guard line.count <= kernel.commandLineMaximum else {
            throw .commandLineTooLong(length: line.count, maximum: kernel.commandLineMaximum)
        }
        guard kernel.footprint.upperBound <= memorySize else {
            throw .kernelDoesNotFit(start: kernel.footprint.lowerBound, end: kernel.footprint.upperBound, memorySize: memorySize)
        }
        let initrdRange = try initrd.map { bytes throws(LinuxBootError) in
            try placeInitrd(size: UInt64(bytes.count), kernel: kernel, memorySize: memorySize)
        }
        let map = try memoryMap(memorySize: memorySize)

        var chunks: [LinuxBootPlan.Chunk] = []
        for s in kernel.segments where s.fileSize > 0 {
            // Offsets were checked against the image by LinuxKernel.parse.
            let from = Int(s.fileOffset), to = Int(s.fileOffset + s.fileSize)
            chunks.append(.init(address: s.physicalAddress, bytes: Array(kernel.image[from..<to])))
        }
        if let bytes = initrd, let r = initrdRange { chunks.append(.init(address: r.lowerBound, bytes: bytes)) }
        chunks.append(.init(address: LinuxBootLayout.commandLine, bytes: line + [0]))
        chunks.append(.init(address: LinuxBootLayout.gdt, bytes: LinuxGDT.bytes()))
        chunks.append(.init(address: ACPITables.base, bytes: ACPITables.build(cpus: vcpus, devices: devices)))
        chunks.append(.init(address: LinuxBootLayout.resetVector, bytes: LinuxBootLayout.resetVectorCode))

        let cpu: LinuxCPUState
        var tablePages = 0
        switch kernel.kind {
        case .pvh(let entry):
            chunks.append(.init(address: LinuxBootLayout.startInfo,
                                bytes: startInfoPage(memoryMap: map, initrd: initrdRange)))
            cpu = .protectedMode(entry: entry, startInfo: LinuxBootLayout.startInfo)
        case .elf64(let entry), .bzImage(let entry):
            let tables = try identityMap.get()
            for p in tables.pages { chunks.append(.init(address: p.address, bytes: p.bytes)) }
            tablePages = tables.pages.count
            chunks.append(.init(address: LinuxBootLayout.zeroPage,
                                bytes: zeroPage(kernel: kernel, memoryMap: map, initrd: initrdRange)))
            cpu = .longMode(entry: entry, pageTableRoot: tables.root, zeroPage: LinuxBootLayout.zeroPage)
        }
        return LinuxBootPlan(
            kind: kernel.kind, chunks: chunks, cpu: cpu, e820: map, commandLine: String(decoding: line, as: UTF8.self),
            commandLineAddress: LinuxBootLayout.commandLine, commandLineMaximum: kernel.commandLineMaximum,
            kernel: kernel.footprint, initrd: initrdRange, pageTablePages: tablePages, memorySize: memorySize,
            devices: devices)
    }

    struct IdentityMap: Sendable {
        var pages: [(address: UInt64, bytes: [UInt8])]
        var root: UInt64
    }

    /// The boot page tables: the same for every plan (2 MiB pages identity-mapping the first
    /// 4 GiB, supervisor, writable, executable), so built once.
    static let identityMap: Result<IdentityMap, LinuxBootError> = buildIdentityMap()

    static func buildIdentityMap() -> Result<IdentityMap, LinuxBootError> {
        var tables = PageTableBuilder(poolBase: LinuxBootLayout.pageTablePool, poolPages: LinuxBootLayout.pageTablePoolPages)
        do throws(PageTableError) {
            try tables.map(virtual: 0, physical: 0, size: LinuxBootLayout.identityMapSize, flags: [.writable, .executable])
        } catch {
            return .failure(.pageTables(error))
        }
        return .success(IdentityMap(pages: tables.pages(), root: tables.root))
    }

    static func validate(memorySize: UInt64) throws(LinuxBootError) {
        guard memorySize % (1 << 20) == 0 else { throw .badMemorySize("\(memorySize) bytes is not a whole number of MiB") }
        guard memorySize >= 2 << 20 else { throw .badMemorySize("\(memorySize >> 20) MiB is below the minimum of 2 MiB") }
        guard memorySize <= LinuxBootLayout.mmioHole else {
            throw .badMemorySize("\(memorySize >> 20) MiB runs into the MMIO hole at \(LinuxBootLayout.mmioHole >> 20) MiB")
        }
    }

    /// Devices live in `[mmioHole, deviceWindowEnd)`, 4 KiB aligned, disjoint, each on a
    /// legacy interrupt line the in-kernel irqchip can raise.
    static func validate(devices: [VirtioMMIODeviceInfo]) throws(LinuxBootError) {
        guard devices.count <= LinuxBootLayout.maxDevices else {
            throw .badDevice(index: devices.count - 1, reason: "more than \(LinuxBootLayout.maxDevices) devices")
        }
        for (i, d) in devices.enumerated() {
            guard d.size > 0, d.size % LinuxBootLayout.pageSize == 0, d.base % LinuxBootLayout.pageSize == 0 else {
                throw .badDevice(index: i, reason: "base 0x\(String(d.base, radix: 16)) and size \(d.size) must be non-zero multiples of 4 KiB")
            }
            let (end, o) = d.base.addingReportingOverflow(d.size)
            guard !o, d.base >= LinuxBootLayout.mmioHole, end <= LinuxBootLayout.deviceWindowEnd else {
                throw .badDevice(index: i, reason: "0x\(String(d.base, radix: 16)) + \(d.size) is outside the device window 0x\(String(LinuxBootLayout.mmioHole, radix: 16))–0x\(String(LinuxBootLayout.deviceWindowEnd, radix: 16))")
            }
            guard LinuxBootLayout.deviceIRQs.contains(d.irq), !LinuxBootLayout.reservedIRQs.contains(d.irq) else {
                throw .badDevice(index: i, reason: "IRQ \(d.irq) is not a device interrupt line (1, 3–23)")
            }
            for (j, e) in devices.enumerated() where j < i && e.base < end && d.base < e.base + e.size {
                throw .badDevice(index: i, reason: "overlaps device \(j)")
            }
        }
    }

    /// The initrd goes as high as the kernel allows (below `initrd_addr_max` and the end of
    /// RAM), 4 KiB aligned, above the kernel's footprint, or failing that just below it.
    static func placeInitrd(size: UInt64, kernel: LinuxKernel, memorySize: UInt64) throws(LinuxBootError) -> Range<UInt64> {
        guard size > 0 else { throw .emptyInitrd }
        let page = LinuxBootLayout.pageSize
        let lowest = LinuxBootLayout.highMemory
        // initrdAddressMax is at most 2^32 - 1: adding one cannot overflow.
        let limit = min(kernel.initrdAddressMax + 1, memorySize)
        if limit >= size {
            let start = (limit - size) / page * page
            if start >= kernel.footprint.upperBound, start >= lowest { return start..<(start + size) }
        }
        let belowKernel = min(limit, kernel.footprint.lowerBound)
        if belowKernel >= size {
            let start = (belowKernel - size) / page * page
            if start >= lowest { return start..<(start + size) }
        }
        throw .initrdDoesNotFit(size: size, lowest: lowest, highest: limit)
    }

    /// RAM below the boot area and the EBDA, the boot area and the legacy hole reserved, RAM
    /// from 1 MiB to the end.
    public static func memoryMap(memorySize: UInt64) throws(LinuxBootError) -> [E820Entry] {
        try validate(memorySize: memorySize)
        let L = LinuxBootLayout.self
        return [
            E820Entry(address: 0, size: L.bootAreaStart, kind: .ram),
            E820Entry(address: L.bootAreaStart, size: L.bootAreaEnd - L.bootAreaStart, kind: .reserved),
            E820Entry(address: L.bootAreaEnd, size: L.ebda - L.bootAreaEnd, kind: .ram),
            E820Entry(address: L.ebda, size: L.highMemory - L.ebda, kind: .reserved),
            E820Entry(address: L.highMemory, size: memorySize - L.highMemory, kind: .ram),
        ]
    }

    /// struct boot_params for the 64-bit boot protocol. For a bzImage the setup header is the
    /// image's own (boot.rst: copy `0x1f1 ..< 0x202 + image[0x201]`) with the loader's fields
    /// filled in; a vmlinux has none, so the fields the kernel reads are written from scratch.
    static func zeroPage(kernel: LinuxKernel, memoryMap: [E820Entry], initrd: Range<UInt64>?) -> [UInt8] {
        let O = SetupOffsets.self
        var w = ByteWriter(size: Int(LinuxBootLayout.pageSize))
        if let header = kernel.setupHeader {
            w.put(header.bytes, at: O.setupSects)
            // code32_start: where the protected-mode kernel is (informational for 64-bit entry).
            w.put(UInt32(truncatingIfNeeded: kernel.footprint.lowerBound), at: O.code32Start)
        } else {
            w.put(O.bootFlagMagic, at: O.bootFlag)
            w.put(O.headerMagic, at: O.header)
            w.put(SetupOffsets.minimumProtocol, at: O.version)
            w.put(O.loadedHigh, at: O.loadFlags)
            w.put(UInt32(2 << 20), at: O.kernelAlignment)
            w.put(UInt32(kernel.commandLineMaximum), at: O.cmdlineSize)
        }
        w.put(loaderTypeUndefined, at: O.typeOfLoader)
        // The loader decides these, whatever the image carried: a PC (subarch 0), no setup_data
        // chain (an image-supplied pointer would make the kernel parse arbitrary memory).
        w.put(UInt32(0), at: O.hardwareSubarch)
        w.put(UInt64(0), at: O.hardwareSubarchData)
        w.put(UInt64(0), at: O.setupData)
        let cmd = LinuxBootLayout.commandLine
        w.put(ACPITables.base, at: acpiRSDPAddress)
        w.put(UInt32(truncatingIfNeeded: cmd), at: O.cmdLinePtr)
        w.put(UInt32(truncatingIfNeeded: cmd >> 32), at: extCmdLinePtr)
        let image = initrd?.lowerBound ?? 0
        let size = initrd.map { $0.upperBound - $0.lowerBound } ?? 0
        w.put(UInt32(truncatingIfNeeded: image), at: O.ramdiskImage)
        w.put(UInt32(truncatingIfNeeded: size), at: O.ramdiskSize)
        w.put(UInt32(truncatingIfNeeded: image >> 32), at: extRamdiskImage)
        w.put(UInt32(truncatingIfNeeded: size >> 32), at: extRamdiskSize)
        w.put(UInt8(truncatingIfNeeded: min(memoryMap.count, e820MaxEntries)), at: e820Entries)
        for (i, e) in memoryMap.prefix(e820MaxEntries).enumerated() {
            let o = e820Table + i * e820EntrySize
            w.put(e.address, at: o)
            w.put(e.size, at: o + 8)
            w.put(e.kind.rawValue, at: o + 16)
        }
        return w.bytes
    }

    /// The PVH start-of-day page: hvm_start_info (version 1, with the memory map), one module
    /// entry for the initrd, and the memory map.
    static func startInfoPage(memoryMap: [E820Entry], initrd: Range<UInt64>?) -> [UInt8] {
        let L = LinuxBootLayout.self
        var w = ByteWriter(size: Int(L.pageSize))
        w.put(startInfoMagic, at: 0)
        w.put(startInfoVersion, at: 4)
        w.put(UInt32(0), at: 8)                                     // flags
        w.put(UInt32(initrd == nil ? 0 : 1), at: 12)                // nr_modules
        w.put(initrd == nil ? 0 : L.startInfo + L.moduleListOffset, at: 16)
        w.put(L.commandLine, at: 24)                                // cmdline_paddr
        w.put(ACPITables.base, at: 32)                              // rsdp_paddr
        w.put(L.startInfo + L.memoryMapOffset, at: 40)              // memmap_paddr
        w.put(UInt32(memoryMap.count), at: 48)                      // memmap_entries
        if let r = initrd {
            let m = Int(L.moduleListOffset)
            w.put(r.lowerBound, at: m)
            w.put(r.upperBound - r.lowerBound, at: m + 8)
        }
        for (i, e) in memoryMap.enumerated() {
            let o = Int(L.memoryMapOffset) + i * memmapEntrySize
            w.put(e.address, at: o)
            w.put(e.size, at: o + 8)
            w.put(e.kind.rawValue, at: o + 16)
        }
        return w.bytes
    }
}
