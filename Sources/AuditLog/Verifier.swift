/// What an auditor's verifier concludes from a log's bytes (docs/audit-log.md): the segments'
/// frames in order — records, each followed in time by the signed checkpoint that covers it —
/// checked against the log's public key, and against checkpoints the auditor saved earlier. Pure:
/// the caller reads the files and feeds them one segment at a time, so a verifier holds one
/// segment and the tree's right edge, never the whole log. Every problem is named by the record or
/// checkpoint where it is.
public struct AuditVerifier: Sendable {
    /// A place in the log: a segment (counting from 0) and a byte offset in it.
    public struct Location: Equatable, Comparable, Sendable, CustomStringConvertible {
        public var segment: Int
        public var offset: Int
        public init(segment: Int, offset: Int) { self.segment = segment; self.offset = offset }
        public static func < (a: Location, b: Location) -> Bool { (a.segment, a.offset) < (b.segment, b.offset) }
        public var description: String { "segment \(segment), offset \(offset)" }
    }

    /// One thing wrong with a log. The first problem in the frames ends their reading (what follows
    /// cannot be placed); saved checkpoints are checked against what was read.
    public enum Problem: Equatable, Sendable, CustomStringConvertible {
        /// A damaged frame (CRC mismatch, a length over the limit, an empty frame) where record
        /// `record` would be.
        case damagedFrame(Location, record: UInt64, why: String)
        /// A segment other than the last ends in a torn frame (a file cut short).
        case tornFrame(Location, record: UInt64)
        /// The record at position `record` is not a valid version-1 record.
        case badRecord(Location, record: UInt64, why: String)
        /// The record at position `record` says it is record `sequence`: records were deleted,
        /// inserted or reordered there (or a whole segment is missing).
        case outOfSequence(Location, record: UInt64, sequence: UInt64)
        /// A checkpoint in the log that does not parse, or is not signed by the log's key.
        case badCheckpoint(Location, why: String)
        /// A checkpoint in the log covers `size` records and `records` precede it: records before
        /// it were deleted or inserted.
        case checkpointSize(Location, size: UInt64, records: UInt64)
        /// The records before a checkpoint in the log do not hash to its root: a record was changed
        /// (and its CRC recomputed), replaced or reordered.
        case rootMismatch(Location, size: UInt64)
        /// A segment file is missing from the directory's numbering.
        case missingSegment(Int)
        /// A checkpoint the auditor saved (`index` in the order given) does not parse or is not
        /// signed by the log's key.
        case badSavedCheckpoint(index: Int, why: String)
        /// A saved checkpoint covers `size` records and the log has only `records`: the last records
        /// were deleted (or the log was rolled back).
        case truncated(savedCheckpoint: Int, size: UInt64, records: UInt64)
        /// The log's first `size` records do not hash to a saved checkpoint's root: the log was
        /// rewritten since the auditor saved it.
        case rewritten(savedCheckpoint: Int, size: UInt64)
        /// A checkpoint the witness cosigned (`index` in the order given) does not parse, is not
        /// signed by the log's key, or carries no valid cosignature by the witness's key.
        case badWitnessCheckpoint(index: Int, why: String)
        /// The witness cosigned `size` records and the log has only `records`: records were
        /// deleted, or the log was rolled back behind the witness's back.
        case witnessAhead(witnessCheckpoint: Int, size: UInt64, records: UInt64)
        /// The log's first `size` records do not hash to the root the witness cosigned: the log
        /// was rewritten.
        case witnessDisagrees(witnessCheckpoint: Int, size: UInt64)

        /// The problem's `kind` in the verifiers' report.
        public var kind: String {
            switch self {
            case .damagedFrame: "damaged-frame"
            case .tornFrame: "torn-frame"
            case .badRecord: "bad-record"
            case .outOfSequence: "out-of-sequence"
            case .badCheckpoint: "bad-checkpoint"
            case .checkpointSize: "checkpoint-size"
            case .rootMismatch: "root-mismatch"
            case .missingSegment: "missing-segment"
            case .badSavedCheckpoint: "bad-saved-checkpoint"
            case .truncated: "truncated"
            case .rewritten: "rewritten"
            case .badWitnessCheckpoint: "bad-witness-checkpoint"
            case .witnessAhead: "witness-ahead"
            case .witnessDisagrees: "witness-disagrees"
            }
        }

