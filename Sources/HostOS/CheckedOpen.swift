import CLinux
#if canImport(Glibc)
import Glibc
#endif

// Every path Bulkhead opens goes through `FileDescriptor.openChecked`: its type is checked
// without blocking (a FIFO would block an ordinary open for ever), a symbolic link as the final
// component is refused, and devices are refused where a file is wanted. Paths that a user named
// are opened through `Caller.open`, with that user's own filesystem credentials when this process
// has more privilege than they do (a setuid or otherwise root launcher): the kernel then applies
// its own rules (mode bits, ACLs, search permission on every directory) as it would for them, so
// the launcher is never a confused deputy for a file its caller could not open.

/// What a path must name.
public enum FileKind: Sendable, Equatable {
    case regularFile
    case characterDevice

    var name: String { self == .regularFile ? "a regular file" : "a character device" }

    /// The kind of an `st_mode`, in the same words ("a FIFO", "a directory", ...).
    static func name(ofMode mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: return "a regular file"
        case S_IFDIR: return "a directory"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFIFO: return "a FIFO"
        case S_IFSOCK: return "a socket"
        case S_IFLNK: return "a symbolic link"
        default: return "a file of unknown type"
        }
    }

    func matches(_ mode: mode_t) -> Bool {
        (mode & S_IFMT) == (self == .regularFile ? S_IFREG : S_IFCHR)
    }
}

/// How a checked path is opened.
public enum OpenAccess: Sendable, Equatable {
    case read
    case readWrite
    /// Write only; created (mode 0644, before the umask) when absent, emptied when present: a
    /// console file. Only a regular file is ever emptied.
    case createOrTruncate
}

/// Why a path was not opened. The description says what the path is and what it must be; it
/// never includes anything read from the file (its size or content).
public struct PathRefusal: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Reason: Equatable, Sendable {
        /// A system call failed with this errno (the file is missing, not permitted, ...).
        case system(errno: Int32)
        /// The final component is a symbolic link.
        case symbolicLink
        /// The path names something else ("a FIFO", "a directory", ...).
        case wrongKind(found: String)
    }

    /// What the path is for ("guest image", "disk", "console file").
    public let what: String
    public let path: String
    public let expected: FileKind
    public let access: OpenAccess
    public let reason: Reason
    /// The user whose permissions were checked, when not this process's own.
    public var checkedFor: UInt32?

    public init(what: String, path: String, expected: FileKind, access: OpenAccess, reason: Reason, checkedFor: UInt32? = nil) {
        self.what = what; self.path = path; self.expected = expected; self.access = access
        self.reason = reason; self.checkedFor = checkedFor
    }

    /// An errno for the refusal, for callers that report errnos.
    public var errno: Int32 {
        switch reason {
        case .system(let e): return e
        case .symbolicLink: return ELOOP
        case .wrongKind(let found): return found == "a directory" ? EISDIR : EINVAL
        }
    }

    public var description: String {
        switch reason {
        case .system(let e):
            let verb = access == .read ? "cannot read \(what) \(path)"
                : access == .readWrite ? "cannot open \(what) \(path) for reading and writing" : "cannot open \(what) \(path) for writing"
            var text = "\(verb): \(SystemError.message(for: e)) (errno \(e))"
            if let uid = checkedFor, e == EACCES || e == EPERM { text += " (checked for uid \(uid), who ran bulkhead)" }
            return text
        case .symbolicLink:
            return "the \(what) \(path) is a symbolic link: give the file itself"
        case .wrongKind(let found):
            return "the \(what) \(path) is \(found), not \(expected.name)"
        }
    }
}

extension FileDescriptor {
    /// Opens `path` for `access` if it names `kind`, without ever blocking: it is looked at first
    /// (a device or FIFO is refused before an open could act on it), opened with
    /// O_NONBLOCK | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, and the open file itself is checked
    /// (fstat), which is what counts if the path changed in between; then O_NONBLOCK is cleared.
    /// With `followSymlinks` (only for fixed system paths such as /dev/kvm, or Bulkhead's own
    /// files) a symbolic link is followed. Uses the calling thread's credentials: for a path a
    /// user gave, use `Caller.open`.
    public static func openChecked(_ path: String, what: String, access: OpenAccess, kind: FileKind = .regularFile,
                                   followSymlinks: Bool = false) throws(PathRefusal) -> FileDescriptor {
        func refusal(_ reason: PathRefusal.Reason) -> PathRefusal {
            PathRefusal(what: what, path: path, expected: kind, access: access, reason: reason)
        }
        func reasonFor(mode: mode_t) -> PathRefusal.Reason? {
            if kind.matches(mode) { return nil }
            return mode & S_IFMT == S_IFLNK ? .symbolicLink : .wrongKind(found: FileKind.name(ofMode: mode))
        }
        var st = stat()
        // SAFETY: stat/lstat write one `struct stat` into `st`, a local of exactly that type.
        if (followSymlinks ? stat(path, &st) : lstat(path, &st)) == 0 {
            if let reason = reasonFor(mode: st.st_mode) { throw refusal(reason) }
        } else if !(errno == ENOENT && access == .createOrTruncate) {
            throw refusal(.system(errno: errno))
        }
        var flags = O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (followSymlinks ? 0 : O_NOFOLLOW)
        switch access {
        case .read: flags |= O_RDONLY
        case .readWrite: flags |= O_RDWR
        case .createOrTruncate: flags |= O_WRONLY | O_CREAT
        }
        let raw = SystemCall.uninterrupted { Glibc.open(path, flags, 0o644) }
        guard raw >= 0 else {
            let e = errno
            // SAFETY: as above.
            if e == ELOOP, !followSymlinks, lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFLNK { throw refusal(.symbolicLink) }
            throw refusal(.system(errno: e))
        }
        let fd = FileDescriptor(owning: raw)
        // SAFETY: fstat writes one `struct stat` into `st`.
        guard fstat(raw, &st) == 0 else { throw refusal(.system(errno: errno)) }
        if let reason = reasonFor(mode: st.st_mode) { throw refusal(reason) }
        if access == .createOrTruncate {
            guard SystemCall.uninterrupted({ ftruncate(raw, 0) }) == 0 else { throw refusal(.system(errno: errno)) }
        }
        let status = fcntl(raw, F_GETFL)
        guard status >= 0, fcntl(raw, F_SETFL, status & ~O_NONBLOCK) == 0 else { throw refusal(.system(errno: errno)) }
        return fd
    }
}

