import TestSupport
import Testing
@testable import Boot

let lo = GuestLayout.programStart
let hi: UInt64 = 64 << 20

func refusal(_ bytes: [UInt8]) -> ELFError? {
    do { _ = try ELFImage.parse(bytes, allowedStart: lo, allowedEnd: hi); return nil } catch { return error }
}

@Suite struct ELFTests {
    @Test func validImageParses() throws {
        let image = try ELFImage.parse(ELFBuilder().build(), allowedStart: lo, allowedEnd: hi)
        #expect(image.entry == 0x40_0000)
        #expect(image.segments.count == 2)
        #expect(image.segments[0].executable && !image.segments[0].writable)
        #expect(image.segments[1].writable && !image.segments[1].executable)
        #expect(image.segments[1].memorySize == 0x2000)
        #expect(image.highestAddress == 0x40_3000)
    }

    @Test func refusesNonELF() {
        #expect(refusal([]) == .notELF)
        #expect(refusal(Array("#!/bin/sh\necho hi\n".utf8)) == .notELF)
        var b = ELFBuilder().build(); b[0] = 0x7e
        #expect(refusal(b) == .notELF)
    }

    @Test func refusesTruncatedFiles() {
        let full = ELFBuilder().build()
        #expect(refusal(Array(full.prefix(40))) == .truncated(what: "the ELF header", needed: 64, available: 40))
        // Header intact, program header table cut off.
        if case .truncated = refusal(Array(full.prefix(100))) {} else { Issue.record("expected truncation") }
        // Headers intact, segment data cut off.
        if case .badSegment(0, _) = refusal(Array(full.prefix(0x1010))) {} else { Issue.record("expected bad segment") }
    }

    @Test func refusesWrongIdentification() {
        var e = ELFBuilder(); e.ident[4] = 1
        #expect(refusal(e.build()) == .unsupported("not a 64-bit ELF file (class 1)"))
        e = ELFBuilder(); e.ident[5] = 2
        #expect(refusal(e.build()) == .unsupported("not little-endian (data encoding 2)"))
        e = ELFBuilder(); e.ident[6] = 0
        if case .badHeader = refusal(e.build()) {} else { Issue.record("identification version accepted") }
        e = ELFBuilder(); e.ident[7] = 9
        if case .unsupported = refusal(e.build()) {} else { Issue.record("foreign OS ABI accepted") }
    }

