import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Unix-domain SOCK_SEQPACKET sockets by path: how two VMMs (or a VMM and a switch) are wired
/// together. Each datagram is one Ethernet frame.
/// Why `UnixSeqpacket.listenAndAccept` returned no peer.
public enum ListenError: Error, Equatable, CustomStringConvertible, Sendable {
    case system(SystemError)
    /// Nobody connected in time.
    case noPeer(path: String, seconds: Double)
    /// A termination signal arrived while waiting.
    case interrupted(path: String, signal: Int32)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .noPeer(let path, let seconds):
            return "no peer connected to \(path) within \(seconds) s (--timeout, or \(Int(UnixSeqpacket.defaultListenSeconds)) s without it); the socket was removed"
        case .interrupted(let path, let signal):
            return "stopped by signal \(signal) while waiting for a peer on \(path); the socket was removed"
        }
    }
}

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

    /// How long `listenAndAccept` waits for a peer when the run has no `--timeout`.
    public static let defaultListenSeconds: Double = 60

    /// Creates a socket at `path` with the caller's credentials (the socket file is theirs, in a
    /// directory they may write), waits for one peer to connect for at most `timeoutSeconds`,
    /// and returns the connection. SIGINT, SIGTERM and SIGHUP end the wait too: they are blocked
    /// on this thread meanwhile and read through a signalfd (the mask is restored after). The
    /// listening socket is closed once the peer is there, so nobody else can connect, and the
    /// socket file is removed however the wait ends, if it is still the one created here.
    public static func listenAndAccept(_ path: String, timeoutSeconds: Double, caller: Caller = .current) throws(ListenError) -> FileDescriptor {
        do { _ = try address(path) } catch { throw .system(error) }
        let bound = try? caller.perform { () -> Result<(FileDescriptor, dev_t, ino_t), SystemError> in
            do throws(SystemError) {
                var addr = try address(path)
                let listener = try socket()
                let len = socklen_t(MemoryLayout<sockaddr_un>.size)
                let r = withUnsafePointer(to: &addr) { p in
                    // SAFETY: p points at a sockaddr_un on the stack for the duration of the call.
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener.rawValue, $0, len) }
                }
                guard r == 0 else { throw SystemError("bind \(path)", errno: errno) }
                var st = stat()
                // SAFETY: lstat writes one `struct stat` on the stack.
                guard lstat(path, &st) == 0 else { throw SystemError("lstat \(path)", errno: errno) }
                return .success((listener, st.st_dev, st.st_ino))
            } catch { return .failure(error) }
        }
        guard let bound else { throw .system(SystemError("bind \(path) (with the caller's credentials)", errno: EPERM)) }
        let listener: FileDescriptor, device: dev_t, inode: ino_t
        switch bound {
        case .success(let b): (listener, device, inode) = b
        case .failure(let e): throw .system(e)
        }
        defer {
            // The socket file goes, but only if it is still ours (not one put there since).
            _ = try? caller.perform {
                var st = stat()
                // SAFETY: lstat writes one `struct stat` on the stack.
                if lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK, st.st_dev == device, st.st_ino == inode { unlink(path) }
            }
        }
        guard listen(listener.rawValue, 1) == 0 else { throw .system(SystemError("listen \(path)", errno: errno)) }
        let status = fcntl(listener.rawValue, F_GETFL)
        guard status >= 0, fcntl(listener.rawValue, F_SETFL, status | O_NONBLOCK) == 0 else {
            throw .system(SystemError("fcntl(O_NONBLOCK) on \(path)", errno: errno))
        }
        var set = sigset_t(), old = sigset_t()
        sigemptyset(&set)
        for s in TerminationSignals.signals { sigaddset(&set, s) }
        // SAFETY: pthread_sigmask reads one sigset_t and writes one, both on the stack.
        pthread_sigmask(SIG_BLOCK, &set, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let signals: TerminationSignals
        do { signals = try TerminationSignals() } catch { throw .system(error) }
        let deadline = Saturating.adding(monotonicNanoseconds(), Saturating.nanoseconds(seconds: timeoutSeconds))
        while true {
            let now = monotonicNanoseconds()
            guard now < deadline else { throw .noPeer(path: path, seconds: timeoutSeconds) }
            let ready = waitReadable([listener.rawValue, signals.descriptor.rawValue],
                                     timeoutMilliseconds: Int32(clamping: (deadline - now + 999_999) / 1_000_000))
            if ready.count == 2, ready[1], let s = signals.next() { throw .interrupted(path: path, signal: s) }
            guard ready.first == true else { continue }
            let fd = SystemCall.uninterrupted { clinux_accept_cloexec(listener.rawValue) }
            if fd >= 0 { return FileDescriptor(owning: fd) }
            if errno != EAGAIN && errno != ECONNABORTED { throw .system(SystemError("accept on \(path)", errno: errno)) }
        }
    }

    /// Connects to a peer listening at `path`, retrying for up to `timeoutSeconds` while it is not
    /// there yet, with the caller's credentials (see `Caller.perform`).
    public static func connect(_ path: String, timeoutSeconds: Double = 10, caller: Caller) throws(SystemError) -> FileDescriptor {
        let result = try caller.perform { () -> Result<FileDescriptor, SystemError> in
            do throws(SystemError) { return .success(try connect(path, timeoutSeconds: timeoutSeconds)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Connects to a peer listening at `path`, retrying for up to `timeoutSeconds` while it is not
    /// there yet.
    public static func connect(_ path: String, timeoutSeconds: Double = 10) throws(SystemError) -> FileDescriptor {
        var addr = try address(path)
        let deadline = Saturating.adding(monotonicNanoseconds(), Saturating.nanoseconds(seconds: timeoutSeconds))
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
        FileDescriptor(owning: try SystemCall.retrying("accept") { clinux_accept_cloexec(listener.rawValue) })
    }

    /// `connect(_:)` with the caller's credentials (see `Caller.perform`).
    public static func connect(_ path: String, caller: Caller) throws(SystemError) -> FileDescriptor {
        try caller.perform { () -> Result<FileDescriptor, SystemError> in
            do throws(SystemError) { return .success(try connect(path)) } catch { return .failure(error) }
        }.get()
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
        _ = try SystemCall.retrying("connect \(path)") {
            withUnsafePointer(to: &addr) { p in
                // SAFETY: p points at a sockaddr_un on the stack for the duration of the call.
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.rawValue, $0, len) }
            }
        }
        return fd
    }
}

/// Why a vsock host path prefix was refused: a guest connecting to host port P reaches the Unix
/// socket "PREFIX_P", so the prefix must leave room for any port in a socket address. Checked by
/// the launcher when it parses `--vsock` and by the VMM's vsock host alike.
public enum UnixVsockHostError: Error, Equatable, CustomStringConvertible, Sendable {
    case badPath(String)

    /// sun_path holds 108 bytes including the terminating NUL.
    public static let maxPathLength = 107

    /// Throws unless "PREFIX_4294967295" fits a socket address (and the prefix is a path at all).
    public static func check(pathPrefix: String) throws(UnixVsockHostError) {
        let longest = Array(pathPrefix.utf8).count + "_4294967295".count
        guard !pathPrefix.isEmpty, !pathPrefix.utf8.contains(0), longest <= maxPathLength else { throw .badPath(pathPrefix) }
    }

    public var description: String {
        switch self {
        case .badPath(let p):
            return "vsock path \(p): must be non-empty, without NUL, and short enough that \"\(p)_4294967295\" fits a Unix socket address (\(Self.maxPathLength) bytes)"
        }
    }
}
