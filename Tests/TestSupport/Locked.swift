import Synchronization

/// A value shared with the threads and callbacks a test starts (relays, fake back ends).
public final class Locked<Value>: @unchecked Sendable {
    // Sendable: every access to `value` goes through the mutex.
    private let mutex = Mutex<Void>(())
    private var value: Value
    public init(_ value: Value) { self.value = value }

    public func withLock<R>(_ body: (inout Value) -> R) -> R {
        mutex.withLock { _ in body(&value) }
    }
}
