/// One record on disk: `u32 length ‖ u32 CRC32C(payload) ‖ payload`, both integers little-endian
/// (docs/audit-log.md). The CRC tells a torn or damaged frame from a whole one; the Merkle tree,
/// not the CRC, is what makes tampering evident.
public enum Frame {
    public static let headerSize = 8
    /// The largest payload a frame may carry: a record is a few hundred bytes; anything near this
    /// is damage or an attack, and is refused before it is read.
    public static let maxPayload = 1 << 20

    public static func encode(_ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(headerSize + payload.count)
        append(payload, to: &out)
        return out
    }

    /// Appends `payload`'s frame to `out` (no intermediate copy).
    public static func append(_ payload: [UInt8], to out: inout [UInt8]) {
        precondition(!payload.isEmpty && payload.count <= maxPayload, "an audit record larger than \(maxPayload) bytes")
        appendLE(UInt32(payload.count), to: &out)
        appendLE(CRC32C.checksum(payload), to: &out)
        out.append(contentsOf: payload)
    }

    /// What is found at an offset of a segment.
    public enum Parsed: Equatable, Sendable {
        /// A whole frame whose CRC matches; `next` is the offset after it.
        case frame(payload: [UInt8], next: Int)
        /// Nothing more: the offset is the end of the bytes.
        case end
        /// Fewer bytes than a header, or than the header's length says: the tail of an append that
        /// was cut off (a crash), or a file cut short.
        case torn(available: Int)
        /// A whole frame whose CRC does not match its payload, a length over `maxPayload`, or an
        /// empty frame.
        case damaged(String)
    }

    public static func parse(_ bytes: [UInt8], at offset: Int) -> Parsed {
        guard offset >= 0, offset <= bytes.count else { return .damaged("offset \(offset) is outside the \(bytes.count) bytes") }
        let available = bytes.count - offset
        if available == 0 { return .end }
        guard available >= headerSize else { return .torn(available: available) }
        let length = Int(readLE(bytes, offset))
        let crc = readLE(bytes, offset + 4)
        guard length <= maxPayload else { return .damaged("length \(length) is over the \(maxPayload)-byte limit") }
        // No payload is empty; zeros where a frame should be (a crash's unwritten block) are damage.
        guard length > 0 else { return .damaged("an empty frame (length 0)") }
        guard available - headerSize >= length else { return .torn(available: available) }
        let payload = Array(bytes[(offset + headerSize)..<(offset + headerSize + length)])
        let actual = CRC32C.checksum(payload)
        guard actual == crc else {
            return .damaged("CRC32C " + hex32(actual) + " of the payload is not the frame's " + hex32(crc))
        }
        return .frame(payload: payload, next: offset + headerSize + length)
    }

    static func appendLE(_ v: UInt32, to out: inout [UInt8]) {
        for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
    }

    static func readLE(_ b: [UInt8], _ o: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) }
    }

    static func hex32(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: 8 - s.count) + s
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI and ext4 use it.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    /// Eight tables for slicing-by-8 (eight bytes a step): tables[k][b] is the CRC of byte b
    /// followed by k zero bytes.
    static let tables: [[UInt32]] = {
        var t = [table]
        for k in 1..<8 { t.append((0..<256).map { i in (t[k - 1][i] >> 8) ^ table[Int(t[k - 1][i] & 0xff)] }) }
        return t
    }()

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        let t = tables, t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3], t4 = t[4], t5 = t[5], t6 = t[6], t7 = t[7]
        var i = 0
        let n = bytes.count
        while i + 8 <= n {
            let lo = c ^ (UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24)
            c = t7[Int(lo & 0xff)] ^ t6[Int(lo >> 8 & 0xff)] ^ t5[Int(lo >> 16 & 0xff)] ^ t4[Int(lo >> 24)]
                ^ t3[Int(bytes[i + 4])] ^ t2[Int(bytes[i + 5])] ^ t1[Int(bytes[i + 6])] ^ t0[Int(bytes[i + 7])]
            i += 8
        }
        while i < n { c = t0[Int((c ^ UInt32(bytes[i])) & 0xff)] ^ (c >> 8); i += 1 }
        return c ^ 0xFFFF_FFFF
    }
}
