import TestSupport
import Testing
@testable import Boot

/// Rebuilds the loader's page tables from its chunks and walks them like the MMU.
func walk(_ plan: BootPlan, _ va: UInt64) -> (physical: UInt64, flags: PageFlags)? {
    var pages: [UInt64: [UInt8]] = [:]
    for c in plan.chunks where c.address >= GuestLayout.pageTablePool && c.address < GuestLayout.systemEnd { pages[c.address] = c.bytes }
    func entry(_ table: UInt64, _ i: Int) -> UInt64 {
        guard let p = pages[table] else { return 0 }
        var v: UInt64 = 0
        for b in 0..<8 { v |= UInt64(p[i * 8 + b]) << (8 * UInt64(b)) }
        return v
    }
    var table = plan.cpus[0].cr3
    var user = true, writable = true, exec = true
    for level in stride(from: 4, through: 1, by: -1) {
        let e = entry(table, Int((va >> (12 + 9 * UInt64(level - 1))) & 511))
        guard e & 1 != 0 else { return nil }
        user = user && e & 4 != 0; writable = writable && e & 2 != 0; exec = exec && e & (1 << 63) == 0
        if level == 1 || (level == 2 && e & 0x80 != 0) {
            let mask: UInt64 = level == 2 ? 0x1f_ffff : 0xfff
            var f: PageFlags = []
            if user { f.insert(.user) }; if writable { f.insert(.writable) }; if exec { f.insert(.executable) }
            return ((e & 0x000f_ffff_ffff_f000 & ~mask) | (va & mask), f)
        }
        table = e & 0x000f_ffff_ffff_f000
    }
    return nil
}

@Suite struct ProgramLoaderTests {
    let config = BootConfiguration(memorySize: 64 << 20, vcpus: 2, commandLine: "hello world")

    @Test func mapsSegmentsWithTheirRights() throws {
        let plan = try ProgramLoader.plan(image: ELFBuilder().build(), config: config)
        #expect(walk(plan, 0x40_0000)?.flags == [.user, .executable])
        #expect(walk(plan, 0x40_1000)?.flags == [.user, .writable])
        #expect(walk(plan, 0x40_2000)?.flags == [.user, .writable]) // bss
        #expect(walk(plan, 0x40_0123)?.physical == 0x40_0123)
    }

    @Test func systemAreaIsSupervisorOnlyAndNullIsUnmapped() throws {
        let plan = try ProgramLoader.plan(image: ELFBuilder().build(), config: config)
        #expect(walk(plan, 0) == nil)
        #expect(walk(plan, GuestLayout.idt)?.flags == [])
        #expect(walk(plan, GuestLayout.faultStubs)?.flags == [.executable])
        #expect(walk(plan, GuestLayout.cpuTables)?.flags == [.writable])
        #expect(walk(plan, GuestLayout.kernelStacks)?.flags == [.writable])
        #expect(walk(plan, GuestLayout.faultPage)?.flags == [.writable])
        #expect(walk(plan, GuestLayout.pageTablePool) == nil) // tables are not mapped at all
        #expect(walk(plan, GuestLayout.bootInfo)?.flags == [.user])
        #expect(walk(plan, GuestLayout.hypercallPage)?.flags == [.user])
    }

    @Test func stacksAreSeparateWithGuardPages() throws {
        let plan = try ProgramLoader.plan(image: ELFBuilder().build(), config: config)
        #expect(plan.cpus.count == 2)
        let top0 = plan.cpus[0].rsp, top1 = plan.cpus[1].rsp
        #expect(top0 == 64 << 20 && top1 == top0 - GuestLayout.stackSize - GuestLayout.guardSize)
        #expect(plan.cpus.map(\.rsi) == [0, 1])
        #expect(plan.cpus.allSatisfy { $0.rdi == GuestLayout.bootInfo && $0.rip == 0x40_0000 })
        #expect(walk(plan, top0 - 8)?.flags == [.user, .writable])
        #expect(walk(plan, top0 - GuestLayout.stackSize - 8) == nil) // guard page
        #expect(plan.guardPages.count == 2)
        #expect(plan.guardPages.allSatisfy { walk(plan, $0.lowerBound) == nil })
        #expect(plan.cpus[0].gdtBase != plan.cpus[1].gdtBase)
        #expect(plan.cpus[0].tssBase != plan.cpus[1].tssBase)
    }

