#if canImport(Glibc)
import Glibc
#endif

/// One datagram received with `receiveMessage`: its bytes and the descriptors that came with it
/// (owned, close-on-exec, in the order the sender attached them).
public struct ReceivedMessage: Sendable {
    public var bytes: [UInt8]
    public var descriptors: [FileDescriptor]

    public init(bytes: [UInt8], descriptors: [FileDescriptor]) {
        self.bytes = bytes
        self.descriptors = descriptors
    }
}

/// What a receive with a timeout found.
public enum MessageReceive: Sendable {
    /// One whole datagram and its descriptors.
    case message(ReceivedMessage)
    /// Nothing arrived before the timeout (a zero timeout: nothing is queued now).
    case timedOut
    /// The peer closed its end (or reset the connection): no message will ever come again.
    case closed
}

/// Descriptor passing over a connected Unix SOCK_SEQPACKET socket: how the launcher hands a
/// worker its configuration and every descriptor it will use, and how the worker reports back.
/// One call is one datagram; its descriptors travel with it as one SCM_RIGHTS control message.
///
/// The peer may be hostile (a compromised worker). A receive never leaves a descriptor behind in
/// this process that it did not return: when a datagram is refused (too long, too many
/// descriptors, an unexpected control message) every descriptor that arrived with it is closed
/// before the error is thrown. The datagram is consumed either way; the link stays usable, and
/// what to do with a peer that sent it is the caller's decision. What the received descriptors
/// are (a socket, a file, a device...) is for the caller's protocol to check.
extension FileDescriptor {
    /// The most descriptors one message carries (the kernel allows 253, SCM_MAX_FD).
    public static let maxPassedDescriptors = 64

    /// Sends `bytes` as one datagram with `descriptors` attached (SCM_RIGHTS; the receiver gets
    /// its own duplicates, this process keeps its own). Blocks until the socket takes the whole
    /// datagram, also on a non-blocking socket; never raises SIGPIPE (a peer that is gone is
    /// EPIPE). Throws EINVAL for an empty datagram (a receiver cannot tell a zero-length datagram
    /// without descriptors from end-of-stream) or more than `maxPassedDescriptors` descriptors,
    /// and EMSGSIZE for a datagram larger than the socket's send buffer.
    public func sendMessage(_ bytes: [UInt8], descriptors: [FileDescriptor] = []) throws(SystemError) {
        guard !bytes.isEmpty else {
            throw SystemError("sendmsg of an empty datagram", errno: EINVAL)
        }
        guard descriptors.count <= FileDescriptor.maxPassedDescriptors else {
            throw SystemError("sendmsg with \(descriptors.count) descriptors (at most \(FileDescriptor.maxPassedDescriptors))", errno: EINVAL)
        }
        let dataLength = descriptors.count * MemoryLayout<Int32>.size
        let controlSpace = descriptors.isEmpty ? 0 : ControlMessages.space(dataLength)
        // SAFETY: a scratch buffer owned by this function, aligned for cmsghdr, at least one byte
        // (allocate does not take zero), fully zeroed, freed on every path by the defer.
        let control = UnsafeMutableRawPointer.allocate(byteCount: max(controlSpace, 1),
                                                       alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0, count: max(controlSpace, 1))
        if !descriptors.isEmpty {
            var header = cmsghdr()
            header.cmsg_len = ControlMessages.length(dataLength)
            header.cmsg_level = SOL_SOCKET
            header.cmsg_type = Int32(SCM_RIGHTS)
            // SAFETY: controlSpace = headerSpace + align(dataLength) bytes: the header fits at 0
            // (the buffer is aligned for it) and descriptor i at headerSpace + 4i < controlSpace.
            control.storeBytes(of: header, as: cmsghdr.self)
            for (i, descriptor) in descriptors.enumerated() {
                control.storeBytes(of: descriptor.rawValue,
                                   toByteOffset: ControlMessages.headerSpace + i * MemoryLayout<Int32>.size,
                                   as: Int32.self)
            }
        }
        while true {
            let n = SystemCall.uninterrupted {
                bytes.withUnsafeBytes { buf -> Int in
                    // SAFETY: sendmsg only reads through iov_base, which names the array's own
                    // storage (buf.count bytes); the control buffer holds controlSpace
                    // initialized bytes (withMessageHeader).
                    withMessageHeader(UnsafeMutableRawBufferPointer(mutating: buf), control: control, controlLength: controlSpace) {
                        sendmsg(rawValue, &$0, Int32(MSG_NOSIGNAL))
                    }
                }
            }
            // The descriptor numbers in the control buffer must stay open until the kernel took
            // its references, which sendmsg has done by the time it returns.
            withExtendedLifetime(descriptors) {}
            if n >= 0 {
                // SOCK_SEQPACKET sends are atomic: all or nothing. Anything else is not a
                // datagram socket, and a short send would be a broken message.
                guard n == bytes.count else {
                    throw SystemError("sendmsg of a \(bytes.count)-byte datagram sent \(n)", errno: EIO)
                }
                return
            }
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK {
                try waitFor(Int16(POLLOUT), timeoutMilliseconds: -1, operation: "poll for sendmsg")
                continue
            }
            throw SystemError("sendmsg of a \(bytes.count)-byte datagram with \(descriptors.count) descriptors", errno: e)
        }
    }

