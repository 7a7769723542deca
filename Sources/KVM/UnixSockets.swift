import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// Unix-domain SOCK_SEQPACKET sockets by path: how two VMMs (or a VMM and a switch) are wired
/// together. Each datagram is one Ethernet frame.
public enum UnixSeqpacket {
    static func address(_ path: String) throws(SystemError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else {
            throw SystemError("socket path \(path) (empty, too long or contains NUL)", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            // SAFETY: bytes.count < capacity, checked above; the rest stays zero (NUL-terminated).
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return addr
    }

    static func socket() throws(SystemError) -> FileDescriptor {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(AF_UNIX, SOCK_SEQPACKET)", errno: errno) }
        return FileDescriptor(owning: fd)
    }

    /// Creates `path`, waits for one peer to connect, and returns the connection.
    /// The listening socket and the path are removed once the peer is there.
    public static func listenAndAccept(_ path: String) throws(SystemError) -> FileDescriptor {
        var addr = try address(path)
        let listener = try socket()
        let len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let r = withUnsafePointer(to: &addr) { p in
            // SAFETY: p points at a sockaddr_un on the stack for the duration of the call.
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener.rawValue, $0, len) }
        }
        guard r == 0 else { throw SystemError("bind \(path)", errno: errno) }
        defer { unlink(path) }
        guard listen(listener.rawValue, 1) == 0 else { throw SystemError("listen \(path)", errno: errno) }
        while true {
            let fd = ckvm_accept_cloexec(listener.rawValue)
            if fd >= 0 { return FileDescriptor(owning: fd) }
            if errno != EINTR { throw SystemError("accept on \(path)", errno: errno) }
        }
    }

    /// Connects to a peer listening at `path`, retrying for up to `timeoutSeconds` while it is not
    /// there yet.
    public static func connect(_ path: String, timeoutSeconds: Double = 10) throws(SystemError) -> FileDescriptor {
        var addr = try address(path)
        let deadline = monotonicNanoseconds() + UInt64(max(0, timeoutSeconds) * 1e9)
        while true {
            let fd = try socket()
            let len = socklen_t(MemoryLayout<sockaddr_un>.size)
            let r = withUnsafePointer(to: &addr) { p in
                // SAFETY: as in listenAndAccept.
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.rawValue, $0, len) }
            }
            if r == 0 { return fd }
            let e = errno
            guard (e == ENOENT || e == ECONNREFUSED || e == EINTR), monotonicNanoseconds() < deadline else {
                throw SystemError("connect \(path)", errno: e)
            }
            usleep(20_000)
        }
    }
}

/// Unix-domain SOCK_STREAM connections by path, non-blocking: the host side of guest vsock
/// connections (a guest connecting to host port P reaches the socket at "PATH_P").
public enum UnixStream {
    /// Creates a listening stream socket at `path` (removed by the caller). Blocking,
    /// close-on-exec.
    public static func listen(_ path: String, backlog: Int32 = 16) throws(SystemError) -> FileDescriptor {
        var addr = try UnixSeqpacket.address(path)
        let raw = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard raw >= 0 else { throw SystemError("socket(AF_UNIX, SOCK_STREAM)", errno: errno) }
        let fd = FileDescriptor(owning: raw)
        let len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let r = withUnsafePointer(to: &addr) { p in
            // SAFETY: p points at a sockaddr_un on the stack for the duration of the call.
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.rawValue, $0, len) }
        }
        guard r == 0 else { throw SystemError("bind \(path)", errno: errno) }
        guard Glibc.listen(fd.rawValue, backlog) == 0 else { throw SystemError("listen \(path)", errno: errno) }
        return fd
    }

    /// Accepts one connection on a listening socket (blocking), close-on-exec.
    public static func accept(_ listener: FileDescriptor) throws(SystemError) -> FileDescriptor {
        while true {
            let fd = ckvm_accept_cloexec(listener.rawValue)
            if fd >= 0 { return FileDescriptor(owning: fd) }
            if errno != EINTR { throw SystemError("accept", errno: errno) }
        }
    }

    /// Connects to `path` without waiting: a listener that is absent, refuses, or has a full
    /// backlog (EAGAIN) is an error. The descriptor is non-blocking and close-on-exec.
    public static func connect(_ path: String) throws(SystemError) -> FileDescriptor {
        var addr = try UnixSeqpacket.address(path)
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        let raw = Glibc.socket(AF_UNIX, type, 0)
        guard raw >= 0 else { throw SystemError("socket(AF_UNIX, SOCK_STREAM)", errno: errno) }
        let fd = FileDescriptor(owning: raw)
        let len = socklen_t(MemoryLayout<sockaddr_un>.size)
        while true {
            let r = withUnsafePointer(to: &addr) { p in
                // SAFETY: p points at a sockaddr_un on the stack for the duration of the call.
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.rawValue, $0, len) }
            }
            if r == 0 { return fd }
            if errno == EINTR { continue }
            throw SystemError("connect \(path)", errno: errno)
        }
    }
}