    @Test func heapIsFreeRAMNoExecute() throws {
        let plan = try ProgramLoader.plan(image: ELFBuilder().build(), config: config)
        let heap = try #require(plan.userRegions.first { $0.kind == .free })
        #expect(heap.start == 0x40_3000)
        #expect(walk(plan, heap.start)?.flags == [.user, .writable])
        #expect(walk(plan, heap.end - 1)?.flags == [.user, .writable])
        #expect(walk(plan, 0x100_0000)?.flags == [.user, .writable]) // covered by a 2 MiB page
    }

    @Test func bootInfoBlock() throws {
        let plan = try ProgramLoader.plan(image: ELFBuilder().build(), config: config)
        let info = try #require(plan.chunks.first { $0.address == GuestLayout.bootInfo }?.bytes)
        let r = ByteReader(info)
        #expect(r.u64(0) == GuestLayout.bootInfoMagic)
        #expect(Array("BHKBOOT1".utf8) == Array(info[0..<8]))
        #expect(r.u32(8) == 1 && r.u32(12) == 2 && r.u64(16) == 64 << 20)
        #expect(r.u64(24) == GuestLayout.hypercallPage)
        let cmd = Int(r.u64(32) - GuestLayout.bootInfo), len = Int(r.u64(40))
        #expect(String(decoding: info[cmd..<cmd + len], as: UTF8.self) == "hello world")
        #expect(info[cmd + len] == 0)
        let mapCount = Int(r.u64(56))
        #expect(mapCount == 1 + plan.userRegions.count)
        let m = Int(r.u64(48) - GuestLayout.bootInfo)
        #expect(r.u32(m + 16) == MemoryKind.reserved.rawValue)
    }

    @Test func userAccessMap() throws {
        let plan = try ProgramLoader.plan(image: ELFBuilder().build(), config: config)
        #expect(plan.userCanAccess(0x40_1000, length: 0x2000, rights: [.writable]))
        #expect(plan.userCanAccess(0x40_0000, length: 0x3000, rights: [])) // spans text+data
        #expect(!plan.userCanAccess(0x40_0000, length: 16, rights: [.writable]))
        #expect(!plan.userCanAccess(0x1000, length: 1, rights: []))
        #expect(!plan.userCanAccess(GuestLayout.bootInfo, length: 8, rights: [.writable]))
        #expect(plan.userCanAccess(GuestLayout.bootInfo, length: 8, rights: []))
        #expect(!plan.userCanAccess(UInt64.max - 4, length: 16, rights: []))
        let g = plan.guardPages[0]
        #expect(!plan.userCanAccess(g.lowerBound - 8, length: 16, rights: []))
        #expect(!plan.userCanAccess(GuestLayout.hypercallPage, length: 8, rights: [])) // MMIO is not RAM
    }

    @Test func refusesBadConfigurations() {
        func err(_ c: BootConfiguration) -> BootError? {
            do { _ = try ProgramLoader.plan(image: ELFBuilder().build(), config: c); return nil } catch { return error }
        }
        #expect(err(BootConfiguration(memorySize: 64 << 20, vcpus: 0)) != nil)
        #expect(err(BootConfiguration(memorySize: 64 << 20, vcpus: 65)) != nil)
        #expect(err(BootConfiguration(memorySize: 4 << 20)) != nil)
        #expect(err(BootConfiguration(memorySize: 4 << 30)) != nil)
        #expect(err(BootConfiguration(memorySize: (64 << 20) + 4096)) != nil)
        #expect(err(BootConfiguration(commandLine: String(repeating: "x", count: 4096))) != nil)
        #expect(err(BootConfiguration(commandLine: "a\u{0}b")) != nil)
        #expect(err(BootConfiguration(commandLine: String(repeating: "x", count: 4095))) == nil)
        // 64 vCPUs' stacks need more than 8 MiB of the 8 MiB guest.
        #expect(err(BootConfiguration(memorySize: 8 << 20, vcpus: 64)) != nil)
    }

