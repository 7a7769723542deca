@testable import Boot

/// Builds small ELF64 files for tests, valid by default, with knobs to break them.
struct ELFBuilder {
    struct Seg {
        var type: UInt32 = 1
        var flags: UInt32
        var vaddr: UInt64
        var data: [UInt8]
        var memsz: UInt64? = nil
        var offset: UInt64? = nil
        var align: UInt64 = 0x1000
    }
    var entry: UInt64 = 0x40_0000
    var segments: [Seg] = [
        Seg(flags: 5, vaddr: 0x40_0000, data: [0xf4, 0xeb, 0xfd] + [UInt8](repeating: 0x90, count: 61)),
        Seg(flags: 6, vaddr: 0x40_1000, data: [1, 2, 3, 4], memsz: 0x2000),
    ]
    var ident: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]
    var type: UInt16 = 2
    var machine: UInt16 = 62
    var version: UInt32 = 1
    var ehsize: UInt16 = 64
    var phentsize: UInt16 = 56
    var phnumOverride: UInt16? = nil
    var phoffOverride: UInt64? = nil

    func build() -> [UInt8] {
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
