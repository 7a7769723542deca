import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// What one non-blocking datagram receive found.
public enum DatagramReceive: Equatable, Sendable {
    /// One whole datagram (possibly empty).
    case datagram([UInt8])
    /// A datagram longer than the buffer: the kernel kept only the first `kept` bytes and threw
    /// the rest away. The datagram is consumed; callers drop it.
    case truncated(kept: Int)
    /// Nothing is queued (EAGAIN).
    case wouldBlock
    /// The peer closed its end (or shut down its sending side) and nothing is queued: no
    /// datagram will ever come again.
    case closed
}

/// What one non-blocking datagram send did.
public enum DatagramSend: Equatable, Sendable {
    /// The whole datagram was queued.
    case sent
    /// The socket's (or the peer's) buffer is full (EAGAIN): try again when it is writable.
    case wouldBlock
}

/// Unix-domain SOCK_SEQPACKET sockets as frame links: a connected pair, non-blocking mode, and
/// one-datagram sends and receives that never block (MSG_DONTWAIT) and never raise SIGPIPE
/// (MSG_NOSIGNAL). SOCK_SEQPACKET keeps datagram boundaries, so one datagram is one frame.
extension UnixSeqpacket {
    /// `socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`: two connected ends.
    public static func pair() throws(SystemError) -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let r = fds.withUnsafeMutableBufferPointer { buf -> Int32 in
            // SAFETY: socketpair writes exactly two Int32s; the buffer holds two.
            socketpair(AF_UNIX, type, 0, buf.baseAddress)
        }
        guard r == 0 else { throw SystemError("socketpair(AF_UNIX, SOCK_SEQPACKET)", errno: errno) }
        return (FileDescriptor(owning: fds[0]), FileDescriptor(owning: fds[1]))
    }
}

extension FileDescriptor {
    /// Sets O_NONBLOCK (keeping the other status flags).
    public func setNonBlocking() throws(SystemError) {
        let flags = fcntl(rawValue, F_GETFL)
        guard flags >= 0 else { throw SystemError("fcntl(F_GETFL)", errno: errno) }
        guard flags & O_NONBLOCK == 0 else { return }
        guard fcntl(rawValue, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SystemError("fcntl(F_SETFL, O_NONBLOCK)", errno: errno) }
    }

    /// Whether O_NONBLOCK is set.
    public var isNonBlocking: Bool {
        let flags = fcntl(rawValue, F_GETFL)
        return flags >= 0 && flags & O_NONBLOCK != 0
    }

    /// The socket's type (`SO_TYPE`: SOCK_STREAM, SOCK_SEQPACKET...); throws ENOTSOCK for a
    /// descriptor that is not a socket.
    public func socketType() throws(SystemError) -> Int32 {
        var type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        // SAFETY: getsockopt writes at most `length` (4) bytes into `type`, an Int32 on the stack,
        // and updates `length`, a socklen_t on the stack.
        guard getsockopt(rawValue, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else {
            throw SystemError("getsockopt(SO_TYPE)", errno: errno)
        }
        return type
    }

    /// Whether this is a SOCK_SEQPACKET socket.
    public var isSeqpacketSocket: Bool { (try? socketType()) == Int32(SOCK_SEQPACKET.rawValue) }

    /// Sets `SO_SNDBUF` (the kernel doubles it and applies its minimum).
    public func setSendBufferSize(_ bytes: Int) throws(SystemError) {
        var value = Int32(clamping: bytes)
        // SAFETY: setsockopt reads exactly MemoryLayout<Int32>.size bytes from `value` on the stack.
        guard setsockopt(rawValue, SOL_SOCKET, SO_SNDBUF, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw SystemError("setsockopt(SO_SNDBUF)", errno: errno)
        }
    }

    /// Sends `bytes` as one datagram without blocking. Errors other than EAGAIN (EPIPE when the
    /// peer is gone, EMSGSIZE for a datagram larger than the socket allows...) are thrown.
    public func sendDatagram(_ bytes: [UInt8]) throws(SystemError) -> DatagramSend {
        let flags = Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)
        let n = SystemCall.uninterrupted {
            bytes.withUnsafeBytes { buf -> Int in
                // SAFETY: send reads at most buf.count bytes from the array's own storage.
                send(rawValue, buf.baseAddress, buf.count, flags)
            }
        }
        if n >= 0 {
            // SOCK_SEQPACKET sends are atomic: all or nothing.
            guard n == bytes.count else { throw SystemError("send of a \(bytes.count)-byte datagram sent \(n)", errno: EIO) }
            return .sent
        }
        let e = errno
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        throw SystemError("send of a \(bytes.count)-byte datagram", errno: e)
    }

