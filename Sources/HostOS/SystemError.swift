#if canImport(Glibc)
import Glibc
#endif

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

    public static func message(for code: Int32) -> String {
        guard let text = strerror(code) else { return "unknown error" }
        return String(cString: text)
    }
}

/// An owned file descriptor, closed when the owner goes away.
public final class FileDescriptor: @unchecked Sendable {
    // Sendable: the descriptor number is immutable; the kernel object is thread-safe.
    public let rawValue: Int32
    private let owned: Bool

    public init(owning rawValue: Int32) { self.rawValue = rawValue; owned = true }
    /// Wraps a descriptor that someone else closes (standard output, for example).
    public init(borrowing rawValue: Int32) { self.rawValue = rawValue; owned = false }

    deinit { if owned { close(rawValue) } }
}

/// The host-OS layer's one loop around interrupted system calls (EINTR: a signal arrived while
/// the call waited). Every blocking call goes through it, so none forgets to retry.
public enum SystemCall {
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
