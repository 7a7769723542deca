import AuditLog
import FuzzSupport

// FuzzWitness: what bulkhead-witness reads from a client it does not trust — an add-checkpoint
// request (old size, consistency proof lines, a signed checkpoint) — decided against a held
// checkpoint; and what the log reads back from a witness (the answer, the cosignature lines).
//
// Input: the first byte picks how the rest is used: (0) as a whole request; (1) XORed into a
// valid request (a checkpoint of 9 records with the proof from 5), so that mutations reach the
// signature and proof checks; (2) spliced into that request at a position the next byte picks;
// (3) as a witness's answer, then as cosignature lines appended to a valid checkpoint.
//
// Checks: nothing traps; a request re-encodes to what was parsed; only a request whose note is
// signed by the log and whose proof verifies from the held size is cosigned, and then its
// cosignature verifies and the new size is not below the held one; an answer re-encodes to the
// same bytes when it parses; a cosignature check on arbitrary lines never says "cosigned" unless
// one of them verifies.

struct Fixture {
    let log: NoteSigner
    let witness: CosignatureSigner
    let core: WitnessCore
    let leaves: [[UInt8]]
    let held: WitnessedLog
    let valid: [UInt8]

    init() {
        guard let log = try? NoteSigner(name: "fuzz.example/log", seed: [UInt8](repeating: 1, count: 32)),
              let witness = try? CosignatureSigner(name: "fuzz.example/witness", seed: [UInt8](repeating: 2, count: 32)) else {
            fatalError("fixed keys")
        }
        self.log = log
        self.witness = witness
        core = WitnessCore(signer: witness, logs: [log.verifierKey])
        leaves = (0..<9).map { Merkle.leafHash([UInt8($0)]) }
        let leaves = self.leaves
        func note(_ n: Int) -> [UInt8] {
            Array(((try? log.sign(Checkpoint(origin: "fuzz.example/log", size: UInt64(n), rootHash: Merkle.root(leaves[0..<n])).text)) ?? "").utf8)
        }
        held = WitnessedLog(size: 5, rootHash: Merkle.root(leaves[0..<5]), note: note(5))
        valid = AddCheckpoint(oldSize: 5, proof: (try? Merkle.consistencyProof(leaves, old: 5, new: 9)) ?? [], note: note(9)).encoded
    }
}

nonisolated(unsafe) let fixture = Fixture()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWitness(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size).bytes
    guard let mode = input.first else { return 0 }
    let rest = Array(input.dropFirst())
    var request: [UInt8]
    switch mode % 4 {
    case 0: request = rest
    case 1:
        request = fixture.valid
        for (i, b) in rest.enumerated() where !request.isEmpty { request[i % request.count] ^= b }
    case 2:
        request = fixture.valid
        let at = Int(rest.first ?? 0) % (request.count + 1)
        request.insert(contentsOf: rest.dropFirst(), at: at)
    default:
        if let answer = WitnessAnswer.parse(rest) {
            check(WitnessAnswer.parse(answer.encoded) == answer, "an answer that does not re-encode")
        }
        if let note = try? SignedNote.parse(fixture.held.note + rest) {
            if case .cosigned = fixture.witness.verifierKey.check(note) {
                trace("cosigned by fuzzed lines")
            }
        }
        return 0
    }
    guard let parsed = try? AddCheckpoint.parse(request) else { return 0 }
    check(parsed.proof.count <= AddCheckpoint.maxProof, "more proof lines than allowed")
    check((try? AddCheckpoint.parse(parsed.encoded)) == parsed, "a request that does not re-encode")
    let decision = fixture.core.decide(parsed, current: { $0 == "fuzz.example/log" ? fixture.held : nil }, now: 1_800_000_000)
    if case .cosigned(let line) = decision.answer {
        guard let accepted = decision.accepted, let note = try? SignedNote.parse(parsed.note), let c = try? Checkpoint.parse(note.text) else {
            check(false, "cosigned without an accepted state")
            return 0
        }
        check(accepted.size == c.size && c.size >= fixture.held.size, "cosigned a checkpoint below the held size")
        check(note.verify([fixture.log.verifierKey]) != .noKnownSigner, "cosigned a note the log did not sign")
        if c.size > fixture.held.size {
            check(Merkle.verifyConsistency(old: fixture.held.size, new: c.size, oldRoot: fixture.held.rootHash, newRoot: c.rootHash, proof: parsed.proof),
                  "cosigned without a consistency proof")
        } else {
            check(c.rootHash == fixture.held.rootHash, "cosigned another root at the held size")
        }
        let stored = try? SignedNote.parse(accepted.note)
        check(stored.map { fixture.witness.verifierKey.check($0) == .cosigned(timestamp: 1_800_000_000) } == true, "a cosignature that does not verify")
        check(line.hasPrefix("\u{2014} fuzz.example/witness "), "a cosignature line under another name")
    } else {
        check(decision.accepted == nil, "a refusal with a new state")
    }
    return 0
}
