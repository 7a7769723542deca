import AuditLog
import TestSupport
import Testing

/// Record frames and their CRC32C, and the canonical JSON of the payloads: what a verifier
/// checks first, so every way a frame or a payload can be wrong must be told apart.
@Suite struct FrameTests {
    @Test func crc32cKnownValues() {
        // The check value of CRC-32C, and the iSCSI test patterns of RFC 3720 B.4.
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xff, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum([]) == 0)
    }

    @Test func framesRoundTripAndEndCleanly() {
        let payloads = [[0], Array("{}".utf8), [UInt8](repeating: 7, count: 1000)]
        let bytes = payloads.flatMap(Frame.encode)
        var at = 0
        for p in payloads {
            guard case .frame(let payload, let next) = Frame.parse(bytes, at: at) else { Issue.record("no frame at \(at)"); return }
            #expect(payload == p)
            at = next
        }
        #expect(Frame.parse(bytes, at: at) == .end)
        // Zeros where a frame should be (a block a crash left unwritten) parse as an empty frame
        // whose CRC matches (CRC-32C of nothing is 0): an empty frame is damage.
        #expect(Frame.parse([UInt8](repeating: 0, count: 16), at: 0) == .damaged("an empty frame (length 0)"))
    }

    /// A frame cut anywhere is torn (a crash in the middle of an append); a changed byte
    /// anywhere in a whole frame is damage; a huge length is refused before anything is read.
    @Test func tornAndDamagedFramesAreToldApart() {
        let frame = Frame.encode(Array("{\"a\":1}".utf8))
        for cut in 1..<frame.count {
            #expect(Frame.parse(Array(frame[0..<cut]), at: 0) == .torn(available: cut), "cut at \(cut)")
        }
        for i in 4..<frame.count {   // the CRC and the payload: every byte, every bit
            for bit in 0..<8 {
                var bad = frame
                bad[i] ^= UInt8(1 << bit)
                guard case .damaged = Frame.parse(bad, at: 0) else { Issue.record("byte \(i) bit \(bit) went unnoticed"); return }
            }
        }
        var huge = frame
        huge[3] = 0x7f
        guard case .damaged(let why) = Frame.parse(huge, at: 0) else { Issue.record("a 2 GiB length was accepted"); return }
        #expect(why.contains("limit"))
        #expect(Frame.parse(frame, at: -1) != .end && Frame.parse(frame, at: frame.count + 1) != .end)
    }

    /// Random bytes never trap the parser, and whatever it accepts re-encodes to the same bytes.
    @Test func randomBytesNeverTrap() {
        var rng = SplitMix64(seed: 32)
        for _ in 0..<2000 {
            let bytes = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            var at = 0
            while case .frame(let payload, let next) = Frame.parse(bytes, at: at) {
                #expect(Array(bytes[at..<next]) == Frame.encode(payload))
                at = next
            }
        }
    }
}

@Suite struct CanonicalJSONTests {
    @Test func oneEncodingPerValue() throws {
        let v = JSONValue.object(["seq": .integer(7), "actor": .object(["uid": .integer(0), "kind": .string("local")]),
                                  "note": .string("a \"quoted\" \\ line\n\u{1}é"), "ok": .bool(true), "none": .null,
                                  "list": .array([.integer(-1), .integer(Int64.max), .integer(Int64.min)])])
        let text = String(decoding: v.canonicalBytes, as: UTF8.self)
        #expect(text == #"{"actor":{"kind":"local","uid":0},"list":[-1,9223372036854775807,-9223372036854775808],"none":null,"note":"a \"quoted\" \\ line\u000a\u0001é","ok":true,"seq":7}"#)
        #expect(try JSONValue.parse(v.canonicalBytes) == v)
        #expect(try JSONValue.parse(Array("{}".utf8)) == .object([:]))
    }

    /// Valid JSON that is not canonical, and JSON the format excludes, is refused with where.
    @Test func everythingElseIsRefused() throws {
        for text in [#"{"b":1,"a":2}"#, #"{ "a":1}"#, #"{"a":1,"a":2}"#, #"{"a":1.5}"#, #"{"a":1e3}"#, #"{"a":01}"#,
                     #"{"a":-0}"#, #"{"a":"\n"}"#, #"{"a":"\u000A"}"#, #"{"a":"\/"}"#, #"{"a":"\u0041"}"#, #"{"a":9223372036854775808}"#,
                     #"{"a":tru}"#, #"{"a":1}x"#, #"["#, #"{"a":"#, "", #""\"#, "\"\u{1}\"",
                     #"{"a":"\u001A"}"#, #"{"a":-}"#, #"{"a":-01}"#, #"{"a":{"c":1,"b":2}}"#, #"{"a":-9223372036854775809}"#,
                     #"{"a":99999999999999999999999}"#, #"{"a" :1}"#, #"{"a":1 }"#, #"[1, 2]"#,
                     String(repeating: "[", count: 40) + String(repeating: "]", count: 40)] {
            #expect(throws: JSONValue.ParseError.self, "\(text)") { try JSONValue.parse(Array(text.utf8)) }
        }
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse([0x22, 0xff, 0xfe, 0x22]) }   // not UTF-8
        // The extremes of 64 bits, and the escapes the encoder writes, are canonical.
        for text in [#"{"a":-9223372036854775808,"b":9223372036854775807,"c":0,"d":-1}"#, #"["\u001f\"\\x"]"#] {
            #expect(try JSONValue.parse(Array(text.utf8)).canonicalBytes == Array(text.utf8), "\(text)")
        }
    }

    /// Random bytes and random mutations of a record never trap the parser.
    @Test func randomInputNeverTraps() {
        var rng = SplitMix64(seed: 8785)
        let record = JSONValue.object(["a": .array([.integer(1), .string("x")]), "b": .object(["c": .null])]).canonicalBytes
        for _ in 0..<5000 {
            var bytes = record
            for _ in 0..<Int(rng.next() % 4) { bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            if let v = try? JSONValue.parse(bytes) { #expect(v.canonicalBytes == bytes) }
        }
    }
}
