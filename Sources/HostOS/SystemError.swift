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