    /// Receives one datagram and its descriptors, blocking until one arrives (also on a
    /// non-blocking socket). Returns nil when the peer has closed its end (or reset the
    /// connection); a zero-length datagram without descriptors reads as that end too.
    ///
    /// Throws EMSGSIZE, after closing every descriptor that arrived with it, for a datagram
    /// longer than `maxBytes` or with more than `maxDescriptors` descriptors (or more than this
    /// process's descriptor limit lets in), and EPROTO for any control message other than
    /// SCM_RIGHTS. Received descriptors are close-on-exec (MSG_CMSG_CLOEXEC).
    public func receiveMessage(maxBytes: Int, maxDescriptors: Int = FileDescriptor.maxPassedDescriptors) throws(SystemError) -> ReceivedMessage? {
        while true {
            switch try receiveMessage(maxBytes: maxBytes, maxDescriptors: maxDescriptors, timeoutMilliseconds: -1) {
            case .message(let message): return message
            case .closed: return nil
            case .timedOut: continue // no timeout was asked for; poll does not time out
            }
        }
    }

    /// `receiveMessage(maxBytes:maxDescriptors:)` that waits at most `timeoutMilliseconds`
    /// (0: only what is queued now, without blocking; negative: for ever). Interruptions (EINTR)
    /// do not shorten or lengthen the wait.
    public func receiveMessage(maxBytes: Int, maxDescriptors: Int = FileDescriptor.maxPassedDescriptors,
                               timeoutMilliseconds: Int) throws(SystemError) -> MessageReceive {
        guard maxBytes > 0 else { throw SystemError("recvmsg (maxBytes \(maxBytes))", errno: EINVAL) }
        guard (0...FileDescriptor.maxPassedDescriptors).contains(maxDescriptors) else {
            throw SystemError("recvmsg (maxDescriptors \(maxDescriptors), at most \(FileDescriptor.maxPassedDescriptors))", errno: EINVAL)
        }
        let deadline: UInt64? = timeoutMilliseconds < 0
            ? nil : Saturating.adding(monotonicNanoseconds(), Saturating.multiplying(UInt64(timeoutMilliseconds), 1_000_000))
        while true {
            if let result = try receiveQueued(maxBytes: maxBytes, maxDescriptors: maxDescriptors) { return result }
            var wait: Int32 = -1
            if let deadline {
                let now = monotonicNanoseconds()
                guard now < deadline else { return .timedOut }
                wait = Saturating.pollMilliseconds(nanoseconds: deadline - now)
            }
            try waitFor(Int16(POLLIN), timeoutMilliseconds: wait, operation: "poll for recvmsg")
        }
    }

    /// One recvmsg that does not block: nil when nothing is queued.
    private func receiveQueued(maxBytes: Int, maxDescriptors: Int) throws(SystemError) -> MessageReceive? {
        var buffer = [UInt8](repeating: 0, count: maxBytes)
        let controlSpace = maxDescriptors == 0 ? 0 : ControlMessages.space(maxDescriptors * MemoryLayout<Int32>.size)
        // SAFETY: a scratch buffer owned by this function, aligned for cmsghdr, at least one byte,
        // zeroed, freed on every path by the defer. The kernel writes at most controlSpace bytes.
        let control = UnsafeMutableRawPointer.allocate(byteCount: max(controlSpace, 1),
                                                       alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0, count: max(controlSpace, 1))
        while true {
            var flags: Int32 = 0
            var controlLength = 0
            let n = SystemCall.uninterrupted {
                buffer.withUnsafeMutableBytes { buf -> Int in
                    // SAFETY: the header names the array's own storage (buf.count bytes) and the
                    // control buffer of controlSpace bytes; the kernel writes no more than those
                    // lengths (withMessageHeader).
                    withMessageHeader(buf, control: control, controlLength: controlSpace) { message in
                        let r = recvmsg(rawValue, &message, Int32(MSG_DONTWAIT) | Int32(MSG_CMSG_CLOEXEC))
                        flags = message.msg_flags
                        controlLength = message.msg_controllen
                        return r
                    }
                }
            }
            if n < 0 {
                let e = errno
                if e == EAGAIN || e == EWOULDBLOCK { return nil }
                if e == ECONNRESET || e == ENOTCONN { return .closed }
                throw SystemError("recvmsg", errno: e)
            }
            // From here on descriptors may be installed in this process: take ownership of them
            // before anything can throw, so that every error path closes them.
            let parsed = ControlMessages.parse(control, length: min(controlLength, controlSpace))
            if n == 0 && controlLength == 0 { return .closed }
            if flags & Int32(MSG_TRUNC) != 0 {
                throw SystemError("recvmsg: a datagram longer than \(maxBytes) bytes (dropped, its \(parsed.descriptors.count) descriptors closed)", errno: EMSGSIZE)
            }
            if flags & Int32(MSG_CTRUNC) != 0 {
                throw SystemError("recvmsg: more descriptors than \(maxDescriptors) or the descriptor limit allow (dropped, \(parsed.descriptors.count) closed)", errno: EMSGSIZE)
            }
            if let unexpected = parsed.unexpected {
                throw SystemError("recvmsg: unexpected control message \(unexpected) (dropped, \(parsed.descriptors.count) descriptors closed)", errno: EPROTO)
            }
            guard parsed.descriptors.count <= maxDescriptors else {
                throw SystemError("recvmsg: \(parsed.descriptors.count) descriptors, more than \(maxDescriptors) (all closed)", errno: EMSGSIZE)
            }
            return .message(ReceivedMessage(bytes: Array(buffer[0..<n]), descriptors: parsed.descriptors))
        }
    }

