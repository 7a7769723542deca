import Boot

/// Builds small bzImages for tests, valid by default (protocol 2.15, relocatable, 64-bit entry,
/// loaded at 16 MiB), with knobs to break each field the parser checks.
public struct BzImageBuilder {
    public var setupSects: UInt8 = 4
    /// How many setup sectors the file really has (defaults to what setup_sects says).
    public var layoutSects: Int? = nil
    public var bootFlag: UInt16 = 0xaa55
    public var magic: UInt32 = 0x5372_6448
    public var version: UInt16 = 0x020f
    public var jumpByte: UInt8 = 0x6a // header ends at 0x26c, like Linux 6.x
    public var loadFlags: UInt8 = 0x01
    public var xloadFlags: UInt16 = 0x03
    public var kernelAlignment: UInt32 = 0x20_0000
    public var relocatable: UInt8 = 1
    public var prefAddress: UInt64 = 0x100_0000
    public var initSize: UInt32 = 0x40_0000
    public var cmdlineSize: UInt32 = 0x7ff
    public var initrdAddrMax: UInt32 = 0x7fff_ffff
    public var setupData: UInt64 = 0
    public var hardwareSubarch: UInt32 = 0
    /// The protected-mode kernel; `startup_64` at 0x200.
    public var payload: [UInt8] = BzImageBuilder.defaultPayload

    public init() {}

    public static let defaultPayload: [UInt8] = (0..<0x600).map { i in i == 0x200 ? 0xf4 : UInt8(truncatingIfNeeded: i * 7 + 1) }

    public var setupSize: Int { ((layoutSects ?? (setupSects == 0 ? 4 : Int(setupSects))) + 1) * 512 }

    public func build() -> [UInt8] {
        var w = ByteWriter(size: setupSize + payload.count)
        w.put(setupSects, at: 0x1f1)
        w.put(UInt32(0x7f00), at: 0x1f4)           // syssize: not used
        w.put(bootFlag, at: 0x1fe)
        w.put([0xeb, jumpByte], at: 0x200)
        w.put(magic, at: 0x202)
        w.put(version, at: 0x206)
        w.put(loadFlags, at: 0x211)
        w.put(UInt32(0x10_0000), at: 0x214)        // code32_start
        w.put(initrdAddrMax, at: 0x22c)
        w.put(kernelAlignment, at: 0x230)
        w.put(relocatable, at: 0x234)
        w.put(UInt8(21), at: 0x235)                // min_alignment
        w.put(xloadFlags, at: 0x236)
        w.put(cmdlineSize, at: 0x238)
        w.put(hardwareSubarch, at: 0x23c)
        w.put(setupData, at: 0x250)
        w.put(prefAddress, at: 0x258)
        w.put(initSize, at: 0x260)
        w.put(UInt32(0x190), at: 0x264)            // handover_offset
        w.put(payload, at: setupSize)
        return w.bytes
    }
}

/// Builds small `vmlinux` ELF files: two PT_LOAD segments linked at the kernel's high virtual
/// addresses and loaded at 16 MiB physical, optionally a PVH note (in a PT_NOTE segment or only
/// in an SHT_NOTE section).
public struct VmlinuxBuilder {
    public struct Seg {
        public var type: UInt32
        public var flags: UInt32
        public var vaddr: UInt64
        public var paddr: UInt64
        public var data: [UInt8]
        public var memsz: UInt64?
        public var offset: UInt64?
        public var align: UInt64
        public init(type: UInt32 = 1, flags: UInt32, vaddr: UInt64, paddr: UInt64, data: [UInt8], memsz: UInt64? = nil,
                    offset: UInt64? = nil, align: UInt64 = 0x1000) {
            self.type = type; self.flags = flags; self.vaddr = vaddr; self.paddr = paddr; self.data = data
            self.memsz = memsz; self.offset = offset; self.align = align
        }
    }
    public struct Note {
        public var name: [UInt8]
        public var type: UInt32
        public var desc: [UInt8]
        /// Override of the header's descsz (to declare more than is there).
        public var descsz: UInt32?
        public init(name: [UInt8] = Array("Xen".utf8) + [0], type: UInt32 = 18, desc: [UInt8], descsz: UInt32? = nil) {
            self.name = name; self.type = type; self.desc = desc; self.descsz = descsz
        }
    }
    public init() {}
    public enum NotePlacement { case segment, section, none }

