import AuditLog
import Crypto
import HostOS
import Synchronization

/// What a writer records: who, what, on what, whether it was allowed and why, the stage and the
/// result. The appender adds the sequence number, the time and the boot id.
public struct AuditEntry: Equatable, Sendable {
    public var actor: AuditRecord.Actor
    public var tenant: String?
    public var action: String
    public var target: String?
    public var allowed: Bool
    public var reason: String
    public var stage: AuditRecord.Stage
    /// Ties an intent to its outcome; nil for an event that stands alone (the appender then uses
    /// "seq-N", N its sequence number).
    public var operation: String?
    public var result: String?

    public init(actor: AuditRecord.Actor, tenant: String? = nil, action: String, target: String? = nil, allowed: Bool = true,
                reason: String, stage: AuditRecord.Stage, operation: String? = nil, result: String? = nil) {
        self.actor = actor; self.tenant = tenant; self.action = action; self.target = target; self.allowed = allowed
        self.reason = reason; self.stage = stage; self.operation = operation; self.result = result
    }

    /// Something that happened (not a request): Bulkhead's own event, as an outcome.
    public static func event(_ action: String, target: String? = nil, tenant: String? = nil, result: String,
                             reason: String = "bulkhead", operation: String? = nil) -> AuditEntry {
        AuditEntry(actor: .system, tenant: tenant, action: action, target: target, allowed: true, reason: reason,
                   stage: .outcome, operation: operation, result: result)
    }

    /// The entry as record `sequence`, or why it cannot be one (a field empty or over the limit, an
    /// intent with a result): the caller's request is then refused, nothing is written.
    func record(sequence: UInt64, time: Int64, bootID: String) throws(AuditStoreError) -> AuditRecord {
        let r = AuditRecord(sequence: sequence, timeNanoseconds: max(0, time), bootID: bootID, actor: actor, tenant: tenant,
                            action: action, target: target, allowed: allowed, reason: reason, stage: stage,
                            operation: operation ?? "seq-\(sequence)", result: result)
        if let problem = r.problem { throw AuditStoreError(.invalidEntry, "cannot record \(action.prefix(64)): \(problem)") }
        return r
    }
}

/// The log's one writer (docs/audit-log.md): appends records in groups, each group followed by a
/// checkpoint signed with the log's key, written with one pwrite and made durable with one
/// fdatasync before any of its writers is answered (group commit: concurrent writers share the
/// sync). A heartbeat record and checkpoint are written whenever the log has been idle for
/// `heartbeatSeconds`, so silence shows. After a failed write or sync every append fails (fail
/// closed) until the log is reopened, which recovers it.
public final class AuditAppender: @unchecked Sendable {
    // Sendable: every mutable field is read and written under `lock` (the committer thread's own
    // fields — the segment descriptor, the frontier — only on the committer thread).

    public struct Options: Sendable {
        /// The log's name (its checkpoints' origin) when it is created: no spaces, no "+".
        /// Default "bulkhead-audit/" and 16 random hex digits.
        public var name: String?
        /// A segment is closed once it holds this many bytes (its last group may go past it).
        public var segmentBytes: Int = 64 << 20
        /// An idle log writes a heartbeat record and checkpoint this often.
        public var heartbeatSeconds: Double = 60
        /// The most records in one group.
        public var maxGroup: Int = 4096
        /// The clock records are stamped with (nanoseconds since 1970, UTC).
        public var clock: @Sendable () -> Int64 = { wallClockNanoseconds() }
        /// Called on the committer thread with each new signed checkpoint once it is durable (the
        /// witness's hook). Must not block for long.
        public var onCheckpoint: (@Sendable (_ note: [UInt8], _ checkpoint: Checkpoint) -> Void)?
        /// The witness to ask for a cosignature after each checkpoint (none by default). With one,
        /// the appender keeps the whole tree in memory (about 64 bytes a record) for its proofs.
        public var witness: WitnessEndpoint?
        public init() {}
    }

