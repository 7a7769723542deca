import AuditLog
import Crypto
import TestSupport
import Testing

/// The witness's decisions (c2sp.org/tlog-witness add-checkpoint) and its cosignatures
/// (cosignature/v1), with no process: every status, and hostile requests.
@Suite struct WitnessCoreTests {
    struct Fixture {
        var log: NoteSigner
        var witness: CosignatureSigner
        var core: WitnessCore
        var leaves: [[UInt8]]
        func note(_ size: Int, signer: NoteSigner? = nil, leaves other: [[UInt8]]? = nil) throws -> [UInt8] {
            let l = other ?? leaves
            return Array(try (signer ?? log).sign(Checkpoint(origin: log.verifierKey.name, size: UInt64(size), rootHash: Merkle.root(l[0..<size])).text).utf8)
        }
        func proof(_ old: Int, _ new: Int, leaves other: [[UInt8]]? = nil) throws -> [[UInt8]] {
            try Merkle.consistencyProof(other ?? leaves, old: UInt64(old), new: UInt64(new))
        }
    }

    static func fixture() throws -> Fixture {
        let log = try NoteSigner(name: "bulkhead.test/log", privateKey: .init())
        let witness = try CosignatureSigner(name: "bulkhead.test/witness", privateKey: .init())
        return Fixture(log: log, witness: witness, core: WitnessCore(signer: witness, logs: [log.verifierKey]),
                       leaves: (0..<40).map { Merkle.leafHash([UInt8($0), 7]) })
    }

    /// Runs requests in order against one held state, as the witness process does.
    struct Session {
        var core: WitnessCore
        var held: [String: WitnessedLog] = [:]
        mutating func add(_ r: AddCheckpoint, now: UInt64 = 1_800_000_000) -> WitnessCore.Decision {
            let snapshot = held
            let d = core.decide(r, current: { snapshot[$0] }, now: now)
            if let a = d.accepted, let o = d.origin { held[o] = a }
            return d
        }
    }

    @Test func keysRoundTripAndCosignaturesVerify() throws {
        let f = try Self.fixture()
        let key = f.witness.verifierKey
        #expect(try CosignatureKey(text: key.text) == key)
        #expect(try CosignatureSigner(text: f.witness.text).verifierKey == key)
        #expect(key.text.hasPrefix("bulkhead.test/witness+"))
        // A log key (type 0x01) is not a witness key, and the other way round.
        #expect(throws: NoteVerifierKey.Invalid.self) { try CosignatureKey(text: f.log.verifierKey.text) }
        #expect(throws: NoteVerifierKey.Invalid.self) { try NoteVerifierKey(text: key.text) }
        let note = try f.note(5)
        let line = try f.witness.cosign(try SignedNote.parse(note).text, timestamp: 1_700_000_000)
        let cosigned = try SignedNote.parse(note + Array(line.utf8))
        #expect(key.check(cosigned) == .cosigned(timestamp: 1_700_000_000))
        #expect(cosigned.verify([f.log.verifierKey]) == .verified(names: ["bulkhead.test/log"]))   // the log's check ignores it
        #expect(key.check(try SignedNote.parse(note)) == .absent)
        // The same signature under another timestamp, or over another checkpoint, does not verify.
        var blob = Base64.decode(String(line.split(separator: " ")[2].dropLast())) ?? []
        blob[11] ^= 1
        let forged = "\u{2014} bulkhead.test/witness \(Base64.encode(blob))\n"
        #expect(key.check(try SignedNote.parse(note + Array(forged.utf8))) == .invalid)
        let other = try f.note(6)
        #expect(key.check(try SignedNote.parse(other + Array(line.utf8))) == .invalid)
    }

    @Test func aGrowingLogIsCosignedAtEveryStep() throws {
        let f = try Self.fixture()
        var s = Session(core: f.core)
        var old = 0
        for size in [0, 1, 2, 5, 5, 8, 13, 40] {
            let d = s.add(AddCheckpoint(oldSize: UInt64(old), proof: old == 0 ? [] : try f.proof(old, size), note: try f.note(size)))
            guard case .cosigned(let line) = d.answer else { Issue.record("size \(size): \(d.answer)"); return }
            #expect(d.refusal == nil && d.accepted?.size == UInt64(size))
            let stored = try SignedNote.parse(d.accepted?.note ?? [])
            #expect(f.witness.verifierKey.check(stored) == .cosigned(timestamp: 1_800_000_000) && line.hasPrefix("\u{2014} bulkhead.test/witness "))
            #expect(stored.verify([f.log.verifierKey]) == .verified(names: ["bulkhead.test/log"]))
            old = size
        }
    }

