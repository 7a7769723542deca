import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

// What the launcher needs to set a jail up and take it down on the host: directories, the
// control files of cgroups and /proc (written in place, never created), lock files, and the PID
// namespace its next child starts in.

/// Makes a directory with `mode` (exactly: the umask does not apply). Throws with errno, so
/// callers can tell EEXIST.
public func makeDirectory(_ path: String, mode: UInt32) throws(SystemError) {
    guard mkdir(path, mode_t(mode)) == 0 else { throw SystemError("mkdir \(path)", errno: errno) }
    guard chmod(path, mode_t(mode)) == 0 else { throw SystemError("chmod \(path)", errno: errno) }
}

/// Removes an empty directory (a cgroup directory too: the kernel removes its control files).
public func removeDirectory(_ path: String) throws(SystemError) {
    guard rmdir(path) == 0 else { throw SystemError("rmdir \(path)", errno: errno) }
}

/// Writes `text` in one write(2) to a file that must exist (a cgroup or /proc control file):
/// the kernel takes such writes whole, or refuses them with an errno that says why.
public func writeControlFile(_ path: String, _ text: String) throws(SystemError) {
    let fd = try SystemCall.system("open \(path)") {
        try SystemPackage.FileDescriptor.open(FilePath(path), .writeOnly, options: [.closeOnExec])
    }
    defer { try? fd.close() }
    let bytes = Array(text.utf8)
    let n = try SystemCall.system("write \(path)") {
        // SAFETY: write reads bytes.count bytes from the array's own storage.
        try bytes.withUnsafeBytes { buf throws -> Int in try fd.write(buf) }
    }
    guard n == bytes.count else { throw SystemError("write \(path) (short write)", errno: EIO) }
}

/// Whether `path` names anything (a file, a directory, a link).
public func pathExists(_ path: String) -> Bool {
    var s = stat()
    // SAFETY: lstat writes one `struct stat` on the stack.
    return lstat(path, &s) == 0
}

/// An exclusive, non-blocking flock(2) on a file of its own, held until `release()` or until the
/// process dies (the kernel drops it then: a crashed holder never leaves a stale lock). The path
/// is removed on release; a lock taken on a file that was removed or replaced meanwhile is given
/// up and reported as taken, so two holders can never both think they own a path.
public final class LockFile: @unchecked Sendable {
    public let path: String
    private let fd: Int32

    private init(path: String, fd: Int32) { self.path = path; self.fd = fd }

    /// Nil when another process holds it.
    public static func acquire(_ path: String) throws(SystemError) -> LockFile? {
        let fd = try SystemCall.system("open \(path)") {
            try SystemPackage.FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .closeOnExec, .noFollow],
                                                  permissions: .ownerReadWrite).rawValue
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            close(fd)
            if e == EWOULDBLOCK { return nil }
            throw SystemError("flock \(path)", errno: e)
        }
        var held = stat(), named = stat()
        // SAFETY: fstat/lstat write one `struct stat` each on the stack.
        guard fstat(fd, &held) == 0, lstat(path, &named) == 0, held.st_ino == named.st_ino, held.st_dev == named.st_dev else {
            close(fd)   // the file was released (removed) between our open and our flock
            return nil
        }
        return LockFile(path: path, fd: fd)
    }

    /// Removes the file, then drops the lock.
    public func release() {
        unlink(path)
        close(fd)
    }
}

/// Makes the calling thread's next children start in a new PID namespace, as its pid 1 (needs
/// CAP_SYS_ADMIN). The thread itself stays where it is. A thread can do this once: after its
/// first child there has exited, it cannot start more children.
public func startChildrenInNewPIDNamespace() throws(SystemError) {
    guard clinux_unshare(CLINUX_CLONE_NEWPID) == 0 else { throw SystemError("unshare(CLONE_NEWPID)", errno: errno) }
}

/// The names in a directory, without "." and "..", unsorted.
public func listDirectory(_ path: String) throws(SystemError) -> [String] {
    guard let dir = opendir(path) else { throw SystemError("opendir \(path)", errno: errno) }
    defer { closedir(dir) }
    var names: [String] = []
    // SAFETY: readdir returns entries owned by `dir`, valid until the next call; each name is
    // copied out at once.
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// Termination signals turned into a readable descriptor: the launcher blocks SIGINT, SIGTERM
/// and SIGHUP at its start (before any thread exists, so every thread inherits the mask) and
/// watches this descriptor next to its worker's, so Ctrl-C or a `kill` stops the worker and tears
/// its jail down instead of leaving it to the next launcher. Children start with an empty mask
/// (ChildProcess), so the worker is not affected.
public final class TerminationSignals: @unchecked Sendable {
    public static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    public let descriptor: FileDescriptor

    /// Blocks the signals for the calling thread and the threads it creates later.
    public static func block() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        // SAFETY: pthread_sigmask reads one sigset_t from the stack.
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// A signalfd for the signals (which must be blocked, see `block`).
    public init() throws(SystemError) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in Self.signals { sigaddset(&set, s) }
        // SAFETY: signalfd reads one sigset_t from the stack.
        let fd = clinux_signalfd(&set)
        guard fd >= 0 else { throw SystemError("signalfd", errno: errno) }
        descriptor = FileDescriptor(owning: fd)
    }

    /// The next pending signal's number, or nil.
    public func next() -> Int32? {
        let s = clinux_signalfd_next(descriptor.rawValue)
        return s > 0 ? s : nil
    }
}
