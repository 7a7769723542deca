import AuditLog
import HostOS

/// Why the audit log could not be opened, read or written. Every description says what to do.
public struct AuditStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// A file or directory could not be used (missing, not permitted, the wrong kind).
        case unusable
        /// Another process holds the log open for appending.
        case locked
        /// The log's bytes at or below a checkpoint are not what was written: tampering (or a
        /// disk fault). The appender refuses to open until an operator acts.
        case tampered([AuditVerifier.Problem])
        /// An entry cannot be recorded as given (a field empty or too long).
        case invalidEntry
        /// An earlier write or sync failed: nothing more is appended until the log is reopened.
        case failed
        /// The log was closed.
        case closed
    }

    public var kind: Kind
    public var description: String

    public init(_ kind: Kind, _ description: String) { self.kind = kind; self.description = description }
}

/// The files of one audit log, all in one directory (docs/audit-log.md):
///
///     log.key          the signing key, PRIVATE+KEY+... (mode 0600)
///     log.pub          its verifier key, NAME+KEYID+base64 (what auditors hold)
///     lock             held (flock) by the one appender
///     0000000000.seg   segments: frames of records, each group followed by its checkpoint
///     0000000001.seg   ...
public enum AuditDirectory {
    public static let keyFile = "log.key"
    public static let publicKeyFile = "log.pub"
    public static let lockFile = "lock"
    /// The latest checkpoint the witness cosigned, as the appender received it.
    public static let witnessCosignedFile = "witness.cosigned"
    /// The largest segment file a reader accepts (a segment rolls at the appender's size, 64 MiB by
    /// default, plus at most one group; a larger file is not one of ours, and is refused by its
    /// size before anything is read).
    public static let maxSegmentBytes = 256 << 20

    /// A segment's file name: its number, ten decimal digits, then ".seg".
    public static func segmentName(_ n: Int) -> String {
        let digits = String(n)
        return String(repeating: "0", count: max(0, 10 - digits.count)) + digits + ".seg"
    }

    /// The number in a segment's file name, or nil for any other name.
    public static func segmentNumber(_ name: String) -> Int? {
        let u = Array(name.utf8)
        guard u.count == 14, name.hasSuffix(".seg"), u[0..<10].allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return Int(String(decoding: u[0..<10], as: UTF8.self))
    }

    /// The segment numbers present, in order.
    public static func segments(in directory: String) throws(AuditStoreError) -> [Int] {
        do { return try listDirectory(directory).compactMap(segmentNumber).sorted() } catch {
            throw AuditStoreError(.unusable, "cannot list the audit log \(directory): \(error)")
        }
    }

    /// Reads a whole file of the log, or one an auditor names: a regular file, never through a
    /// symbolic link, at most `limit` bytes.
    public static func read(_ path: String, what: String, limit: Int) throws(AuditStoreError) -> [UInt8] {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.openChecked(path, what: what, access: .read) } catch {
            throw AuditStoreError(.unusable, error.description)
        }
        do {
            let size = try fd.status().size
            guard size <= UInt64(limit) else {
                throw AuditStoreError(.unusable, "\(what) \(path) has \(size) bytes, more than the \(limit) a file of the log may have")
            }
            return try fd.readAll(limit: limit)
        } catch let e as AuditStoreError { throw e } catch { throw AuditStoreError(.unusable, "cannot read \(what) \(path): \(error)") }
    }

    /// Reads segment `n`.
    public static func readSegment(_ directory: String, _ n: Int) throws(AuditStoreError) -> [UInt8] {
        try read(directory + "/" + segmentName(n), what: "audit segment", limit: maxSegmentBytes)
    }

    /// A key file's one line (its final newlines dropped).
    static func keyText(_ path: String, what: String) throws(AuditStoreError) -> String {
        var text = String(decoding: try read(path, what: what, limit: 4096), as: UTF8.self)
        while text.hasSuffix("\n") { text.removeLast() }
        return text
    }

    /// The log's verifier key, from `log.pub` (or the file an auditor names).
    public static func verifierKey(at path: String) throws(AuditStoreError) -> NoteVerifierKey {
        let text = try keyText(path, what: "verifier key")
        do { return try NoteVerifierKey(text: text) } catch {
            throw AuditStoreError(.unusable, "\(path) is not a verifier key: \(error.description)")
        }
    }

    /// A witness's key (its `witness.pub`), which its cosignatures must verify with.
    public static func witnessKey(at path: String) throws(AuditStoreError) -> CosignatureKey {
        let text = try keyText(path, what: "witness key")
        do { return try CosignatureKey(text: text) } catch {
            throw AuditStoreError(.unusable, "\(path) is not a witness key: \(error.description)")
        }
    }

    /// Verifies every segment of the log in `directory`, one at a time, against `key` and the
    /// checkpoints an auditor saved. A gap in the segments' numbering is a problem of its own.
    public static func verify(_ directory: String, key: NoteVerifierKey, savedCheckpoints: [[UInt8]] = [],
                              witness: (key: CosignatureKey, checkpoints: [[UInt8]])? = nil,
                              keepingTree: Bool = false) throws(AuditStoreError) -> AuditVerifier.Report {
        var verifier = AuditVerifier(key: key, savedCheckpoints: savedCheckpoints, witness: witness, keepingTree: keepingTree)
        let numbers = try segments(in: directory)
        for (i, n) in numbers.enumerated() {
            if n != i { verifier.missing(segment: i); break }
            verifier.read(segment: n, bytes: try readSegment(directory, n), isLast: i == numbers.count - 1)
        }
        return verifier.finish()
    }

    /// Every record and checkpoint frame of the log, in order, for the tools (`tail`, `prove`):
    /// stops at the first frame that does not parse.
    public static func frames(_ directory: String, from firstSegment: Int = 0, _ body: (_ segment: Int, _ payload: [UInt8]) -> Bool) throws(AuditStoreError) {
        for n in try segments(in: directory) where n >= firstSegment {
            let bytes = try readSegment(directory, n)
            var at = 0
            while case .frame(let payload, let next) = Frame.parse(bytes, at: at) {
                if !body(n, payload) { return }
                at = next
            }
        }
    }

    /// The host's boot id, or "unknown" where /proc does not say.
    public static func bootID() -> String {
        guard let bytes = try? readFile("/proc/sys/kernel/random/boot_id", limit: 128) else { return "unknown" }
        let id = String(decoding: bytes, as: UTF8.self).filter { !$0.isWhitespace }
        return id.isEmpty ? "unknown" : id
    }
}
