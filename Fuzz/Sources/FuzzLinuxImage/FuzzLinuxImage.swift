import Boot
import FuzzSupport

// FuzzLinuxImage: the input is a Linux kernel image (bzImage or vmlinux, as a tenant could hand
// it over). LinuxKernel.parse must refuse it cleanly or accept it with every property the
// planner relies on; LinuxBootPlanner.plan, with one of four small configurations (chosen by
// the input's length modulo 4), must then either refuse for a reason the kernel explains (it
// does not fit in RAM, the initrd has no room, the command line is longer than cmdline_size)
// or produce a plan whose bytes keep to guest RAM:
//   - every chunk lies inside guest RAM and no two chunks overlap;
//   - the kernel's chunks are the image's bytes at the segments' physical addresses, inside the
//     kernel footprint, and the footprint is inside RAM above 1 MiB;
//   - the initrd chunk is the initrd, 4 KiB aligned, outside the footprint, below both RAM's end
//     and initrd_addr_max;
//   - the command line in guest memory is the plan's, NUL-terminated, without an inner NUL, at
//     most cmdline_size long, and names every device;
//   - the e820 map is sorted, gap-free, non-overlapping, covers exactly [0, RAM end), below the
//     MMIO hole, and the zero page (or the PVH start_info) carries exactly that map;
//   - the entry is inside the kernel's executable file bytes; for the 64-bit entry the page
//     tables, decoded from the chunk bytes, identity-map exactly [0, 4 GiB) writable and
//     executable for the supervisor only, and the zero page points at the command line and the
//     initrd; for PVH the start_info carries the magic and points at them.
//
// Seeds (corpus/FuzzLinuxImage/, each under 32 KiB): synthetic bzImages (relocatable and fixed,
// an old protocol, an init_size too big for the configurations) and vmlinux files (plain, a
// virtual entry with a per-CPU segment at virtual 0, PVH notes of 4 and 8 bytes in a PT_NOTE
// segment or only in an SHT_NOTE section), built like Tests/BootTests/LinuxImageBuilder.swift.

struct Configuration {
    var memorySize: UInt64
    var initrdSize: Int
    var commandLine: String
    var devices: [VirtioMMIODeviceInfo]
}

let configurations: [Configuration] = [
    Configuration(memorySize: 64 << 20, initrdSize: 0, commandLine: "console=ttyS0", devices: []),
    Configuration(memorySize: 32 << 20, initrdSize: 4096, commandLine: "console=ttyS0 root=/dev/vda",
                  devices: [VirtioMMIODeviceInfo(base: 0xd000_0000, size: 0x1000, irq: 5)]),
    Configuration(memorySize: 256 << 20, initrdSize: 65_537, commandLine: "quiet -- init-arg",
                  devices: [VirtioMMIODeviceInfo(base: 0xd000_0000, size: 0x1000, irq: 5),
                            VirtioMMIODeviceInfo(base: 0xd010_0000, size: 1 << 20, irq: 6)]),
    Configuration(memorySize: 18 << 20, initrdSize: 1, commandLine: "",
                  devices: [VirtioMMIODeviceInfo(base: 0xfebf_f000, size: 0x1000, irq: 23)]),
]