        /// The problem as the verifiers' report has it: its kind and where it is.
        public var json: JSONValue {
            var o: [String: JSONValue] = ["kind": .string(kind)]
            func at(_ l: Location) { o["segment"] = .integer(Int64(l.segment)); o["offset"] = .integer(Int64(l.offset)) }
            switch self {
            case .damagedFrame(let l, let r, _), .tornFrame(let l, let r), .badRecord(let l, let r, _), .outOfSequence(let l, let r, _):
                at(l); o["record"] = .integer(Int64(clamping: r))
            case .badCheckpoint(let l, _), .checkpointSize(let l, _, _), .rootMismatch(let l, _): at(l)
            case .missingSegment(let s): o["segment"] = .integer(Int64(s))
            case .badSavedCheckpoint(let i, _), .truncated(let i, _, _), .rewritten(let i, _): o["saved"] = .integer(Int64(i))
            case .badWitnessCheckpoint(let i, _), .witnessAhead(let i, _, _), .witnessDisagrees(let i, _): o["witness"] = .integer(Int64(i))
            }
            return .object(o)
        }

        public var description: String {
            switch self {
            case .damagedFrame(let l, let r, let why): return "\(l) (record \(r)): damaged frame: \(why)"
            case .tornFrame(let l, let r): return "\(l) (record \(r)): the segment ends in the middle of a frame, and is not the last"
            case .badRecord(let l, let r, let why): return "\(l) (record \(r)): not a version-1 record: \(why)"
            case .outOfSequence(let l, let r, let seq):
                return "\(l): record \(r) says it is record \(seq): records were deleted, inserted or reordered"
            case .badCheckpoint(let l, let why): return "\(l): bad checkpoint: \(why)"
            case .checkpointSize(let l, let size, let n):
                return "\(l): the checkpoint covers \(size) records but \(n) precede it: records were deleted or inserted"
            case .rootMismatch(let l, let size): return "\(l): the \(size) records before this checkpoint do not hash to its root: a record was changed"
            case .missingSegment(let s): return "segment \(s) is missing"
            case .badSavedCheckpoint(let i, let why): return "saved checkpoint \(i): \(why)"
            case .truncated(let i, let size, let n):
                return "saved checkpoint \(i) covers \(size) records and the log has \(n): the last \(size - n) were deleted, or the log was rolled back"
            case .rewritten(let i, let size): return "saved checkpoint \(i): the log's first \(size) records do not hash to its root: the log was rewritten"
            case .badWitnessCheckpoint(let i, let why): return "witness checkpoint \(i): \(why)"
            case .witnessAhead(let i, let size, let n):
                return "the witness cosigned \(size) records (witness checkpoint \(i)) and the log has \(n): the witness's view and the log disagree — records were deleted or the log was rolled back"
            case .witnessDisagrees(let i, let size):
                return "the log's first \(size) records do not hash to the root the witness cosigned (witness checkpoint \(i)): the witness's view and the log disagree — the log was rewritten"
            }
        }
    }

    public struct Report: Equatable, Sendable {
        /// The report both verifiers print (docs/audit-log.md, "The verifiers' report").
        public var json: JSONValue {
            .object(["records": .integer(Int64(clamping: records)), "checkpoints": .integer(Int64(checkpoints)),
                     "size": .integer(Int64(clamping: latestCheckpoint?.size ?? 0)), "torn_tail": .bool(tornTail),
                     "problems": .array(problems.map(\.json))])
        }

        /// Records read whole and in sequence.
        public var records: UInt64 = 0
        /// Checkpoints in the log that verified.
        public var checkpoints: Int = 0
        /// The last checkpoint in the log that verified, its note's bytes, and where it ends.
        public var latestCheckpoint: Checkpoint?
        public var latestNote: [UInt8]?
        public var latestCheckpointEnd: Location?
        /// The right edge of the tree over the records read.
        public var frontier = MerkleFrontier()
        /// The whole tree over the records read, when asked for (for proofs).
        public var tree: MerkleTree?
        /// The end of the last whole, valid frame: where an appender continues after cutting off
        /// whatever follows.
        public var end = Location(segment: 0, offset: 0)
        /// Where reading stopped at a problem or a torn tail, if it did.
        public var stoppedAt: Location?
        public var problems: [Problem] = []
        /// The final segment ends in a torn frame: the tail of an append that a crash cut off (the
        /// appender cuts it back at its next start). Not tampering by itself.
        public var tornTail = false
        public var isClean: Bool { problems.isEmpty }

