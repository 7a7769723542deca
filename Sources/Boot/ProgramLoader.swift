/// A device's register window as the guest sees it (an entry of the boot-information device list).
public struct DeviceWindow: Equatable, Sendable {
    /// The virtio device type.
    public var kind: UInt32
    public var irq: UInt32
    public var base: UInt64
    public var size: UInt64

    public init(kind: UInt32, irq: UInt32, base: UInt64, size: UInt64) {
        self.kind = kind; self.irq = irq; self.base = base; self.size = size
    }
}

/// What the VMM is asked to start.
public struct BootConfiguration: Equatable, Sendable {
    public var memorySize: UInt64
    public var vcpus: Int
    public var commandLine: String
    /// Install the IDT and CPL0 fault stubs (on by default). Without them any fault is a triple
    /// fault and its reason is lost; the switch exists to diagnose exactly that path.
    public var faultHandlers: Bool
    /// Device windows to map (user read-write, no-execute) and list in the boot information.
    public var devices: [DeviceWindow]

    public init(memorySize: UInt64 = 64 << 20, vcpus: Int = 1, commandLine: String = "", faultHandlers: Bool = true,
                devices: [DeviceWindow] = []) {
        self.memorySize = memorySize
        self.vcpus = vcpus
        self.commandLine = commandLine
        self.faultHandlers = faultHandlers
        self.devices = devices
    }
}

/// A range of guest memory and what CPL3 code may do with it.
public struct MemoryRegion: Equatable, Sendable {
    public var start: UInt64
    public var size: UInt64
    public var kind: MemoryKind
    public var flags: PageFlags
    public var end: UInt64 { start + size }
}

/// The register state one vCPU starts with.
public struct InitialCPUState: Equatable, Sendable {
    public var rip: UInt64, rsp: UInt64, rdi: UInt64, rsi: UInt64
    public var rflags: UInt64 = 0x2
    public var cr0: UInt64 = 0x8001_0033   // PG | WP | NE | ET | MP | PE
    public var cr3: UInt64
    public var cr4: UInt64 = 0x620         // OSXMMEXCPT | OSFXSR | PAE
    public var efer: UInt64 = 0xd00        // NXE | LMA | LME
    public var gdtBase: UInt64, gdtLimit: UInt16
    public var idtBase: UInt64, idtLimit: UInt16
    public var tssBase: UInt64, tssLimit: UInt32
    public var codeSelector: UInt16 = SystemTables.userCode
    public var dataSelector: UInt16 = SystemTables.userData
    public var tssSelector: UInt16 = SystemTables.tss
}

/// Everything the VMM must do to start a guest program: bytes to copy, registers to set, and the
/// map of what the guest may touch (used to validate hypercall buffers).
public struct BootPlan: Sendable {
    public struct Chunk: Sendable {
        public var address: UInt64
        public var bytes: [UInt8]
    }
    public var chunks: [Chunk]
    public var cpus: [InitialCPUState]
    /// Every range mapped for CPL3, with its rights.
    public var userRegions: [MemoryRegion]
    /// Unmapped guard pages below each stack.
    public var guardPages: [Range<UInt64>]
    public var image: ELFImage
    public var pageTablePages: Int

    /// Whether CPL3 code can access all of `[address, address+length)` with `rights`.
    public func userCanAccess(_ address: UInt64, length: UInt64, rights: PageFlags) -> Bool {
        let (end, overflow) = address.addingReportingOverflow(length)
        guard !overflow else { return false }
        if length == 0 { return true }
        var cursor = address
        // Regions are sorted and disjoint; walk them in order to cover the range.
        for r in userRegions where r.end > cursor {
            guard r.start <= cursor, r.flags.isSuperset(of: rights.union(.user)) else { return false }
            if r.end >= end { return true }
            cursor = r.end
        }
        return false
    }
}

public enum BootError: Error, Equatable, CustomStringConvertible, Sendable {
    case elf(ELFError)
    case pageTables(PageTableError)
    case configuration(String)

    public var description: String {
        switch self {
        case .elf(let e): return "bad guest image: \(e)"
        case .pageTables(let e): return "cannot build the guest's page tables: \(e)"
        case .configuration(let why): return why
        }
    }
}

/// Turns a guest-program ELF file and a configuration into a `BootPlan`. Pure.
public enum ProgramLoader {
    static func alignUp(_ v: UInt64, _ a: UInt64) -> UInt64 { (v + a - 1) / a * a }
    static func alignDown(_ v: UInt64, _ a: UInt64) -> UInt64 { v / a * a }

