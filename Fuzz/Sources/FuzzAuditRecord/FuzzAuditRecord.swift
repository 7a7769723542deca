import AuditLog
import FuzzSupport

// FuzzAuditRecord: what a verifier reads from a log directory it does not trust — frames, then
// the canonical JSON of each payload, then the version-1 record, and signed checkpoints — fed
// arbitrary bytes.
//
// Input: the bytes of a segment.
//
// Checks: parsing never traps; every whole frame re-encodes to exactly its bytes and its CRC
// matches; a torn frame is reported only at the end of the bytes; an accepted JSON payload is
// canonical (encoding it gives back the payload); an accepted record re-encodes to the payload and
// keeps the invariants of its fields (an intent has no result, an outcome has one); a refusal
// says why.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAuditRecord(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = FuzzInput(data, size).bytes
    var at = 0
    scan: while true {
        switch Frame.parse(bytes, at: at) {
        case .end:
            break scan
        case .torn(let available):
            check(available == bytes.count - at && available > 0, "a torn frame before the end (at \(at))")
            break scan
        case .damaged(let why):
            check(!why.isEmpty, "damage without a reason")
            break scan
        case .frame(let payload, let next):
            check(next > at && Array(bytes[at..<next]) == Frame.encode(payload), "frame at \(at) re-encodes differently")
            check(CRC32C.checksum(payload) == UInt32(bytes[at + 4]) | UInt32(bytes[at + 5]) << 8 | UInt32(bytes[at + 6]) << 16 | UInt32(bytes[at + 7]) << 24,
                  "a frame accepted with a CRC that does not match")
            do {
                let value = try JSONValue.parse(payload)
                check(value.canonicalBytes == payload, "accepted JSON that is not canonical")
            } catch {
                check(!error.reason.isEmpty, "a JSON refusal without a reason")
            }
            do {
                let r = try AuditRecord.parse(payload)
                check(r.payload == payload, "record \(r.sequence) re-encodes differently")
                check((r.stage == .intent) == (r.result == nil), "an intent with a result, or an outcome without one")
                check(r.action.utf8.count <= AuditRecord.maxText && !r.action.isEmpty, "an action out of bounds")
                trace("record \(r.sequence): \(r.action)")
            } catch {
                check(!error.description.isEmpty, "a record refusal without a reason")
            }
            at = next
        }
    }
    // The same bytes as a signed checkpoint: parsing never traps; an accepted note has at least
    // one well-formed signature line and its text parses back from its own format.
    if let note = try? SignedNote.parse(bytes) {
        check(!note.signatures.isEmpty && note.signatures.count <= SignedNote.maxSignatures, "a note with \(note.signatures.count) signatures")
        check(note.text.hasSuffix("\n"), "a note text without its final newline")
        check(note.verify([]) == .noKnownSigner, "a note verified with no keys")
        if let c = try? Checkpoint.parse(note.text) {
            check(c.text == note.text && c.rootHash.count == 32, "a checkpoint that does not re-encode")
        }
    }
    // The payloads as leaves: hashing never traps and the tree's two computations agree.
    var frontier = MerkleFrontier()
    var leaves: [[UInt8]] = []
    for chunk in stride(from: 0, to: min(bytes.count, 512), by: 16) {
        let leaf = Merkle.leafHash(Array(bytes[chunk..<min(chunk + 16, bytes.count)]))
        leaves.append(leaf)
        frontier.append(leafHash: leaf)
    }
    check(frontier.root == Merkle.root(leaves), "the frontier's root differs from the tree's")
    // The bytes as a whole log's only segment, verified against a fixed key: never traps; reading
    // stops inside the bytes; a clean report has no stop but a torn tail; the tree it built has
    // one leaf per record read.
    if let key = verifierKey {
        let report = AuditVerifier.verify(segments: [bytes], key: key)
        check(report.end.offset <= bytes.count && report.end.segment == 0, "the end \(report.end) is outside the segment")
        check(report.frontier.size == report.records, "the tree has \(report.frontier.size) leaves for \(report.records) records")
        check(!report.isClean || report.stoppedAt == nil || report.tornTail, "a clean report that stopped")
        check(report.problems.count <= 1, "more than one problem in one segment")
        if let stop = report.stoppedAt {
            _ = AuditVerifier.signedCheckpoint(in: bytes, after: stop.offset, key: key)
        }
    }
    return 0
}

let verifierKey = try? NoteSigner(name: "fuzz.example/log", seed: [UInt8](repeating: 1, count: 32)).verifierKey