    /// What opening found.
    public struct Opening: Equatable, Sendable {
        /// The log was created by this open (with a new key).
        public var created: Bool
        /// Records and checkpoints found and verified.
        public var records: UInt64
        public var checkpoints: Int
        /// The bytes cut off the end (a torn tail above the last checkpoint), and what was there.
        public var cutBytes: Int
        public var cutReason: String?
    }

    public let directory: String
    public let verifierKey: NoteVerifierKey
    public let opening: Opening
    private let options: Options
    private let signer: NoteSigner
    private let bootID: String
    private let lockFile: LockFile
    private let directoryFD: FileDescriptor

    // The committer thread's own state.
    private var segmentNumber: Int
    private var segment: FileDescriptor
    private var segmentSize: UInt64
    private var frontier: MerkleFrontier
    private var thread: OSThread?
    /// The whole tree, when a witness needs proofs from any earlier size.
    private let tree: SharedTree?
    private var witness: WitnessClient?

    // Shared, under `lock`.
    /// A blocking writer's answer: it sleeps on its own condition, so a commit wakes exactly the
    /// writers it answers (not all of them).
    private final class Ticket: @unchecked Sendable {
        // Sendable: `result` is read and written under `lock` only.
        let lock = ConditionLock()
        var result: Result<[UInt64], AuditStoreError>?
        func wait() -> Result<[UInt64], AuditStoreError> {
            lock.withLock {
                while result == nil { lock.wait() }
                return result ?? .failure(AuditStoreError(.failed, "no answer"))
            }
        }
        func answer(_ r: Result<[UInt64], AuditStoreError>) { lock.withLock { result = r; lock.broadcast() } }
    }
    private enum Answer {
        case ticket(Ticket)
        case continuation(CheckedContinuation<Result<[UInt64], AuditStoreError>, Never>)
        /// The appender's own heartbeat: nobody waits.
        case none
    }
    /// One writer's group of records. Its sequence numbers and time are reserved when it is
    /// queued, and its writer encodes it — the records, their frames, their leaf hashes — on its
    /// own thread before the committer takes it: with many writers the encoding runs in parallel,
    /// and the committer only folds the leaves into the tree, signs, writes and syncs.
    private final class Slot: @unchecked Sendable {
        // Sendable: `frames`, `leaves` and `broken` are written by the writer before it sets
        // `ready` under the appender's lock; the committer reads them only after it saw `ready`
        // under that lock.
        let first: UInt64
        let count: Int
        let time: Int64
        let answer: Answer
        var frames: [UInt8] = []
        var leaves: [[UInt8]] = []
        var ready = false
        var broken = false
        init(first: UInt64, count: Int, time: Int64, answer: Answer) {
            self.first = first; self.count = count; self.time = time; self.answer = answer
        }
        var sequences: [UInt64] { (0..<UInt64(count)).map { first + $0 } }
    }
    private let lock = ConditionLock()
    private var pending: [Slot] = []
    /// The next sequence number to hand out (reserved, not yet durable).
    private var nextSequence: UInt64
    private var failure: AuditStoreError?
    private var closing = false
    private var shutDown = false
    private var latest: (note: [UInt8], checkpoint: Checkpoint)
    private var size: UInt64