    /// Receives one datagram into `buffer` (its whole length is the capacity; callers reuse it
    /// across calls) without blocking. A longer datagram is consumed and reported as `.truncated`.
    public func receiveDatagram(into buffer: inout [UInt8]) throws(SystemError) -> DatagramReceive {
        guard !buffer.isEmpty else { throw SystemError("recvmsg (empty buffer)", errno: EINVAL) }
        var truncated = false
        let n = SystemCall.uninterrupted {
            buffer.withUnsafeMutableBytes { buf -> Int in
                withMessageHeader(buf, control: nil, controlLength: 0) { message in
                    // SAFETY: the header names the array's own storage (buf.count bytes); no name
                    // or control buffer (withMessageHeader).
                    let r = recvmsg(rawValue, &message, Int32(MSG_DONTWAIT))
                    truncated = message.msg_flags & Int32(MSG_TRUNC) != 0
                    return r
                }
            }
        }
        if n > 0 {
            return truncated ? .truncated(kept: n) : .datagram(Array(buffer[0..<n]))
        }
        if n == 0 {
            // Zero: an empty datagram, or the end of the stream. Only the latter hangs up.
            return peerHungUp() ? .closed : .datagram([])
        }
        let e = errno
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        if e == ECONNRESET || e == ENOTCONN { return .closed }
        throw SystemError("recvmsg", errno: e)
    }

    /// Whether the peer hung up: poll reports POLLHUP or POLLRDHUP right now.
    public func peerHungUp() -> Bool {
        var p = pollfd(fd: rawValue, events: Int16(POLLIN) | pollReadHangUp, revents: 0)
        // SAFETY: poll reads and writes the one pollfd on the stack; zero timeout.
        guard poll(&p, 1, 0) == 1 else { return false }
        return p.revents & (Int16(POLLHUP) | pollReadHangUp) != 0
    }
}

/// What a non-blocking read of a stream socket found.
public enum StreamRead: Equatable, Sendable {
    case data([UInt8])
    /// Nothing now.
    case wouldBlock
    /// End of stream: the peer shut down writing or closed in order.
    case closed
    /// The peer reset the connection (it closed with our data unread): data may have been lost.
    case reset
}

extension FileDescriptor {
    /// Reads at most `max` bytes from a stream socket without blocking.
    public func readStream(max: Int) throws(SystemError) -> StreamRead {
        guard max > 0 else { throw SystemError("recv (empty buffer)", errno: EINVAL) }
        var buffer = [UInt8](repeating: 0, count: max)
        let n = SystemCall.uninterrupted {
            buffer.withUnsafeMutableBytes { buf -> Int in
                // SAFETY: recv writes at most buf.count bytes into the array's own storage.
                recv(rawValue, buf.baseAddress, buf.count, Int32(MSG_DONTWAIT))
            }
        }
        if n > 0 { return .data(Array(buffer[0..<n])) }
        if n == 0 { return .closed }
        let e = errno
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        if e == ECONNRESET { return .reset }
        if e == ENOTCONN { return .closed }
        throw SystemError("recv", errno: e)
    }

    /// Half-closes a stream socket: the peer reads end-of-stream, and can still send.
    public func shutdownWriting() { _ = shutdown(rawValue, Int32(SHUT_WR)) }

    /// Writes as much of `bytes` to a stream socket as it takes now; 0 when it is full. A peer
    /// that is gone is an error (EPIPE, never SIGPIPE).
    public func writeStream(_ bytes: ArraySlice<UInt8>) throws(SystemError) -> Int {
        guard !bytes.isEmpty else { return 0 }
        let flags = Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)
        let n = SystemCall.uninterrupted {
            bytes.withUnsafeBytes { buf -> Int in
                // SAFETY: send reads at most buf.count bytes from the slice's own storage.
                send(rawValue, buf.baseAddress, buf.count, flags)
            }
        }
        if n >= 0 { return n }
        let e = errno
        if e == EAGAIN || e == EWOULDBLOCK { return 0 }
        throw SystemError("send", errno: e)
    }
}

/// POLLRDHUP (Linux 2.6.17): the peer shut down writing. Glibc declares it only under _GNU_SOURCE.
private let pollReadHangUp: Int16 = 0x2000

/// Calls `body` with a message header naming `buffer` as its one iovec, and `control` as its
/// control buffer of `controlLength` bytes (none when 0). The iovec and the header live on the
/// stack for the duration of the call; `buffer` and `control` must outlive it too.
@inline(__always)
func withMessageHeader(_ buffer: UnsafeMutableRawBufferPointer, control: UnsafeMutableRawPointer?, controlLength: Int,
                       _ body: (inout msghdr) -> Int) -> Int {
    var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
    // SAFETY: the pointer to `iov` is used only inside the closure, while `iov` lives.
    return withUnsafeMutablePointer(to: &iov) { iovp -> Int in
        var message = msghdr()
        message.msg_iov = iovp
        message.msg_iovlen = 1
        message.msg_control = controlLength > 0 ? control : nil
        message.msg_controllen = controlLength
        return body(&message)
    }
}
