// Bulkhead guest SDK — console output over the console_write hypercall.
//
// Nothing here allocates: numbers are formatted into stack buffers. Each `write`
// is at least one hypercall; `Console.line { ... }` assembles a whole line on the
// stack and sends it with one call (lines from different vCPUs then never interleave).

public enum Console {
    /// Writes raw bytes (split into ABI-sized chunks). Returns bytes written, or the
    /// first negative hypercall result.
    @discardableResult
    public static func write(_ bytes: UnsafeRawBufferPointer) -> Int64 {
        guard let base = bytes.baseAddress else { return 0 }
        var done = 0
        while done < bytes.count {
            let chunk = min(bytes.count - done, Int(Hypercall.maxConsoleWrite))
            let raw = Hypercall.consoleWrite(UInt64(UInt(bitPattern: base + done)), UInt64(chunk))
            if raw < 0 { return raw }
            if raw == 0 { break }
            done += Int(raw)
        }
        return Int64(done)
    }

    /// Writes a string literal.
    @discardableResult
    public static func write(_ string: StaticString) -> Int64 {
        write(UnsafeRawBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
    }

    /// Writes a string literal followed by a newline (one hypercall for short strings).
    public static func writeLine(_ string: StaticString) {
        line { $0.append(string) }
    }

    /// Writes a signed decimal number.
    public static func write<T: FixedWidthInteger>(decimal value: T) {
        line(newline: false) { $0.append(decimal: value) }
    }

    /// Writes `0x` and the hexadecimal digits of `value` (at least `minDigits`).
    public static func write<T: FixedWidthInteger>(hex value: T, minDigits: Int = 1) {
        line(newline: false) { $0.append(hex: value, minDigits: minDigits) }
    }

    /// Writes bytes as lowercase hex pairs (`de ad be ef` with `separator: true`).
    public static func write(hexBytes bytes: UnsafeRawBufferPointer, separator: Bool = true) {
        var index = 0
        while index < bytes.count {
            let end = min(bytes.count, index + 100)
            line(newline: false) { out in
                for i in index..<end {
                    if separator && i != 0 { out.append(byte: 0x20) }
                    out.append(hexByte: bytes[i])
                }
            }
            index = end
        }
    }

    /// Builds one line (up to `LineWriter.capacity` bytes; longer content is truncated,
    /// marked with `...`) on the stack and writes it with a single hypercall.
    /// A trailing newline is added unless `newline` is false.
    @discardableResult
    public static func line(newline: Bool = true, _ body: (inout LineWriter) -> Void) -> Int64 {
        withUnsafeTemporaryAllocation(byteCount: LineWriter.capacity + 1, alignment: 8) { storage in
            var writer = LineWriter(storage.baseAddress!)
            body(&writer)
            if newline { writer.finishLine() }
            return write(UnsafeRawBufferPointer(start: storage.baseAddress, count: writer.count))
        }
    }
}

/// Formats text into a fixed stack buffer (see `Console.line`).
public struct LineWriter {
    public static let capacity = 512

    let base: UnsafeMutableRawPointer
    /// Bytes written so far.
    public private(set) var count = 0
    /// True once something did not fit.
    public private(set) var truncated = false

    init(_ base: UnsafeMutableRawPointer) { self.base = base }

    /// Appends one byte.
    public mutating func append(byte: UInt8) {
        if count < LineWriter.capacity - 4 {
            base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
            count += 1
        } else if !truncated {
            truncated = true
            for _ in 0..<3 {
                base.storeBytes(of: UInt8(ascii: "."), toByteOffset: count, as: UInt8.self)
                count += 1
            }
        }
    }

    /// Appends raw bytes.
    public mutating func append(bytes: UnsafeRawBufferPointer) {
        for b in bytes { append(byte: b) }
    }

    /// Appends a string literal.
    public mutating func append(_ string: StaticString) {
        append(bytes: UnsafeRawBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
    }

    /// Appends bytes, escaping anything outside printable ASCII as `\xNN` (for untrusted text).
    public mutating func append(escaping bytes: UnsafeRawBufferPointer) {
        for b in bytes {
            if b >= 0x20 && b < 0x7f && b != UInt8(ascii: "\\") {
                append(byte: b)
            } else {
                append(byte: UInt8(ascii: "\\"))
                append(byte: UInt8(ascii: "x"))
                append(hexByte: b)
            }
        }
    }

    /// Appends a decimal number (signed types print a leading `-`).
    public mutating func append<T: FixedWidthInteger>(decimal value: T) {
        var magnitude: UInt64
        if T.isSigned && value < 0 {
            append(byte: UInt8(ascii: "-"))
            // Sign-extended two's complement negation: correct even for T.min.
            magnitude = 0 &- UInt64(truncatingIfNeeded: value)
        } else {
            magnitude = UInt64(truncatingIfNeeded: value)
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: enough for 20 digits
        withUnsafeMutableBytes(of: &digits) { buffer in
            var n = 0
            repeat {
                buffer[n] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
                n += 1
            } while magnitude != 0
            while n > 0 {
                n -= 1
                append(byte: buffer[n])
            }
        }
    }

    /// Appends `0x` and hex digits (at least `minDigits`, two's complement for negatives).
    public mutating func append<T: FixedWidthInteger>(hex value: T, minDigits: Int = 1) {
        let bits = UInt64(truncatingIfNeeded: value)
            & (T.bitWidth >= 64 ? UInt64.max : (UInt64(1) << UInt64(T.bitWidth)) &- 1)
        append(byte: UInt8(ascii: "0"))
        append(byte: UInt8(ascii: "x"))
        var digits = 16
        while digits > 1 && digits > minDigits && (bits >> UInt64((digits - 1) * 4)) == 0 {
            digits -= 1
        }
        while digits > 0 {
            digits -= 1
            append(byte: hexDigit(UInt8(truncatingIfNeeded: bits >> UInt64(digits * 4)) & 0xf))
        }
    }

    /// Appends two lowercase hex digits.
    public mutating func append(hexByte b: UInt8) {
        append(byte: hexDigit(b >> 4))
        append(byte: hexDigit(b & 0xf))
    }

    /// Appends `ok` or `FAIL`.
    public mutating func append(ok: Bool) {
        if ok { append("ok") } else { append("FAIL") }
    }

    mutating func finishLine() {
        // There is always room: append(byte:) keeps 4 bytes spare.
        base.storeBytes(of: UInt8(ascii: "\n"), toByteOffset: count, as: UInt8.self)
        count += 1
    }
}

@inline(__always)
func hexDigit(_ nibble: UInt8) -> UInt8 {
    nibble < 10 ? UInt8(ascii: "0") &+ nibble : UInt8(ascii: "a") &+ (nibble &- 10)
}