    /// Opens (or creates) the log in `directory` for appending: takes its lock, loads (or creates)
    /// the key, verifies every segment, cuts back a torn tail above the last checkpoint (recording
    /// that it did), and writes a `log.start` record and checkpoint. Refuses a log whose bytes at
    /// or below a checkpoint are not what was written.
    public static func open(_ directory: String, options: Options = Options()) throws(AuditStoreError) -> AuditAppender {
        // The directory: ours, not a link, nobody else may write in it.
        if !pathExists(directory) {
            do { try makeDirectory(directory, mode: 0o700) } catch { throw AuditStoreError(.unusable, "cannot create the audit log \(directory): \(error)") }
        }
        let info: PathInfo
        do { info = try pathInfo(directory) } catch { throw AuditStoreError(.unusable, "cannot use the audit log \(directory): \(error)") }
        guard info.isDirectory else { throw AuditStoreError(.unusable, "the audit log \(directory) is \(info.kind), not a directory") }
        guard info.owner == effectiveUserID() else {
            throw AuditStoreError(.unusable, "the audit log \(directory) belongs to uid \(info.owner), not to this process (uid \(effectiveUserID()))")
        }
        guard info.permissions & 0o022 == 0 else {
            throw AuditStoreError(.unusable, "the audit log \(directory) may be written by others (mode \(String(info.permissions, radix: 8))): make it 0700 or 0750")
        }
        let directoryFD: FileDescriptor
        do { directoryFD = try FileDescriptor.open(directory: directory) } catch { throw AuditStoreError(.unusable, "\(error)") }
        let lockFile: LockFile
        do {
            guard let l = try LockFile.acquire(directory + "/" + AuditDirectory.lockFile) else {
                throw AuditStoreError(.locked, "another process is appending to the audit log \(directory)")
            }
            lockFile = l
        } catch let e as AuditStoreError { throw e } catch { throw AuditStoreError(.unusable, "cannot lock the audit log \(directory): \(error)") }
        do {
            return try AuditAppender(directory: directory, directoryFD: directoryFD, lockFile: lockFile, options: options)
        } catch {
            lockFile.release()
            throw error
        }
    }

    private init(directory: String, directoryFD: FileDescriptor, lockFile: LockFile, options: Options) throws(AuditStoreError) {
        self.directory = directory
        self.directoryFD = directoryFD
        self.lockFile = lockFile
        self.options = options
        self.bootID = AuditDirectory.bootID()
        let numbers = try AuditDirectory.segments(in: directory)
        let (signer, created) = try Self.loadOrCreateKey(directory, directoryFD: directoryFD, hasSegments: !numbers.isEmpty, name: options.name)
        self.signer = signer
        verifierKey = signer.verifierKey

        // Verify everything; a problem above the last checkpoint in the last segment is a crash's
        // tail (never acknowledged) and is cut off; anywhere else it is tampering.
        var report = try AuditDirectory.verify(directory, key: verifierKey, keepingTree: options.witness != nil)
        let last = numbers.last ?? 0
        var cutBytes = 0, cutReason: String?
        if report.stoppedAt != nil {
            guard report.stoppedAboveLastCheckpoint(lastSegment: last), report.end.segment == last else {
                throw AuditStoreError(.tampered(report.problems), "the audit log \(directory) was changed below its last checkpoint, and is not opened for writing: "
                                      + report.problems.map(\.description).joined(separator: "; ")
                                      + ". Run `bulkhead audit verify \(directory)`; keep the directory as evidence and start a new log elsewhere.")
            }
            let path = directory + "/" + AuditDirectory.segmentName(last)
            // Damage followed by a valid checkpoint is not a crash's tail: that checkpoint was
            // written after the damaged bytes were, so the log may have acknowledged them.
            if let stop = report.stoppedAt,
               let later = AuditVerifier.signedCheckpoint(in: try AuditDirectory.readSegment(directory, last), after: stop.offset, key: verifierKey) {
                throw AuditStoreError(.tampered(report.problems), "the audit log \(directory) was changed below its last checkpoint, and is not opened for writing: "
                                      + report.problems.map(\.description).joined(separator: "; ")
                                      + " (a valid checkpoint follows at offset \(later) of segment \(last): records it acknowledged were changed)."
                                      + " Run `bulkhead audit verify \(directory)`; keep the directory as evidence and start a new log elsewhere.")
            }
            do {
                let fd = try FileDescriptor.openChecked(path, what: "audit segment", access: .readWrite)
                let size = try fd.status().size
                try fd.truncate(to: UInt64(report.end.offset))
                try fd.sync()
                cutBytes = Int(size) - report.end.offset
            } catch {
                throw AuditStoreError(.unusable, "cannot cut the torn tail of \(path) back: \(error)")
            }
            cutReason = report.problems.first?.description ?? "a torn frame (an append cut off by a crash)"
            report.problems = []
        } else if !report.isClean {
            // Saved checkpoints are not given here, so only a segment gap remains possible.
            throw AuditStoreError(.tampered(report.problems), "the audit log \(directory) is not whole: "
                                  + report.problems.map(\.description).joined(separator: "; "))
        }
        opening = Opening(created: created, records: report.records, checkpoints: report.checkpoints, cutBytes: cutBytes, cutReason: cutReason)
        frontier = report.frontier
        tree = report.tree.map(SharedTree.init)
        size = report.records
        nextSequence = report.records
        let emptyCheckpoint = Checkpoint(origin: verifierKey.name, size: 0, rootHash: Merkle.emptyRoot)
        latest = (report.latestNote ?? [], report.latestCheckpoint ?? emptyCheckpoint)

        // The segment to continue in (created when the log is new).
        segmentNumber = last
        let path = directory + "/" + AuditDirectory.segmentName(last)
        do {
            if numbers.isEmpty {
                segment = try FileDescriptor.create(exclusive: path, mode: 0o640)
                try directoryFD.sync()
            } else {
                segment = try FileDescriptor.openChecked(path, what: "audit segment", access: .readWrite)
            }
            segmentSize = try segment.status().size
        } catch let e as PathRefusal { throw AuditStoreError(.unusable, e.description) } catch {
            throw AuditStoreError(.unusable, "cannot open \(path) for appending: \(error)")
        }

        do {
            thread = try OSThread.spawn { [self] in commitLoop() }
        } catch { throw AuditStoreError(.unusable, "cannot start the audit log's committer: \(error)") }
        if let endpoint = options.witness, let tree {
            do {
                witness = try WitnessClient(endpoint: endpoint, directory: directoryFD,
                                            knownSize: WitnessClient.cosignedSize(directoryFD, key: endpoint.key),
                                            proof: { old, new in tree.state.withLock { try? $0.consistencyProof(old: old, new: new) } },
                                            report: { [weak self] action, text in
                                                _ = try? self?.append([.event(action, result: AuditEntry.clipped(text))])
                                            })
            } catch {
                shutDownCommitter()
                throw AuditStoreError(.unusable, "cannot start the witness client: \(error)")
            }
        }

        // The first group: what recovery did, then the start, covered by a new checkpoint.
        var first: [AuditEntry] = []
        if let cutReason {
            first.append(.event("log.recovered-torn-tail", result: "cut \(cutBytes) bytes after record \(Int64(report.records) - 1): \(cutReason)".prefix(1000).description))
        }
        first.append(.event("log.start", result: created ? "created \(verifierKey.name)"
                                                         : "verified \(report.records) records and \(report.checkpoints) checkpoints"))
        do { _ = try append(first) } catch {
            shutDownCommitter()
            throw error
        }
    }