    @Test func refusesWrongTypeMachineVersion() {
        var e = ELFBuilder(); e.type = 3
        if case .unsupported(let why) = refusal(e.build()) { #expect(why.contains("ET_DYN")) } else { Issue.record("PIE accepted") }
        e = ELFBuilder(); e.type = 1
        if case .unsupported = refusal(e.build()) {} else { Issue.record("relocatable accepted") }
        e = ELFBuilder(); e.machine = 183
        #expect(refusal(e.build()) == .unsupported("machine 183 is not x86-64 (62)"))
        e = ELFBuilder(); e.version = 2
        #expect(refusal(e.build()) == .badHeader("version 2 is not 1"))
        e = ELFBuilder(); e.ehsize = 52
        if case .badHeader = refusal(e.build()) {} else { Issue.record("bad ehsize accepted") }
        e = ELFBuilder(); e.phentsize = 32
        if case .badHeader = refusal(e.build()) {} else { Issue.record("bad phentsize accepted") }
    }

    @Test func refusesBadProgramHeaderTables() {
        var e = ELFBuilder(); e.phnumOverride = 0
        #expect(refusal(e.build()) == .noLoadableSegments)
        e = ELFBuilder(); e.phnumOverride = 65
        if case .badHeader = refusal(e.build()) {} else { Issue.record("65 headers accepted") }
        e = ELFBuilder(); e.phoffOverride = UInt64.max - 10
        if case .truncated = refusal(e.build()) {} else { Issue.record("overflowing phoff accepted") }
        e = ELFBuilder(); e.phnumOverride = 60
        if case .truncated = refusal(Array(e.build().prefix(0x200))) {} else { Issue.record("table past end of file accepted") }
    }

    @Test func refusesBadSegments() {
        var e = ELFBuilder(); e.segments[1].memsz = 2 // filesz 4 > memsz 2
        if case .badSegment(1, _) = refusal(e.build()) {} else { Issue.record("filesz > memsz accepted") }
        e = ELFBuilder(); e.segments[1].offset = 1 << 40
        if case .badSegment(1, _) = refusal(e.build()) {} else { Issue.record("offset past file accepted") }
        e = ELFBuilder(); e.segments[1].offset = UInt64.max - 1
        if case .badSegment(1, _) = refusal(e.build()) {} else { Issue.record("overflowing offset accepted") }
        e = ELFBuilder(); e.segments[1].vaddr = UInt64.max - 0xfff; e.segments[1].memsz = 0x2000
        if case .badSegment(1, _) = refusal(e.build()) {} else { Issue.record("overflowing vaddr accepted") }
        e = ELFBuilder(); e.segments[1].align = 3
        if case .badSegment(1, _) = refusal(e.build()) {} else { Issue.record("alignment 3 accepted") }
        e = ELFBuilder(); e.segments[1].offset = 0x2001
        if case .badSegment(1, _) = refusal(e.build()) {} else { Issue.record("incongruent offset accepted") }
        e = ELFBuilder(); e.segments[1].flags = 0
        if case .badSegment(1, _) = refusal(e.build()) {} else { Issue.record("segment without permissions accepted") }
    }

    @Test func enforcesWriteXorExecute() {
        var e = ELFBuilder(); e.segments[0].flags = 7
        #expect(refusal(e.build()) == .badSegment(index: 0, reason: "segment is both writable and executable (W^X is enforced)"))
    }

    @Test func refusesOverlapsAtPageGranularity() {
        var e = ELFBuilder(); e.segments[1].vaddr = 0x40_0800 // shares the text page
        #expect(refusal(e.build()) == .overlappingSegments(0, 1))
    }

    @Test func refusesEntryOutsideExecutableSegment() {
        var e = ELFBuilder(); e.entry = 0x40_1000 // in the data segment
        #expect(refusal(e.build()) == .entryNotExecutable(0x40_1000))
        e = ELFBuilder(); e.entry = 0x9000_0000
        #expect(refusal(e.build()) == .entryNotExecutable(0x9000_0000))
        e = ELFBuilder(); e.entry = 0x40_0040 // past the text's memory size (64 bytes)
        #expect(refusal(e.build()) == .entryNotExecutable(0x40_0040))
    }

    @Test func refusesSegmentsOutsideTheProgramArea() {
        var e = ELFBuilder(); e.segments[1].vaddr = 0x1000 // the VMM's system area
        if case .outOfRange(1, _, _, _, _) = refusal(e.build()) {} else { Issue.record("segment in system area accepted") }
        e = ELFBuilder(); e.segments[1].vaddr = hi - 0x1000 // runs into the stacks
        if case .outOfRange(1, _, _, _, _) = refusal(e.build()) {} else { Issue.record("segment past memory accepted") }
        e = ELFBuilder(); e.segments[1].memsz = 1 << 40 // bss larger than guest memory
        if case .outOfRange(1, _, _, _, _) = refusal(e.build()) {} else { Issue.record("huge bss accepted") }
    }

    @Test func refusesDynamicAndTLS() {
        for (t, word) in [(UInt32(2), "PT_DYNAMIC"), (3, "PT_INTERP"), (7, "PT_TLS")] {
            var e = ELFBuilder()
            e.segments.append(.init(type: t, flags: 4, vaddr: 0x40_5000, data: [0]))
            if case .unsupported(let why) = refusal(e.build()) { #expect(why.contains(word)) } else { Issue.record("\(word) accepted") }
        }
    }

    @Test func ignoresNotesButNeedsALoadSegment() throws {
        var e = ELFBuilder()
        e.segments.append(.init(type: 4, flags: 4, vaddr: 0, data: [1, 2, 3, 4], align: 4))
        _ = try ELFImage.parse(e.build(), allowedStart: lo, allowedEnd: hi)
        e = ELFBuilder(); e.segments = [.init(type: 4, flags: 4, vaddr: 0x40_0000, data: [1])]
        #expect(refusal(e.build()) == .noLoadableSegments)
    }

    /// Every prefix of a valid file is either refused cleanly or (for the full file) accepted.
    @Test func everyTruncationIsRefused() {
        let full = ELFBuilder().build()
        for n in stride(from: 0, to: 0x1000 + 0x1004, by: 7) where n < full.count - 0x1000 + 4 + 0x1000 {
            if n >= 0x1000 + 0x1000 + 4 { break }
            let r = refusal(Array(full.prefix(n)))
            #expect(r != nil, "prefix of \(n) bytes accepted")
        }
    }
}
