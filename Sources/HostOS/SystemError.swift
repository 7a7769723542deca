import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

// The host-OS layer is built on apple/swift-system wherever it covers a call: its descriptors'
// open, read, write, positional I/O and close (each retrying EINTR), `FilePath` and `Errno`.
// What it lacks is written here by hand on Glibc and CLinux: openat with O_PATH and the checked
// opens, ioctl, sockets and SCM_RIGHTS, eventfd/signalfd, namespaces, seccomp, flock, fallocate.

/// A failed system call: the operation that failed and the `errno` it set.
public struct SystemError: Error, Equatable, CustomStringConvertible, Sendable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "\(operation) failed: \(SystemError.message(for: errno)) (errno \(errno))"
    }

    /// The system's text for `code` (strerror(3), through swift-system's `Errno`).
    public static func message(for code: Int32) -> String { Errno(rawValue: code).description }
}

/// An owned file descriptor, closed when the owner goes away.
public final class FileDescriptor: @unchecked Sendable {
    // Sendable: the descriptor number is immutable; the kernel object is thread-safe.
    public let rawValue: Int32
    private let owned: Bool

    public init(owning rawValue: Int32) { self.rawValue = rawValue; owned = true }
    /// Wraps a descriptor that someone else closes (standard output, for example).
    public init(borrowing rawValue: Int32) { self.rawValue = rawValue; owned = false }
    /// Takes ownership of a descriptor swift-system opened.
    convenience init(owning descriptor: SystemPackage.FileDescriptor) { self.init(owning: descriptor.rawValue) }

    /// The same descriptor as swift-system's (not owning: this object still closes it).
    var system: SystemPackage.FileDescriptor { SystemPackage.FileDescriptor(rawValue: rawValue) }

    deinit { if owned { try? system.close() } }
}

/// The host-OS layer's one loop around interrupted system calls (EINTR: a signal arrived while
/// the call waited). Every blocking call goes through it, or through swift-system with
/// `retryOnInterrupt` (`SystemCall.system`), so none forgets to retry.
public enum SystemCall {
    /// Runs swift-system calls (which retry EINTR themselves) and turns the `Errno` they throw
    /// into `SystemError(operation, errno)`.
    @inline(__always)
    static func system<R>(_ operation: @autoclosure () -> String, _ body: () throws -> R) throws(SystemError) -> R {
        do { return try body() } catch let e as Errno {
            throw SystemError(operation(), errno: e.rawValue)
        } catch {
            throw SystemError(operation() + " (\(error))", errno: EIO)
        }
    }

    /// Calls `call` again while it fails with EINTR; returns its result (>= 0), or throws
    /// `SystemError(operation, errno)` for any other failure.
    @inline(__always)
    public static func retrying<R: BinaryInteger>(_ operation: @autoclosure () -> String, _ call: () -> R) throws(SystemError) -> R {
        let r = uninterrupted(call)
        if r < 0 { throw SystemError(operation(), errno: errno) }
        return r
    }

    /// Calls `call` again while it fails with EINTR; returns its result, which is negative (with
    /// `errno` set, never to EINTR) when it failed: for callers that tell errors apart.
    @inline(__always)
    public static func uninterrupted<R: BinaryInteger>(_ call: () -> R) -> R {
        while true {
            let r = call()
            if r >= 0 || errno != EINTR { return r }
        }
    }
}
