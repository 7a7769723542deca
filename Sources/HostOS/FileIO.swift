import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What `fstat` says about an open file, in the terms disk back ends need.
public struct FileStatus: Equatable, Sendable {
    /// Size in bytes (`st_size`; 0 for block devices).
    public var size: UInt64
    public var isRegularFile: Bool
    public var isBlockDevice: Bool
    /// Bytes actually allocated on disk (`st_blocks` × 512): less than `size` for sparse files.
    public var allocatedBytes: UInt64
    /// The owner's user id and the permission bits (`st_uid`, `st_mode & 0o7777`).
    public var owner: UInt32 = 0
    public var permissions: UInt32 = 0

    public init(size: UInt64, isRegularFile: Bool, isBlockDevice: Bool, allocatedBytes: UInt64,
                owner: UInt32 = 0, permissions: UInt32 = 0) {
        self.size = size; self.isRegularFile = isRegularFile
        self.isBlockDevice = isBlockDevice; self.allocatedBytes = allocatedBytes
        self.owner = owner; self.permissions = permissions
    }
}

/// Positioned I/O for disk images: full-length reads and writes at an offset (retrying short
/// transfers and EINTR), data sync, and space management. None of them moves the file offset,
/// so one descriptor can serve several callers.
extension FileDescriptor {
    /// Opens an existing `path` for reading and writing (close-on-exec; never creates it).
    public static func open(readWrite path: String) throws(SystemError) -> FileDescriptor {
        FileDescriptor(owning: try SystemCall.system("open \(path)") {
            try SystemPackage.FileDescriptor.open(FilePath(path), .readWrite, options: [.closeOnExec])
        })
    }

    /// `fstat(2)`.
    public func status() throws(SystemError) -> FileStatus {
        var st = stat()
        // SAFETY: fstat writes one `struct stat` into `st`, a local of exactly that type.
        _ = try SystemCall.retrying("fstat") { fstat(rawValue, &st) }
        let type = st.st_mode & S_IFMT
        return FileStatus(size: UInt64(max(0, st.st_size)), isRegularFile: type == S_IFREG,
                          isBlockDevice: type == S_IFBLK, allocatedBytes: UInt64(max(0, st.st_blocks)) * 512,
                          owner: st.st_uid, permissions: UInt32(st.st_mode & 0o7777))
    }

