import TestSupport
import Foundation
import Testing
@testable import Boot

// Synthetic kernels built byte by byte (LinuxImageBuilder.swift); no KVM, no CPUID.

func linuxParseError(_ bytes: [UInt8]) -> LinuxBootError? {
    do { _ = try LinuxKernel.parse(bytes); return nil } catch { return error }
}

func linuxPlanError(_ bytes: [UInt8], initrd: [UInt8]? = nil, commandLine: String = "console=ttyS0",
                    memorySize: UInt64 = 64 << 20, devices: [VirtioMMIODeviceInfo] = []) -> LinuxBootError? {
    do {
        let k = try LinuxKernel.parse(bytes)
        _ = try LinuxBootPlanner.plan(kernel: k, initrd: initrd, commandLine: commandLine, memorySize: memorySize, devices: devices)
        return nil
    } catch { return error }
}

func linuxPlan(_ bytes: [UInt8], initrd: [UInt8]? = nil, commandLine: String = "console=ttyS0",
               memorySize: UInt64 = 64 << 20, devices: [VirtioMMIODeviceInfo] = []) throws -> LinuxBootPlan {
    let plan = try LinuxBootPlanner.plan(kernel: LinuxKernel.parse(bytes), initrd: initrd, commandLine: commandLine,
                                         memorySize: memorySize, devices: devices)
    checkChunks(plan)
    return plan
}

/// Every chunk inside RAM, none overlapping another.
func checkChunks(_ plan: LinuxBootPlan) {
    let ranges = plan.chunks.map { $0.address..<($0.address + UInt64($0.bytes.count)) }.sorted { $0.lowerBound < $1.lowerBound }
    for r in ranges { #expect(r.upperBound <= plan.memorySize, "chunk \(r) beyond RAM") }
    for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(a.upperBound <= b.lowerBound, "chunks \(a) and \(b) overlap") }
}

/// Guest memory as the VMM would leave it: chunk bytes, zero elsewhere.
func guestBytes(_ plan: LinuxBootPlan, _ address: UInt64, _ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    for c in plan.chunks {
        for i in 0..<count {
            let a = address + UInt64(i)
            if a >= c.address, a < c.address + UInt64(c.bytes.count) { out[i] = c.bytes[Int(a - c.address)] }
        }
    }
    return out
}