    /// Loads `log.key` (owner-only), or creates it and `log.pub` when the log is new.
    private static func loadOrCreateKey(_ directory: String, directoryFD: FileDescriptor, hasSegments: Bool, name: String?) throws(AuditStoreError) -> (NoteSigner, Bool) {
        let keyPath = directory + "/" + AuditDirectory.keyFile, pubPath = directory + "/" + AuditDirectory.publicKeyFile
        let signer: NoteSigner, created: Bool
        if pathExists(keyPath) {
            let info: PathInfo
            do { info = try pathInfo(keyPath) } catch { throw AuditStoreError(.unusable, "\(error)") }
            guard info.isRegularFile, info.owner == effectiveUserID(), info.permissions & 0o077 == 0 else {
                throw AuditStoreError(.unusable, "the audit log's key \(keyPath) must be a regular file of this user's, readable only by it (mode 0600); it is \(info.kind) of uid \(info.owner), mode \(String(info.permissions, radix: 8))")
            }
            let text = try AuditDirectory.keyText(keyPath, what: "audit log key")
            do { signer = try NoteSigner(text: text) } catch { throw AuditStoreError(.unusable, "\(keyPath) is not a signing key: \(error.description)") }
            created = false
        } else {
            guard !hasSegments else {
                throw AuditStoreError(.unusable, "the audit log \(directory) has segments but no key (\(keyPath)): its checkpoints cannot be continued")
            }
            let logName = name ?? "bulkhead-audit/" + (randomBytes(8) ?? []).map { b in String(b >> 4, radix: 16) + String(b & 15, radix: 16) }.joined()
            do { signer = try NoteSigner(name: logName, privateKey: Curve25519.Signing.PrivateKey()) } catch {
                throw AuditStoreError(.unusable, "the audit log's name \(logName.prefix(80)): \(error.description)")
            }
            try writeKeyFile(directory, AuditDirectory.keyFile, Array((signer.text + "\n").utf8), mode: 0o600, directoryFD: directoryFD)
            created = true
        }
        // The public key: written when missing (a crash between the two files), checked otherwise.
        let pub = Array((signer.verifierKey.text + "\n").utf8)
        if !pathExists(pubPath) {
            try writeKeyFile(directory, AuditDirectory.publicKeyFile, pub, mode: 0o644, directoryFD: directoryFD)
        } else if try AuditDirectory.read(pubPath, what: "verifier key", limit: 4096) != pub {
            throw AuditStoreError(.unusable, "\(pubPath) is not the public key of \(keyPath): restore it, or give auditors the key that matches")
        }
        return (signer, created)
    }

