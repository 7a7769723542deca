import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension FileDescriptor {
    /// Opens `path` read-only (close-on-exec).
    public static func open(readOnly path: String) throws(SystemError) -> FileDescriptor {
        FileDescriptor(owning: try SystemCall.system("open \(path)") {
            try SystemPackage.FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
        })
    }

    /// Creates or truncates `path` for writing (close-on-exec, mode 0644).
    public static func open(writing path: String) throws(SystemError) -> FileDescriptor {
        FileDescriptor(owning: try SystemCall.system("open \(path)") {
            try SystemPackage.FileDescriptor.open(FilePath(path), .writeOnly, options: [.create, .truncate, .closeOnExec],
                                                  permissions: [.ownerReadWrite, .groupRead, .otherRead])
        })
    }

    /// Reads the whole file, refusing files larger than `limit` bytes.
    public func readAll(limit: Int) throws(SystemError) -> [UInt8] {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = try SystemCall.system("read") {
                try chunk.withUnsafeMutableBytes { buf throws -> Int in
                    // SAFETY: reads at most buf.count bytes into the array's own storage.
                    try system.read(into: buf)
                }
            }
            if n == 0 { return result }
            guard result.count + n <= limit else { throw SystemError("read (file larger than \(limit) bytes)", errno: EFBIG) }
            result.append(contentsOf: chunk[0..<n])
        }
    }

    /// Writes all of `bytes`, retrying short writes and EINTR.
    public func writeAll(_ bytes: [UInt8]) throws(SystemError) {
        var done = 0
        while done < bytes.count {
            done += try SystemCall.system("write") {
                try bytes.withUnsafeBytes { buf throws -> Int in
                    // SAFETY: writes from the array's own storage, `done` bytes in, within its bounds.
                    try system.write(UnsafeRawBufferPointer(rebasing: buf[done...]))
                }
            }
        }
    }

    /// Standard output and error, not closed on deinit.
    public static let standardOutput = FileDescriptor(borrowing: 1)
    public static let standardError = FileDescriptor(borrowing: 2)
}

/// Reads a whole regular file by path (/proc, cgroup and Bulkhead's own files; symbolic links
/// are followed). Never blocks on a FIFO: anything but a regular file is refused.
public func readFile(_ path: String, limit: Int) throws(SystemError) -> [UInt8] {
    let fd: FileDescriptor
    do { fd = try FileDescriptor.openChecked(path, what: "file", access: .read, followSymlinks: true) } catch {
        if case .wrongKind(let found) = error.reason { throw SystemError("open \(path) (\(found), not a regular file)", errno: error.errno) }
        throw SystemError("open \(path)", errno: error.errno)
    }
    return try fd.readAll(limit: limit)
}

/// Whether `path` exists and is a regular file.
public func isRegularFile(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
}

/// Whether `path` exists and is a directory.
public func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

/// The absolute path of the running executable.
public func executablePath() -> String? {
    var buf = [UInt8](repeating: 0, count: 4096)
    let n = buf.withUnsafeMutableBytes { b -> Int in
        // SAFETY: readlink writes at most b.count - 1 bytes into the array's own storage.
        guard let base = b.baseAddress?.assumingMemoryBound(to: CChar.self) else { return -1 }
        return readlink("/proc/self/exe", base, b.count - 1)
    }
    guard n > 0 else { return nil }
    return String(decoding: buf[0..<n], as: UTF8.self)
}

/// Environment variable lookup.
public func environment(_ name: String) -> String? {
    guard let v = getenv(name) else { return nil }
    return String(cString: v)
}

/// Makes writes to a closed pipe fail with EPIPE instead of killing the process
/// (`bulkhead run | head -1` must not take the VMM down mid-run).
public func ignoreBrokenPipe() {
    signal(SIGPIPE, SIG_IGN)
}

/// `count` bytes from the kernel's random source (getrandom), or nil if it failed.
public func randomBytes(_ count: Int) -> [UInt8]? {
    guard count >= 0 else { return nil }
    var out = [UInt8](repeating: 0, count: count)
    var done = 0
    while done < count {
        let n = SystemCall.uninterrupted {
            out.withUnsafeMutableBytes { buf -> Int in
                // SAFETY: writes at most count - done bytes after `done` inside the array's storage.
                getrandom(buf.baseAddress?.advanced(by: done), count - done, 0)
            }
        }
        if n < 0 { return nil }
        done += n
    }
    return out
}

/// Asks the kernel to send `signal` to this process when its parent exits (a worker must not
/// outlive its launcher). Returns false if the kernel refused.
@discardableResult
public func setParentDeathSignal(_ signal: Int32) -> Bool { clinux_set_parent_death_signal(signal) == 0 }

/// Names the calling thread (the process, when called on the main thread) as `ps` shows it:
/// a process started from a descriptor would otherwise be named after the descriptor's number.
public func setThreadName(_ name: String) {
    _ = name.withCString { clinux_set_thread_name($0) }
}

/// The target of the symbolic link at `path` (at most 255 bytes; nil if it cannot be read).
public func readSymbolicLink(_ path: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: 256)
    let n = buffer.withUnsafeMutableBytes { b -> Int in
        guard let base = b.baseAddress else { return -1 }
        // SAFETY: readlink writes at most b.count bytes into the array's own storage.
        return readlink(path, base.assumingMemoryBound(to: CChar.self), b.count)
    }
    return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
}

/// Writes `text` to an existing file (a /proc or /sys file) in one write(2); nil on success,
/// else why not. Such files take a value whole or not at all.
public func writeInOneCall(_ path: String, _ text: String) -> String? {
    do { try writeControlFile(path, text) } catch {
        return error.operation.hasSuffix("(short write)") ? "short write" : SystemError.message(for: error.errno)
    }
    return nil
}

/// Connects a new UDP socket to an IPv4 address and port (no packet is sent): 0 if the kernel
/// has a route, else the errno (ENETUNREACH in a network namespace without one).
public func connectUDP(ipv4 address: UInt32, port: UInt16) -> Int32 {
    let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard s >= 0 else { return errno }
    defer { close(s) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    a.sin_addr.s_addr = address.bigEndian
    // SAFETY: connect reads one sockaddr_in from the stack for the duration of the call.
    let r = withUnsafePointer(to: &a) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return r == 0 ? 0 : errno
}