    public var ident: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]
    public var type: UInt16 = 2
    public var machine: UInt16 = 62
    public var entry: UInt64 = 0x100_0000
    public var segments: [Seg] = [
        Seg(flags: 5, vaddr: 0xffff_ffff_8100_0000, paddr: 0x100_0000,
            data: [0xf4] + (1..<0x100).map { UInt8(truncatingIfNeeded: $0) }),
        Seg(flags: 6, vaddr: 0xffff_ffff_8120_0000, paddr: 0x120_0000, data: [1, 2, 3, 4], memsz: 0x3000),
    ]
    public var notes: [Note] = []
    public var placement: NotePlacement = .segment
    public var noteAlign: UInt64 = 4
    /// Added to the note area's file offset (to misalign it).
    public var noteOffsetSkew: UInt64 = 0
    /// Override of the note area's size (to cut it short).
    public var noteSizeOverride: UInt64? = nil

    public static func pvhNote(_ entry: UInt32) -> Note {
        var w = ByteWriter(size: 4); w.put(entry, at: 0)
        return Note(desc: w.bytes)
    }

    public static func pvhNote64(_ entry: UInt64) -> Note {
        var w = ByteWriter(size: 8); w.put(entry, at: 0)
        return Note(desc: w.bytes)
    }

    public func noteBytes() -> [UInt8] {
        func pad(_ n: Int) -> Int { let p = noteAlign == 8 ? 8 : 4; return (n + p - 1) / p * p }
        var out: [UInt8] = []
        for n in notes {
            let descOffset = pad(12 + n.name.count)
            var w = ByteWriter(size: descOffset + pad(n.desc.count))
            w.put(UInt32(n.name.count), at: 0)
            w.put(n.descsz ?? UInt32(n.desc.count), at: 4)
            w.put(n.type, at: 8)
            w.put(n.name, at: 12)
            w.put(n.desc, at: descOffset)
            out += w.bytes
        }
        return out
    }

    public func build() -> [UInt8] {
        let notesData = noteBytes()
        let hasNoteSegment = placement == .segment && !notes.isEmpty
        let phnum = segments.count + (hasNoteSegment ? 1 : 0)
        let dataStart = 0x1000
        let notesOffset = UInt64(dataStart + segments.count * 0x1000) + noteOffsetSkew
        let sectionsOffset = Int(notesOffset) + notesData.count + 64
        let total = placement == .section ? sectionsOffset + 3 * 64 : Int(notesOffset) + notesData.count
        var w = ByteWriter(size: max(total, dataStart))
        w.put(ident, at: 0)
        w.put(type, at: 16); w.put(machine, at: 18); w.put(UInt32(1), at: 20)
        w.put(entry, at: 24); w.put(UInt64(64), at: 32)
        w.put(UInt16(64), at: 52); w.put(UInt16(56), at: 54); w.put(UInt16(phnum), at: 56)
        for (i, s) in segments.enumerated() {
            let h = 64 + i * 56
            let off = s.offset ?? UInt64(dataStart + i * 0x1000)
            w.put(s.type, at: h); w.put(s.flags, at: h + 4); w.put(off, at: h + 8)
            w.put(s.vaddr, at: h + 16); w.put(s.paddr, at: h + 24)
            w.put(UInt64(s.data.count), at: h + 32); w.put(s.memsz ?? UInt64(s.data.count), at: h + 40)
            w.put(s.align, at: h + 48)
            if off < UInt64(w.bytes.count) { w.put(s.data, at: Int(off)) }
        }
        let noteSize = noteSizeOverride ?? UInt64(notesData.count)
        if hasNoteSegment {
            let h = 64 + segments.count * 56
            w.put(UInt32(4), at: h); w.put(UInt32(4), at: h + 4); w.put(notesOffset, at: h + 8)
            w.put(noteSize, at: h + 32); w.put(noteSize, at: h + 40); w.put(noteAlign, at: h + 48)
        }
        w.put(notesData, at: Int(notesOffset))
        if placement == .section {
            // Sections: null, .notes (SHT_NOTE), .text (SHT_PROGBITS).
            w.put(UInt64(sectionsOffset), at: 40); w.put(UInt16(64), at: 58); w.put(UInt16(3), at: 60)
            let n = sectionsOffset + 64
            w.put(UInt32(7), at: n + 4); w.put(notesOffset, at: n + 24); w.put(noteSize, at: n + 32); w.put(noteAlign, at: n + 48)
            let t = sectionsOffset + 128
            w.put(UInt32(1), at: t + 4); w.put(UInt64(dataStart), at: t + 24); w.put(UInt64(0x100), at: t + 32)
        }
        return w.bytes
    }
}