    public static func validate(_ config: BootConfiguration) throws(BootError) {
        guard config.vcpus >= 1, config.vcpus <= GuestLayout.maxVCPUs else {
            throw .configuration("vCPU count \(config.vcpus) is out of range (1–\(GuestLayout.maxVCPUs))")
        }
        guard config.memorySize % (1 << 20) == 0 else {
            throw .configuration("memory size must be a whole number of MiB")
        }
        guard config.memorySize <= GuestLayout.maxMemory else {
            throw .configuration("memory size \(config.memorySize >> 20) MiB is above the maximum of \(GuestLayout.maxMemory >> 20) MiB")
        }
        let minimum = GuestLayout.programStart + UInt64(config.vcpus) * (GuestLayout.stackSize + GuestLayout.guardSize) + (1 << 20)
        guard config.memorySize >= minimum else {
            throw .configuration("memory size \(config.memorySize >> 20) MiB is too small for \(config.vcpus) vCPU(s) (need at least \(alignUp(minimum, 1 << 20) >> 20) MiB)")
        }
        let cmd = Array(config.commandLine.utf8)
        guard cmd.count <= GuestLayout.maxCommandLine else {
            throw .configuration("command line is \(cmd.count) bytes (at most \(GuestLayout.maxCommandLine))")
        }
        guard !cmd.contains(0) else { throw .configuration("command line contains a NUL byte") }
        guard config.devices.count <= GuestLayout.maxDevices else {
            throw .configuration("\(config.devices.count) devices (at most \(GuestLayout.maxDevices))")
        }
        for (i, d) in config.devices.enumerated() {
            let (end, o) = d.base.addingReportingOverflow(d.size)
            guard !o, d.size > 0, d.base % GuestLayout.pageSize == 0, d.size % GuestLayout.pageSize == 0,
                  d.base >= GuestLayout.deviceWindows, end <= GuestLayout.deviceWindowsEnd else {
                throw .configuration("device \(i) window 0x\(String(d.base, radix: 16))+0x\(String(d.size, radix: 16)) is not page-aligned inside the device area")
            }
            for e in config.devices[..<i] where d.base < e.base + e.size && e.base < end {
                throw .configuration("device windows \(i) and another overlap")
            }
        }
    }

