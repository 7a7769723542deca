import Testing
@testable import Devices

@Suite struct RateLimiterTests {
    let second: UInt64 = 1_000_000_000

    @Test func bucketRefillsAtItsRate() {
        var b = TokenBucket(capacity: 10, ratePerSecond: 10, now: 0)
        for _ in 0..<10 { let ok = b.take(1, now: 0); #expect(ok) }
        do { let ok = !b.take(1, now: 0); #expect(ok) }
        do { let ok = b.delay(for: 1, now: 0) == second / 10; #expect(ok) }
        do { let ok = !b.take(1, now: second / 20); #expect(ok) }
        do { let ok = b.take(1, now: second / 10); #expect(ok) }
        do { let ok = b.take(5, now: second / 10 + second / 2); #expect(ok) }
        #expect(b.tokens == 0)
    }

    @Test func neverOverfillsAndSurvivesHugeGaps() {
        var b = TokenBucket(capacity: 5, ratePerSecond: UInt64.max / 2, now: 0)
        _ = b.take(5, now: 0)
        do { let ok = b.take(5, now: UInt64.max); #expect(ok) }
        #expect(b.tokens == 0)
        var c = TokenBucket(capacity: 3, ratePerSecond: 1, now: 0)
        _ = c.take(3, now: 0)
        _ = c.take(0, now: 100 * second)
        #expect(c.tokens == 3)
    }

    @Test func oversizeRequestsAreSlowedNotRefused() {
        var b = TokenBucket(capacity: 100, ratePerSecond: 100, now: 0)
        do { let ok = b.take(1000, now: 0); #expect(ok) }       // a full bucket admits it
        do { let ok = !b.take(1000, now: second / 2); #expect(ok) }
        do { let ok = b.delay(for: 1000, now: second / 2) == second / 2; #expect(ok) }
        do { let ok = b.take(1000, now: second); #expect(ok) }
    }

    @Test func limiterNeedsBothBuckets() {
        var l = RateLimiter(operations: TokenBucket(capacity: 2, ratePerSecond: 2, now: 0),
                            bytes: TokenBucket(capacity: 4096, ratePerSecond: 4096, now: 0))
        do { let ok = l.admit(bytes: 4096, now: 0); #expect(ok) }
        do { let ok = !l.admit(bytes: 1, now: 0); #expect(ok) }          // bytes exhausted, ops left
        #expect(l.operations?.tokens == 1)           // a refused request takes nothing
        do { let ok = l.delay(bytes: 512, now: 0) == second / 8; #expect(ok) }
        do { let ok = l.admit(bytes: 512, now: second / 8); #expect(ok) }
        do { let ok = !l.admit(bytes: 0, now: second / 8); #expect(ok) } // ops exhausted
        var open = RateLimiter()
        do { let ok = open.admit(bytes: UInt64.max, now: 0); #expect(ok) }
    }

    /// The largest rates the options take (`--disk-bytes-limit 18446744073709551615`): nothing
    /// traps, the bucket never wraps, and a delay is always small enough to add to a clock.
    @Test func maximumRatesNeitherTrapNorWrap() {
        var b = TokenBucket(capacity: UInt64.max, ratePerSecond: UInt64.max, now: 0)
        do { let ok = b.take(UInt64.max, now: 0); #expect(ok) }
        #expect(b.tokens == 0)
        do { let ok = b.delay(for: UInt64.max, now: 0) == 1_000_000_000; #expect(ok) }   // 2^64 - 1 tokens at 2^64 - 1 a second
        do { let d = b.delay(for: UInt64.max, now: second / 2); let ok = d >= second / 2 && d <= second / 2 + 1; #expect(ok) }
        do { let ok = b.tokens >= UInt64.max / 2 - 1 && b.tokens <= UInt64.max / 2 + 1; #expect(ok) }   // exactly half refilled
        do { let ok = b.take(4096, now: UInt64.max); #expect(ok) }
        #expect(b.tokens == UInt64.max - 4096)
        _ = b.take(0, now: UInt64.max)
        b.refund(UInt64.max)
        #expect(b.tokens == UInt64.max)
        var l = RateLimiter(operations: TokenBucket(capacity: UInt64.max, ratePerSecond: UInt64.max, now: 5),
                            bytes: TokenBucket(capacity: UInt64.max, ratePerSecond: UInt64.max, now: 5))
        for i: UInt64 in 0..<1000 {
            let ok = l.admit(bytes: 1 << 20, now: 5 + i * 1000)
            #expect(ok)
        }
        #expect(l.delay(bytes: UInt64.max, now: UInt64.max) == 0)
        l.refund(bytes: UInt64.max, operation: true)
        // A huge bucket with a slow refill: the delay is capped, never an overflow.
        var slow = TokenBucket(capacity: UInt64.max, ratePerSecond: 1, now: 0)
        _ = slow.take(UInt64.max, now: 0)
        do { let ok = slow.delay(for: UInt64.max, now: 0) == TokenBucket.maxDelayNanoseconds; #expect(ok) }
        var mid = TokenBucket(capacity: 1 << 40, ratePerSecond: 1 << 40, now: 0)
        _ = mid.take(1 << 40, now: 0)
        do { let ok = mid.delay(for: 1 << 40, now: 0) == second; #expect(ok) }   // 2^40 * 1e9 does not fit in 64 bits
    }

    /// Throughput under a limiter converges to the configured rate.
    @Test func sustainedRateMatchesConfiguration() {
        var l = RateLimiter(bytes: TokenBucket(capacity: 64 * 1024, ratePerSecond: 1 << 20, now: 0))
        var now: UInt64 = 0, served: UInt64 = 0
        while now < 10 * second {
            if l.admit(bytes: 4096, now: now) { served += 4096 } else { now += l.delay(bytes: 4096, now: now) }
        }
        let rate = Double(served) / 10
        #expect(rate > 0.99 * Double(1 << 20) && rate < 1.02 * Double(1 << 20) + 6554)
    }
}

/// The one admission routine every device uses: a request the buckets cannot cover is refused
/// and the queue deferred until they will; a new pass clears the deferral; refunds never exceed
/// the bucket; no number, however large, traps.
@Suite struct QueueLimiterTests {
    @Test func admissionDefersAndANewPassClears() {
        let limit = QueueLimiter(RateLimiter(operations: TokenBucket(capacity: 2, ratePerSecond: 2, now: 0)))
        limit.start(at: 0)
        #expect(limit.admit(bytes: 1) && limit.admit(bytes: 1))
        #expect(!limit.admit(bytes: 1))
        #expect(limit.deferredFor == 500_000_000)
        limit.advance(to: 100)
        #expect(limit.deferredFor == 500_000_000)       // the time moves; the deferral stands
        limit.start(at: 500_000_000)
        #expect(limit.deferredFor == nil)
        #expect(limit.admit(bytes: 1) && !limit.admit(bytes: 1))
    }

    @Test func refundsGiveBackWhatWasNotUsed() {
        let limit = QueueLimiter(RateLimiter(bytes: TokenBucket(capacity: 100, ratePerSecond: 100, now: 0)))
        limit.start(at: 0)
        #expect(limit.admit(bytes: 100))
        #expect(!limit.admit(bytes: 1))
        limit.refund(bytes: 60, operation: false)
        #expect(limit.admit(bytes: 60) && !limit.admit(bytes: 1))
        limit.refund(bytes: UInt64.max, operation: true)   // never above a full bucket
        #expect(limit.limiter.bytes?.tokens == 100)
    }

    @Test func hostileSizesAndClocksNeverTrap() {
        let limit = QueueLimiter(RateLimiter(operations: TokenBucket(capacity: UInt64.max, ratePerSecond: UInt64.max, now: 0),
                                             bytes: TokenBucket(capacity: 1, ratePerSecond: 1, now: UInt64.max)))
        for now in [0, 1, UInt64.max / 2, UInt64.max] {
            limit.start(at: now)
            for bytes in [0, 1, UInt64.max] {
                if !limit.admit(bytes: bytes) {
                    #expect((limit.deferredFor ?? 0) >= 1 && (limit.deferredFor ?? 0) <= TokenBucket.maxDelayNanoseconds)
                }
                limit.refund(bytes: bytes, operation: true)
            }
        }
    }
}