    /// Writes a key file whole or not at all (a temporary file, synced, renamed into place, the
    /// directory synced).
    private static func writeKeyFile(_ directory: String, _ name: String, _ bytes: [UInt8], mode: UInt32, directoryFD: FileDescriptor) throws(AuditStoreError) {
        do { try directoryFD.replaceFile(named: name, with: bytes, mode: mode) } catch {
            throw AuditStoreError(.unusable, "cannot write \(directory)/\(name): \(error)")
        }
    }

    // MARK: Appending

    /// Appends `entries` as consecutive records and returns their sequence numbers once they and
    /// a checkpoint covering them are on disk. Blocks the calling thread.
    @discardableResult
    public func append(_ entries: [AuditEntry]) throws(AuditStoreError) -> [UInt64] {
        let records = try check(entries)
        let ticket = Ticket()
        encode(records, into: try reserve(entries.count, .ticket(ticket)))
        return try ticket.wait().get()
    }

    @discardableResult
    public func append(_ entry: AuditEntry) throws(AuditStoreError) -> UInt64 {
        guard let seq = try append([entry]).first else { throw AuditStoreError(.failed, "no sequence number was assigned") }
        return seq
    }

    /// The same without blocking a thread of Swift's pool: the caller is resumed when the record
    /// is durable.
    @discardableResult
    public func append(_ entry: AuditEntry) async throws(AuditStoreError) -> UInt64 {
        let records = try check([entry])
        let result = await withCheckedContinuation { (c: CheckedContinuation<Result<[UInt64], AuditStoreError>, Never>) in
            switch Result(catching: { () throws(AuditStoreError) -> Slot in try reserve(1, .continuation(c)) }) {
            case .success(let slot): encode(records, into: slot)
            case .failure(let error): c.resume(returning: .failure(error))
            }
        }
        guard let seq = try result.get().first else { throw AuditStoreError(.failed, "no sequence number was assigned") }
        return seq
    }

    /// The group's records, checked (before anything is reserved: a refused entry leaves no gap
    /// in the sequence). Their sequence numbers and time are filled in by `encode`; what it sets
    /// (a number, a time of at least 0, "seq-N") keeps them valid.
    private func check(_ entries: [AuditEntry]) throws(AuditStoreError) -> [(AuditRecord, numberedOperation: Bool)] {
        guard !entries.isEmpty else { throw AuditStoreError(.invalidEntry, "an append of no entries") }
        var out: [(AuditRecord, numberedOperation: Bool)] = []
        out.reserveCapacity(entries.count)
        for e in entries { out.append((try e.record(sequence: 0, time: 0, bootID: bootID), e.operation == nil)) }
        return out
    }

    /// Reserves the next `count` sequence numbers and the time for a group, queued in order.
    private func reserve(_ count: Int, _ answer: Answer) throws(AuditStoreError) -> Slot {
        try lock.withLock { () throws(AuditStoreError) -> Slot in
            guard failure == nil, !closing else { throw closedOrFailed }
            return queued(count, answer)
        }
    }

