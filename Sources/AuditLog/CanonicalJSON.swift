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
            for (i, key) in members.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSONValue.encodeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                members[key]?.encode(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? UInt8(ascii: "0") + v : UInt8(ascii: "a") + v - 10 }

    public static func encodeString(_ s: String, into out: inout [UInt8]) {
        // Most strings need no escape: copied whole.
        if !s.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: s.utf8)
            out.append(UInt8(ascii: "\""))
            return
        }
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0..<0x20:
                out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hexDigit(b >> 4), hexDigit(b & 0xf)]
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

    /// Parses `bytes`, which must be exactly the canonical encoding of one value. The canonical
    /// form is checked while parsing (no whitespace; keys in strictly increasing UTF-8 order, so
    /// none twice; no leading zeros or "-0"; only the escapes the encoder writes, in lowercase
    /// hex), so that encoding the result gives back `bytes` exactly (the fuzz target checks it).
    public static func parse(_ bytes: [UInt8]) throws(ParseError) -> JSONValue {
        var p = Parser(bytes: bytes)
        let v = try p.value(depth: 0)
        guard p.i == bytes.count else { throw ParseError(offset: p.i, reason: "bytes after the value") }
        return v
    }

    struct Parser {
        let bytes: [UInt8]
        var i = 0

        func fail(_ why: String) -> ParseError { ParseError(offset: i, reason: why) }

        mutating func expect(_ literal: StaticString) throws(ParseError) {
            let n = literal.utf8CodeUnitCount
            guard i + n <= bytes.count else { throw fail("expected \(literal)") }
            for k in 0..<n where bytes[i + k] != literal.utf8Start[k] { throw fail("expected \(literal)") }
            i += n
        }

        /// Whether `literal` comes next (nothing is consumed).
        func peek(_ literal: StaticString) -> Bool {
            let n = literal.utf8CodeUnitCount
            guard i + n <= bytes.count else { return false }
            for k in 0..<n where bytes[i + k] != literal.utf8Start[k] { return false }
            return true
        }

        /// A string, or null.
        mutating func optionalString() throws(ParseError) -> String? {
            if peek("null") { i += 4; return nil }
            return try string()
        }

        mutating func expect(_ byte: UInt8) throws(ParseError) {
            guard i < bytes.count, bytes[i] == byte else { throw fail("expected \(Character(Unicode.Scalar(byte)))") }
            i += 1
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
                    try expect(UInt8(ascii: ","))
                }
            case UInt8(ascii: "{"):
                i += 1
                var members: [String: JSONValue] = [:]
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                var previous: String?
                while true {
                    let at = i
                    let key = try string()
                    // Canonical: keys in strictly increasing order of their UTF-8 bytes.
                    if let previous, !previous.utf8.lexicographicallyPrecedes(key.utf8) {
                        throw ParseError(offset: at, reason: previous == key ? "key \"\(key.prefix(40))\" twice"
                                                                          : "key \"\(key.prefix(40))\" out of order (not canonical)")
                    }
                    previous = key
                    try expect(UInt8(ascii: ":"))
                    members[key] = try value(depth: depth + 1)
                    guard i < bytes.count else { throw fail("unterminated object") }
                    if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                    try expect(UInt8(ascii: ","))
                }
            default:
                throw fail("unexpected byte 0x" + String(bytes[i], radix: 16))
            }
        }

        mutating func integer() throws(ParseError) -> Int64 {
            let start = i
            let negative = bytes[i] == UInt8(ascii: "-")
            if negative { i += 1 }
            let digits = i
            var magnitude: UInt64 = 0, overflow = false
            while i < bytes.count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") {
                let (m1, o1) = magnitude.multipliedReportingOverflow(by: 10)
                let (m2, o2) = m1.addingReportingOverflow(UInt64(bytes[i] - UInt8(ascii: "0")))
                magnitude = m2; overflow = overflow || o1 || o2
                i += 1
            }
            guard i > digits else { throw fail("a number without digits") }
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") || bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
                throw fail("only integers are allowed")
            }
            // Canonical: no leading zeros, no "-0".
            if bytes[digits] == UInt8(ascii: "0") && i - digits > 1 { throw ParseError(offset: start, reason: "a leading zero (not canonical)") }
            if negative && magnitude == 0 && !overflow { throw ParseError(offset: start, reason: "-0 (not canonical)") }
            guard !overflow, negative ? magnitude <= UInt64(Int64.max) + 1 : magnitude <= UInt64(Int64.max) else {
                throw ParseError(offset: start, reason: "an integer outside 64 bits")
            }
            return negative ? Int64(truncatingIfNeeded: 0 &- magnitude) : Int64(magnitude)
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
                        // Canonical: \u00xx with lowercase hex, for a control character only.
                        func nibble(_ c: UInt8) -> UInt8? {
                            c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") ? c - UInt8(ascii: "0")
                                : c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f") ? c - UInt8(ascii: "a") + 10 : nil
                        }
                        guard i + 6 <= bytes.count, bytes[i + 2] == UInt8(ascii: "0"), bytes[i + 3] == UInt8(ascii: "0"),
                              let high = nibble(bytes[i + 4]), let low = nibble(bytes[i + 5]), high << 4 | low < 0x20 else {
                            throw fail("only \\u00xx (lowercase hex) for control characters is allowed")
                        }
                        out.append(high << 4 | low); i += 6
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