    @Test func refusesRatherThanTruncatesTheMemoryMap() throws {
        var e = ELFBuilder()
        e.segments = (0..<63).map { i in
            ELFBuilder.Seg(flags: i == 0 ? 5 : 4, vaddr: 0x40_0000 + UInt64(i) * 0x2000, data: [0xf4])
        }
        let many = BootConfiguration(memorySize: 64 << 20, vcpus: 64)
        do { _ = try ProgramLoader.plan(image: e.build(), config: many); Issue.record("accepted") } catch {
            guard case .configuration(let why) = error else { Issue.record("\(error)"); return }
            #expect(why.contains("memory regions"))
        }
        // The same image with fewer vCPUs fits, and every region is in the map.
        let plan = try ProgramLoader.plan(image: e.build(), config: BootConfiguration(memorySize: 64 << 20, vcpus: 8))
        let info = try #require(plan.chunks.first { $0.address == GuestLayout.bootInfo }?.bytes)
        #expect(ByteReader(info).u64(56) == UInt64(plan.userRegions.count + 1))
    }

    @Test func systemTables() {
        let gdt = SystemTables.cpuTablePage(vcpu: 3)
        let r = ByteReader(gdt)
        #expect(r.u64(32) >> 45 & 3 == 3) // user code DPL 3
        #expect(r.u64(32) >> 53 & 1 == 1) // long mode
        #expect(r.u64(Int(GuestLayout.tssOffset) + 4) == GuestLayout.kernelStackTop(3)) // RSP0
        let stubs = SystemTables.faultStubs()
        #expect(stubs[14 * 16] == 0xb0 && stubs[14 * 16 + 1] == 14)
        let idt = ByteReader(SystemTables.idt())
        #expect(idt.u64(14 * 16) & 0xffff == (GuestLayout.faultStubs + 14 * 16) & 0xffff)
        #expect(idt.u64(14 * 16) >> 40 & 0xff == 0x8e)
    }
}

@Suite struct PageTableTests {
    @Test func mapsAndTranslates() throws {
        var b = PageTableBuilder(poolBase: 0x10_0000, poolPages: 16)
        try b.map(virtual: 0x20_0000, physical: 0x20_0000, size: 0x40_0000, flags: [.user, .writable])
        try b.map(virtual: 0x1000, physical: 0x5000, size: 0x1000, flags: [.executable])
        #expect(b.translate(0x20_0010)?.physical == 0x20_0010)
        #expect(b.translate(0x5f_ffff)?.flags == [.user, .writable])
        #expect(b.translate(0x1234)?.physical == 0x5234)
        #expect(b.translate(0x1234)?.flags == [.executable])
        #expect(b.translate(0x2000) == nil)
        #expect(b.translate(0x60_0000) == nil)
    }