    /// Under the lock: the next group's slot, numbered and queued.
    private func queued(_ count: Int, _ answer: Answer) -> Slot {
        let slot = Slot(first: nextSequence, count: count, time: options.clock(), answer: answer)
        nextSequence += UInt64(count)
        pending.append(slot)
        return slot
    }

    /// Encodes a reserved group on the calling thread and hands it to the committer.
    private func encode(_ records: [(AuditRecord, numberedOperation: Bool)], into slot: Slot) {
        var frames: [UInt8] = [], leaves: [[UInt8]] = []
        frames.reserveCapacity(records.count * 360)
        for (k, (checked, numbered)) in records.enumerated() {
            var r = checked
            r.sequence = slot.first + UInt64(k)
            r.timeNanoseconds = max(0, slot.time)
            if numbered { r.operation = "seq-\(r.sequence)" }
            let payload = r.payload
            Frame.append(payload, to: &frames)
            leaves.append(Merkle.leafHash(payload))
        }
        let whole = leaves.count == records.count
        lock.withLock {
            slot.frames = frames; slot.leaves = leaves; slot.broken = !whole; slot.ready = true
            lock.broadcast()
        }
    }

    private var closedOrFailed: AuditStoreError {
        failure ?? AuditStoreError(.closed, "the audit log \(directory) is closed")
    }

    /// The latest durable checkpoint, signed (what `bulkhead audit checkpoint` prints).
    public var latestCheckpoint: (note: [UInt8], checkpoint: Checkpoint) { lock.withLock { latest } }
    /// Records in the log.
    public var recordCount: UInt64 { lock.withLock { size } }

    /// Writes a `log.stop` record and its checkpoint, stops the committer and releases the lock.
    /// Appends after this fail. Throws if the last write failed (the log then reopens with
    /// recovery).
    public func close() throws(AuditStoreError) {
        var stopError: AuditStoreError?
        do { try append([.event("log.stop", result: "closed")]) } catch { if error.kind != .closed { stopError = error } }
        // The last checkpoint goes to the witness before the log closes (bounded by its timeout).
        witness?.stop()
        witness = nil
        shutDownCommitter()
        if let stopError { throw stopError }
    }

    private func shutDownCommitter() {
        // Once only: a second close must not release a lock that may by then be another appender's.
        let first: Bool = lock.withLock {
            defer { shutDown = true }
            return !shutDown
        }
        guard first else { return }
        witness?.stop()
        witness = nil
        lock.withLock { closing = true; lock.broadcast() }
        thread?.join()
        thread = nil
        lock.withLock {
            // Anything still queued (a writer that raced with close) is refused.
            for slot in pending { finish(slot, .failure(AuditStoreError(.closed, "the audit log \(directory) is closed"))) }
            pending = []
        }
        lockFile.release()
    }

    /// Answers one group's writer.
    private func finish(_ slot: Slot, _ result: Result<[UInt64], AuditStoreError>) {
        switch slot.answer {
        case .ticket(let t): t.answer(result)
        case .continuation(let c): c.resume(returning: result)
        case .none: break
        }
    }

    // MARK: The committer thread

    private func commitLoop() {
        setThreadName("audit-commit")
        let heartbeat = Saturating.nanoseconds(seconds: options.heartbeatSeconds)
        var deadline = monotonicNanoseconds() &+ heartbeat
        while true {
            var heartbeatSlot: Slot?
            let batch: [Slot] = lock.withLock {
                while !(pending.first?.ready ?? false) {
                    if !pending.isEmpty { lock.wait(); continue }   // the first group is being encoded
                    if closing { return [] }
                    if !lock.wait(untilMonotonic: deadline) && pending.isEmpty && !closing && failure == nil {
                        // Idle for the heartbeat's interval: a record of its own, so silence shows.
                        heartbeatSlot = queued(1, .none)
                        return []
                    }
                }
                var k = 0, count = 0
                while k < pending.count, pending[k].ready, k == 0 || count + pending[k].count <= options.maxGroup {
                    count += pending[k].count
                    k += 1
                }
                let taken = Array(pending[..<k])
                pending.removeFirst(k)
                return taken
            }
            if let heartbeatSlot {
                if let records = try? check([.event("log.heartbeat", result: "idle")]) { encode(records, into: heartbeatSlot) } else {
                    lock.withLock { heartbeatSlot.broken = true; heartbeatSlot.ready = true }   // never: a fixed, valid entry
                }
                continue
            }
            if batch.isEmpty { return }   // closing, nothing left
            if let failed = lock.withLock({ failure }) {
                for slot in batch { finish(slot, .failure(failed)) }
                continue
            }
            let outcome = commit(batch)
            deadline = monotonicNanoseconds() &+ heartbeat
            switch outcome {
            case .written(let note, let checkpoint):
                lock.withLock { latest = (note, checkpoint); size = checkpoint.size }
                for slot in batch { finish(slot, .success(slot.sequences)) }
                options.onCheckpoint?(note, checkpoint)
                witness?.submit(note: note, checkpoint: checkpoint)
            case .failed(let error):
                lock.withLock { if failure == nil { failure = error } }
                for slot in batch { finish(slot, .failure(error)) }
            }
        }
    }

