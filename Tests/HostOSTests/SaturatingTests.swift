import Testing
@testable import HostOS

@Suite struct SaturatingTests {
    @Test func doublesSaturate() {
        #expect(Saturating.uint64(.nan) == 0)
        #expect(Saturating.uint64(-1) == 0)
        #expect(Saturating.uint64(-.infinity) == 0)
        #expect(Saturating.uint64(0.9) == 0)
        #expect(Saturating.uint64(42.7) == 42)
        #expect(Saturating.uint64(18_446_744_073_709_549_568) == 18_446_744_073_709_549_568)  // largest Double below 2^64
        #expect(Saturating.uint64(18_446_744_073_709_551_616) == .max)                        // 2^64
        #expect(Saturating.uint64(1e300) == .max)
        #expect(Saturating.uint64(.infinity) == .max)
        #expect(Saturating.nanoseconds(seconds: 1.5) == 1_500_000_000)
        #expect(Saturating.nanoseconds(seconds: 1e11) == .max)
        #expect(Saturating.nanoseconds(seconds: 18_446_744_073) > 18_446_744_072_000_000_000)   // not exact as a Double
        #expect(Saturating.nanoseconds(seconds: 18_446_744_073) < .max)
        #expect(Saturating.nanoseconds(seconds: 18_446_744_074) == .max)
        #expect(Saturating.nanoseconds(seconds: 1e-300) == 0)
        #expect(Saturating.milliseconds(seconds: 0.25) == 250)
        #expect(Saturating.milliseconds(seconds: 1e300) == .max)
    }

    @Test func sumsAndProductsSaturate() {
        #expect(Saturating.adding(1, 2) == 3)
        #expect(Saturating.adding(.max, 1) == .max)
        #expect(Saturating.adding(.max - 1, 1) == .max)
        #expect(Saturating.multiplying(3, 4) == 12)
        #expect(Saturating.multiplying(.max / 2, 3) == .max)
        #expect(Saturating.multiplying(0, .max) == 0)
    }

    @Test func pollTimeoutsRoundUpAndClamp() {
        #expect(Saturating.pollMilliseconds(nanoseconds: 0) == 0)
        #expect(Saturating.pollMilliseconds(nanoseconds: 1) == 1)
        #expect(Saturating.pollMilliseconds(nanoseconds: 1_000_000) == 1)
        #expect(Saturating.pollMilliseconds(nanoseconds: 1_000_001) == 2)
        #expect(Saturating.pollMilliseconds(nanoseconds: .max) == .max)   // was 0: `&+ 999_999` wrapped
        #expect(Saturating.pollMilliseconds(nanoseconds: .max - 5) == .max)
    }
}