    public static func plan(image bytes: [UInt8], config: BootConfiguration) throws(BootError) -> BootPlan {
        try validate(config)
        let mem = config.memorySize
        let programEnd = GuestLayout.programEnd(memorySize: mem, vcpus: config.vcpus)
        let image: ELFImage
        do { image = try ELFImage.parse(bytes, allowedStart: GuestLayout.programStart, allowedEnd: programEnd) } catch { throw .elf(error) }

        var chunks: [BootPlan.Chunk] = []
        var regions: [MemoryRegion] = []
        var guards: [Range<UInt64>] = []
        var pt = PageTableBuilder(poolBase: GuestLayout.pageTablePool, poolPages: GuestLayout.pageTablePoolPages)
        do {
            // Supervisor-only system area.
            let page = GuestLayout.pageSize
            try pt.map(virtual: GuestLayout.idt, physical: GuestLayout.idt, size: page, flags: [])
            try pt.map(virtual: GuestLayout.faultStubs, physical: GuestLayout.faultStubs, size: page, flags: [.executable])
            let n = UInt64(config.vcpus)
            try pt.map(virtual: GuestLayout.cpuTables, physical: GuestLayout.cpuTables, size: n * page, flags: [.writable])
            try pt.map(virtual: GuestLayout.kernelStacks, physical: GuestLayout.kernelStacks, size: n * page, flags: [.writable])
            try pt.map(virtual: GuestLayout.faultPage, physical: GuestLayout.faultPage, size: page, flags: [.writable])
            // User-visible: boot information, hypercall page.
            try pt.map(virtual: GuestLayout.bootInfo, physical: GuestLayout.bootInfo, size: GuestLayout.bootInfoSize, flags: [.user])
            regions.append(MemoryRegion(start: GuestLayout.bootInfo, size: GuestLayout.bootInfoSize, kind: .bootInfo, flags: [.user]))
            try pt.map(virtual: GuestLayout.hypercallPage, physical: GuestLayout.hypercallPage, size: page, flags: [.user])
            // Device register windows: the guest program's drivers poke them directly.
            for d in config.devices {
                try pt.map(virtual: d.base, physical: d.base, size: d.size, flags: [.user, .writable])
            }
            // Program segments, page-rounded, with their own rights.
            for s in image.segments {
                let start = alignDown(s.address, page), end = alignUp(s.end, page)
                var flags: PageFlags = [.user]
                if s.writable { flags.insert(.writable) }
                if s.executable { flags.insert(.executable) }
                try pt.map(virtual: start, physical: start, size: end - start, flags: flags)
                regions.append(MemoryRegion(start: start, size: end - start, kind: .program, flags: flags))
                if s.fileSize > 0 {
                    let from = Int(s.fileOffset), to = Int(s.fileOffset + s.fileSize)
                    chunks.append(.init(address: s.address, bytes: Array(bytes[from..<to])))
                }
            }
            // Free RAM between the program and the stacks.
            let heapStart = alignUp(image.highestAddress, page)
            if heapStart < programEnd {
                try pt.map(virtual: heapStart, physical: heapStart, size: programEnd - heapStart, flags: [.user, .writable])
                regions.append(MemoryRegion(start: heapStart, size: programEnd - heapStart, kind: .free, flags: [.user, .writable]))
            }
            // One stack per vCPU, each above an unmapped guard page.
            for i in 0..<config.vcpus {
                let top = GuestLayout.stackTop(i, memorySize: mem)
                let bottom = top - GuestLayout.stackSize
                try pt.map(virtual: bottom, physical: bottom, size: GuestLayout.stackSize, flags: [.user, .writable])
                regions.append(MemoryRegion(start: bottom, size: GuestLayout.stackSize, kind: .stack, flags: [.user, .writable]))
                guards.append((bottom - GuestLayout.guardSize)..<bottom)
            }
        } catch {
            throw .pageTables(error)
        }
        regions.sort { $0.start < $1.start }
        // The guest must be told about every region; refuse rather than truncate the map.
        guard regions.count + 1 <= GuestLayout.maxMemoryMapEntries else {
            throw .configuration("the guest would have \(regions.count + 1) memory regions, more than the \(GuestLayout.maxMemoryMapEntries) the boot-information block holds (fewer segments or vCPUs)")
        }

        for p in pt.pages() { chunks.append(.init(address: p.address, bytes: p.bytes)) }
        chunks.append(.init(address: GuestLayout.idt, bytes: SystemTables.idt()))
        chunks.append(.init(address: GuestLayout.faultStubs, bytes: SystemTables.faultStubs()))
        for i in 0..<config.vcpus {
            chunks.append(.init(address: GuestLayout.cpuTablePage(i), bytes: SystemTables.cpuTablePage(vcpu: i)))
        }
        chunks.append(.init(address: GuestLayout.bootInfo, bytes: bootInfo(config: config, regions: regions)))

        let cpus = (0..<config.vcpus).map { i in
            InitialCPUState(
                rip: image.entry, rsp: GuestLayout.stackTop(i, memorySize: mem),
                rdi: GuestLayout.bootInfo, rsi: UInt64(i), cr3: pt.root,
                gdtBase: GuestLayout.cpuTablePage(i), gdtLimit: SystemTables.gdtLimit,
                idtBase: GuestLayout.idt, idtLimit: config.faultHandlers ? SystemTables.idtLimit : 0,
                tssBase: GuestLayout.cpuTablePage(i) + GuestLayout.tssOffset, tssLimit: SystemTables.tssLimit)
        }
        return BootPlan(chunks: chunks, cpus: cpus, userRegions: regions, guardPages: guards,
                        image: image, pageTablePages: pt.pagesUsed)
    }

    /// The boot-information block (docs/guest-abi.md).
    static func bootInfo(config: BootConfiguration, regions: [MemoryRegion]) -> [UInt8] {
        var w = ByteWriter(size: Int(GuestLayout.bootInfoSize))
        var map: [(UInt64, UInt64, MemoryKind)] = [(0, GuestLayout.systemEnd, .reserved)]
        map += regions.map { ($0.start, $0.size, $0.kind) }
        let cmd = Array(config.commandLine.utf8)
        w.put(GuestLayout.bootInfoMagic, at: 0)
        w.put(GuestLayout.abiVersion, at: 8)
        w.put(UInt32(config.vcpus), at: 12)
        w.put(config.memorySize, at: 16)
        w.put(GuestLayout.hypercallPage, at: 24)
        w.put(GuestLayout.bootInfo + GuestLayout.commandLineOffset, at: 32)
        w.put(UInt64(cmd.count), at: 40)
        w.put(GuestLayout.bootInfo + GuestLayout.memoryMapOffset, at: 48)
        w.put(UInt64(map.count), at: 56)
        w.put(GuestLayout.bootInfo + GuestLayout.deviceListOffset, at: 64)
        w.put(UInt64(config.devices.count), at: 72)
        for (i, d) in config.devices.enumerated() {
            let o = Int(GuestLayout.deviceListOffset) + i * 24
            w.put(d.kind, at: o); w.put(d.irq, at: o + 4); w.put(d.base, at: o + 8); w.put(d.size, at: o + 16)
        }
        for (i, e) in map.enumerated() {
            let o = Int(GuestLayout.memoryMapOffset) + i * 24
            w.put(e.0, at: o); w.put(e.1, at: o + 8); w.put(e.2.rawValue, at: o + 16)
        }
        w.put(cmd, at: Int(GuestLayout.commandLineOffset))
        return w.bytes
    }
}
