import Boot

/// Builds small ELF64 files for tests and fuzzers, valid by default, with knobs to break them.
public struct ELFBuilder {
    public struct Seg {
        public var type: UInt32
        public var flags: UInt32
        public var vaddr: UInt64
        public var data: [UInt8]
        public var memsz: UInt64?
        public var offset: UInt64?
        public var align: UInt64
        public init(type: UInt32 = 1, flags: UInt32, vaddr: UInt64, data: [UInt8], memsz: UInt64? = nil, offset: UInt64? = nil,
                    align: UInt64 = 0x1000) {
            self.type = type; self.flags = flags; self.vaddr = vaddr; self.data = data
            self.memsz = memsz; self.offset = offset; self.align = align
        }
    }
    public init() {}
    public var entry: UInt64 = 0x40_0000
    public var segments: [Seg] = [
        Seg(flags: 5, vaddr: 0x40_0000, data: [0xf4, 0xeb, 0xfd] + [UInt8](repeating: 0x90, count: 61)),
        Seg(flags: 6, vaddr: 0x40_1000, data: [1, 2, 3, 4], memsz: 0x2000),
    ]
    public var ident: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]
    public var type: UInt16 = 2
    public var machine: UInt16 = 62
    public var version: UInt32 = 1
    public var ehsize: UInt16 = 64
    public var phentsize: UInt16 = 56
    public var phnumOverride: UInt16? = nil
    public var phoffOverride: UInt64? = nil

    public func build() -> [UInt8] {
        let phoff: UInt64 = 64
        let dataStart = 0x1000
        var w = ByteWriter(size: dataStart + segments.count * 0x1000)
        w.put(ident, at: 0)
        w.put(type, at: 16); w.put(machine, at: 18); w.put(version, at: 20)
        w.put(entry, at: 24); w.put(phoffOverride ?? phoff, at: 32)
        w.put(ehsize, at: 52); w.put(phentsize, at: 54)
        w.put(phnumOverride ?? UInt16(segments.count), at: 56)
        for (i, s) in segments.enumerated() {
            let h = Int(phoff) + i * 56
            let off = s.offset ?? UInt64(dataStart + i * 0x1000) + (s.vaddr % 0x1000)
            w.put(s.type, at: h); w.put(s.flags, at: h + 4); w.put(off, at: h + 8)
            w.put(s.vaddr, at: h + 16); w.put(s.vaddr, at: h + 24)
            w.put(UInt64(s.data.count), at: h + 32); w.put(s.memsz ?? UInt64(s.data.count), at: h + 40)
            w.put(s.align, at: h + 48)
            if off < UInt64(w.bytes.count) { w.put(s.data, at: Int(off)) }
        }
        return w.bytes
    }
}

extension ELFBuilder {
    /// A valid executable of these segments (`flags`: PF_X 1, PF_W 2, PF_R 4), each segment's file
    /// bytes at a page-aligned offset congruent to its address, as a linker lays them out: how
    /// the fuzzers make their templates and seeds.
    public static func executable(entry: UInt64, segments: [(address: UInt64, memorySize: UInt64, contents: [UInt8], flags: UInt32)]) -> [UInt8] {
        var b = ELFBuilder()
        b.entry = entry
        var cursor = UInt64((64 + 56 * segments.count + 4095) / 4096 * 4096)
        b.segments = segments.map { s in
            let offset = cursor + s.address % 4096
            cursor = (offset + UInt64(s.contents.count) + 4095) / 4096 * 4096
            return Seg(flags: s.flags, vaddr: s.address, data: s.contents, memsz: s.memorySize, offset: offset)
        }
        // `build` cuts the file at one page per segment; a larger segment needs the rest.
        var bytes = b.build()
        if bytes.count < Int(cursor) { bytes += [UInt8](repeating: 0, count: Int(cursor) - bytes.count) }
        for s in b.segments { if let o = s.offset { bytes.replaceSubrange(Int(o)..<Int(o) + s.data.count, with: s.data) } }
        return bytes
    }
}
