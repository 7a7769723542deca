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
