// MARK: - Encoding

func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

struct Encoder {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    mutating func u16(_ v: UInt16) { bytes += le(UInt64(v), 2) }
    mutating func u32(_ v: UInt32) { bytes += le(UInt64(v), 4) }
    mutating func u64(_ v: UInt64) { bytes += le(v, 8) }
    mutating func raw(_ b: [UInt8]) { bytes += b }
    mutating func string(_ s: String) {
        let b = Array(s.utf8)
        u32(UInt32(truncatingIfNeeded: b.count))
        bytes += b
    }
}

struct Decoder {
    let bytes: [UInt8]
    var position: Int
    init(_ bytes: [UInt8], from position: Int) { self.bytes = bytes; self.position = position }

    var remaining: Int { bytes.count - position }
    var atEnd: Bool { position == bytes.count }

    mutating func take(_ n: Int, _ field: String) throws(WorkerProtocolError) -> ArraySlice<UInt8> {
        guard n >= 0, remaining >= n else { throw .truncated(field) }
        defer { position += n }
        return bytes[position..<position + n]
    }
    mutating func int(_ n: Int, _ field: String) throws(WorkerProtocolError) -> UInt64 {
        try take(n, field).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }
    mutating func u8(_ f: String) throws(WorkerProtocolError) -> UInt8 { UInt8(try int(1, f)) }
    mutating func u16(_ f: String) throws(WorkerProtocolError) -> UInt16 { UInt16(try int(2, f)) }
    mutating func u32(_ f: String) throws(WorkerProtocolError) -> UInt32 { UInt32(try int(4, f)) }
    mutating func u64(_ f: String) throws(WorkerProtocolError) -> UInt64 { try int(8, f) }
    mutating func bool(_ f: String) throws(WorkerProtocolError) -> Bool {
        switch try u8(f) {
        case 0: return false
        case 1: return true
        case let v: throw .invalid(f, "boolean \(v)")
        }
    }
    mutating func raw(_ f: String, count: Int) throws(WorkerProtocolError) -> [UInt8] { Array(try take(count, f)) }
    /// A u32 length, then that many bytes of UTF-8 without NUL.
    mutating func string(_ f: String, max: Int) throws(WorkerProtocolError) -> String {
        let n = Int(try u32(f + " length"))
        guard n <= max else { throw .tooLong(f, n) }
        let b = try take(n, f)
        guard !b.contains(0) else { throw .invalid(f, "contains NUL") }
        guard let s = String(validating: b, as: UTF8.self) else { throw .invalid(f, "not UTF-8") }
        return s
    }
}
