import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

// What an append-only log needs of the file system to be durable: files created exactly once
// with exact permissions, cut back to a length, and directories synced so that a new file's name
// survives a crash as its contents do.

extension FileDescriptor {
    /// Opens the directory `path` itself (never through a symbolic link), to sync it.
    public static func open(directory path: String) throws(SystemError) -> FileDescriptor {
        let raw = SystemCall.uninterrupted { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard raw >= 0 else { throw SystemError("open directory \(path)", errno: errno) }
        return FileDescriptor(owning: raw)
    }

    /// Creates `path` for reading and writing with exactly `mode` (the umask does not apply). It
    /// must not exist, not even as a dangling symbolic link (O_EXCL): EEXIST otherwise.
    public static func create(exclusive path: String, mode: UInt32) throws(SystemError) -> FileDescriptor {
        let raw = SystemCall.uninterrupted { Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode_t(mode)) }
        guard raw >= 0 else { throw SystemError("create \(path)", errno: errno) }
        let fd = FileDescriptor(owning: raw)
        _ = try SystemCall.retrying("fchmod \(path)") { fchmod(raw, mode_t(mode)) }
        return fd
    }

    /// `fsync(2)`: the file's data and metadata (for a directory: its entries) are on stable storage.
    public func sync() throws(SystemError) {
        _ = try SystemCall.retrying("fsync") { fsync(rawValue) }
    }

    /// `ftruncate(2)`: cuts the file back (or extends it with zeros) to `size` bytes.
    public func truncate(to size: UInt64) throws(SystemError) {
        guard size <= UInt64(Int64.max) else { throw SystemError("ftruncate", errno: EFBIG) }
        _ = try SystemCall.retrying("ftruncate to \(size)") { ftruncate(rawValue, off_t(size)) }
    }
}

/// Renames `from` to `to` (atomically replacing `to`), both in the same directory.
public func renameFile(_ from: String, _ to: String) throws(SystemError) {
    guard rename(from, to) == 0 else { throw SystemError("rename \(from) to \(to)", errno: errno) }
}

/// What `lstat` says of a path (a symbolic link is described, not followed).
public struct PathInfo: Equatable, Sendable {
    public var isDirectory: Bool
    public var isRegularFile: Bool
    /// "a directory", "a symbolic link", "a FIFO", ... (for messages).
    public var kind: String
    public var owner: UInt32
    /// Permission bits (`st_mode & 0o7777`).
    public var permissions: UInt32
    public var size: UInt64
}

/// `lstat(2)` of `path`; ENOENT and the rest as a SystemError.
public func pathInfo(_ path: String) throws(SystemError) -> PathInfo {
    var st = stat()
    // SAFETY: lstat writes one `struct stat` into `st`, a local of exactly that type.
    guard lstat(path, &st) == 0 else { throw SystemError("lstat \(path)", errno: errno) }
    let type = st.st_mode & S_IFMT
    return PathInfo(isDirectory: type == S_IFDIR, isRegularFile: type == S_IFREG, kind: FileKind.name(ofMode: st.st_mode),
                    owner: st.st_uid, permissions: UInt32(st.st_mode & 0o7777), size: UInt64(max(0, st.st_size)))
}

/// This process's effective user id.
public func effectiveUserID() -> UInt32 { geteuid() }

/// The wall clock (CLOCK_REALTIME): nanoseconds since 1970-01-01 UTC.
public func wallClockNanoseconds() -> Int64 {
    var ts = timespec()
    // SAFETY: clock_gettime writes one timespec on the stack.
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
}

/// Removes a file (never a directory; a symbolic link itself, not its target).
public func removeFile(_ path: String) throws(SystemError) {
    guard unlink(path) == 0 else { throw SystemError("unlink \(path)", errno: errno) }
}

// Files inside a directory held open: a process that has given up the host's file tree (a
// jailed witness) still reaches its own state directory through the descriptor it kept.
extension FileDescriptor {
    /// Opens `name` (one component: no "/") in this directory for reading, never through a
    /// symbolic link; nil when it does not exist.
    public func openFile(named name: String) throws(SystemError) -> FileDescriptor? {
        guard Self.isPlainName(name) else { throw SystemError("open \(name) (not a plain file name)", errno: EINVAL) }
        let raw = SystemCall.uninterrupted { openat(rawValue, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK) }
        if raw < 0 && errno == ENOENT { return nil }
        guard raw >= 0 else { throw SystemError("open \(name)", errno: errno) }
        let fd = FileDescriptor(owning: raw)
        guard try fd.status().isRegularFile else { throw SystemError("open \(name) (not a regular file)", errno: EINVAL) }
        return fd
    }