    @Test func refusesOverlapMisalignmentAndExhaustion() throws {
        var b = PageTableBuilder(poolBase: 0x10_0000, poolPages: 4)
        try b.map(virtual: 0x40_0000, physical: 0x40_0000, size: 0x1000, flags: [])
        #expect(throws: PageTableError.overlap(0x40_0000)) { try b.map(virtual: 0x40_0000, physical: 0, size: 0x1000, flags: []) }
        #expect(throws: PageTableError.misaligned(0x40_0001)) { try b.map(virtual: 0x40_0001, physical: 0, size: 0x1000, flags: []) }
        #expect(throws: PageTableError.nonCanonical(1 << 47)) { try b.map(virtual: 1 << 47, physical: 0, size: 0x1000, flags: []) }
        #expect(throws: PageTableError.poolExhausted(pages: 4)) {
            try b.map(virtual: 1 << 40, physical: 0, size: 0x1000, flags: [])
            try b.map(virtual: 1 << 41, physical: 0, size: 0x1000, flags: [])
        }
    }

    /// Found by FuzzPageTables: physical ranges that wrap or leave the 52-bit space.
    @Test func refusesPhysicalAddressesBeyond52Bits() {
        var b = PageTableBuilder(poolBase: 0x10_0000, poolPages: 8)
        #expect(throws: PageTableError.physicalOutOfRange(0xffff_ffff_ffff_f000)) {
            try b.map(virtual: 0, physical: 0xffff_ffff_ffff_f000, size: 0x2000, flags: [])
        }
        #expect(throws: PageTableError.physicalOutOfRange(0x8000_0000_0000_5000)) {
            try b.map(virtual: 0x1000, physical: 0x8000_0000_0000_5000, size: 0x1000, flags: [.user, .executable])
        }
        #expect(throws: PageTableError.physicalOutOfRange(1 << 52)) {
            try b.map(virtual: 0x1000, physical: 1 << 52, size: 0x1000, flags: [])
        }
        #expect(b.pagesUsed == 1 && b.translate(0x1000) == nil)
    }

    @Test func failedMapChangesNothing() throws {
        var b = PageTableBuilder(poolBase: 0x10_0000, poolPages: 8)
        try b.map(virtual: 0x40_3000, physical: 0x40_3000, size: 0x1000, flags: [])
        let before = b.pages().map(\.bytes)
        // Maps 0x40_0000..0x40_2fff, then hits the existing page: must roll back.
        #expect(throws: PageTableError.overlap(0x40_3000)) {
            try b.map(virtual: 0x40_0000, physical: 0x40_0000, size: 0x5000, flags: [.user])
        }
        #expect(b.translate(0x40_0000) == nil)
        #expect(b.pages().map(\.bytes) == before)
    }
}

@Suite struct DeviceWindowTests {
    @Test func windowsAreMappedAndListed() throws {
        let devices = [DeviceWindow(kind: 4, irq: 5, base: GuestLayout.deviceWindow(0), size: 0x1000),
                       DeviceWindow(kind: 2, irq: 6, base: GuestLayout.deviceWindow(1), size: 0x1000)]
        let plan = try ProgramLoader.plan(image: ELFBuilder().build(), config: BootConfiguration(devices: devices))
        #expect(walk(plan, 0xd000_0050)?.flags == [.user, .writable])
        #expect(walk(plan, 0xd000_1000)?.flags == [.user, .writable])
        #expect(walk(plan, 0xd000_2000) == nil)
        #expect(!plan.userCanAccess(0xd000_0000, length: 4, rights: [])) // not RAM: no DMA there
        let info = try #require(plan.chunks.first { $0.address == GuestLayout.bootInfo }?.bytes)
        let r = ByteReader(info)
        #expect(r.u64(72) == 2)
        let list = Int(r.u64(64) - GuestLayout.bootInfo)
        #expect(r.u32(list) == 4 && r.u32(list + 4) == 5 && r.u64(list + 8) == 0xd000_0000 && r.u64(list + 16) == 0x1000)
        #expect(r.u32(list + 24) == 2 && r.u64(list + 32) == 0xd000_1000)
    }

    @Test func badWindowsAreRefused() {
        func refused(_ d: [DeviceWindow]) -> Bool {
            (try? ProgramLoader.plan(image: ELFBuilder().build(), config: BootConfiguration(devices: d))) == nil
        }
        #expect(refused([DeviceWindow(kind: 4, irq: 5, base: 0xc000_0000, size: 0x1000)]))  // hypercall page
        #expect(refused([DeviceWindow(kind: 4, irq: 5, base: 0xd000_0800, size: 0x1000)]))  // unaligned
        #expect(refused([DeviceWindow(kind: 4, irq: 5, base: 0xd000_0000, size: 0)]))
        #expect(refused([DeviceWindow(kind: 4, irq: 5, base: 0xd000_0000, size: 0x2000),
                         DeviceWindow(kind: 2, irq: 6, base: 0xd000_1000, size: 0x1000)]))  // overlap
        #expect(refused([DeviceWindow(kind: 4, irq: 5, base: UInt64.max - 0xfff, size: 0x1000)]))
        #expect(refused((0..<33).map { DeviceWindow(kind: 4, irq: 5, base: GuestLayout.deviceWindow($0), size: 0x1000) }))
    }
}