        /// Whether the reading stopped above the last checkpoint in the log, in the last segment:
        /// there nothing was ever acknowledged, so an appender may cut the tail back.
        public func stoppedAboveLastCheckpoint(lastSegment: Int) -> Bool {
            guard let stop = stoppedAt, stop.segment == lastSegment else { return false }
            guard let c = latestCheckpointEnd else { return true }
            return c <= stop
        }
    }

    public let key: NoteVerifierKey
    private var report = Report()
    private var stopped = false
    /// Saved checkpoints not yet reached, by size (several may share a size).
    private var saved: [(index: Int, checkpoint: Checkpoint, witness: Bool)] = []
    private var savedProblems: [Problem] = []

    /// A verifier for the log signed by `key`, given checkpoints the auditor saved earlier (signed
    /// notes, in any order): the log must still contain each one's records unchanged.
    /// With `witness`: the witness's key and the checkpoints it cosigned (its view of the log),
    /// each of which must carry its valid cosignature and agree with the log.
    public init(key: NoteVerifierKey, savedCheckpoints: [[UInt8]] = [], witness: (key: CosignatureKey, checkpoints: [[UInt8]])? = nil,
                keepingTree: Bool = false) {
        self.key = key
        if keepingTree { report.tree = MerkleTree() }
        for (i, bytes) in savedCheckpoints.enumerated() {
            switch Self.checkpoint(bytes, key: key) {
            case .success(let c): saved.append((i, c, false))
            case .failure(let why): savedProblems.append(.badSavedCheckpoint(index: i, why: why.description))
            }
        }
        for (i, bytes) in (witness?.checkpoints ?? []).enumerated() {
            guard let witnessKey = witness?.key else { break }
            switch Self.checkpoint(bytes, key: key) {
            case .failure(let why): savedProblems.append(.badWitnessCheckpoint(index: i, why: why.description))
            case .success(let c):
                switch (try? SignedNote.parse(bytes)).map(witnessKey.check) {
                case .cosigned?: saved.append((i, c, true))
                case .invalid?: savedProblems.append(.badWitnessCheckpoint(index: i, why: "its cosignature by \(witnessKey.name) does not verify"))
                default: savedProblems.append(.badWitnessCheckpoint(index: i, why: "it is not cosigned by \(witnessKey.name)"))
                }
            }
        }
        // By size; ties: saved before the witness's, then in the order given (both verifiers
        // report in this order).
        saved.sort { ($0.checkpoint.size, $0.witness ? 1 : 0, $0.index) < ($1.checkpoint.size, $1.witness ? 1 : 0, $1.index) }
        checkSaved()
    }

    /// Parses a signed checkpoint and checks its signature by `key` and its origin.
    public static func checkpoint(_ bytes: [UInt8], key: NoteVerifierKey) -> Result<Checkpoint, SignedNote.Invalid> {
        do {
            let note = try SignedNote.parse(bytes)
            switch note.verify([key]) {
            case .verified: break
            case .badSignature: return .failure(SignedNote.Invalid(description: "its signature by \(key.name) does not verify"))
            case .noKnownSigner: return .failure(SignedNote.Invalid(description: "it is not signed by \(key.name)"))
            }
            let c = try Checkpoint.parse(note.text)
            guard c.origin == key.name else {
                return .failure(SignedNote.Invalid(description: "its origin \(c.origin.prefix(80)) is not the key's name \(key.name)"))
            }
            return .success(c)
        } catch {
            return .failure(error)
        }
    }

    /// The offset of the first frame at or after `offset` in `bytes` that is a checkpoint signed by
    /// `key`, found by its origin line rather than by walking frames (after damage the frames'
    /// boundaries are lost). An appender asks before cutting a damaged tail back: a valid
    /// checkpoint after the damage means records the log acknowledged were changed.
    public static func signedCheckpoint(in bytes: [UInt8], after offset: Int, key: NoteVerifierKey) -> Int? {
        let origin = Array((key.name + "\n").utf8)
        guard let first = origin.first, offset >= 0 else { return nil }
        var p = offset + Frame.headerSize
        while p + origin.count <= bytes.count {
            if bytes[p] == first, bytes[p..<(p + origin.count)].elementsEqual(origin),
               case .frame(let payload, _) = Frame.parse(bytes, at: p - Frame.headerSize), isCheckpoint(payload),
               case .success = checkpoint(payload, key: key) {
                return p - Frame.headerSize
            }
            p += 1
        }
        return nil
    }

