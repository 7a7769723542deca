import AuditLog
import HostOS

/// Where the log's witness listens, and the key its cosignatures must verify with.
public struct WitnessEndpoint: Sendable {
    public var socketPath: String
    public var key: CosignatureKey
    /// How long one request may take before the witness counts as unreachable.
    public var timeoutMilliseconds: Int = 5000

    public init(socketPath: String, key: CosignatureKey) { self.socketPath = socketPath; self.key = key }
}

/// The log's side of the witness (docs/audit-log.md, "The witness"): on a thread of its own, it
/// submits the newest checkpoint with a consistency proof from the size the witness last
/// cosigned, checks the cosignature, and keeps the cosigned checkpoint as `witness.cosigned` in
/// the log's directory. Checkpoints that arrive while one is being submitted are coalesced: only
/// the newest matters (a cosignature covers everything before it). A witness that refuses or
/// cannot be reached does not stop the log; each change of that state is reported once.
final class WitnessClient: @unchecked Sendable {
    // Sendable: `pending`, `stopping`, `idle`, `problem` under `lock`; the connection and
    // `knownSize` only on the client's thread.
    static let cosignedFile = AuditDirectory.witnessCosignedFile

    private let endpoint: WitnessEndpoint
    private let directory: FileDescriptor
    private let proof: @Sendable (_ old: UInt64, _ new: UInt64) -> [[UInt8]]?
    private let report: @Sendable (_ action: String, _ text: String) -> Void
    private let lock = ConditionLock()
    private var pending: (note: [UInt8], checkpoint: Checkpoint)?
    private var stopping = false
    private var busy = false
    private var problem: String?
    private var thread: OSThread?
    private var connection: FileDescriptor?
    private var knownSize: UInt64

    /// `proof(old, new)`: the consistency proof between two sizes of the log's tree (nil when it
    /// cannot be made). `report(action, text)`: records a change in the witness's answers.
    init(endpoint: WitnessEndpoint, directory: FileDescriptor, knownSize: UInt64,
         proof: @escaping @Sendable (UInt64, UInt64) -> [[UInt8]]?, report: @escaping @Sendable (String, String) -> Void) throws(SystemError) {
        self.endpoint = endpoint
        self.directory = directory
        self.knownSize = knownSize
        self.proof = proof
        self.report = report
        thread = try OSThread.spawn { [self] in run() }
    }

    /// The size of the last checkpoint the witness cosigned for this log, as kept in
    /// `witness.cosigned` (0 when there is none or it does not verify).
    static func cosignedSize(_ directory: FileDescriptor, key: CosignatureKey) -> UInt64 {
        guard let fd = try? directory.openFile(named: cosignedFile), let bytes = try? fd.readAll(limit: SignedNote.maxSize),
              let note = try? SignedNote.parse(bytes), case .cosigned = key.check(note), let c = try? Checkpoint.parse(note.text) else { return 0 }
        return c.size
    }

    /// Queues the newest checkpoint.
    func submit(note: [UInt8], checkpoint: Checkpoint) {
        lock.withLock {
            pending = (note, checkpoint)
            lock.broadcast()
        }
    }

    /// Waits (up to the endpoint's timeout, twice) for what is queued to be submitted, then stops
    /// the thread.
    func stop() {
        let deadline = monotonicNanoseconds() &+ UInt64(endpoint.timeoutMilliseconds) * 2_000_000
        lock.withLock {
            while (pending != nil || busy) && monotonicNanoseconds() < deadline { lock.wait(untilMonotonic: deadline) }
            stopping = true
            lock.broadcast()
        }
        thread?.join()
        thread = nil
    }

    private func run() {
        setThreadName("audit-witness")
        while true {
            let next: (note: [UInt8], checkpoint: Checkpoint)? = lock.withLock {
                while pending == nil && !stopping { lock.wait() }
                if stopping { return nil }
                let p = pending
                pending = nil
                busy = true
                return p
            }
            guard let next else { return }
            let outcome = send(next.note, next.checkpoint)
            let change: (String, String)? = lock.withLock {
                busy = false
                lock.broadcast()
                switch outcome {
                case nil:
                    defer { problem = nil }
                    return problem.map { _ in ("log.witness-cosigned", "the witness cosigned again, at \(next.checkpoint.size) records") }
                case .some(let (action, why)):
                    guard problem != why else { return nil }
                    problem = why
                    return (action, why)
                }
            }
            if let change { report(change.0, change.1) }
        }
    }

    /// One submission, with one retry after a 409 that names a size we can prove from. Nil when
    /// cosigned; otherwise the event and why.
    private func send(_ note: [UInt8], _ checkpoint: Checkpoint) -> (String, String)? {
        var attempts = 0
        while true {
            attempts += 1
            let old = knownSize <= checkpoint.size ? knownSize : 0
            guard let proof = proof(old, checkpoint.size) else {
                return ("log.witness-refused", "no consistency proof from \(old) to \(checkpoint.size) records")
            }
            let answer: WitnessAnswer
            switch exchange(AddCheckpoint(oldSize: old, proof: proof, note: note)) {
            case .failure(let why): return ("log.witness-unreachable", why)
            case .answer(let a): answer = a
            }
            switch answer {
            case .cosigned(let lines):
                let cosigned = note + Array(lines.utf8)
                guard let parsed = try? SignedNote.parse(cosigned), case .cosigned = endpoint.key.check(parsed) else {
                    return ("log.witness-refused", "the witness's answer is not a valid cosignature by \(endpoint.key.name)")
                }
                knownSize = checkpoint.size
                do { try directory.replaceFile(named: Self.cosignedFile, with: cosigned, mode: 0o644) } catch {
                    return ("log.witness-refused", "cannot keep the cosigned checkpoint: \(error)")
                }
                return nil
            case .conflict(let size):
                if size > checkpoint.size {
                    return ("log.witness-refused", "the witness has cosigned \(size) records of this log and it has \(checkpoint.size): the log was rolled back")
                }
                guard attempts < 2, size != knownSize else { return ("log.witness-refused", "the witness holds \(size) records (409)") }
                knownSize = size
            default:
                return ("log.witness-refused", "\(answer.status): " + String(decoding: answer.encoded.dropFirst(4).prefix(300), as: UTF8.self))
            }
        }
    }

    private enum Exchange { case answer(WitnessAnswer), failure(String) }

    /// Sends one request and reads its answer, connecting first when needed.
    private func exchange(_ request: AddCheckpoint) -> Exchange {
        for attempt in 0..<2 {
            do {
                if connection == nil { connection = try UnixSeqpacket.connect(endpoint.socketPath, timeoutSeconds: 0) }
                guard let c = connection else { continue }
                try c.sendMessage(Array("add-checkpoint\n".utf8) + request.encoded)
                switch try c.receiveMessage(maxBytes: 1 << 16, maxDescriptors: 0, timeoutMilliseconds: endpoint.timeoutMilliseconds) {
                case .message(let m):
                    guard let a = WitnessAnswer.parse(m.bytes) else { connection = nil; return .failure("the witness's answer is malformed") }
                    return .answer(a)
                case .closed:
                    connection = nil
                    if attempt == 0 { continue }   // it closed an idle connection: once more
                    return .failure("the witness closed the connection")
                case .timedOut:
                    connection = nil
                    return .failure("the witness did not answer within \(endpoint.timeoutMilliseconds) ms")
                }
            } catch {
                connection = nil
                if attempt == 0 { continue }
                return .failure("cannot reach the witness at \(endpoint.socketPath): \(error)")
            }
        }
        return .failure("cannot reach the witness at \(endpoint.socketPath)")
    }
}
