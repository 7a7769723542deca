import Boot
import FuzzSupport

// FuzzELF: the input is a guest image. ELFImage.parse must refuse it cleanly or accept it with
// every property the loader relies on; ProgramLoader.plan must then succeed and produce a plan
// whose bytes, regions and page tables keep the guest inside its box.

/// The configurations an image is planned for (chosen by the input's length, so each input is
/// deterministic and both are reached): the VMM's default shape, and a tight one with several
/// vCPUs (more stacks, a lower program end) and no fault handlers.
let configurations: [BootConfiguration] = [
    BootConfiguration(memorySize: 16 << 20, vcpus: 1, commandLine: "", faultHandlers: true),
    BootConfiguration(memorySize: 8 << 20, vcpus: 3, commandLine: "fuzz=1 console", faultHandlers: false),
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzELF(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = FuzzInput(data, size).bytes
    fuzzOne(bytes, configurations[bytes.count % configurations.count])
    return 0
}

func fuzzOne(_ bytes: [UInt8], _ config: BootConfiguration) {
    let allowedStart = GuestLayout.programStart
    let allowedEnd = GuestLayout.programEnd(memorySize: config.memorySize, vcpus: config.vcpus)
    let image: ELFImage
    do {
        image = try ELFImage.parse(bytes, allowedStart: allowedStart, allowedEnd: allowedEnd)
    } catch let parseError {
        trace("refused (\(config.memorySize >> 20) MiB, \(config.vcpus) vCPUs): \(parseError.description)")
        // A refused image must be refused by the loader too, with the same reason.
        do {
            _ = try ProgramLoader.plan(image: bytes, config: config)
            fatalError("fuzz invariant violated: parse refused (\(parseError)) but plan accepted")
        } catch let planError {
            check(planError == .elf(parseError), "parse refused with \(parseError), plan with \(planError)")
        }
        return
    }
    trace("accepted (\(config.memorySize >> 20) MiB, \(config.vcpus) vCPUs): entry \(hex(image.entry)), \(image.segments.count) segments")
    checkImage(image, bytes: bytes, allowedStart: allowedStart, allowedEnd: allowedEnd)

    let plan: BootPlan
    do {
        plan = try ProgramLoader.plan(image: bytes, config: config)
    } catch {
        fatalError("fuzz invariant violated: parse accepted the image but plan failed: \(error)")
    }
    check(plan.image == image, "plan.image differs from the parsed image")
    checkPlan(plan, image: image, bytes: bytes, config: config, programEnd: allowedEnd)
}

func checkImage(_ image: ELFImage, bytes: [UInt8], allowedStart: UInt64, allowedEnd: UInt64) {
    check(!image.segments.isEmpty && image.segments.count <= 64, "\(image.segments.count) segments")
    for (i, s) in image.segments.enumerated() {
        let (end, overflow) = s.address.addingReportingOverflow(s.memorySize)
        check(!overflow, "segment \(i) end overflows")
        check(s.memorySize > 0, "segment \(i) is empty")
        check(s.address >= allowedStart && end <= allowedEnd,
              "segment \(i) \(hex(s.address))-\(hex(end)) outside \(hex(allowedStart))-\(hex(allowedEnd))")
        check(s.fileSize <= s.memorySize, "segment \(i) file size above memory size")
        let (fileEnd, o2) = s.fileOffset.addingReportingOverflow(s.fileSize)
        check(!o2 && fileEnd <= UInt64(bytes.count), "segment \(i) file bytes past the end")
        check(!(s.writable && s.executable), "segment \(i) is W+X")
        check(s.readable || s.writable || s.executable, "segment \(i) has no rights")
        for (j, t) in image.segments.enumerated() where j > i {
            let a0 = s.address / 4096, a1 = (s.end + 4095) / 4096
            let b0 = t.address / 4096, b1 = (t.end + 4095) / 4096
            check(a1 <= b0 || b1 <= a0, "segments \(i) and \(j) share a page")
        }
    }
    check(image.segments.contains { $0.executable && image.entry >= $0.address && image.entry < $0.end },
          "entry \(hex(image.entry)) is not in an executable segment")
}

func checkPlan(_ plan: BootPlan, image: ELFImage, bytes: [UInt8], config: BootConfiguration, programEnd: UInt64) {
    let memory = config.memorySize
    let page = GuestLayout.pageSize

    // Chunks: inside guest RAM, pairwise disjoint, program bytes copied faithfully.
    var spans: [(UInt64, UInt64)] = []
    for c in plan.chunks {
        let (end, overflow) = c.address.addingReportingOverflow(UInt64(c.bytes.count))
        check(!overflow && end <= memory, "chunk \(hex(c.address))+\(c.bytes.count) outside guest memory \(hex(memory))")
        spans.append((c.address, end))
    }
    spans.sort { $0.0 < $1.0 }
    for k in spans.indices.dropFirst() {
        check(spans[k - 1].1 <= spans[k].0, "chunks \(hex(spans[k - 1].0)) and \(hex(spans[k].0)) overlap")
    }
    for s in image.segments where s.fileSize > 0 {
        guard let c = plan.chunks.first(where: { $0.address == s.address }) else {
            fatalError("fuzz invariant violated: no chunk for segment at \(hex(s.address))")
        }
        check(c.bytes.count == Int(s.fileSize) && c.bytes[...] == bytes[Int(s.fileOffset)..<Int(s.fileOffset + s.fileSize)],
              "chunk at \(hex(s.address)) differs from the file bytes")
        check(c.address >= GuestLayout.programStart, "program chunk below the program area")
    }

    // User regions: sorted, disjoint, page aligned, in RAM, out of the system area, never W+X.
    let regions = plan.userRegions
    for (k, r) in regions.enumerated() {
        check(r.start % page == 0 && r.size % page == 0 && r.size > 0, "region \(k) \(hex(r.start))+\(hex(r.size)) misaligned or empty")
        check(r.start >= GuestLayout.systemEnd, "user region \(hex(r.start))-\(hex(r.end)) overlaps the system area")
        check(r.end <= memory, "user region \(hex(r.start))-\(hex(r.end)) beyond guest memory")
        check(r.flags.contains(.user), "user region \(hex(r.start)) without the user flag")
        check(!(r.flags.contains(.writable) && r.flags.contains(.executable)), "user region \(hex(r.start)) is W+X")
        if k > 0 { check(regions[k - 1].end <= r.start, "regions \(k - 1) and \(k) overlap or are unsorted") }
        if r.kind == .program { check(r.end <= programEnd, "program region past the program end") }
    }

    // Every segment is mapped with exactly its rights and no more.
    for s in image.segments {
        var rights: PageFlags = [.user]
        if s.writable { rights.insert(.writable) }
        if s.executable { rights.insert(.executable) }
        check(plan.userCanAccess(s.address, length: s.memorySize, rights: rights), "segment \(hex(s.address)) not accessible with its rights")
        if !s.writable { check(!plan.userCanAccess(s.address, length: 1, rights: [.user, .writable]), "read-only segment \(hex(s.address)) writable") }
        if !s.executable { check(!plan.userCanAccess(s.address, length: 1, rights: [.user, .executable]), "data segment \(hex(s.address)) executable") }
    }
    check(plan.userCanAccess(image.entry, length: 1, rights: [.user, .executable]), "entry \(hex(image.entry)) not executable")
    for probe: UInt64 in [0, GuestLayout.idt, GuestLayout.faultStubs, GuestLayout.pageTablePool, GuestLayout.systemEnd - 1, memory, GuestLayout.hypercallPage] {
        check(!plan.userCanAccess(probe, length: 1, rights: [.user]), "user may access \(hex(probe))")
    }
    check(!plan.userCanAccess(GuestLayout.systemEnd - 1, length: 2, rights: [.user]), "user range straddles the system area")

    // vCPUs and their stacks.
    check(plan.cpus.count == config.vcpus, "\(plan.cpus.count) CPU states for \(config.vcpus) vCPUs")
    check(plan.guardPages.count == config.vcpus, "\(plan.guardPages.count) guard pages")
    for (i, cpu) in plan.cpus.enumerated() {
        check(cpu.rip == image.entry, "vCPU \(i) rip \(hex(cpu.rip))")
        check(cpu.cr3 == GuestLayout.pageTablePool, "vCPU \(i) cr3 \(hex(cpu.cr3))")
        check(cpu.rsp <= memory && plan.userCanAccess(cpu.rsp - GuestLayout.stackSize, length: GuestLayout.stackSize, rights: [.user, .writable]),
              "vCPU \(i) stack below \(hex(cpu.rsp)) not writable")
        check(cpu.idtLimit == (config.faultHandlers ? SystemTables.idtLimit : 0), "vCPU \(i) IDT limit")
    }
    for g in plan.guardPages {
        check(g.upperBound - g.lowerBound == GuestLayout.guardSize, "guard page size")
        check(!regions.contains { $0.start < g.upperBound && g.lowerBound < $0.end }, "guard page \(hex(g.lowerBound)) is in a region")
        check(g.lowerBound >= programEnd, "guard page \(hex(g.lowerBound)) below the program end")
    }

    // The boot-information block.
    guard let info = plan.chunks.first(where: { $0.address == GuestLayout.bootInfo }) else {
        fatalError("fuzz invariant violated: no boot-information chunk")
    }
    var r = FuzzInput(info.bytes)
    check(r.u64() == GuestLayout.bootInfoMagic && r.u32() == GuestLayout.abiVersion && r.u32() == UInt32(config.vcpus) && r.u64() == memory,
          "boot-information header")

    // The page tables as the MMU sees them: decode them from the chunks, not the builder.
    var tables: [UInt64: [UInt8]] = [:]
    let poolEnd = GuestLayout.pageTablePool + UInt64(GuestLayout.pageTablePoolPages) * page
    for c in plan.chunks where c.address >= GuestLayout.pageTablePool && c.address < poolEnd {
        tables[c.address] = c.bytes
    }
    check(tables.count == plan.pageTablePages, "\(tables.count) table chunks, plan says \(plan.pageTablePages)")
    let leaves = walkPageTables(root: GuestLayout.pageTablePool, tables: tables)
    var userBytes: UInt64 = 0
    for leaf in leaves {
        check(leaf.physical == leaf.virtual, "leaf \(hex(leaf.virtual)) is not identity mapped (\(hex(leaf.physical)))")
        check(!(leaf.flags.contains(.writable) && leaf.flags.contains(.executable)), "leaf \(hex(leaf.virtual)) is W+X")
        for g in plan.guardPages {
            check(!(leaf.virtual < g.upperBound && g.lowerBound < leaf.end), "guard page \(hex(g.lowerBound)) is mapped")
        }
        if leaf.flags.contains(.user) {
            if leaf.virtual == GuestLayout.hypercallPage && leaf.size == page {
                check(leaf.flags == [.user], "hypercall page flags \(leaf.flags)")
                continue
            }
            guard let region = regions.first(where: { $0.start <= leaf.virtual && leaf.end <= $0.end }) else {
                fatalError("fuzz invariant violated: user leaf \(hex(leaf.virtual))+\(hex(leaf.size)) is in no user region")
            }
            check(region.flags == leaf.flags, "leaf \(hex(leaf.virtual)) flags \(leaf.flags.rawValue), region \(region.flags.rawValue)")
            userBytes += leaf.size
        } else {
            let inSystem = leaf.end <= GuestLayout.systemEnd
            let isFaultPage = leaf.virtual == GuestLayout.faultPage && leaf.size == page
            check(inSystem || isFaultPage, "supervisor leaf \(hex(leaf.virtual)) outside the system area")
            check(!leaf.flags.contains(.executable) || leaf.virtual == GuestLayout.faultStubs, "supervisor leaf \(hex(leaf.virtual)) executable")
        }
    }
    check(userBytes == regions.reduce(0) { $0 + $1.size }, "user leaves cover \(hex(userBytes)) bytes, regions \(regions.count)")
}
