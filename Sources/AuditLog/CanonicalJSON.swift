/// The audit records' payload: JSON in one canonical form, so that a record has exactly one
/// encoding and its hash is the same for every writer and verifier (docs/audit-log.md):
/// objects with keys sorted by their UTF-8 bytes and no key twice; integers only (64-bit,
/// no leading zeros, no "-0"); strings as UTF-8 with only `"`, `\` and the control characters
/// escaped (`\"`, `\\`, `\u00xx` in lowercase hex); no whitespace anywhere.
public indirect enum JSONValue: Equatable, Sendable {
    case object([String: JSONValue])
    case array([JSONValue])
    case string(String)
    case integer(Int64)
    case bool(Bool)
    case null

    /// The canonical encoding.
    public var canonicalBytes: [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    func encode(into out: inout [UInt8]) {
        switch self {
        case .null: out += Array("null".utf8)
        case .bool(let b): out += Array((b ? "true" : "false").utf8)
        case .integer(let i): out += Array(String(i).utf8)
        case .string(let s): JSONValue.encodeString(s, into: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, v) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                v.encode(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (i, key) in members.keys.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }).enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSONValue.encodeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                members[key]?.encode(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func encodeString(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 0xf)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Why bytes are not a canonical JSON value.
    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "not canonical JSON at byte \(offset): \(reason)" }
    }

    /// The deepest nesting a record may have (records are two or three levels deep).
    public static let maxDepth = 16

    /// Parses `bytes`, which must be exactly the canonical encoding of one value.
    public static func parse(_ bytes: [UInt8]) throws(ParseError) -> JSONValue {
        var p = Parser(bytes: bytes)
        let v = try p.value(depth: 0)
        guard p.i == bytes.count else { throw ParseError(offset: p.i, reason: "bytes after the value") }
        guard v.canonicalBytes == bytes else {
            throw ParseError(offset: 0, reason: "valid JSON, but not in canonical form (key order, escapes or spacing)")
        }
        return v
    }

    struct Parser {
        let bytes: [UInt8]
        var i = 0

        func fail(_ why: String) -> ParseError { ParseError(offset: i, reason: why) }

        mutating func expect(_ literal: String) throws(ParseError) {
            let l = Array(literal.utf8)
            guard i + l.count <= bytes.count, Array(bytes[i..<i + l.count]) == l else { throw fail("expected \(literal)") }
            i += l.count
        }

        mutating func value(depth: Int) throws(ParseError) -> JSONValue {
            guard depth <= JSONValue.maxDepth else { throw fail("nested deeper than \(JSONValue.maxDepth)") }
            guard i < bytes.count else { throw fail("unexpected end") }
            switch bytes[i] {
            case UInt8(ascii: "n"): try expect("null"); return .null
            case UInt8(ascii: "t"): try expect("true"); return .bool(true)
            case UInt8(ascii: "f"): try expect("false"); return .bool(false)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .integer(try integer())
            case UInt8(ascii: "["):
                i += 1
                var items: [JSONValue] = []
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                while true {
                    items.append(try value(depth: depth + 1))
                    guard i < bytes.count else { throw fail("unterminated array") }
                    if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                    try expect(",")
                }
            case UInt8(ascii: "{"):
                i += 1
                var members: [String: JSONValue] = [:]
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                while true {
                    let at = i
                    let key = try string()
                    try expect(":")
                    let v = try value(depth: depth + 1)
                    guard members.updateValue(v, forKey: key) == nil else { throw ParseError(offset: at, reason: "key \"\(key.prefix(40))\" twice") }
                    guard i < bytes.count else { throw fail("unterminated object") }
                    if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                    try expect(",")
                }
            default:
                throw fail("unexpected byte 0x" + String(bytes[i], radix: 16))
            }
        }

        mutating func integer() throws(ParseError) -> Int64 {
            let start = i
            if bytes[i] == UInt8(ascii: "-") { i += 1 }
            let digits = i
            while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
            guard i > digits else { throw fail("a number without digits") }
            if i < bytes.count, [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(bytes[i]) {
                throw fail("only integers are allowed")
            }
            guard let v = Int64(String(decoding: bytes[start..<i], as: UTF8.self)) else {
                throw ParseError(offset: start, reason: "an integer outside 64 bits")
            }
            return v
        }

        mutating func string() throws(ParseError) -> String {
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string") }
            i += 1
            var out: [UInt8] = []
            while true {
                guard i < bytes.count else { throw fail("unterminated string") }
                let b = bytes[i]
                if b == UInt8(ascii: "\"") { i += 1; break }
                if b < 0x20 { throw fail("a raw control character in a string") }
                if b == UInt8(ascii: "\\") {
                    guard i + 1 < bytes.count else { throw fail("unterminated escape") }
                    let e = bytes[i + 1]
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(e); i += 2
                    case UInt8(ascii: "u"):
                        guard i + 6 <= bytes.count, let code = UInt8(String(decoding: bytes[(i + 4)..<(i + 6)], as: UTF8.self), radix: 16),
                              bytes[i + 2] == UInt8(ascii: "0"), bytes[i + 3] == UInt8(ascii: "0"), code < 0x20 else {
                            throw fail("only \\u00xx for control characters is allowed")
                        }
                        out.append(code); i += 6
                    default: throw fail("an escape other than \\\", \\\\ or \\u00xx")
                    }
                    continue
                }
                out.append(b); i += 1
            }
            guard let s = String(validating: out, as: UTF8.self) else { throw fail("a string that is not UTF-8") }
            return s
        }
    }
}