    /// Writes one batch of encoded groups and their checkpoint, durably.
    private enum Commit {
        /// The groups' records and their checkpoint are durable.
        case written(note: [UInt8], checkpoint: Checkpoint)
        /// The write or sync failed: the appender fails closed.
        case failed(AuditStoreError)
    }

    private func commit(_ batch: [Slot]) -> Commit {
        var bytes: [UInt8] = []
        var tree = frontier
        var leaves: [[UInt8]] = []
        for slot in batch {
            // Groups come in the order their numbers were reserved; a group that is not whole
            // would leave a gap, so the appender stops instead (it never happens: entries are
            // checked before their numbers are reserved).
            guard !slot.broken, slot.first == tree.size, slot.leaves.count == slot.count else {
                return .failed(AuditStoreError(.failed, "the group of records \(slot.first)..<\(slot.first + UInt64(slot.count)) could not be encoded; nothing more is appended until the log is reopened"))
            }
            bytes += slot.frames
            for leaf in slot.leaves { tree.append(leafHash: leaf) }
            leaves += slot.leaves
        }
        let checkpoint = Checkpoint(origin: verifierKey.name, size: tree.size, rootHash: tree.root)
        let note: [UInt8]
        do { note = Array(try signer.sign(checkpoint.text).utf8) } catch {
            return .failed(AuditStoreError(.failed, "cannot sign the checkpoint at \(tree.size): \(error)"))
        }
        Frame.append(note, to: &bytes)
        do {
            if segmentSize >= UInt64(options.segmentBytes) && segmentSize > 0 {
                let path = directory + "/" + AuditDirectory.segmentName(segmentNumber + 1)
                let next = try FileDescriptor.create(exclusive: path, mode: 0o640)
                try directoryFD.sync()
                segment = next; segmentNumber += 1; segmentSize = 0
            }
            try segment.write(bytes, at: segmentSize)
            try segment.syncData()
        } catch {
            return .failed(AuditStoreError(.failed, "cannot write the audit log \(directory) (records \(frontier.size)..<\(tree.size)): \(error); nothing more is appended until it is reopened"))
        }
        segmentSize += UInt64(bytes.count)
        frontier = tree
        self.tree?.state.withLock { t in for leaf in leaves { t.append(leafHash: leaf) } }
        return .written(note: note, checkpoint: checkpoint)
    }
}

extension AuditEntry {
    /// `text` cut to a record field's limit (1024 UTF-8 bytes) on a character boundary, with "…"
    /// when it was cut; "-" for an empty text (a field is never empty).
    public static func clipped(_ text: String, bytes limit: Int = AuditRecord.maxText) -> String {
        guard !text.isEmpty else { return "-" }
        guard text.utf8.count > limit else { return text }
        var out = "", used = 0
        for c in text {
            let n = String(c).utf8.count
            if used + n > limit - 3 { break }
            out.append(c); used += n
        }
        return out + "…"
    }
}

/// The appender's whole tree, shared with the witness client's thread.
final class SharedTree: Sendable {
    let state: Mutex<MerkleTree>
    init(_ tree: MerkleTree) { state = Mutex(tree) }
}