    /// Reads exactly `count` bytes at `offset`. Reaching the end of the file first is an error
    /// (EIO): a disk image never has fewer bytes than the caller was told it has.
    public func read(at offset: UInt64, count: Int) throws(SystemError) -> [UInt8] {
        guard count >= 0 else { throw SystemError("pread (negative count)", errno: EINVAL) }
        let start = try fileOffset(offset, count, "pread")
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = try SystemCall.system("pread of \(count) bytes at \(offset)") {
                try out.withUnsafeMutableBytes { buf throws -> Int in
                    // SAFETY: reads at most buf.count - done bytes into the array's own storage,
                    // starting `done` bytes in; `done < buf.count` here.
                    try system.read(fromAbsoluteOffset: Int64(start) + Int64(done), into: UnsafeMutableRawBufferPointer(rebasing: buf[done...]))
                }
            }
            if n == 0 { throw SystemError("pread of \(count) bytes at \(offset) (end of file at \(offset + UInt64(done)))", errno: EIO) }
            done += n
        }
        return out
    }

    /// Reads bytes 0..<`size` in order, at most `chunkSize` at a time, through one buffer that is
    /// reused: `body` sees each chunk (valid only during the call). For hashing a large file
    /// without a copy of all of it: on these nested hosts every fresh page of a whole-file buffer
    /// costs a page fault of several µs (8 MiB: ~16 ms). Reaching the end early is EIO.
    public func readChunks(size: UInt64, chunkSize: Int = 256 << 10, _ body: (ArraySlice<UInt8>) -> Void) throws(SystemError) {
        guard chunkSize > 0 else { throw SystemError("pread (empty chunk)", errno: EINVAL) }
        var buffer = [UInt8](repeating: 0, count: Int(min(UInt64(chunkSize), size)))
        var offset: UInt64 = 0
        while offset < size {
            let want = Int(min(UInt64(buffer.count), size - offset))
            let start = try fileOffset(offset, want, "pread")
            let n = try SystemCall.system("pread of \(want) bytes at \(offset)") {
                try buffer.withUnsafeMutableBytes { buf throws -> Int in
                    // SAFETY: reads at most `want` <= buf.count bytes into the array's own storage.
                    try system.read(fromAbsoluteOffset: Int64(start), into: UnsafeMutableRawBufferPointer(rebasing: buf[..<want]))
                }
            }
            if n == 0 { throw SystemError("pread at \(offset) (end of file before \(size) bytes)", errno: EIO) }
            body(buffer[0..<n])
            offset += UInt64(n)
        }
    }

    /// Writes all of `bytes` at `offset`.
    public func write(_ bytes: [UInt8], at offset: UInt64) throws(SystemError) {
        let start = try fileOffset(offset, bytes.count, "pwrite")
        var done = 0
        while done < bytes.count {
            let n = try SystemCall.system("pwrite of \(bytes.count) bytes at \(offset)") {
                try bytes.withUnsafeBytes { buf throws -> Int in
                    // SAFETY: writes from the array's own storage, `done` bytes in, within its bounds.
                    try system.write(toAbsoluteOffset: Int64(start) + Int64(done), UnsafeRawBufferPointer(rebasing: buf[done...]))
                }
            }
            // A zero-byte write of a non-empty buffer makes no progress: report it, do not spin.
            if n == 0 { throw SystemError("pwrite of \(bytes.count) bytes at \(offset) made no progress", errno: EIO) }
            done += n
        }
    }

    /// `fdatasync(2)`: every completed write is on stable storage when this returns.
    public func syncData() throws(SystemError) {
        _ = try SystemCall.retrying("fdatasync") { fdatasync(rawValue) }
    }

    /// Deallocates `[offset, offset+length)` without changing the file size; the range reads as
    /// zeros afterwards. Throws EOPNOTSUPP where the file system cannot punch holes.
    public func punchHole(offset: UInt64, length: UInt64) throws(SystemError) {
        try allocate(CLINUX_FALLOC_FL_PUNCH_HOLE | CLINUX_FALLOC_FL_KEEP_SIZE, offset, length, "fallocate(PUNCH_HOLE)")
    }

    /// Zeroes `[offset, offset+length)` in the file system's fastest way (unwritten extents),
    /// without changing the file size. Throws EOPNOTSUPP where the file system cannot.
    public func zeroRange(offset: UInt64, length: UInt64) throws(SystemError) {
        try allocate(CLINUX_FALLOC_FL_ZERO_RANGE | CLINUX_FALLOC_FL_KEEP_SIZE, offset, length, "fallocate(ZERO_RANGE)")
    }

    private func allocate(_ mode: Int32, _ offset: UInt64, _ length: UInt64, _ what: String) throws(SystemError) {
        guard length > 0 else { return }
        guard length <= UInt64(Int.max) else { throw SystemError(what, errno: EOVERFLOW) }
        let start = try fileOffset(offset, Int(length), what)
        _ = try SystemCall.retrying("\(what) of \(length) bytes at \(offset)") {
            clinux_fallocate(rawValue, mode, Int64(start), Int64(length))
        }
    }

    /// `offset` as an `off_t`, refusing ranges whose end does not fit one.
    private func fileOffset(_ offset: UInt64, _ count: Int, _ what: String) throws(SystemError) -> off_t {
        let (end, o) = offset.addingReportingOverflow(UInt64(count))
        guard !o, end <= UInt64(Int64.max) else { throw SystemError("\(what) at \(offset) (offset too large)", errno: EOVERFLOW) }
        return off_t(offset)
    }
}