/// The initrd of each configuration (built once: the fuzzer runs thousands of inputs a second).
let initrds: [[UInt8]] = configurations.map { c in (0..<c.initrdSize).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLinuxImage(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = FuzzInput(data, size).bytes
    let which = bytes.count % configurations.count
    fuzzOne(bytes, configurations[which], initrds[which])
    return 0
}

func u32(_ b: [UInt8], _ o: Int) -> UInt32 { var r = FuzzInput(Array(b[o..<(o + 4)])); return r.u32() }
func u64(_ b: [UInt8], _ o: Int) -> UInt64 { var r = FuzzInput(Array(b[o..<(o + 8)])); return r.u64() }

func fuzzOne(_ bytes: [UInt8], _ config: Configuration, _ initrd: [UInt8]) {
    let kernel: LinuxKernel
    do {
        kernel = try LinuxKernel.parse(bytes)
    } catch {
        trace("refused: \(error)")
        return
    }
    trace("accepted: \(kernel.kind), footprint \(hex(kernel.footprint.lowerBound))-\(hex(kernel.footprint.upperBound))")
    checkKernel(kernel, bytes)

    let plan: LinuxBootPlan
    do {
        plan = try LinuxBootPlanner.plan(kernel: kernel, initrd: config.initrdSize > 0 ? initrd : nil,
                                         commandLine: config.commandLine, memorySize: config.memorySize, devices: config.devices)
    } catch {
        trace("plan refused: \(error)")
        switch error {
        case .kernelDoesNotFit(let s, let e, let m):
            check(s == kernel.footprint.lowerBound && e == kernel.footprint.upperBound && e > m, "kernelDoesNotFit for a kernel that fits")
        case .commandLineTooLong(let n, let max):
            check(n > max && max == kernel.commandLineMaximum, "commandLineTooLong(\(n), \(max))")
        case .initrdDoesNotFit(let size, _, _):
            check(size == UInt64(config.initrdSize), "initrdDoesNotFit for size \(size)")
        default:
            fatalError("fuzz invariant violated: plan refused a parsed kernel for a reason the kernel does not explain: \(error)")
        }
        return
    }
    checkPlan(plan, kernel: kernel, bytes: bytes, initrd: initrd, config: config)
}

func checkKernel(_ k: LinuxKernel, _ bytes: [UInt8]) {
    check(k.image == bytes, "image differs from the input")
    check(!k.segments.isEmpty, "no segments")
    check(k.footprint.lowerBound >= 1 << 20 && k.footprint.upperBound <= 0xc000_0000, "footprint \(k.footprint)")
    check(k.commandLineMaximum <= 0xffff, "command line maximum \(k.commandLineMaximum)")
    for (i, s) in k.segments.enumerated() {
        check(s.fileSize <= s.memorySize && s.memorySize > 0, "segment \(i) sizes")
        let (fileEnd, o) = s.fileOffset.addingReportingOverflow(s.fileSize)
        check(!o && fileEnd <= UInt64(bytes.count), "segment \(i) file bytes outside the file")
        check(s.physicalAddress >= k.footprint.lowerBound && s.end <= k.footprint.upperBound, "segment \(i) outside the footprint")
        if i > 0 { check(k.segments[i - 1].end <= s.physicalAddress, "segments \(i - 1) and \(i) overlap or are unsorted") }
    }
    let entry = k.entry
    check(k.segments.contains { $0.executable && entry >= $0.physicalAddress && entry - $0.physicalAddress < $0.fileSize },
          "entry \(hex(entry)) outside the executable file bytes")
    switch k.kind {
    case .bzImage(let e):
        guard let h = k.setupHeader else { fatalError("fuzz invariant violated: bzImage without a setup header") }
        check(k.segments.count == 1, "bzImage with \(k.segments.count) segments")
        let s = k.segments[0]
        check(e == s.physicalAddress + 0x200, "entry \(hex(e)) is not startup_64")
        check(h.protocolVersion >= 0x020c && h.loadFlags & 1 == 1 && h.xloadFlags & 1 == 1, "accepted header flags/version")
        check(h.kernelAlignment >= 4096 && h.kernelAlignment.nonzeroBitCount == 1, "alignment \(h.kernelAlignment)")
        check(!h.relocatable || s.physicalAddress % UInt64(h.kernelAlignment) == 0, "relocatable kernel not aligned")
        check(UInt64(h.initSize) >= s.fileSize, "init_size below the payload")
        check(k.footprint == s.physicalAddress..<(s.physicalAddress + UInt64(h.initSize)), "footprint is not init_size")
        check(s.fileOffset == UInt64((h.setupSectors + 1) * 512) && s.fileOffset + s.fileSize == UInt64(bytes.count), "payload bounds")
        check(h.bytes.count >= 0x264 - 0x1f1 && h.bytes.count <= 0x290 - 0x1f1, "setup header of \(h.bytes.count) bytes")
        check(h.bytes == Array(bytes[0x1f1..<(0x1f1 + h.bytes.count)]), "setup header bytes differ from the image")
    case .elf64, .pvh:
        check(k.setupHeader == nil, "ELF kernel with a setup header")
    }
}

func checkPlan(_ plan: LinuxBootPlan, kernel: LinuxKernel, bytes: [UInt8], initrd: [UInt8], config: Configuration) {
    let memory = config.memorySize
    check(plan.memorySize == memory && plan.kind == kernel.kind && plan.kernel == kernel.footprint, "plan echoes")
    check(kernel.footprint.upperBound <= memory, "footprint beyond RAM")

    // Chunks: inside RAM, disjoint.
    let ranges = plan.chunks.map { ($0.address, $0.address + UInt64($0.bytes.count)) }.sorted { $0.0 < $1.0 }
    for r in ranges { check(r.1 <= memory && r.0 < r.1, "chunk \(hex(r.0))-\(hex(r.1)) outside RAM or empty") }
    for (a, b) in zip(ranges, ranges.dropFirst()) { check(a.1 <= b.0, "chunks at \(hex(a.0)) and \(hex(b.0)) overlap") }
    func chunk(at address: UInt64) -> [UInt8]? { plan.chunks.first { $0.address == address }?.bytes }

    // The kernel's bytes.
    for s in kernel.segments where s.fileSize > 0 {
        let from = Int(s.fileOffset), to = Int(s.fileOffset + s.fileSize)
        check(chunk(at: s.physicalAddress) == Array(bytes[from..<to]), "segment at \(hex(s.physicalAddress)) not the file's bytes")
    }

    // The initrd.
    if config.initrdSize > 0 {
        guard let r = plan.initrd else { fatalError("fuzz invariant violated: no initrd placed") }
        check(r.upperBound - r.lowerBound == UInt64(config.initrdSize) && r.lowerBound % 4096 == 0, "initrd range \(r)")
        check(r.upperBound <= kernel.footprint.lowerBound || r.lowerBound >= kernel.footprint.upperBound, "initrd overlaps the kernel")
        check(r.lowerBound >= 1 << 20 && r.upperBound <= memory && r.upperBound - 1 <= kernel.initrdAddressMax, "initrd \(r) out of bounds")
        check(chunk(at: r.lowerBound) == initrd, "initrd bytes")
    } else {
        check(plan.initrd == nil, "initrd without one")
    }

    // The command line.
    guard let line = chunk(at: plan.commandLineAddress) else { fatalError("fuzz invariant violated: no command-line chunk") }
    check(line.last == 0 && !line.dropLast().contains(0), "command line not NUL-terminated, or with an inner NUL")
    check(line.count - 1 <= kernel.commandLineMaximum && plan.commandLineMaximum == kernel.commandLineMaximum, "command line too long")
    check(Array(line.dropLast()) == Array(plan.commandLine.utf8), "command line chunk differs from the plan")
    check(plan.commandLine.hasPrefix(config.commandLine.split(separator: " ").first.map(String.init) ?? ""), "operator's line lost")
    for d in config.devices { check(plan.commandLine.contains(d.commandLineParameter), "device \(hex(d.base)) not announced") }

    // The memory map.
    let map = plan.e820
    check(map.first?.address == 0 && map.last?.end == memory, "e820 does not cover RAM")
    for (a, b) in zip(map, map.dropFirst()) { check(a.end == b.address, "e820 gap or overlap at \(hex(a.end))") }
    check(map.allSatisfy { $0.size > 0 && $0.end <= 0xc000_0000 }, "e820 entry empty or in the MMIO hole")
    for s in kernel.segments { check(map.contains { $0.kind == .ram && $0.address <= s.physicalAddress && s.end <= $0.end }, "kernel not in RAM") }

    check(plan.cpu.rip == kernel.entry, "rip \(hex(plan.cpu.rip)), entry \(hex(kernel.entry))")
    check(plan.cpu.rflags & 0x200 == 0, "interrupts enabled at entry")
    switch kernel.kind {
    case .pvh:
        checkPVH(plan, chunk(at: 0x2000))
    case .elf64, .bzImage:
        checkLongMode(plan, chunk(at: 0x7000))
    }
}

func checkPVH(_ plan: LinuxBootPlan, _ page: [UInt8]?) {
    guard let si = page else { fatalError("fuzz invariant violated: no start_info chunk") }
    check(plan.cpu.mode == .protected32 && plan.cpu.rbx == 0x2000 && plan.cpu.cr0 & 0x8000_0000 == 0, "PVH CPU state")
    check(u32(si, 0) == 0x336e_c578 && u32(si, 4) == 1, "start_info magic/version")
    check(u64(si, 24) == plan.commandLineAddress, "start_info cmdline_paddr")
    check(u32(si, 12) == (plan.initrd == nil ? 0 : 1), "start_info nr_modules")
    if let r = plan.initrd {
        let m = Int(u64(si, 16) - 0x2000)
        check(u64(si, m) == r.lowerBound && u64(si, m + 8) == r.upperBound - r.lowerBound, "module entry")
    }
    let mm = Int(u64(si, 40) - 0x2000)
    check(Int(u32(si, 48)) == plan.e820.count, "memmap_entries")
    for (i, e) in plan.e820.enumerated() {
        let o = mm + 24 * i
        check(u64(si, o) == e.address && u64(si, o + 8) == e.size && u32(si, o + 16) == e.kind.rawValue, "memmap entry \(i)")
    }
}

func checkLongMode(_ plan: LinuxBootPlan, _ page: [UInt8]?) {
    guard let zp = page else { fatalError("fuzz invariant violated: no zero-page chunk") }
    let cpu = plan.cpu
    check(cpu.mode == .long64 && cpu.rsi == 0x7000 && cpu.cs.selector == 0x10 && cpu.cs.long && cpu.ds.selector == 0x18, "64-bit CPU state")
    check(zp[0x210] == 0xff && u32(zp, 0x228) == UInt32(plan.commandLineAddress), "zero page loader type / cmd_line_ptr")
    check(u64(zp, 0x250) == 0, "setup_data left pointing into the image's choice")
    check(u32(zp, 0x218) == UInt32(plan.initrd?.lowerBound ?? 0) && UInt64(u32(zp, 0x21c)) == (plan.initrd.map { $0.upperBound - $0.lowerBound } ?? 0),
          "zero page ramdisk fields")
    check(Int(zp[0x1e8]) == plan.e820.count, "e820_entries")
    for (i, e) in plan.e820.enumerated() {
        let o = 0x2d0 + 20 * i
        check(u64(zp, o) == e.address && u64(zp, o + 8) == e.size && u32(zp, o + 16) == e.kind.rawValue, "e820 entry \(i)")
    }

    // The page tables, decoded from the chunk bytes.
    var tables: [UInt64: [UInt8]] = [:]
    for c in plan.chunks where c.address >= 0x9000 && c.address < 0x9000 + 8 * 4096 { tables[c.address] = c.bytes }
    check(tables.count == plan.pageTablePages && cpu.cr3 == 0x9000, "\(tables.count) table chunks, plan says \(plan.pageTablePages)")
    let leaves = walkPageTables(root: cpu.cr3, tables: tables).sorted { $0.virtual < $1.virtual }
    var cursor: UInt64 = 0
    for leaf in leaves {
        check(leaf.virtual == cursor && leaf.physical == leaf.virtual, "leaf \(hex(leaf.virtual)) not the identity map in order")
        check(leaf.flags == [.writable, .executable], "leaf \(hex(leaf.virtual)) flags \(leaf.flags.rawValue)")
        cursor = leaf.end
    }
    check(cursor == 4 << 30, "identity map ends at \(hex(cursor))")
}