/// Walks the boot page tables from their chunk bytes, like the MMU.
func linuxWalk(_ plan: LinuxBootPlan, _ va: UInt64) -> (physical: UInt64, flags: PageFlags)? {
    var pages: [UInt64: [UInt8]] = [:]
    let poolEnd = LinuxBootLayout.pageTablePool + UInt64(LinuxBootLayout.pageTablePoolPages) * 4096
    for c in plan.chunks where c.address >= LinuxBootLayout.pageTablePool && c.address < poolEnd { pages[c.address] = c.bytes }
    var table = plan.cpu.cr3
    var user = true, writable = true, exec = true
    for level in stride(from: 4, through: 1, by: -1) {
        guard let p = pages[table] else { return nil }
        let e = ByteReader(p).u64(Int((va >> (12 + 9 * UInt64(level - 1))) & 511) * 8)
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

let testDisk = VirtioMMIODeviceInfo(base: 0xd000_0000, size: 0x1000, irq: 5)
let testNet = VirtioMMIODeviceInfo(base: 0xd010_0000, size: 1 << 20, irq: 6)

@Suite struct LinuxKernelParseTests {
    @Test func bzImageParses() throws {
        let k = try LinuxKernel.parse(BzImageBuilder().build())
        #expect(k.kind == .bzImage(entry64: 0x100_0200))
        #expect(k.footprint == 0x100_0000..<0x140_0000)
        #expect(k.commandLineMaximum == 0x7ff)
        #expect(k.initrdAddressMax == 0x7fff_ffff)
        #expect(k.segments.count == 1)
        #expect(k.segments[0].fileOffset == 5 * 512 && k.segments[0].fileSize == 0x600)
        let h = try #require(k.setupHeader)
        #expect(h.protocolVersion == 0x020f && h.setupSectors == 4 && h.relocatable)
        #expect(h.bytes.count == 0x26c - 0x1f1)
    }

    @Test func setupSectsZeroMeansFour() throws {
        var b = BzImageBuilder(); b.setupSects = 0
        let k = try LinuxKernel.parse(b.build())
        #expect(k.setupHeader?.setupSectors == 4)
        #expect(k.segments[0].fileOffset == 5 * 512)
    }

    @Test func refusesWhatIsNoKernel() {
        if case .notAKernel = linuxParseError([]) {} else { Issue.record("empty file accepted") }
        if case .notAKernel = linuxParseError(Array("#!/bin/sh\necho hi\n".utf8)) {} else { Issue.record("script accepted") }
        if case .notAKernel = linuxParseError([UInt8](repeating: 0x90, count: 8192)) {} else { Issue.record("NOPs accepted") }
        var b = BzImageBuilder(); b.bootFlag = 0x55aa
        if case .notAKernel = linuxParseError(b.build()) {} else { Issue.record("bad boot flag accepted") }
        b = BzImageBuilder(); b.magic = 0x5372_6449
        if case .badSetupHeader(let why) = linuxParseError(b.build()) { #expect(why.contains("HdrS")) } else { Issue.record("bad HdrS accepted") }
        // A boot sector whose file ends before the setup header's magic.
        #expect(linuxParseError(Array(BzImageBuilder().build().prefix(0x203))) == .truncated(what: "the bzImage setup header", needed: 0x206, available: 0x203))
    }

    @Test func refusesOldProtocols() {
        var b = BzImageBuilder(); b.version = 0x020b
        #expect(linuxParseError(b.build()) == .unsupportedProtocol(version: 0x020b))
        b.version = 0x0200
        #expect(linuxParseError(b.build()) == .unsupportedProtocol(version: 0x0200))
        #expect(LinuxBootError.unsupportedProtocol(version: 0x0205).description.contains("2.05"))
        b.version = 0x020c
        #expect(linuxParseError(b.build()) == nil)
    }

    @Test func refusesTruncatedSetup() {
        let full = BzImageBuilder().build()
        #expect(linuxParseError(Array(full.prefix(0x800))) == .truncated(what: "the 4 setup sectors", needed: 0xa00, available: 0x800))
        // setup_sects says 255: 128 KiB of setup in a 4 KiB file.
        var b = BzImageBuilder(); b.setupSects = 255; b.layoutSects = 4
        #expect(linuxParseError(b.build()) == .truncated(what: "the 255 setup sectors", needed: 256 * 512, available: UInt64(b.build().count)))
    }

    @Test func refusesSetupHeaderOfWrongLength() {
        var b = BzImageBuilder(); b.jumpByte = 0x50 // ends at 0x252, before init_size
        if case .badSetupHeader(let why) = linuxParseError(b.build()) { #expect(why.contains("before init_size")) } else { Issue.record("short header accepted") }
        b.jumpByte = 0xa0 // ends at 0x2a2, into boot_params' e820 area
        if case .badSetupHeader(let why) = linuxParseError(b.build()) { #expect(why.contains("0x290")) } else { Issue.record("long header accepted") }
        b.jumpByte = 0x8e // ends exactly at 0x290
        #expect(linuxParseError(b.build()) == nil)
    }

    @Test func refusesMissingFlags() {
        var b = BzImageBuilder(); b.loadFlags = 0x80
        #expect(linuxParseError(b.build()) == .notLoadedHigh)
        b = BzImageBuilder(); b.xloadFlags = 0x02
        #expect(linuxParseError(b.build()) == .no64BitEntry)
    }

    @Test func refusesBadAlignment() {
        for a: UInt32 in [0, 0x800, 0x30_0000, 0xffff_ffff] {
            var b = BzImageBuilder(); b.kernelAlignment = a
            #expect(linuxParseError(b.build()) == .badAlignment(a))
        }
        // A relocatable kernel is moved up to its alignment; a fixed one must be page aligned.
        var b = BzImageBuilder(); b.prefAddress = 0x110_0000
        #expect((try? LinuxKernel.parse(b.build()))?.kind == .bzImage(entry64: 0x120_0200))
        b.relocatable = 0; b.prefAddress = 0x110_0010
        if case .badSetupHeader = linuxParseError(b.build()) {} else { Issue.record("unaligned fixed kernel accepted") }
        b.prefAddress = 0x110_0000
        #expect((try? LinuxKernel.parse(b.build()))?.kind == .bzImage(entry64: 0x110_0200))
    }

    @Test func refusesInconsistentSizes() {
        var b = BzImageBuilder(); b.initSize = 0x5ff // smaller than the 0x600-byte payload
        if case .badSetupHeader(let why) = linuxParseError(b.build()) { #expect(why.contains("init_size")) } else { Issue.record("small init_size accepted") }
        b = BzImageBuilder(); b.payload = [UInt8](repeating: 0x90, count: 0x200) // startup_64 beyond the file
        #expect(linuxParseError(b.build()) == .entryOutsideImage(0x100_0200))
    }

    @Test func refusesLoadRangesOutsideLinuxRAM() {
        var b = BzImageBuilder(); b.prefAddress = 0x8_0000; b.relocatable = 0
        #expect(linuxParseError(b.build()) == .kernelOutOfRange(start: 0x8_0000, end: 0x48_0000))
        b = BzImageBuilder(); b.prefAddress = 0xbff0_0000; b.relocatable = 0
        #expect(linuxParseError(b.build()) == .kernelOutOfRange(start: 0xbff0_0000, end: 0xc030_0000))
        b = BzImageBuilder(); b.prefAddress = UInt64.max - 0x1000 // aligning up overflows
        if case .kernelOutOfRange = linuxParseError(b.build()) {} else { Issue.record("wrapping load address accepted") }
        b.relocatable = 0; b.prefAddress = UInt64.max - 0xfff
        if case .kernelOutOfRange = linuxParseError(b.build()) {} else { Issue.record("wrapping footprint accepted") }
    }

    @Test func vmlinuxWithoutNoteIsElf64() throws {
        let k = try LinuxKernel.parse(VmlinuxBuilder().build())
        #expect(k.kind == .elf64(entry: 0x100_0000))
        #expect(k.footprint == 0x100_0000..<0x120_3000)
        #expect(k.commandLineMaximum == 2047 && k.setupHeader == nil)
        #expect(k.segments.map(\.physicalAddress) == [0x100_0000, 0x120_0000])
        // A virtual e_entry is translated through its segment.
        var v = VmlinuxBuilder(); v.entry = 0xffff_ffff_8100_0010
        #expect(try LinuxKernel.parse(v.build()).kind == .elf64(entry: 0x100_0010))
    }

    @Test func pvhNoteSelectsPVH() throws {
        var v = VmlinuxBuilder()
        v.notes = [VmlinuxBuilder.Note(name: Array("GNU".utf8) + [0], type: 3, desc: [1, 2, 3, 4, 5]), VmlinuxBuilder.pvhNote(0x100_0040)]
        #expect(try LinuxKernel.parse(v.build()).kind == .pvh(entry32: 0x100_0040))
        // Linux 6.x writes the value as 8 bytes.
        v.notes = [VmlinuxBuilder.pvhNote64(0x100_0080)]
        #expect(try LinuxKernel.parse(v.build()).kind == .pvh(entry32: 0x100_0080))
        // 8-byte aligned note areas pad to 8 from each note's start: the value of a "Xen" note
        // is at +16 (12 + 4 is already aligned), the next note at +24.
        v.noteAlign = 8
        v.notes = [VmlinuxBuilder.pvhNote64(0x100_0080), VmlinuxBuilder.Note(name: Array("GNU".utf8) + [0], type: 5, desc: [1, 2, 3])]
        #expect(v.noteBytes().count == 24 + 24)
        #expect(Array(v.noteBytes()[16..<20]) == [0x80, 0, 0, 1])
        #expect(try LinuxKernel.parse(v.build()).kind == .pvh(entry32: 0x100_0080))
        // Found in an SHT_NOTE section when no PT_NOTE segment carries it.
        v = VmlinuxBuilder(); v.notes = [VmlinuxBuilder.pvhNote(0x100_0004)]; v.placement = .section
        #expect(try LinuxKernel.parse(v.build()).kind == .pvh(entry32: 0x100_0004))
        // Same type, other owner: not a PVH note.
        v = VmlinuxBuilder(); v.notes = [VmlinuxBuilder.Note(name: Array("Xeno".utf8) + [0], desc: [0, 0, 0, 1])]
        #expect(try LinuxKernel.parse(v.build()).kind == .elf64(entry: 0x100_0000))
    }

    @Test func refusesBadPVHNotes() {
        func noteError(_ v: VmlinuxBuilder) -> String? {
            if case .badNote(let why) = linuxParseError(v.build()) { return why }
            return nil
        }
        var v = VmlinuxBuilder(); v.notes = [VmlinuxBuilder.Note(desc: [0x40, 0])] // 2-byte value
        #expect(noteError(v)?.contains("2-byte value") == true)
        v.notes = [VmlinuxBuilder.Note(desc: [0, 0, 0, 1], descsz: 64)] // declares more than the area has
        #expect(noteError(v)?.contains("runs past the end of the area") == true)
        v.notes = [VmlinuxBuilder.pvhNote(0x100_0000)]; v.noteSizeOverride = 8 // header cut off
        #expect(noteError(v)?.contains("cut off") == true)
        v.noteSizeOverride = 1 << 20
        #expect(noteError(v) != nil)
        v.noteSizeOverride = nil; v.noteOffsetSkew = 2
        #expect(noteError(v)?.contains("not 4-byte aligned") == true)
        v.noteOffsetSkew = 4; v.noteAlign = 8
        #expect(noteError(v)?.contains("not 8-byte aligned") == true)
        v.noteOffsetSkew = 0; v.noteAlign = 4
        v = VmlinuxBuilder(); v.notes = [VmlinuxBuilder.pvhNote64(0x1_0100_0000)]
        #expect(noteError(v)?.contains("above 4 GiB") == true)
        v.notes = [VmlinuxBuilder.pvhNote(0x100_0000), VmlinuxBuilder.pvhNote(0x100_0004)]
        #expect(noteError(v)?.contains("disagree") == true)
        // A PVH entry outside the loaded code: in the data segment, or nowhere.
        v.notes = [VmlinuxBuilder.pvhNote(0x120_0000)]
        #expect(linuxParseError(v.build()) == .entryOutsideImage(0x120_0000))
        v.notes = [VmlinuxBuilder.pvhNote(0x100_0100)] // one past the text's file bytes
        #expect(linuxParseError(v.build()) == .entryOutsideImage(0x100_0100))
    }

    @Test func refusesBadVmlinux() {
        var v = VmlinuxBuilder(); v.ident[4] = 1
        if case .elf(.unsupported(let why)) = linuxParseError(v.build()) { #expect(why.contains("32-bit")) } else { Issue.record("ELF32 accepted") }
        v = VmlinuxBuilder(); v.machine = 3
        if case .elf(.unsupported) = linuxParseError(v.build()) {} else { Issue.record("i386 accepted") }
        v = VmlinuxBuilder(); v.type = 3
        if case .elf(.unsupported) = linuxParseError(v.build()) {} else { Issue.record("ET_DYN accepted") }
        #expect(linuxParseError(Array(VmlinuxBuilder().build().prefix(40))) == .elf(.truncated(what: "the ELF header", needed: 64, available: 40)))
        // No loadable segment: only a note, or only empty PT_LOADs.
        v = VmlinuxBuilder(); v.segments = []; v.notes = [VmlinuxBuilder.pvhNote(0x100_0000)]
        #expect(linuxParseError(v.build()) == .elf(.noLoadableSegments))
        v = VmlinuxBuilder(); v.segments = [VmlinuxBuilder.Seg(flags: 5, vaddr: 0, paddr: 0x100_0000, data: [], memsz: 0)]
        #expect(linuxParseError(v.build()) == .elf(.noLoadableSegments))
        // File bytes past the end of the file.
        v = VmlinuxBuilder(); v.segments[1].offset = 0xff_0000
        if case .elf(.badSegment(index: 1, _)) = linuxParseError(v.build()) {} else { Issue.record("segment past EOF accepted") }
        // Overlapping physical ranges (the data's bss runs into the next segment).
        v = VmlinuxBuilder(); v.segments[0].memsz = 0x20_0001
        #expect(linuxParseError(v.build()) == .elf(.overlappingSegments(0, 1)))
        // Below 1 MiB, or into the MMIO hole.
        v = VmlinuxBuilder(); v.segments[1].paddr = 0x9_0000
        #expect(linuxParseError(v.build()) == .elf(.outOfRange(index: 1, address: 0x9_0000, end: 0x9_3000, allowedStart: 0x10_0000, allowedEnd: 0xc000_0000)))
        v = VmlinuxBuilder(); v.segments[1].paddr = 0xbfff_f000
        if case .elf(.outOfRange(index: 1, _, _, _, _)) = linuxParseError(v.build()) {} else { Issue.record("segment in the hole accepted") }
        v = VmlinuxBuilder(); v.segments[1].paddr = UInt64.max - 0x10
        if case .elf(.badSegment(index: 1, _)) = linuxParseError(v.build()) {} else { Issue.record("wrapping segment accepted") }
        // The entry in the data segment, in the text's bss, or outside everything.
        for e: UInt64 in [0x120_0000, 0x100_0100, 0x5000_0000, 0xffff_ffff_8120_0000] {
            v = VmlinuxBuilder(); v.entry = e
            v.segments[0].memsz = 0x1000
            if case .entryOutsideImage = linuxParseError(v.build()) {} else { Issue.record("entry \(String(e, radix: 16)) accepted") }
        }
        v = VmlinuxBuilder(); v.segments.append(VmlinuxBuilder.Seg(type: 3, flags: 4, vaddr: 0, paddr: 0, data: [0]))
        if case .elf(.unsupported(let why)) = linuxParseError(v.build()) { #expect(why.contains("PT_INTERP")) } else { Issue.record("PT_INTERP accepted") }
    }
}

@Suite struct LinuxBootPlanTests {
    @Test func zeroPageFieldsAtTheirProtocolOffsets() throws {
        var b = BzImageBuilder(); b.setupData = 0xdead_beef; b.hardwareSubarch = 1
        let image = b.build()
        let initrd = [UInt8](repeating: 0xab, count: 10_000)
        let plan = try linuxPlan(image, initrd: initrd, devices: [testDisk])
        let zp = try #require(plan.chunks.first { $0.address == LinuxBootLayout.zeroPage }?.bytes)
        let r = ByteReader(zp)
        #expect(zp.count == 4096)
        // The image's setup header, with the loader's fields filled in.
        #expect(r.u16(0x1fe) == 0xaa55 && r.u32(0x202) == 0x5372_6448 && r.u16(0x206) == 0x020f)
        #expect(r.u8(0x211) == 0x01 && r.u16(0x236) == 0x03 && r.u32(0x230) == 0x20_0000)
        #expect(r.u32(0x238) == 0x7ff && r.u32(0x260) == 0x40_0000 && r.u64(0x258) == 0x100_0000)
        #expect(r.u8(0x210) == 0xff)                                // type_of_loader
        #expect(r.u32(0x214) == 0x100_0000)                         // code32_start
        #expect(r.u32(0x228) == 0x2_0000 && r.u32(0x0c8) == 0)      // cmd_line_ptr
        #expect(r.u64(0x250) == 0 && r.u32(0x23c) == 0)             // setup_data, hardware_subarch cleared
        let rd = try #require(plan.initrd)
        #expect(r.u32(0x218) == UInt32(rd.lowerBound) && r.u32(0x21c) == 10_000)
        #expect(r.u32(0x0c0) == 0 && r.u32(0x0c4) == 0)
        // Nothing beyond the header copied from the image.
        #expect(zp[0x26c..<0x290].allSatisfy { $0 == 0 })
        #expect(r.u64(0x070) == ACPITables.base)                    // acpi_rsdp_addr
        #expect(zp[0..<0x1e8].enumerated().allSatisfy { ($0.offset >= 0xc0 && $0.offset < 0xcc) || ($0.offset >= 0x70 && $0.offset < 0x78) || $0.element == 0 })
        // e820 at 0x2d0, count at 0x1e8.
        #expect(r.u8(0x1e8) == 5)
        let expected: [(UInt64, UInt64, UInt32)] = [
            (0, 0x1000, 1), (0x1000, 0x2f000, 2), (0x3_0000, 0x9_fc00 - 0x3_0000, 1),
            (0x9_fc00, 0x10_0000 - 0x9_fc00, 2), (0x10_0000, (64 << 20) - 0x10_0000, 1),
        ]
        for (i, e) in expected.enumerated() {
            let o = 0x2d0 + 20 * i
            #expect(r.u64(o) == e.0 && r.u64(o + 8) == e.1 && r.u32(o + 16) == e.2, "e820 entry \(i)")
        }
        #expect(r.u64(0x2d0 + 20 * 5) == 0 && r.u64(0x2d0 + 20 * 5 + 8) == 0)
        // The kernel's bytes at its load address; the command line at cmd_line_ptr.
        #expect(guestBytes(plan, 0x100_0000, 0x600) == Array(image[0xa00...]))
        #expect(guestBytes(plan, 0x2_0000, plan.commandLine.utf8.count + 1) == Array(plan.commandLine.utf8) + [0])
        #expect(plan.commandLine == "console=ttyS0 pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5")
    }

    @Test func e820MapIsSortedAndCoversRAM() throws {
        #expect(throws: LinuxBootError.self) { try LinuxBootPlanner.memoryMap(memorySize: 0) }
        for mem: UInt64 in [2 << 20, 64 << 20, 3 << 30] {
            let map = try LinuxBootPlanner.memoryMap(memorySize: mem)
            #expect(map.first?.address == 0 && map.last?.end == mem)
            for (a, b) in zip(map, map.dropFirst()) { #expect(a.end == b.address) }
            #expect(map.allSatisfy { $0.size > 0 })
            #expect(map.filter { $0.kind == .ram }.map(\.address) == [0, 0x3_0000, 0x10_0000])
            // The boot structures are all inside the reserved range.
            let boot = map[1]
            #expect(boot.kind == .reserved)
            for a in [LinuxBootLayout.gdt, LinuxBootLayout.startInfo, LinuxBootLayout.zeroPage, LinuxBootLayout.stackBottom,
                      LinuxBootLayout.pageTablePool + 8 * 4096 - 1, LinuxBootLayout.commandLine + LinuxBootLayout.commandLineAreaSize - 1] {
                #expect(a >= boot.address && a < boot.end)
            }
        }
    }

    @Test func virtioDevicesOnTheCommandLine() throws {
        #expect(testDisk.commandLineParameter == "virtio_mmio.device=4K@0xd0000000:5")
        #expect(testNet.commandLineParameter == "virtio_mmio.device=1M@0xd0100000:6")
        #expect(VirtioMMIODeviceInfo(base: 0xd000_0000, size: 0x3000, irq: 7).commandLineParameter == "virtio_mmio.device=12K@0xd0000000:7")
        #expect(VirtioMMIODeviceInfo(DeviceWindow(kind: 4, irq: 5, base: 0xd000_0000, size: 0x1000)) == testDisk)
        let plan = try linuxPlan(BzImageBuilder().build(), commandLine: "console=ttyS0 root=/dev/vda", devices: [testDisk, testNet])
        #expect(plan.commandLine == "console=ttyS0 root=/dev/vda pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=1M@0xd0100000:6")
        #expect(plan.devices == [testDisk, testNet])
        // Before "--", which hands the rest to init; a quoted "--" inside a value is no separator.
        func compose(_ s: String) throws -> String { String(decoding: try LinuxCommandLine.compose(s, devices: [testDisk]), as: UTF8.self) }
        #expect(try compose("quiet -- single") == "quiet pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5 -- single")
        #expect(try compose("-- init") == "pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5 -- init")
        #expect(try compose("a=\"x -- y\" b") == "a=\"x -- y\" b pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5")
        #expect(try compose("a \"--\" b") == "a pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5 \"--\" b")
        #expect(try compose("") == "pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5")
        #expect(try compose("a --x") == "a --x pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5")
        #expect(String(decoding: try LinuxCommandLine.compose("  keep  ", devices: []), as: UTF8.self) == "  keep pci=off reboot=k")
        // The defaults give way to the operator's own setting of the same parameter, before `--`
        // only (after it, words are init's).
        #expect(try compose("pci=nocrs quiet") == "pci=nocrs quiet reboot=k virtio_mmio.device=4K@0xd0000000:5")
        #expect(try compose("reboot=a pci=nocrs") == "reboot=a pci=nocrs virtio_mmio.device=4K@0xd0000000:5")
        #expect(try compose("reboot=efi") == "reboot=efi pci=off virtio_mmio.device=4K@0xd0000000:5")
        #expect(try compose("a=\"pci=1\" b") == "a=\"pci=1\" b pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5")
        #expect(try compose("x -- pci=on") == "x pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5 -- pci=on")
    }

    /// A reboot that falls back to the BIOS (Linux's machine_real_restart jumps to F000:FFF0)
    /// finds the i8042 reset there: the VM ends instead of running whatever the RAM holds.
    @Test func theResetVectorResets() throws {
        let plan = try linuxPlan(BzImageBuilder().build(), commandLine: "console=ttyS0")
        #expect(guestBytes(plan, 0xf_fff0, 8) == [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd, 0x00])
        // In the reserved legacy hole of the e820 map, so the kernel never reuses it.
        #expect(plan.e820.contains { $0.kind == .reserved && $0.address <= 0xf_fff0 && $0.address + $0.size >= 0x10_0000 })
        checkChunks(plan)
    }

    @Test func refusesBadCommandLines() {
        let image = BzImageBuilder().build()
        #expect(linuxPlanError(image, commandLine: "a\u{0}b") == .badCommandLine("it contains a NUL byte"))
        #expect(linuxPlanError(image, commandLine: "init=\"/bin/sh") == .badCommandLine("unbalanced double quote"))
        var b = BzImageBuilder(); b.cmdlineSize = 40
        let line = "console=ttyS0"
        // 13 + 1 + 7 (pci=off) + 1 + 8 (reboot=k) + 1 + 34 bytes with the device: too long for 40.
        #expect(linuxPlanError(b.build(), commandLine: line, devices: [testDisk]) == .commandLineTooLong(length: 65, maximum: 40))
        #expect(linuxPlanError(b.build(), commandLine: line) == nil)
        // With " pci=off reboot=k" (17 bytes) added: 23 fit, 24 do not; and the operator's own
        // pci= and reboot= add none.
        #expect(linuxPlanError(b.build(), commandLine: String(repeating: "x", count: 23)) == nil)
        #expect(linuxPlanError(b.build(), commandLine: String(repeating: "x", count: 24)) == .commandLineTooLong(length: 41, maximum: 40))
        #expect(linuxPlanError(b.build(), commandLine: "pci=1 reboot=k " + String(repeating: "x", count: 25)) == nil)
        // A vmlinux has no cmdline_size: Linux's 2047.
        #expect(linuxPlanError(VmlinuxBuilder().build(), commandLine: String(repeating: "x", count: 2031)) == .commandLineTooLong(length: 2048, maximum: 2047))
        // A huge cmdline_size is capped by the 64 KiB area.
        b.cmdlineSize = 0xffff_ffff
        #expect(linuxPlanError(b.build(), commandLine: String(repeating: "x", count: 0xffef)) == .commandLineTooLong(length: 0x1_0000, maximum: 0xffff))
    }

    @Test func refusesKernelsTooBigForRAM() {
        var b = BzImageBuilder(); b.initSize = 0x300_0000 // 48 MiB from 16 MiB: needs 64 MiB
        #expect(linuxPlanError(b.build(), memorySize: 64 << 20) == nil)
        #expect(linuxPlanError(b.build(), memorySize: 63 << 20) == .kernelDoesNotFit(start: 0x100_0000, end: 0x400_0000, memorySize: 63 << 20))
        #expect(linuxPlanError(BzImageBuilder().build(), memorySize: 16 << 20) == .kernelDoesNotFit(start: 0x100_0000, end: 0x140_0000, memorySize: 16 << 20))
        #expect(linuxPlanError(VmlinuxBuilder().build(), memorySize: 18 << 20) == .kernelDoesNotFit(start: 0x100_0000, end: 0x120_3000, memorySize: 18 << 20))
    }

    @Test func refusesBadMemorySizes() {
        let image = BzImageBuilder().build()
        for m: UInt64 in [0, 1 << 20, (64 << 20) + 4096, (3 << 30) + (1 << 20), UInt64.max] {
            if case .badMemorySize = linuxPlanError(image, memorySize: m) {} else { Issue.record("memory size \(m) accepted") }
        }
        #expect(linuxPlanError(image, memorySize: 3 << 30) == nil)
    }

    @Test func refusesBadDevices() {
        let image = BzImageBuilder().build()
        func deviceError(_ d: [VirtioMMIODeviceInfo]) -> Int? {
            if case .badDevice(let i, _) = linuxPlanError(image, devices: d) { return i }
            return nil
        }
        #expect(deviceError([testDisk, VirtioMMIODeviceInfo(base: 0xd000_0000, size: 0x1000, irq: 6)]) == 1) // overlap
        #expect(deviceError([VirtioMMIODeviceInfo(base: 0x100_0000, size: 0x1000, irq: 5)]) == 0)         // in RAM
        #expect(deviceError([VirtioMMIODeviceInfo(base: 0xfec0_0000, size: 0x1000, irq: 5)]) == 0)        // IOAPIC
        #expect(deviceError([VirtioMMIODeviceInfo(base: 0xfebf_f000, size: 0x2000, irq: 5)]) == 0)        // runs into it
        #expect(deviceError([VirtioMMIODeviceInfo(base: UInt64.max - 0xfff, size: 0x1000, irq: 5)]) == 0) // wraps
        #expect(deviceError([VirtioMMIODeviceInfo(base: 0xd000_0800, size: 0x1000, irq: 5)]) == 0)       // misaligned
        #expect(deviceError([VirtioMMIODeviceInfo(base: 0xd000_0000, size: 0, irq: 5)]) == 0)
        for irq: UInt32 in [0, 2, 24, .max] {
            #expect(deviceError([VirtioMMIODeviceInfo(base: 0xd000_0000, size: 0x1000, irq: irq)]) == 0, "IRQ \(irq)")
        }
        let many = (0..<33).map { VirtioMMIODeviceInfo(base: 0xd000_0000 + UInt64($0) * 0x1000, size: 0x1000, irq: 5) }
        #expect(deviceError(many) != nil)
        #expect(deviceError(Array(many.prefix(32))) == nil) // IRQs may be shared
    }

    @Test func initrdPlacement() throws {
        let image = BzImageBuilder().build()
        // As high as RAM allows, page aligned.
        var plan = try linuxPlan(image, initrd: [UInt8](repeating: 1, count: 5000), memorySize: 64 << 20)
        let top: UInt64 = (64 << 20) - 0x2000
        #expect(plan.initrd == top..<(top + 5000))
        #expect(guestBytes(plan, plan.initrd?.lowerBound ?? 0, 5000) == [UInt8](repeating: 1, count: 5000))
        // Below initrd_addr_max when RAM goes higher.
        var b = BzImageBuilder(); b.initrdAddrMax = 0x37ff_ffff
        plan = try linuxPlan(b.build(), initrd: [UInt8](repeating: 1, count: 0x1000), memorySize: 2 << 30)
        #expect(plan.initrd == 0x37ff_f000..<0x3800_0000)
        // Below the kernel when the limit is under it.
        b.initrdAddrMax = 0xff_ffff
        plan = try linuxPlan(b.build(), initrd: [UInt8](repeating: 1, count: 0x1800), memorySize: 64 << 20)
        #expect(plan.initrd == 0xff_e000..<0xff_f800)
        // Right above the kernel's init_size footprint, and no further.
        let room: UInt64 = (24 << 20) - 0x140_0000
        plan = try linuxPlan(image, initrd: [UInt8](repeating: 1, count: Int(room)), memorySize: 24 << 20)
        #expect(plan.initrd == 0x140_0000..<(24 << 20))
        // One byte more goes below the kernel; more than either gap fits nowhere.
        plan = try linuxPlan(image, initrd: [UInt8](repeating: 1, count: Int(room) + 1), memorySize: 24 << 20)
        #expect(plan.initrd == (0x100_0000 - room - 0x1000)..<(0x100_0000 - 0x1000 + 1))
        let tooBig: UInt64 = (15 << 20) + 1
        #expect(linuxPlanError(image, initrd: [UInt8](repeating: 1, count: Int(tooBig)), memorySize: 24 << 20)
                == .initrdDoesNotFit(size: tooBig, lowest: 0x10_0000, highest: 24 << 20))
        #expect(linuxPlanError(image, initrd: [UInt8](repeating: 1, count: 15 << 20), memorySize: 24 << 20) == nil)
        #expect(linuxPlanError(image, initrd: [], memorySize: 64 << 20) == .emptyInitrd)
        // No initrd: the zero page says so.
        plan = try linuxPlan(image)
        #expect(plan.initrd == nil)
        let zp = ByteReader(guestBytes(plan, LinuxBootLayout.zeroPage, 4096))
        #expect(zp.u32(0x218) == 0 && zp.u32(0x21c) == 0)
    }

    @Test func longModeStateAndGDT() throws {
        let plan = try linuxPlan(BzImageBuilder().build())
        let cpu = plan.cpu
        #expect(cpu.mode == .long64)
        #expect(cpu.rip == 0x100_0200 && cpu.rsi == LinuxBootLayout.zeroPage)
        #expect(cpu.cr0 & 0x8000_0001 == 0x8000_0001 && cpu.cr4 & 0x20 != 0 && cpu.efer & 0x500 == 0x500)
        #expect(cpu.rflags & 0x200 == 0) // interrupts off
        #expect(cpu.cs.selector == 0x10 && cpu.cs.long && !cpu.cs.defaultSize32 && cpu.cs.type == 0xb && cpu.cs.dpl == 0)
        for s in [cpu.ds, cpu.es, cpu.ss, cpu.fs, cpu.gs] {
            #expect(s.selector == 0x18 && s.type == 0x3 && s.base == 0 && s.limit == 0xffff_ffff && s.present && s.codeOrData)
        }
        #expect(cpu.tr.selector == 0x20 && cpu.tr.type == 0xb && !cpu.tr.codeOrData && cpu.tr.limit == 0x67 && cpu.tr.base == 0)
        // The GDT in memory holds exactly the descriptors the segment registers were loaded from.
        #expect(cpu.gdtBase == LinuxBootLayout.gdt && cpu.gdtLimit == 0x2f)
        let gdt = ByteReader(guestBytes(plan, LinuxBootLayout.gdt, 0x30))
        for seg in [cpu.cs, cpu.ds, cpu.tr] {
            #expect(SegmentState(selector: seg.selector, descriptor: gdt.u64(Int(seg.selector))) == seg)
        }
        #expect(SegmentState(selector: 0x08, descriptor: gdt.u64(8)).defaultSize32)
        #expect(gdt.u64(0) == 0)
    }

    @Test func pageTablesIdentityMapTheFirst4GiB() throws {
        let plan = try linuxPlan(BzImageBuilder().build(), memorySize: 1 << 30)
        #expect(plan.pageTablePages == 6) // PML4, PDPT, 4 PDs of 2 MiB pages
        #expect(plan.cpu.cr3 == LinuxBootLayout.pageTablePool)
        for va: UInt64 in [0, 0x7000, 0x2_0000, 0x100_0200, 0x3fff_ffff, 0xbfff_f123, 0xd000_0000, 0xffff_ffff] {
            let t = linuxWalk(plan, va)
            #expect(t?.physical == va, "0x\(String(va, radix: 16))")
            #expect(t?.flags == [.writable, .executable], "0x\(String(va, radix: 16))")
        }
        #expect(linuxWalk(plan, 1 << 32) == nil)
    }

    @Test func vmlinuxBootsThroughTheZeroPage() throws {
        var v = VmlinuxBuilder(); v.entry = 0xffff_ffff_8100_0000
        let image = v.build()
        let plan = try linuxPlan(image, initrd: [7, 7, 7], commandLine: "root=/dev/vda", devices: [testDisk])
        #expect(plan.kind == .elf64(entry: 0x100_0000))
        #expect(plan.cpu.mode == .long64 && plan.cpu.rip == 0x100_0000 && plan.cpu.rsi == LinuxBootLayout.zeroPage)
        let zp = ByteReader(guestBytes(plan, LinuxBootLayout.zeroPage, 4096))
        #expect(zp.u16(0x1fe) == 0xaa55 && zp.u32(0x202) == 0x5372_6448 && zp.u8(0x210) == 0xff)
        #expect(zp.u32(0x228) == 0x2_0000 && zp.u32(0x238) == 2047 && zp.u8(0x1e8) == 5)
        #expect(zp.u32(0x21c) == 3 && UInt64(zp.u32(0x218)) == plan.initrd?.lowerBound)
        // Segments by physical address; the data's bss is left to fresh (zero) RAM.
        #expect(guestBytes(plan, 0x100_0000, 4) == [0xf4, 1, 2, 3])
        #expect(guestBytes(plan, 0x120_0000, 8) == [1, 2, 3, 4, 0, 0, 0, 0])
        #expect(plan.chunks.contains { $0.address == 0x120_0000 && $0.bytes == [1, 2, 3, 4] })
        #expect(plan.kernel == 0x100_0000..<0x120_3000)
    }

    @Test func pvhStartInfo() throws {
        var v = VmlinuxBuilder(); v.notes = [VmlinuxBuilder.pvhNote(0x100_0010)]
        let plan = try linuxPlan(v.build(), initrd: [UInt8](repeating: 9, count: 0x2345), commandLine: "console=hvc0",
                                 memorySize: 128 << 20, devices: [testDisk, testNet])
        #expect(plan.kind == .pvh(entry32: 0x100_0010))
        let cpu = plan.cpu
        #expect(cpu.mode == .protected32 && cpu.rip == 0x100_0010 && cpu.rbx == LinuxBootLayout.startInfo)
        #expect(cpu.cr0 & 0x8000_0000 == 0 && cpu.cr0 & 1 == 1 && cpu.cr4 == 0 && cpu.efer == 0)
        #expect(cpu.rflags & 0x200 == 0)
        #expect(cpu.cs.defaultSize32 && !cpu.cs.long && cpu.cs.base == 0 && cpu.cs.limit == 0xffff_ffff && cpu.cs.type & 0xa == 0xa)
        #expect(cpu.ds.defaultSize32 && cpu.ds.limit == 0xffff_ffff && cpu.ds.type & 0x2 == 0x2 && cpu.ss == cpu.ds)
        #expect(cpu.tr.base == 0 && cpu.tr.limit == 0x67)
        #expect(plan.pageTablePages == 0)
        #expect(!plan.chunks.contains { $0.address == LinuxBootLayout.zeroPage })

        let si = ByteReader(guestBytes(plan, LinuxBootLayout.startInfo, 4096))
        #expect(si.u32(0) == 0x336e_c578 && si.u32(4) == 1 && si.u32(8) == 0)
        #expect(si.u32(12) == 1)                                  // nr_modules
        let modlist = Int(si.u64(16) - LinuxBootLayout.startInfo)
        #expect(si.u64(modlist) == plan.initrd?.lowerBound && si.u64(modlist + 8) == 0x2345)
        #expect(si.u64(24) == LinuxBootLayout.commandLine)        // cmdline_paddr
        #expect(si.u64(32) == ACPITables.base)                    // rsdp_paddr
        let memmap = Int(si.u64(40) - LinuxBootLayout.startInfo)
        #expect(si.u32(48) == 5 && si.u32(52) == 0)
        var entries: [E820Entry] = []
        for i in 0..<5 {
            let o = memmap + 24 * i
            entries.append(E820Entry(address: si.u64(o), size: si.u64(o + 8), kind: E820Entry.Kind(rawValue: si.u32(o + 16)) ?? .reserved))
            #expect(si.u32(o + 20) == 0)
        }
        #expect(entries == plan.e820 && entries.last?.end == 128 << 20)
        #expect(guestBytes(plan, LinuxBootLayout.commandLine, plan.commandLine.utf8.count + 1).last == 0)
        #expect(plan.commandLine.hasPrefix("console=hvc0 pci=off reboot=k virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=1M@0xd0100000:6"))
        // The module list is absent without an initrd.
        let bare = try linuxPlan(v.build())
        let si2 = ByteReader(guestBytes(bare, LinuxBootLayout.startInfo, 64))
        #expect(si2.u32(12) == 0 && si2.u64(16) == 0)
    }

    @Test func errorsDescribeThemselves() {
        let samples: [LinuxBootError] = [
            .notAKernel("x"), .truncated(what: "w", needed: 1, available: 0), .unsupportedProtocol(version: 0x020b),
            .badSetupHeader("x"), .notLoadedHigh, .no64BitEntry, .badAlignment(3), .elf(.noLoadableSegments), .badNote("x"),
            .entryOutsideImage(1), .kernelOutOfRange(start: 0, end: 1), .kernelDoesNotFit(start: 0, end: 1, memorySize: 2 << 20),
            .initrdDoesNotFit(size: 1, lowest: 0, highest: 0), .emptyInitrd, .commandLineTooLong(length: 2, maximum: 1),
            .badCommandLine("x"), .badMemorySize("x"), .badDevice(index: 0, reason: "x"), .pageTables(.misaligned(1)),
        ]
        for e in samples { #expect(!e.description.isEmpty) }
        #expect(LinuxBootError.unsupportedProtocol(version: 0x020b).description.contains("2.11"))
    }
}

/// A stock kernel, when this machine has one: `/boot/vmlinuz-*`, or the file named by
/// `BULKHEAD_TEST_KERNEL` (a bzImage or a vmlinux).
let realKernelPath: String? = {
    if let p = ProcessInfo.processInfo.environment["BULKHEAD_TEST_KERNEL"], FileManager.default.isReadableFile(atPath: p) { return p }
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
    return names.filter { $0.hasPrefix("vmlinuz-") }.sorted().last.map { "/boot/" + $0 }
        .flatMap { FileManager.default.isReadableFile(atPath: $0) ? $0 : nil }
}()

@Suite(.enabled(if: realKernelPath != nil, "no readable /boot/vmlinuz-* (or BULKHEAD_TEST_KERNEL) on this machine"))
struct RealLinuxKernelTests {
    @Test func parsesAndPlansAStockKernel() throws {
        let path = try #require(realKernelPath)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let kernel = try LinuxKernel.parse(bytes)
        #expect(kernel.footprint.lowerBound >= 1 << 20)
        if let h = kernel.setupHeader {
            #expect(h.protocolVersion >= 0x020c && h.xloadFlags & 1 == 1)
            #expect(kernel.kind == .bzImage(entry64: kernel.footprint.lowerBound + 0x200))
        }
        let memory = max(256 << 20, (kernel.footprint.upperBound + (64 << 20)) / (1 << 20) * (1 << 20))
        let plan = try LinuxBootPlanner.plan(kernel: kernel, initrd: [UInt8](repeating: 0, count: 1 << 20),
                                             commandLine: "console=ttyS0 earlyprintk=serial", memorySize: memory, devices: [testDisk])
        checkChunks(plan)
        #expect(plan.commandLine.hasSuffix("virtio_mmio.device=4K@0xd0000000:5"))
        if let r = plan.initrd { #expect(r.lowerBound >= kernel.footprint.upperBound || r.upperBound <= kernel.footprint.lowerBound) }
    }
}
