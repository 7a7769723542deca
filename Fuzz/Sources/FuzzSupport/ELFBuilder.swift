import Boot

/// Writes a minimal ELF64 x86-64 executable: the header, one program header per segment, then
/// the segments' file bytes at page-aligned offsets. Used for templates and seed generation.
public struct ELFSegmentSpec {
    public var address: UInt64
    public var memorySize: UInt64
    public var contents: [UInt8]
    public var flags: UInt32  // PF_X = 1, PF_W = 2, PF_R = 4

    public init(address: UInt64, memorySize: UInt64, contents: [UInt8], flags: UInt32) {
        self.address = address
        self.memorySize = memorySize
        self.contents = contents
        self.flags = flags
    }
}

public func makeELF(entry: UInt64, segments: [ELFSegmentSpec]) -> [UInt8] {
    let headerEnd = 64 + 56 * segments.count
    var offsets: [Int] = []
    var cursor = (headerEnd + 4095) / 4096 * 4096
    for s in segments {
        // Keep the offset congruent to the address modulo the page size.
        cursor += Int(s.address % 4096)
        offsets.append(cursor)
        cursor = (cursor + s.contents.count + 4095) / 4096 * 4096
    }
    var w = ByteWriter(size: cursor)
    w.put([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], at: 0)
    w.put(UInt16(2), at: 16)      // ET_EXEC
    w.put(UInt16(62), at: 18)     // EM_X86_64
    w.put(UInt32(1), at: 20)
    w.put(entry, at: 24)
    w.put(UInt64(64), at: 32)     // e_phoff
    w.put(UInt16(64), at: 52)     // e_ehsize
    w.put(UInt16(56), at: 54)     // e_phentsize
    w.put(UInt16(segments.count), at: 56)
    for (i, s) in segments.enumerated() {
        let h = 64 + 56 * i
        w.put(UInt32(1), at: h)
        w.put(s.flags, at: h + 4)
        w.put(UInt64(offsets[i]), at: h + 8)
        w.put(s.address, at: h + 16)
        w.put(s.address, at: h + 24)
        w.put(UInt64(s.contents.count), at: h + 32)
        w.put(s.memorySize, at: h + 40)
        w.put(UInt64(4096), at: h + 48)
        w.put(s.contents, at: offsets[i])
    }
    return w.bytes
}