    /// Waits until poll reports `events` (or a hang-up or error, which the next call reports), or
    /// the timeout passes. EINTR returns early: callers loop and recompute their deadline.
    private func waitFor(_ events: Int16, timeoutMilliseconds: Int32, operation: String) throws(SystemError) {
        var p = pollfd(fd: rawValue, events: events, revents: 0)
        // SAFETY: poll reads and writes the one pollfd on the stack.
        let r = poll(&p, 1, timeoutMilliseconds)
        if r < 0 {
            let e = errno
            if e == EINTR { return }
            throw SystemError(operation, errno: e)
        }
        if r > 0 && p.revents & Int16(POLLNVAL) != 0 { throw SystemError(operation, errno: EBADF) }
    }
}

/// The control-message (cmsg) layout of glibc on Linux, which <sys/socket.h> gives only as macros
/// Swift does not import: a header (`cmsghdr`: length, level, type) padded to the alignment of
/// size_t, then the data; consecutive messages start at aligned offsets.
enum ControlMessages {
    static let alignment = MemoryLayout<Int>.size
    static func align(_ n: Int) -> Int { (n + alignment - 1) & ~(alignment - 1) }
    /// CMSG_ALIGN(sizeof(struct cmsghdr)): where the data starts.
    static let headerSpace = align(MemoryLayout<cmsghdr>.size)
    /// CMSG_LEN(n): the value of cmsg_len for n bytes of data.
    static func length(_ n: Int) -> Int { headerSpace + n }
    /// CMSG_SPACE(n): the bytes one message with n bytes of data takes in the buffer.
    static func space(_ n: Int) -> Int { headerSpace + align(n) }

    /// SCM_PIDFD (Linux 6.5): a pidfd, delivered only with SO_PASSPIDFD, which nothing here sets.
    static let pidfdType: Int32 = 0x04

    struct Parsed {
        /// Every descriptor the kernel installed in this process for the message, now owned.
        var descriptors: [FileDescriptor] = []
        /// The first control message that is not SOL_SOCKET/SCM_RIGHTS, if any.
        var unexpected: String?
    }

    /// Walks the control buffer recvmsg filled. The kernel, not the peer, writes it; the peer
    /// chooses only what it attaches. Even so every header is bounds-checked against `length`
    /// (the kernel's msg_controllen, clamped to the buffer) before its data is read, and the walk
    /// stops at the first header that does not fit. Descriptors are taken from SCM_RIGHTS (and,
    /// to close it, SCM_PIDFD) messages only: reading descriptor numbers out of anything else and
    /// closing them could close unrelated descriptors of this process.
    static func parse(_ control: UnsafeMutableRawPointer, length: Int) -> Parsed {
        var parsed = Parsed()
        var offset = 0
        let headerSize = MemoryLayout<cmsghdr>.size
        while length - offset >= headerSize {
            // SAFETY: offset + headerSize <= length <= the buffer's size, checked just above.
            let header = control.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
            let messageLength = header.cmsg_len
            guard messageLength >= headerSpace, messageLength <= length - offset else {
                parsed.unexpected = parsed.unexpected ?? "with a malformed length \(messageLength)"
                break
            }
            let carriesDescriptors = header.cmsg_level == SOL_SOCKET
                && (header.cmsg_type == Int32(SCM_RIGHTS) || header.cmsg_type == pidfdType)
            if carriesDescriptors {
                let count = (messageLength - headerSpace) / MemoryLayout<Int32>.size
                for i in 0..<count {
                    // SAFETY: headerSpace + 4(i + 1) <= messageLength <= length - offset.
                    let fd = control.loadUnaligned(fromByteOffset: offset + headerSpace + i * MemoryLayout<Int32>.size,
                                                   as: Int32.self)
                    if fd >= 0 { parsed.descriptors.append(FileDescriptor(owning: fd)) }
                }
            }
            if header.cmsg_level != SOL_SOCKET || header.cmsg_type != Int32(SCM_RIGHTS) {
                parsed.unexpected = parsed.unexpected ?? "(level \(header.cmsg_level), type \(header.cmsg_type))"
            }
            let step = align(messageLength)
            guard step <= length - offset else { break }
            offset += step
        }
        return parsed
    }
}
