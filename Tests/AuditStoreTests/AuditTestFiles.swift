import AuditLog
import AuditStore
import HostOS
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What the appender's tests share: entries, reading a log back, what a directory holds, and
/// writing into a segment behind the appender's back (a crash's tail, tampering).
enum AuditTestFiles {
    struct Failure: Error, CustomStringConvertible { var description: String }

    /// A caller's entry whose target says who wrote it.
    static func entry(_ target: String) -> AuditEntry {
        AuditEntry(actor: .local(uid: 1000, gid: 1000, pid: 4242), tenant: "acme", action: "vm.start", target: target,
                   reason: "grant operator@tenant/acme", stage: .outcome, operation: "op-" + target, result: "ok")
    }

    /// Verifies the log in `dir` with its own log.pub.
    static func verify(_ dir: String) throws -> AuditVerifier.Report {
        try AuditDirectory.verify(dir, key: try AuditDirectory.verifierKey(at: dir + "/" + AuditDirectory.publicKeyFile))
    }

    /// Every record of the log in order (checkpoints skipped), read back with AuditDirectory.frames.
    static func records(_ dir: String) throws -> [AuditRecord] {
        var out: [AuditRecord] = []
        var bad: String?
        try AuditDirectory.frames(dir) { _, payload in
            if AuditVerifier.isCheckpoint(payload) { return true }
            do { out.append(try AuditRecord.parse(payload)) } catch { bad = "\(error)"; return false }
            return true
        }
        if let bad { throw Failure(description: "a record does not parse: \(bad)") }
        return out
    }

    /// The frames of one segment's bytes, and what ends their reading (`.end` for a whole segment).
    static func frames(_ bytes: [UInt8]) -> (payloads: [(offset: Int, payload: [UInt8])], stop: Frame.Parsed) {
        var out: [(Int, [UInt8])] = [], at = 0
        while true {
            let parsed = Frame.parse(bytes, at: at)
            guard case .frame(let payload, let next) = parsed else { return (out, parsed) }
            out.append((at, payload))
            at = next
        }
    }

    static func segmentPath(_ dir: String, _ n: Int) -> String { dir + "/" + AuditDirectory.segmentName(n) }

    /// The number of the log's last segment.
    static func lastSegment(_ dir: String) throws -> Int {
        guard let last = try AuditDirectory.segments(in: dir).last else { throw Failure(description: "\(dir) has no segment") }
        return last
    }

    /// Appends `bytes` at the end of segment `n`, as a crash (or someone) would leave them.
    static func append(_ bytes: [UInt8], toSegment n: Int, in dir: String) throws {
        let fd = try FileDescriptor.open(readWrite: segmentPath(dir, n))
        try fd.write(bytes, at: try fd.status().size)
    }

    /// Overwrites segment `n` at `offset` with `bytes`.
    static func overwrite(_ bytes: [UInt8], inSegment n: Int, at offset: Int, in dir: String) throws {
        let fd = try FileDescriptor.open(readWrite: segmentPath(dir, n))
        try fd.write(bytes, at: UInt64(offset))
    }

    /// A whole, valid record frame (sequence `seq`) that the appender did not write.
    static func recordFrame(seq: UInt64, target: String) -> [UInt8] {
        Frame.encode(AuditRecord(sequence: seq, timeNanoseconds: 1_700_000_000_000_000_000, bootID: "test-boot", actor: .system,
                                 action: "vm.crafted", target: target, allowed: true, reason: "test", stage: .outcome,
                                 operation: "op-crafted", result: "ok").payload)
    }

    /// One file as a snapshot has it.
    struct FileState: Equatable, CustomStringConvertible {
        var kind: String
        var permissions: UInt32
        var bytes: [UInt8]
        var link: String?
        var description: String { "\(kind) mode \(String(permissions, radix: 8)), \(bytes.count) bytes\(link.map { " -> " + $0 } ?? "")" }
    }

    /// Everything under `dir` (recursively, never through a link): each path's kind, mode, bytes
    /// (of a regular file) and link target. Equal snapshots: nothing was created, removed or changed.
    static func snapshot(_ dir: String) throws -> [String: FileState] {
        var out: [String: FileState] = [:]
        func walk(_ path: String, _ relative: String) throws {
            for name in try listDirectory(path).sorted() {
                let p = path + "/" + name, r = relative.isEmpty ? name : relative + "/" + name
                let info = try pathInfo(p)
                var bytes: [UInt8] = []
                if info.isRegularFile { bytes = try FileDescriptor.open(readOnly: p).readAll(limit: 1 << 30) }
                out[r] = FileState(kind: info.kind, permissions: info.permissions, bytes: bytes,
                                   link: info.kind == "a symbolic link" ? readSymbolicLink(p) : nil)
                if info.isDirectory { try walk(p, r) }
            }
        }
        try walk(dir, "")
        return out
    }

    /// Opens the log in `dir` and closes it again; the error if it was refused.
    static func openingError(_ dir: String, options: AuditAppender.Options = AuditAppender.Options()) -> AuditStoreError? {
        do {
            let log = try AuditAppender.open(dir, options: options)
            try? log.close()
            return nil
        } catch {
            return error
        }
    }

    /// A blocking append (what an async test must name explicitly: there `append` is the async one).
    @discardableResult
    static func appendBlocking(_ log: AuditAppender, _ entry: AuditEntry) throws(AuditStoreError) -> UInt64 { try log.append(entry) }

    @discardableResult
    static func appendBlocking(_ log: AuditAppender, _ entries: [AuditEntry]) throws(AuditStoreError) -> [UInt64] { try log.append(entries) }

    /// Whether `kind` is `.tampered` (with any problems).
    static func isTampered(_ kind: AuditStoreError.Kind?) -> Bool {
        if case .tampered? = kind { return true }
        return false
    }

    /// Writes a new file with exactly `mode`.
    static func writeFile(_ path: String, _ bytes: [UInt8], mode: UInt32 = 0o600) throws {
        let fd = try FileDescriptor.create(exclusive: path, mode: mode)
        try fd.write(bytes, at: 0)
    }

    /// Runs `threads` OS threads that each append `each` entries (blocking appends) to `log`, all
    /// starting together; returns every acknowledged (sequence number, target) and every error.
    static func appendFromThreads(_ log: AuditAppender, threads: Int, each: Int, tag: String) throws
        -> (acks: [(seq: UInt64, target: String)], errors: [String]) {
        let acks = Locked<[(seq: UInt64, target: String)]>([])
        let errors = Locked<[String]>([])
        let go = Locked(false)
        var started: [OSThread] = []
        defer {
            go.withLock { $0 = true }   // also when a spawn failed: the started threads must not wait for ever
            for t in started { t.join() }
        }
        for t in 0..<threads {
            started.append(try OSThread.spawn {
                // A start barrier, so that the writers really are concurrent (not one finishing
                // before the next is spawned).
                while !go.withLock({ $0 }) { sleepNanoseconds(100_000) }
                for i in 0..<each {
                    let target = "vm/\(tag)-\(t)-\(i)"
                    do {
                        let seq = try log.append(entry(target))
                        acks.withLock { $0.append((seq, target)) }
                    } catch {
                        errors.withLock { $0.append("\(error)") }
                    }
                }
            })
        }
        go.withLock { $0 = true }
        for t in started { t.join() }
        return (acks.withLock { $0 }, errors.withLock { $0 })
    }
}
