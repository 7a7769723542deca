/// What the virtio code needs of guest memory: bounds-checked copies, nothing more.
///
/// The VMM conforms `KVM.GuestMemory` to this; tests and fuzzers use a byte array. The guest can
/// change its memory at any time, so callers copy data out once and parse the copy.
public protocol GuestRAM: AnyObject {
    /// Copies `count` bytes out, or nil when the range is not entirely guest RAM.
    func copyOut(at address: UInt64, count: Int) -> [UInt8]?
    /// Copies `bytes` in; false when the range is not entirely guest RAM (nothing is written).
    func copyIn(_ bytes: [UInt8], at address: UInt64) -> Bool
    /// Whether `[address, address+length)` is entirely guest RAM.
    func isRAM(_ address: UInt64, length: UInt64) -> Bool
    /// Whether the device may write all of `[address, address+length)` (by default: it is RAM).
    func isWritable(_ address: UInt64, length: UInt64) -> Bool
}

extension GuestRAM {
    public func isWritable(_ address: UInt64, length: UInt64) -> Bool { isRAM(address, length: length) }

    public func u16(at a: UInt64) -> UInt16? {
        guard let b = copyOut(at: a, count: 2) else { return nil }
        return UInt16(b[0]) | UInt16(b[1]) << 8
    }

    public func store(_ v: UInt16, at a: UInt64) -> Bool { copyIn([UInt8(v & 0xff), UInt8(v >> 8)], at: a) }

    public func store(_ v: UInt32, at a: UInt64) -> Bool {
        copyIn([UInt8(v & 0xff), UInt8((v >> 8) & 0xff), UInt8((v >> 16) & 0xff), UInt8(v >> 24)], at: a)
    }
}

/// A plain byte array posing as guest RAM at `base` (tests, fuzzers, benchmarks).
public final class ArrayRAM: GuestRAM, @unchecked Sendable {
    // Sendable: used by one thread at a time in tests and fuzzers.
    public let base: UInt64
    public var bytes: [UInt8]

    public init(base: UInt64 = 0, size: Int) {
        self.base = base
        self.bytes = [UInt8](repeating: 0, count: size)
    }

    func range(_ address: UInt64, _ length: UInt64) -> Range<Int>? {
        let (end, o) = address.addingReportingOverflow(length)
        guard !o, address >= base, end <= base + UInt64(bytes.count) else { return nil }
        return Int(address - base)..<Int(end - base)
    }

    public func copyOut(at address: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, let r = range(address, UInt64(count)) else { return nil }
        return Array(bytes[r])
    }

    public func copyIn(_ data: [UInt8], at address: UInt64) -> Bool {
        guard let r = range(address, UInt64(data.count)) else { return false }
        bytes.replaceSubrange(r, with: data)
        return true
    }

    public func isRAM(_ address: UInt64, length: UInt64) -> Bool { range(address, length) != nil }
}
