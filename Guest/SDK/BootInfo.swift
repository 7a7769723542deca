// Bulkhead guest SDK — the boot-information block (docs/guest-abi.md).
//
// Read with raw unaligned loads at the address the VMM passed in rdi. Nothing is
// cached: every accessor reads guest memory again (the block is read-only).

@_silgen_name("bh_boot_info")
func _bh_boot_info() -> UInt64

/// Type of a memory-map entry.
public enum MemoryType: UInt32 {
    case freeRAM = 1
    case programImage = 2
    case stack = 3
    case bootInformation = 4
    case reserved = 5
}

/// One memory-map entry (24 bytes in the block).
public struct MemoryRegion {
    public var base: UInt64
    public var size: UInt64
    /// Raw type (see `MemoryType`; unknown values are kept as they are).
    public var rawType: UInt32
    public var flags: UInt32

    public var type: MemoryType? { MemoryType(rawValue: rawType) }
    /// One past the last byte (saturating).
    public var end: UInt64 {
        let (sum, overflow) = base.addingReportingOverflow(size)
        return overflow ? UInt64.max : sum
    }

    public func contains(_ address: UInt64) -> Bool {
        address >= base && address < end
    }
}

/// A view of the boot-information block.
public struct BootInfo {
    public static let magic: UInt64 = 0x3154_4F4F_424B_4842  // "BHKBOOT1"
    public static let version: UInt32 = 1
    /// Where ABI version 1 puts the block.
    public static let defaultAddress: UInt64 = 0x0020_0000
    /// Size of the block's page.
    public static let blockSize: UInt64 = 0x1000
    static let memoryRegionSize: UInt64 = 24

    /// Address of the block.
    public let address: UInt64
    let base: UnsafeRawPointer

    /// Validates the block at `address` (magic and version). Returns nil for address 0
    /// (a loader that passes no boot information) without touching memory.
    public init?(address: UInt64) {
        guard address != 0, address & 7 == 0,
              let pointer = UnsafeRawPointer(bitPattern: UInt(address)) else { return nil }
        guard pointer.loadUnaligned(fromByteOffset: 0, as: UInt64.self) == BootInfo.magic,
              pointer.loadUnaligned(fromByteOffset: 8, as: UInt32.self) == BootInfo.version
        else { return nil }
        self.address = address
        self.base = pointer
    }

    /// The block `_start` was given (the rdi of the first vCPU to start), if valid.
    public static var current: BootInfo? { BootInfo(address: _bh_boot_info()) }