    /// Writes `bytes` as `name` in this directory: a temporary file with `mode`, synced, renamed
    /// over `name`, and the directory synced, so `name` is the old file or the new one whole.
    public func replaceFile(named name: String, with bytes: [UInt8], mode: UInt32) throws(SystemError) {
        guard Self.isPlainName(name) else { throw SystemError("write \(name) (not a plain file name)", errno: EINVAL) }
        let temporary = "." + name + ".new"
        _ = unlinkat(rawValue, temporary, 0)
        let raw = SystemCall.uninterrupted { openat(rawValue, temporary, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode_t(mode)) }
        guard raw >= 0 else { throw SystemError("create \(temporary)", errno: errno) }
        let fd = FileDescriptor(owning: raw)
        try fd.write(bytes, at: 0)
        try fd.sync()
        guard renameat(rawValue, temporary, rawValue, name) == 0 else { throw SystemError("rename \(temporary) to \(name)", errno: errno) }
        try sync()
    }

    /// Appends `bytes` to `name` in this directory (created with `mode` if absent) and syncs it.
    public func appendToFile(named name: String, _ bytes: [UInt8], mode: UInt32) throws(SystemError) {
        guard Self.isPlainName(name) else { throw SystemError("append to \(name) (not a plain file name)", errno: EINVAL) }
        let raw = SystemCall.uninterrupted { openat(rawValue, name, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode_t(mode)) }
        guard raw >= 0 else { throw SystemError("open \(name)", errno: errno) }
        let fd = FileDescriptor(owning: raw)
        try fd.writeAll(bytes)
        try fd.sync()
    }

    static func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.utf8.contains(UInt8(ascii: "/")) && !name.utf8.contains(0)
    }
}

extension UnixSeqpacket {
    /// A listening socket at `path` (for a service that takes many connections, one at a time).
    /// An existing socket file there is replaced only if nobody listens on it; anything else at
    /// the path is an error (EEXIST). The socket file gets `mode`.
    public static func listening(at path: String, mode: UInt32) throws(SystemError) -> FileDescriptor {
        var addr = try address(path)
        if let info = try? pathInfo(path) {
            guard info.kind == "a socket" else { throw SystemError("listen on \(path) (\(info.kind) is there)", errno: EEXIST) }
            if (try? connect(path, timeoutSeconds: 0)) != nil { throw SystemError("listen on \(path) (a server is listening there)", errno: EADDRINUSE) }
            try removeFile(path)
        }
        let listener = try socket()
        let len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let r = withUnsafePointer(to: &addr) { p in
            // SAFETY: p points at a sockaddr_un on the stack for the duration of the call.
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener.rawValue, $0, len) }
        }
        guard r == 0 else { throw SystemError("bind \(path)", errno: errno) }
        guard chmod(path, mode_t(mode)) == 0 else { throw SystemError("chmod \(path)", errno: errno) }
        guard Glibc.listen(listener.rawValue, 16) == 0 else { throw SystemError("listen \(path)", errno: errno) }
        return listener
    }

    /// Waits up to `timeoutMilliseconds` (-1: for ever) for a connection on `listener`; nil on timeout.
    public static func accept(_ listener: FileDescriptor, timeoutMilliseconds: Int32) throws(SystemError) -> FileDescriptor? {
        guard waitReadable([listener.rawValue], timeoutMilliseconds: timeoutMilliseconds).first == true else { return nil }
        let fd = SystemCall.uninterrupted { clinux_accept_cloexec(listener.rawValue) }
        if fd < 0 {
            if errno == EAGAIN || errno == ECONNABORTED { return nil }
            throw SystemError("accept", errno: errno)
        }
        return FileDescriptor(owning: fd)
    }
}

/// Gives `path` (never through a symbolic link) to `uid` and `gid`.
public func changeOwner(_ path: String, uid: UInt32, gid: UInt32) throws(SystemError) {
    guard lchown(path, uid, gid) == 0 else { throw SystemError("chown \(path)", errno: errno) }
}
