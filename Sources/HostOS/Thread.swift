import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A dedicated OS thread (one per vCPU). KVM_RUN blocks, so it must never run on Swift's
/// cooperative thread pool.
public final class OSThread: @unchecked Sendable {
    // Sendable: `handle` is written once in `spawn` before the object is shared, then only joined.
    private var handle: pthread_t = 0
    private var joined = false

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    private init() {}

    /// Starts `body` on a new thread with the given stack size.
    public static func spawn(stackSize: Int = 1 << 20, _ body: @escaping @Sendable () -> Void) throws(SystemError) -> OSThread {
        let thread = OSThread()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        pthread_attr_setstacksize(&attr, stackSize)
        // SAFETY: the retained box is released exactly once, by the new thread.
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        let r = pthread_create(&thread.handle, &attr, { raw in
            guard let raw else { return nil }
            let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
            box.body()
            return nil
        }, context)
        if r != 0 {
            Unmanaged<Box>.fromOpaque(context).release()
            throw SystemError("pthread_create", errno: r)
        }
        return thread
    }

    /// Waits for the thread to finish.
    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(handle, nil)
    }
}

/// A Linux eventfd: a counter the kernel can signal (ioeventfd, irqfd) and threads can wait on.
public final class EventFD: @unchecked Sendable {
    // Sendable: the fd is immutable; eventfd operations are atomic in the kernel.
    public let fd: FileDescriptor

    public init() throws(SystemError) {
        let raw = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard raw >= 0 else { throw SystemError("eventfd", errno: errno) }
        fd = FileDescriptor(owning: raw)
    }

    public func signal() {
        var one: UInt64 = 1
        _ = write(fd.rawValue, &one, 8)
    }

    /// Consumes the counter; returns how many signals arrived since the last drain.
    @discardableResult
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        return read(fd.rawValue, &value, 8) == 8 ? value : 0
    }

    /// Waits up to `nanoseconds` for a signal. Returns early (false) when interrupted by a kick.
    public func wait(nanoseconds: UInt64) -> Bool {
        var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        let ms = Saturating.pollMilliseconds(nanoseconds: nanoseconds)
        let r = poll(&p, 1, ms)
        if r > 0 { drain(); return true }
        return false
    }
}

/// Nanoseconds on the monotonic clock.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Waits until at least one of `fds` is readable (or `timeoutMilliseconds` pass; -1 waits for
/// ever). Returns which ones are readable; an empty array on timeout or interruption.
public func waitReadable(_ fds: [Int32], timeoutMilliseconds: Int32) -> [Bool] {
    var polled = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    let n = polled.withUnsafeMutableBufferPointer { buf -> Int32 in
        // SAFETY: poll reads and writes exactly `buf.count` pollfd entries of the array's storage.
        poll(buf.baseAddress, nfds_t(buf.count), timeoutMilliseconds)
    }
    guard n > 0 else { return [] }
    return polled.map { $0.revents & Int16(POLLIN | POLLERR | POLLHUP) != 0 }
}

/// Sleeps the calling thread for `nanoseconds` (the whole time: an interrupted sleep resumes).
public func sleepNanoseconds(_ nanoseconds: UInt64) {
    var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    // SAFETY: nanosleep reads the request and writes the remainder, both timespecs on the stack.
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}
