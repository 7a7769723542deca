/// A token bucket: `capacity` tokens, refilled at `ratePerSecond`. Time is passed in (monotonic
/// nanoseconds), so the bucket is a pure value that tests drive with a fake clock.
public struct TokenBucket: Equatable, Sendable {
    public let capacity: UInt64
    public let ratePerSecond: UInt64
    public private(set) var tokens: UInt64
    private var lastRefill: UInt64

    public init(capacity: UInt64, ratePerSecond: UInt64, now: UInt64) {
        self.capacity = max(capacity, 1)
        self.ratePerSecond = max(ratePerSecond, 1)
        self.tokens = self.capacity
        self.lastRefill = now
    }

    private mutating func refill(_ now: UInt64) {
        guard now > lastRefill else { return }
        let elapsed = now - lastRefill
        // tokens = elapsed * rate / 1e9 in 128 bits, exact for any elapsed time and rate (a
        // quotient beyond 64 bits is more than any bucket holds).
        let product = elapsed.multipliedFullWidth(by: ratePerSecond)
        let billion: UInt64 = 1_000_000_000
        let added = product.high >= billion ? UInt64.max : billion.dividingFullWidth(product).quotient
        guard added > 0 else { return }
        add(added)
        // Keep the remainder: advance the clock only by the time the added tokens took
        // (added * 1e9 / rate <= elapsed, so the quotient fits and the sum stays <= now).
        lastRefill = added >= capacity ? now
            : lastRefill + ratePerSecond.dividingFullWidth(added.multipliedFullWidth(by: billion)).quotient
    }

    /// Takes `n` tokens if they are there. A request larger than the whole bucket is allowed
    /// once the bucket is full (and empties it), so large requests are slowed, never refused.
    public mutating func take(_ n: UInt64, now: UInt64) -> Bool {
        refill(now)
        let need = min(n, capacity)
        guard tokens >= need else { return false }
        tokens -= need
        return true
    }

    /// Gives back `n` tokens taken for work that did not happen (never above capacity).
    public mutating func refund(_ n: UInt64) {
        add(n)
    }

    /// `n` more tokens, at most a full bucket (never wraps, whatever `n` and the capacity).
    private mutating func add(_ n: UInt64) {
        tokens = n >= capacity - tokens ? capacity : tokens + n
    }

    /// The longest wait `delay` reports: a request then simply asks again. Keeps the caller's
    /// `now + delay` far from overflow whatever the bucket's capacity and rate.
    public static let maxDelayNanoseconds: UInt64 = 3600 * 1_000_000_000

    /// Nanoseconds until `n` tokens (at most a full bucket) will be there.
    public mutating func delay(for n: UInt64, now: UInt64) -> UInt64 {
        refill(now)
        let need = min(n, capacity)
        guard tokens < need else { return 0 }
        let missing = need - tokens
        // ceil(missing * 1e9 / rate) in 128 bits: with a capacity above 2^64 / 1e9 (about 18 GB)
        // the product does not fit in 64.
        let product = missing.multipliedFullWidth(by: 1_000_000_000)
        let (low, carry) = product.low.addingReportingOverflow(ratePerSecond - 1)
        let high = product.high + (carry ? 1 : 0)   // product.high < 1e9: cannot overflow
        guard high < ratePerSecond else { return Self.maxDelayNanoseconds }
        return min(Self.maxDelayNanoseconds, ratePerSecond.dividingFullWidth((high, low)).quotient)
    }
}

/// Per-device limits on operations and bytes per second. A guest that exceeds them is slowed:
/// its requests wait in its own queue until the buckets refill; none is failed.
public struct RateLimiter: Equatable, Sendable {
    public var operations: TokenBucket?
    public var bytes: TokenBucket?

    public init(operations: TokenBucket? = nil, bytes: TokenBucket? = nil) {
        self.operations = operations
        self.bytes = bytes
    }

    /// Whether a request of `byteCount` bytes may go now; if so, its tokens are taken.
    public mutating func admit(bytes byteCount: UInt64, now: UInt64) -> Bool {
        var ops = operations, data = bytes
        guard ops?.delay(for: 1, now: now) ?? 0 == 0, data?.delay(for: byteCount, now: now) ?? 0 == 0 else { return false }
        _ = ops?.take(1, now: now)
        _ = data?.take(byteCount, now: now)
        operations = ops
        bytes = data
        return true
    }

    /// Returns tokens `admit` took for work that turned out smaller (`bytes` not used) or did
    /// not happen at all (`operation`).
    public mutating func refund(bytes byteCount: UInt64, operation: Bool) {
        if operation { operations?.refund(1) }
        bytes?.refund(byteCount)
    }

    /// Nanoseconds until a request of `byteCount` bytes would be admitted.
    public mutating func delay(bytes byteCount: UInt64, now: UInt64) -> UInt64 {
        max(operations?.delay(for: 1, now: now) ?? 0, bytes?.delay(for: byteCount, now: now) ?? 0)
    }
}

/// The rate limit of one queue, which the device passes to its model with every call that may
/// serve the queue: the buckets, the time of the current pass, and how long the queue must wait
/// when the buckets ran dry. `admit` is the one admission routine every device uses.
///
/// Not thread-safe: used by one device thread at a time, under the device's own lock.
public final class QueueLimiter: @unchecked Sendable {
    public private(set) var limiter: RateLimiter
    /// Monotonic nanoseconds of the current pass.
    public private(set) var now: UInt64 = 0
    /// Set when a request was held back: nanoseconds until it can go.
    public private(set) var deferredFor: UInt64?

    public init(_ limiter: RateLimiter) { self.limiter = limiter }

    /// A pass over the queue begins at `now`: no request is held back yet.
    public func start(at now: UInt64) {
        self.now = now
        deferredFor = nil
    }

    /// The time moves on without a new pass (a deferral already recorded stands).
    public func advance(to now: UInt64) { self.now = now }

    /// Whether a request of `bytes` bytes (and one operation) may go now; if so its tokens are
    /// taken, if not the queue is deferred until the buckets will cover it. The caller leaves
    /// the request where it was (in the ring, or in the back end) and stops the pass.
    public func admit(bytes: UInt64) -> Bool {
        if limiter.admit(bytes: bytes, now: now) { return true }
        deferredFor = max(1, limiter.delay(bytes: bytes, now: now))
        return false
    }

    /// Gives back tokens `admit` took for work that turned out smaller (`bytes` not used) or did
    /// not happen at all (`operation`).
    public func refund(bytes: UInt64, operation: Bool) {
        limiter.refund(bytes: bytes, operation: operation)
    }
}