    @inline(__always)
    func u64(_ offset: Int) -> UInt64 { base.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
    @inline(__always)
    func u32(_ offset: Int) -> UInt32 { base.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }

    public var abiVersion: UInt32 { u32(8) }
    public var vcpuCount: Int { Int(u32(12)) }
    public var ramSize: UInt64 { u64(16) }
    public var hypercallPage: UInt64 { u64(24) }
    public var commandLineAddress: UInt64 { u64(32) }
    public var commandLineLength: Int {
        let length = u64(40)
        return length > UInt64(Int.max) ? 0 : Int(length)
    }
    public var memoryMapAddress: UInt64 { u64(48) }
    public var memoryMapCount: Int {
        let count = u64(56)
        return count > 4096 ? 0 : Int(count)  // sanity bound: a map never has that many entries
    }
    public var deviceListAddress: UInt64 { u64(64) }
    public var deviceCount: Int {
        let count = u64(72)
        return count > 4096 ? 0 : Int(count)
    }

    /// The command line (UTF-8, without the NUL). Empty if the VMM gave none.
    public var commandLine: UnsafeRawBufferPointer {
        let length = commandLineLength
        guard length > 0, let start = UnsafeRawPointer(bitPattern: UInt(commandLineAddress)) else {
            return UnsafeRawBufferPointer(start: nil, count: 0)
        }
        return UnsafeRawBufferPointer(start: start, count: length)
    }

    /// Memory-map entry `index` (0 ..< memoryMapCount).
    public func memoryRegion(_ index: Int) -> MemoryRegion {
        precondition(index >= 0 && index < memoryMapCount)
        let entry = UnsafeRawPointer(bitPattern: UInt(memoryMapAddress))!
            + index * Int(BootInfo.memoryRegionSize)
        return MemoryRegion(
            base: entry.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
            size: entry.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
            rawType: entry.loadUnaligned(fromByteOffset: 16, as: UInt32.self),
            flags: entry.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
    }

    /// Calls `body` with each memory-map entry, in order.
    public func forEachMemoryRegion(_ body: (MemoryRegion) -> Void) {
        var index = 0
        while index < memoryMapCount {
            body(memoryRegion(index))
            index += 1
        }
    }

    /// The first region of `type` that contains `address`.
    public func region(containing address: UInt64, type: MemoryType) -> MemoryRegion? {
        var found: MemoryRegion? = nil
        forEachMemoryRegion { region in
            if found == nil && region.rawType == type.rawValue && region.contains(address) {
                found = region
            }
        }
        return found
    }

    /// The largest free-RAM region.
    public var largestFreeRegion: MemoryRegion? {
        var best: MemoryRegion? = nil
        forEachMemoryRegion { region in
            if region.rawType == MemoryType.freeRAM.rawValue && region.size > (best?.size ?? 0) {
                best = region
            }
        }
        return best
    }
}

// MARK: - Command-line helpers

extension UnsafeRawBufferPointer {
    /// The bytes with leading and trailing ASCII spaces/tabs/newlines removed.
    public var trimmingASCIIWhitespace: UnsafeRawBufferPointer {
        guard let base = baseAddress else { return self }
        var start = 0
        var end = count
        func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0a || b == 0x0d }
        while start < end && isSpace(self[start]) { start += 1 }
        while end > start && isSpace(self[end - 1]) { end -= 1 }
        return UnsafeRawBufferPointer(start: base + start, count: end - start)
    }

    /// Parses the bytes (surrounding whitespace ignored) as an unsigned decimal number.
    /// nil if empty, not all digits, or larger than UInt64.max.
    public func parseDecimal() -> UInt64? {
        let digits = trimmingASCIIWhitespace
        guard digits.count > 0 else { return nil }
        var value: UInt64 = 0
        for b in digits {
            guard b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") else { return nil }
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(b &- UInt8(ascii: "0")))
            if o1 || o2 { return nil }
            value = sum
        }
        return value
    }

    /// Calls `body` with each whitespace-separated word, in order, until it returns false.
    public func forEachWord(_ body: (UnsafeRawBufferPointer) -> Bool) {
        guard let base = baseAddress else { return }
        func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0a || b == 0x0d }
        var i = 0
        while i < count {
            while i < count && isSpace(self[i]) { i += 1 }
            let start = i
            while i < count && !isSpace(self[i]) { i += 1 }
            if i > start && !body(UnsafeRawBufferPointer(start: base + start, count: i - start)) { return }
        }
    }

    /// Word `index` (0-based) of the whitespace-separated words, or nil.
    public func word(_ index: Int) -> UnsafeRawBufferPointer? {
        var found: UnsafeRawBufferPointer? = nil
        var n = 0
        forEachWord { word in
            if n == index { found = word; return false }
            n += 1
            return true
        }
        return found
    }

    /// True when one of the whitespace-separated words equals `string`.
    public func containsWord(_ string: StaticString) -> Bool {
        var found = false
        forEachWord { word in
            if word.equals(string) { found = true; return false }
            return true
        }
        return found
    }

    /// The value of the first whitespace-separated `key=value` word whose key equals `key`
    /// (the bytes after the `=`, possibly empty), or nil if there is none.
    public func value(of key: StaticString) -> UnsafeRawBufferPointer? {
        let keyLength = key.utf8CodeUnitCount
        var found: UnsafeRawBufferPointer? = nil
        forEachWord { word in
            guard word.count > keyLength, word[keyLength] == UInt8(ascii: "="),
                  UnsafeRawBufferPointer(start: word.baseAddress, count: keyLength).equals(key) else { return true }
            found = UnsafeRawBufferPointer(start: word.baseAddress! + keyLength + 1, count: word.count - keyLength - 1)
            return false
        }
        return found
    }

    /// True when the bytes equal the string literal.
    public func equals(_ string: StaticString) -> Bool {
        guard count == string.utf8CodeUnitCount else { return false }
        var i = 0
        while i < count {
            if self[i] != string.utf8Start[i] { return false }
            i += 1
        }
        return true
    }
}