/// Who asked: the user this process acts for, its real uid, real gid and supplementary groups.
/// When the process has more privilege than they do (effective uid 0, real uid not: a setuid
/// launcher, or one started with `setpriv --ruid`), the paths they name are opened, created and
/// connected to with their filesystem credentials, on a short-lived thread that takes them
/// (`perform`): setgroups, setfsgid and setfsuid as raw system calls change only that thread, and
/// its credentials end with it. The kernel then checks mode bits, ACLs and search permission on
/// every directory of the path as for that user. Only the final component of a path is checked by
/// Bulkhead itself (no symbolic link, the right type); who controls the directories on the way is
/// the caller's business.
public struct Caller: Sendable, Equatable {
    public let uid: UInt32
    public let gid: UInt32
    public let groups: [UInt32]

    public init(uid: UInt32, gid: UInt32, groups: [UInt32]) {
        self.uid = uid; self.gid = gid; self.groups = groups
    }

    /// This process's real uid, real gid and supplementary groups.
    public static var current: Caller {
        var groups = [gid_t](repeating: 0, count: Int(max(0, getgroups(0, nil))) + 1)
        let n = groups.withUnsafeMutableBufferPointer { buf -> Int32 in
            // SAFETY: getgroups writes at most buf.count entries into the array's own storage.
            getgroups(Int32(buf.count), buf.baseAddress)
        }
        return Caller(uid: getuid(), gid: getgid(), groups: Array(groups.prefix(Int(max(0, n)))))
    }

    /// Whether this process has more privilege than the caller, so that their paths must be
    /// opened with their credentials.
    public var needsOwnCredentials: Bool { geteuid() == 0 && uid != 0 }

    /// Gives the calling thread the caller's filesystem credentials (supplementary groups, fsgid,
    /// fsuid), for good: only for a thread of its own (`perform`, the vsock broker's). Nothing
    /// when `needsOwnCredentials` is false. Each change is checked.
    public func adoptOnThisThread() throws(SystemError) {
        guard needsOwnCredentials else { return }
        let r = groups.withUnsafeBufferPointer { buf in
            // SAFETY: setgroups reads buf.count gid_t (uint32_t) entries from the array's storage.
            clinux_thread_setgroups(buf.count, buf.baseAddress)
        }
        guard r == 0 else { throw SystemError("setgroups (this thread, for uid \(uid))", errno: errno) }
        // setfsgid/setfsuid report no error: a second call with an invalid id (-1) returns the
        // value now in force, which must be the one asked for (setfsuid(2)).
        _ = clinux_thread_setfsgid(gid)
        guard UInt32(bitPattern: clinux_thread_setfsgid(UInt32.max)) == gid else {
            throw SystemError("setfsgid(\(gid)) (this thread)", errno: EPERM)
        }
        _ = clinux_thread_setfsuid(uid)
        guard UInt32(bitPattern: clinux_thread_setfsuid(UInt32.max)) == uid else {
            throw SystemError("setfsuid(\(uid)) (this thread)", errno: EPERM)
        }
    }

    private final class Slot<T>: @unchecked Sendable {
        // Sendable: written by the thread before it ends, read only after it was joined.
        var value: T?
        var failure: SystemError?
    }

    /// Runs `body` with the caller's filesystem credentials: on a thread of its own that takes
    /// them when `needsOwnCredentials`, here otherwise. Throws only when that thread could not
    /// be started or could not take them (then `body` does not run).
    public func perform<T: Sendable>(_ body: @escaping @Sendable () -> T) throws(SystemError) -> T {
        guard needsOwnCredentials else { return body() }
        let slot = Slot<T>()
        let caller = self
        let thread: OSThread
        thread = try OSThread.spawn(stackSize: 256 << 10) {
            do throws(SystemError) { try caller.adoptOnThisThread() } catch { slot.failure = error; return }
            slot.value = body()
        }
        thread.join()
        if let failure = slot.failure { throw failure }
        guard let value = slot.value else { throw SystemError("a thread with the caller's credentials", errno: EIO) }
        return value
    }

    /// `FileDescriptor.openChecked` with the caller's permissions (see `perform`).
    public func open(_ path: String, what: String, access: OpenAccess, kind: FileKind = .regularFile) throws(PathRefusal) -> FileDescriptor {
        let result: Result<FileDescriptor, PathRefusal>
        do throws(SystemError) {
            result = try perform { () -> Result<FileDescriptor, PathRefusal> in
                do throws(PathRefusal) { return .success(try FileDescriptor.openChecked(path, what: what, access: access, kind: kind)) } catch {
                    return .failure(error)
                }
            }
        } catch {
            throw PathRefusal(what: what, path: path, expected: kind, access: access, reason: .system(errno: error.errno), checkedFor: uid)
        }
        switch result {
        case .success(let fd): return fd
        case .failure(var refusal):
            if needsOwnCredentials { refusal.checkedFor = uid }
            throw refusal
        }
    }
}
