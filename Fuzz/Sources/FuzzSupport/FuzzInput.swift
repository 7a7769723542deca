/// The fuzzer's input as a stream of little-endian integers. Reads past the end yield zeros, so
/// every input decodes to something and short inputs are still meaningful.
public struct FuzzInput {
    public let bytes: [UInt8]
    public private(set) var position = 0

    public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    }

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var isEmpty: Bool { position >= bytes.count }
    public var remaining: Int { max(0, bytes.count - position) }

    public mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    public mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }

    public mutating func take(_ n: Int) -> [UInt8] {
        let n = max(0, min(n, remaining))
        defer { position += n }
        return Array(bytes[position..<position + n])
    }
}


#if canImport(Glibc)
import Glibc
#endif

/// FUZZ_VERBOSE=1 makes the targets narrate what each input does (for checking seeds by hand:
/// `FUZZ_VERBOSE=1 .build-fuzz/debug/FuzzELF corpus/FuzzELF/*`).
public let fuzzVerbose: Bool = getenv("FUZZ_VERBOSE").map { String(cString: $0) == "1" } ?? false

@inline(__always)
public func trace(_ message: @autoclosure () -> String) {
    if fuzzVerbose { print(message()) }
}
