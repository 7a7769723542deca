import AuditLog
import TestSupport
import Testing

@Suite struct RecordTests {
    static let sample = AuditRecord(sequence: 42, timeNanoseconds: 1_764_990_000_123_456_789, bootID: "6f1e9c1a-0b7e-4c53-9d5e-2a0c1f0e9b77",
                                    actor: .local(uid: 1000, gid: 1000, pid: 4242), tenant: "acme", action: "vm.start",
                                    target: "vm/web-1", allowed: true, reason: "grant operator@tenant/acme", stage: .outcome,
                                    operation: "op-7", result: "ok")

    @Test func aRecordHasOnePayloadAndReadsBack() throws {
        let text = String(decoding: Self.sample.payload, as: UTF8.self)
        #expect(text == #"{"action":"vm.start","actor":{"gid":1000,"kind":"local","pid":4242,"uid":1000},"boot_id":"6f1e9c1a-0b7e-4c53-9d5e-2a0c1f0e9b77","decision":{"allowed":true,"reason":"grant operator@tenant/acme"},"operation":"op-7","result":"ok","seq":42,"stage":"outcome","target":"vm/web-1","tenant":"acme","time_ns":1764990000123456789,"v":1}"#)
        #expect(try AuditRecord.parse(Self.sample.payload) == Self.sample)
        // The worked example of docs/audit-log.md (computed there with Python's hashlib and a
        // bitwise CRC-32C, independently of this code).
        let frame = Frame.encode(Self.sample.payload)
        #expect(Array(frame[0..<8]) == [0x46, 0x01, 0, 0, 0x9a, 0x43, 0x4b, 0x31])
        #expect(hexString(Merkle.leafHash(Self.sample.payload)) == "f1dcef953adbdf4f40b4969b01ba0251f7e8851b71e7e43b1e10a226337b1cd2")
        for actor: AuditRecord.Actor in [.system, .certificate(fingerprint: "sha256:" + String(repeating: "ab", count: 32))] {
            var r = Self.sample
            r.actor = actor; r.stage = .intent; r.result = nil; r.tenant = nil; r.target = nil
            #expect(try AuditRecord.parse(r.payload) == r)
        }
    }

    /// Every way a payload can be wrong is refused, and says which field.
    @Test func malformedRecordsAreRefusedByField() {
        func mutate(_ change: (inout [String: JSONValue]) -> Void) -> [UInt8] {
            guard case .object(var o) = Self.sample.json else { return [] }
            change(&o)
            return JSONValue.object(o).canonicalBytes
        }
        let cases: [([UInt8], String)] = [
            (mutate { $0["v"] = .integer(2) }, "v is not 1"),
            (mutate { $0["seq"] = .integer(-1) }, "seq"),
            (mutate { $0["seq"] = .string("1") }, "seq"),
            (mutate { $0["time_ns"] = .null }, "time_ns"),
            (mutate { $0.removeValue(forKey: "operation") }, "missing [\"operation\"]"),
            (mutate { $0["secret"] = .string("hunter2") }, "unexpected [\"secret\"]"),
            (mutate { $0["actor"] = .object(["kind": .string("root")]) }, "actor kind 'root'"),
            (mutate { $0["actor"] = .object(["kind": .string("local"), "uid": .integer(-1), "gid": .integer(0), "pid": .integer(1)]) }, "actor.uid"),
            (mutate { $0["actor"] = .object(["kind": .string("local"), "uid": .integer(4_294_967_296), "gid": .integer(0), "pid": .integer(1)]) }, "actor.uid"),
            (mutate { $0["actor"] = .object(["kind": .string("certificate"), "fingerprint": .string("sha256:XYZ")]) }, "fingerprint"),
            (mutate { $0["actor"] = .object(["kind": .string("system"), "uid": .integer(0)]) }, "system actor"),
            (mutate { $0["decision"] = .object(["allowed": .string("yes"), "reason": .string("x")]) }, "decision"),
            (mutate { $0["stage"] = .string("maybe") }, "stage"),
            (mutate { $0["stage"] = .string("intent") }, "an intent has no result"),
            (mutate { $0["result"] = .null }, "an outcome has a result"),
            (mutate { $0["action"] = .string("") }, "action"),
            (mutate { $0["action"] = .string(String(repeating: "a", count: 1025)) }, "action"),
            (mutate { $0["tenant"] = .integer(3) }, "tenant"),
            (Array("[]".utf8), "not a JSON object"),
            (Array(#"{"v":1,"seq":1}"#.utf8) + [0x20], "not canonical"),
        ]
        for (payload, expected) in cases {
            do {
                _ = try AuditRecord.parse(payload)
                Issue.record("accepted: \(String(decoding: payload, as: UTF8.self).prefix(120))")
            } catch {
                #expect(error.description.contains(expected), "\(expected): \(error.description)")
            }
        }
    }
}

/// The record's direct encoding is its canonical JSON, and its field check says what parsing would.
@Suite struct RecordEncodingTests {
    @Test func theDirectPayloadIsTheCanonicalJSONAndTheFieldCheckAgreesWithParsing() {
        var rng = SplitMix64(seed: 4711)
        let texts = ["", "x", "vm/web-1", "quote\" back\\slash", "ctl\u{1}\u{1f}\n", "ünïcødé ✓ 𝄞", String(repeating: "a", count: 1024),
                     String(repeating: "é", count: 512), String(repeating: "b", count: 1025)]
        func text() -> String { texts[Int(rng.next() % UInt64(texts.count))] }
        func optional() -> String? { rng.next() % 3 == 0 ? nil : text() }
        for _ in 0..<3000 {
            let actor: AuditRecord.Actor
            switch rng.next() % 4 {
            case 0: actor = .system
            case 1: actor = .local(uid: UInt32(truncatingIfNeeded: rng.next()), gid: UInt32(truncatingIfNeeded: rng.next()), pid: Int32(truncatingIfNeeded: rng.next()))
            case 2: actor = .certificate(fingerprint: "sha256:" + String(repeating: "0a", count: 32))
            default: actor = .certificate(fingerprint: text())
            }
            let stage: AuditRecord.Stage = rng.next() % 2 == 0 ? .intent : .outcome
            let r = AuditRecord(sequence: rng.next() % 5 == 0 ? rng.next() : rng.next() % 1000, timeNanoseconds: Int64(truncatingIfNeeded: rng.next()),
                                bootID: text(), actor: actor, tenant: optional(), action: text(), target: optional(),
                                allowed: rng.next() % 2 == 0, reason: text(), stage: stage, operation: text(), result: optional())
            let payload = r.payload
            #expect(payload == r.json.canonicalBytes)
            // A record without a problem reads back as itself; one with a problem does not (it is
            // refused, or — a sequence number over 2^63-1, written clamped — reads back as another).
            let parsed = try? AuditRecord.parse(payload)
            if r.problem == nil { #expect(parsed == r, "a valid record does not read back") } else { #expect(parsed != r, "\(r.problem ?? "")") }
        }
    }
}
