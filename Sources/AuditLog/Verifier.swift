/// What an auditor's verifier concludes from a log's bytes: the segments' frames in order and the
/// signed checkpoints, checked against the log's public key (docs/audit-log.md). Pure: the caller
/// reads the files. Every problem is named by the record or checkpoint where it is.
public enum AuditVerifier {
    /// One thing wrong with a log. The first problem in the records ends their reading (what
    /// follows cannot be placed); every checkpoint is checked against what was read.
    public enum Problem: Equatable, Sendable, CustomStringConvertible {
        /// Segment `segment` has a damaged frame at `offset`, where record `record` would be.
        case damagedFrame(segment: Int, offset: Int, record: UInt64, why: String)
        /// A segment other than the last ends in a torn frame (a file cut short).
        case tornFrame(segment: Int, offset: Int, record: UInt64)
        /// The record at position `record` is not a valid version-1 record.
        case badRecord(record: UInt64, why: String)
        /// The record at position `record` says it is record `sequence`: records were deleted,
        /// inserted or reordered there.
        case outOfSequence(record: UInt64, sequence: UInt64)
        /// Checkpoint `index` does not parse, or is not signed by the log's key.
        case badCheckpoint(index: Int, why: String)
        /// Checkpoint `index` covers `size` records, and the log has only `records`: the last
        /// records were deleted.
        case truncated(checkpoint: Int, size: UInt64, records: UInt64)
        /// The first `size` records do not hash to checkpoint `index`'s root: a record at or below
        /// that size was changed (and its CRC recomputed), replaced or reordered.
        case rootMismatch(checkpoint: Int, size: UInt64)
        /// Checkpoint `index` is smaller than an earlier one: the checkpoints were rolled back.
        case checkpointsOutOfOrder(checkpoint: Int, size: UInt64, previous: UInt64)

        public var description: String {
            switch self {
            case .damagedFrame(let s, let o, let r, let why): return "segment \(s), offset \(o) (record \(r)): damaged frame: \(why)"
            case .tornFrame(let s, let o, let r): return "segment \(s), offset \(o) (record \(r)): the segment ends in the middle of a frame"
            case .badRecord(let r, let why): return "record \(r): \(why)"
            case .outOfSequence(let r, let seq): return "record \(r) says it is record \(seq): records were deleted, inserted or reordered"
            case .badCheckpoint(let i, let why): return "checkpoint \(i): \(why)"
            case .truncated(let i, let size, let n):
                return "checkpoint \(i) covers \(size) records and the log has \(n): the last \(size - n) were deleted"
            case .rootMismatch(let i, let size): return "checkpoint \(i): the first \(size) records do not hash to its root: a record was changed"
            case .checkpointsOutOfOrder(let i, let size, let prev): return "checkpoint \(i) of size \(size) follows one of size \(prev): rolled back"
            }
        }
    }

    public struct Report: Equatable, Sendable {
        /// Records read whole and in sequence.
        public var records: UInt64
        /// The largest checkpoint that verified, and its size.
        public var latestCheckpoint: Checkpoint?
        public var problems: [Problem]
        /// The final segment ends in a torn frame above every checkpoint: the tail of an append
        /// that a crash cut off (the appender cuts it back at its next start). Not tampering.
        public var tornTail: Bool
        public var isClean: Bool { problems.isEmpty }
    }

    /// Verifies `segments` (in order) and `checkpoints` (signed notes, in the order they were
    /// written) against the log's `key`.
    public static func verify(segments: [[UInt8]], checkpoints: [[UInt8]], key: NoteVerifierKey) -> Report {
        var problems: [Problem] = []
        var leaves: [[UInt8]] = []
        var tornTail = false
        reading: for (s, bytes) in segments.enumerated() {
            var at = 0
            while true {
                let record = UInt64(leaves.count)
                switch Frame.parse(bytes, at: at) {
                case .end:
                    continue reading
                case .torn:
                    if s == segments.count - 1 { tornTail = true } else { problems.append(.tornFrame(segment: s, offset: at, record: record)) }
                    break reading
                case .damaged(let why):
                    problems.append(.damagedFrame(segment: s, offset: at, record: record, why: why))
                    break reading
                case .frame(let payload, let next):
                    let r: AuditRecord
                    do { r = try AuditRecord.parse(payload) } catch {
                        problems.append(.badRecord(record: record, why: error.description))
                        break reading
                    }
                    guard r.sequence == record else {
                        problems.append(.outOfSequence(record: record, sequence: r.sequence))
                        break reading
                    }
                    leaves.append(Merkle.leafHash(payload))
                    at = next
                }
            }
        }
        // The root at every size a checkpoint names, from one pass of a frontier over the leaves
        // (a root per checkpoint from scratch would cost O(records) each: quadratic for a log that
        // writes a checkpoint per group commit).
        var parsed: [Result<Checkpoint, SignedNote.Invalid>] = []
        for bytes in checkpoints {
            do {
                let note = try SignedNote.parse(bytes)
                switch note.verify([key]) {
                case .verified: parsed.append(.success(try Checkpoint.parse(note.text)))
                case .badSignature: parsed.append(.failure(SignedNote.Invalid(description: "its signature by \(key.name) does not verify")))
                case .noKnownSigner: parsed.append(.failure(SignedNote.Invalid(description: "it is not signed by \(key.name)")))
                }
            } catch {
                parsed.append(.failure(error))
            }
        }
        var roots: [UInt64: [UInt8]] = [0: Merkle.emptyRoot]
        let sizes = Set(parsed.compactMap { try? $0.get().size }.filter { $0 <= UInt64(leaves.count) })
        var frontier = MerkleFrontier()
        for leaf in leaves.prefix(Int(sizes.max() ?? 0)) {
            frontier.append(leafHash: leaf)
            if sizes.contains(frontier.size) { roots[frontier.size] = frontier.root }
        }
        var latest: Checkpoint?
        for (i, result) in parsed.enumerated() {
            let checkpoint: Checkpoint
            switch result {
            case .success(let c): checkpoint = c
            case .failure(let error):
                problems.append(.badCheckpoint(index: i, why: error.description))
                continue
            }
            guard checkpoint.origin == key.name else {
                problems.append(.badCheckpoint(index: i, why: "its origin \(checkpoint.origin) is not the key's name \(key.name)"))
                continue
            }
            if let previous = latest, checkpoint.size < previous.size {
                problems.append(.checkpointsOutOfOrder(checkpoint: i, size: checkpoint.size, previous: previous.size))
                continue
            }
            guard checkpoint.size <= UInt64(leaves.count) else {
                problems.append(.truncated(checkpoint: i, size: checkpoint.size, records: UInt64(leaves.count)))
                continue
            }
            guard roots[checkpoint.size] == checkpoint.rootHash else {
                problems.append(.rootMismatch(checkpoint: i, size: checkpoint.size))
                continue
            }
            latest = checkpoint
        }
        // (A torn tail below a checkpoint shows as that checkpoint's truncation: records it covers
        // are missing.)
        return Report(records: UInt64(leaves.count), latestCheckpoint: latest, problems: problems, tornTail: tornTail)
    }
}
