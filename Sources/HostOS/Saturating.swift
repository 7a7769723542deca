/// Conversions and sums on numbers that come from an operator, a guest or the other side of the
/// worker protocol: they saturate instead of trapping. A `UInt64(x)` of a Double that is NaN,
/// negative or too large, or a `+`/`*` that overflows, kills the process with SIGILL; a
/// deadline that saturates at `UInt64.max` is merely never reached. Pure.
public enum Saturating {
    /// `x` rounded toward zero: NaN and anything below 0 give 0, anything at or above 2^64 gives
    /// `UInt64.max`.
    public static func uint64(_ x: Double) -> UInt64 {
        guard x > 0 else { return 0 }                                   // also NaN
        guard x < 18_446_744_073_709_551_616.0 else { return .max }     // 2^64, exact as a Double
        return UInt64(x)
    }

    /// `seconds` as nanoseconds (see `uint64`).
    public static func nanoseconds(seconds: Double) -> UInt64 { uint64(seconds * 1e9) }

    /// `seconds` as milliseconds (see `uint64`).
    public static func milliseconds(seconds: Double) -> UInt64 { uint64(seconds * 1e3) }

    /// `a + b`, or `UInt64.max` when that overflows.
    public static func adding(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }

    /// `a * b`, or `UInt64.max` when that overflows.
    public static func multiplying(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (product, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? .max : product
    }

    /// Whole milliseconds, rounded up, for a poll(2) timeout: at most `Int32.max` (about 24 days;
    /// callers loop until their deadline).
    public static func pollMilliseconds(nanoseconds: UInt64) -> Int32 {
        let ms = nanoseconds / 1_000_000 + (nanoseconds % 1_000_000 == 0 ? 0 : 1)
        return Int32(clamping: ms)
    }
}