    /// Whether a frame's payload is a checkpoint rather than a record: a record is a JSON object
    /// and begins with `{`; a checkpoint begins with its origin, which never does.
    public static func isCheckpoint(_ payload: [UInt8]) -> Bool { payload.first != UInt8(ascii: "{") }

    /// Reads segment `index` (segments must come in order, each once). `isLast`: a torn frame at
    /// its end is a crash's tail rather than damage.
    public mutating func read(segment index: Int, bytes: [UInt8], isLast: Bool) {
        guard !stopped else { return }
        report.end = Location(segment: index, offset: 0)
        var at = 0
        func stop(_ problem: Problem?) {
            if let problem { report.problems.append(problem) }
            report.stoppedAt = Location(segment: index, offset: at)
            stopped = true
        }
        while true {
            let here = Location(segment: index, offset: at)
            let record = report.records
            switch Frame.parse(bytes, at: at) {
            case .end:
                return
            case .torn:
                if isLast { report.tornTail = true; stop(nil) } else { stop(.tornFrame(here, record: record)) }
                return
            case .damaged(let why):
                stop(.damagedFrame(here, record: record, why: why))
                return
            case .frame(let payload, let next):
                if Self.isCheckpoint(payload) {
                    let checkpoint: Checkpoint
                    switch Self.checkpoint(payload, key: key) {
                    case .success(let c): checkpoint = c
                    case .failure(let why): stop(.badCheckpoint(here, why: why.description)); return
                    }
                    guard checkpoint.size == record else { stop(.checkpointSize(here, size: checkpoint.size, records: record)); return }
                    guard checkpoint.rootHash == report.frontier.root else { stop(.rootMismatch(here, size: checkpoint.size)); return }
                    report.checkpoints += 1
                    report.latestCheckpoint = checkpoint
                    report.latestNote = payload
                    report.latestCheckpointEnd = Location(segment: index, offset: next)
                } else {
                    let r: AuditRecord
                    do { r = try AuditRecord.parse(payload) } catch { stop(.badRecord(here, record: record, why: error.description)); return }
                    guard r.sequence == record else { stop(.outOfSequence(here, record: record, sequence: r.sequence)); return }
                    let leaf = Merkle.leafHash(payload)
                    report.frontier.append(leafHash: leaf)
                    report.tree?.append(leafHash: leaf)
                    report.records += 1
                    checkSaved()
                }
                at = next
                report.end = Location(segment: index, offset: at)
            }
        }
    }

    /// Notes that segment `index` is missing from the numbering: nothing after it can be placed.
    public mutating func missing(segment index: Int) {
        guard !stopped else { return }
        report.problems.append(.missingSegment(index))
        report.stoppedAt = Location(segment: index, offset: 0)
        stopped = true
    }

    /// Compares the saved checkpoints of the tree's current size with its root.
    private mutating func checkSaved() {
        while let first = saved.first, first.checkpoint.size <= report.frontier.size {
            saved.removeFirst()
            if first.checkpoint.rootHash != report.frontier.root {
                savedProblems.append(first.witness ? .witnessDisagrees(witnessCheckpoint: first.index, size: first.checkpoint.size)
                                                   : .rewritten(savedCheckpoint: first.index, size: first.checkpoint.size))
            }
        }
    }

    /// The conclusion, once every segment was read.
    public func finish() -> Report {
        var r = report
        r.problems += savedProblems
        for s in saved {
            r.problems.append(s.witness ? .witnessAhead(witnessCheckpoint: s.index, size: s.checkpoint.size, records: r.records)
                                        : .truncated(savedCheckpoint: s.index, size: s.checkpoint.size, records: r.records))
        }
        return r
    }

    /// Verifies whole segments held in memory (tests, tools with small logs).
    public static func verify(segments: [[UInt8]], key: NoteVerifierKey, savedCheckpoints: [[UInt8]] = []) -> Report {
        var v = AuditVerifier(key: key, savedCheckpoints: savedCheckpoints)
        for (i, s) in segments.enumerated() { v.read(segment: i, bytes: s, isLast: i == segments.count - 1) }
        return v.finish()
    }
}
