// Bulkhead guest SDK — the C library symbols Embedded Swift's standard library may
// reference, beyond those in entry.S (memcpy, memmove, memset, memcmp, posix_memalign,
// free). With --gc-sections only the ones a program actually uses are linked.

/// Embedded Swift's `print` writes through `putchar`. One hypercall per byte: slow,
/// so prefer `Console`; provided so that `print` links.
@_cdecl("putchar")
public func putchar(_ c: CInt) -> CInt {
    var byte = UInt8(truncatingIfNeeded: c)
    _ = withUnsafeBytes(of: &byte) { Console.write($0) }
    return c
}

/// Used by the standard library's hashing seed (Set/Dictionary): random hypercall.
@_cdecl("arc4random_buf")
public func arc4random_buf(_ buffer: UnsafeMutableRawPointer?, _ count: Int) {
    guard let buffer, count > 0 else { return }
    do throws(HypercallError) {
        try random(into: UnsafeMutableRawBufferPointer(start: buffer, count: count))
    } catch {
        trap()
    }
}

/// `ceil`, used by Dictionary/Set to size their hash tables. Plain Swift: no SSE4.1
/// `roundsd`, no call back into the standard library's rounding (which would call `ceil`).
@_cdecl("ceil")
public func ceil(_ x: Double) -> Double {
    // NaN, infinities and values of magnitude >= 2^52 are already integers.
    guard x.magnitude < 4_503_599_627_370_496.0 else { return x }
    let truncated = Double(Int64(x))  // rounds toward zero; in range by the guard
    let result = truncated < x ? truncated + 1 : truncated
    // ceil(-0.5) is -0.0; keep the sign of zero.
    return result == 0 && x.sign == .minus ? -0.0 : result
}