    @Test func rollbacksAndRewritesAreRefusedAndKeptAsEvidence() throws {
        let f = try Self.fixture()
        var s = Session(core: f.core)
        #expect(s.add(AddCheckpoint(oldSize: 0, proof: [], note: try f.note(20))).answer.status == 200)
        // A rolled-back log (size 12 after 20 was cosigned): 409 with the held size, and recorded.
        let back = s.add(AddCheckpoint(oldSize: 0, proof: [], note: try f.note(12)))
        #expect(back.answer == .conflict(size: 20) && back.refusal?.hasPrefix("rollback") == true)
        // Claiming the held size with a smaller checkpoint: 400 (old above the checkpoint's size).
        #expect(s.add(AddCheckpoint(oldSize: 20, proof: [], note: try f.note(12))).answer.status == 400)
        // A rewritten log: another record 3, grown to 30 — the proof from 20 cannot verify.
        var rewritten = f.leaves
        rewritten[3] = Merkle.leafHash([0xee])
        let fork = s.add(AddCheckpoint(oldSize: 20, proof: try f.proof(20, 30, leaves: rewritten), note: try f.note(30, leaves: rewritten)))
        #expect(fork.answer.status == 422 && fork.refusal?.hasPrefix("rewritten") == true)
        // Another root at the held size.
        let same = s.add(AddCheckpoint(oldSize: 20, proof: [], note: try f.note(20, leaves: rewritten)))
        #expect(same.answer.status == 422 && same.refusal != nil)
        // The honest log goes on.
        #expect(s.add(AddCheckpoint(oldSize: 20, proof: try f.proof(20, 30), note: try f.note(30))).answer.status == 200)
        #expect(s.held["bulkhead.test/log"]?.size == 30)
    }

    @Test func badSignersUnknownLogsAndBadProofsGetTheirStatus() throws {
        let f = try Self.fixture()
        var s = Session(core: f.core)
        let stranger = try NoteSigner(name: "bulkhead.test/log", privateKey: .init())
        #expect(s.add(AddCheckpoint(oldSize: 0, proof: [], note: try f.note(3, signer: stranger))).answer.status == 403)
        let unknown = try NoteSigner(name: "bulkhead.test/other", privateKey: .init())
        let unknownNote = Array(try unknown.sign(Checkpoint(origin: "bulkhead.test/other", size: 0, rootHash: Merkle.emptyRoot).text).utf8)
        #expect(s.add(AddCheckpoint(oldSize: 0, proof: [], note: unknownNote)).answer.status == 404)
        #expect(s.add(AddCheckpoint(oldSize: 0, proof: [f.leaves[0]], note: try f.note(3))).answer.status == 422)   // a proof from 0
        let wrongEmpty = Array(try f.log.sign(Checkpoint(origin: f.log.verifierKey.name, size: 0, rootHash: f.leaves[0]).text).utf8)
        #expect(s.add(AddCheckpoint(oldSize: 0, proof: [], note: wrongEmpty)).answer.status == 422)
        #expect(s.add(AddCheckpoint(oldSize: 0, proof: [], note: Array("not a note\n".utf8))).answer.status == 400)
        #expect(s.add(AddCheckpoint(oldSize: 0, proof: [], note: try f.note(4))).answer.status == 200)
        #expect(s.add(AddCheckpoint(oldSize: 4, proof: [f.leaves[0]], note: try f.note(9))).answer.status == 422)   // a wrong proof
        #expect(s.add(AddCheckpoint(oldSize: 3, proof: [], note: try f.note(9))).answer == .conflict(size: 4))
        #expect(s.held["bulkhead.test/log"]?.size == 4)
    }

    @Test func requestsAndAnswersRoundTripAndRefuseHostileBytes() throws {
        let f = try Self.fixture()
        let r = AddCheckpoint(oldSize: 5, proof: try f.proof(5, 9), note: try f.note(9))
        #expect(try AddCheckpoint.parse(r.encoded) == r)
        for bad in ["", "old 5", "old 05\n\n", "old -1\n\n", "old 99999999999999999999\n\n", "new 5\n\n", "old 5\nnot base64!\n\n",
                    "old 5\nAAAA\n\n", "old 5\n" + String(repeating: Base64.encode(f.leaves[0]) + "\n", count: 64) + "\n"] {
            #expect(throws: AddCheckpoint.Invalid.self, "\(bad.prefix(40))") { try AddCheckpoint.parse(Array(bad.utf8)) }
        }
        #expect(throws: AddCheckpoint.Invalid.self) { try AddCheckpoint.parse([UInt8](repeating: 0x41, count: 200_000)) }
        for a in [WitnessAnswer.cosigned("\u{2014} w AAAA\n"), .conflict(size: 7), .badRequest("x"), .forbidden("y"), .unknownLog("z"), .unprocessable("u"), .failed("f")] {
            #expect(WitnessAnswer.parse(a.encoded) == a)
        }
        for bad in ["", "200", "999\nx", "409\nseven\n", "409\n7", "abc\n"] { #expect(WitnessAnswer.parse(Array(bad.utf8)) == nil, "\(bad)") }
        // Random bytes never trap either parser or the decision.
        var rng = SplitMix64(seed: 7)
        var s = Session(core: f.core)
        for _ in 0..<300 {
            let bytes = (0..<Int(rng.next() % 300)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = WitnessAnswer.parse(bytes)
            if let r = try? AddCheckpoint.parse(bytes) { _ = s.add(r) }
        }
    }
}
