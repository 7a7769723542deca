/// Access rights of a mapping in the guest's page tables.
public struct PageFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let user = PageFlags(rawValue: 1 << 0)
    public static let writable = PageFlags(rawValue: 1 << 1)
    public static let executable = PageFlags(rawValue: 1 << 2)
}

public enum PageTableError: Error, Equatable, CustomStringConvertible, Sendable {
    case misaligned(UInt64)
    case overlap(UInt64)
    case poolExhausted(pages: Int)
    case nonCanonical(UInt64)
    case physicalOutOfRange(UInt64)

    public var description: String {
        switch self {
        case .misaligned(let a): return "mapping at 0x\(String(a, radix: 16)) is not 4 KiB aligned"
        case .overlap(let a): return "address 0x\(String(a, radix: 16)) is mapped twice"
        case .poolExhausted(let n): return "the guest's page tables need more than the \(n) pages reserved for them"
        case .nonCanonical(let a): return "address 0x\(String(a, radix: 16)) is beyond the 47-bit lower half"
        case .physicalOutOfRange(let a): return "physical address 0x\(String(a, radix: 16)) is beyond the 52-bit physical address space"
        }
    }
}

/// Builds x86-64 4-level page tables (identity or offset mappings) into a pool of guest pages.
///
/// Pure: produces the bytes of each table page and where it goes; the VMM copies them in.
/// 2 MiB pages are used where a mapping covers a whole aligned 2 MiB block, 4 KiB pages elsewhere.
public struct PageTableBuilder: Sendable {
    static let present: UInt64 = 1 << 0
    static let rw: UInt64 = 1 << 1
    static let us: UInt64 = 1 << 2
    static let ps: UInt64 = 1 << 7
    static let nx: UInt64 = 1 << 63
    static let addressMask: UInt64 = 0x000f_ffff_ffff_f000

    public let poolBase: UInt64
    public let poolPages: Int
    /// Table pages by guest-physical address, each 512 entries.
    private(set) var tables: [UInt64: [UInt64]] = [:]
    private var order: [UInt64] = []
    public let root: UInt64

    public init(poolBase: UInt64, poolPages: Int) {
        self.poolBase = poolBase
        self.poolPages = poolPages
        self.root = poolBase
        tables[poolBase] = [UInt64](repeating: 0, count: 512)
        order = [poolBase]
    }

    public var pagesUsed: Int { order.count }

    private mutating func allocate() throws(PageTableError) -> UInt64 {
        guard order.count < poolPages else { throw .poolExhausted(pages: poolPages) }
        let addr = poolBase + UInt64(order.count) * 4096
        tables[addr] = [UInt64](repeating: 0, count: 512)
        order.append(addr)
        return addr
    }

    private static func leafBits(_ flags: PageFlags) -> UInt64 {
        var e = present
        if flags.contains(.writable) { e |= rw }
        if flags.contains(.user) { e |= us }
        if !flags.contains(.executable) { e |= nx }
        return e
    }

    /// Walks to (creating) the table at `level` (2 = PD, 1 = PT) covering `va`.
    private mutating func table(for va: UInt64, level: Int) throws(PageTableError) -> UInt64 {
        var current = root
        var l = 4
        while l > level {
            let index = Int((va >> (12 + 9 * UInt64(l - 1))) & 511)
            let entry = tables[current]?[index] ?? 0
            if entry & Self.present != 0 {
                if entry & Self.ps != 0 { throw .overlap(va) }
                current = entry & Self.addressMask
            } else {
                let next = try allocate()
                // Intermediate entries are permissive; the leaf decides (U/S and R/W are ANDed,
                // NX is ORed along the walk).
                tables[current]?[index] = next | Self.present | Self.rw | Self.us
                current = next
            }
            l -= 1
        }
        return current
    }

    /// Maps `[virtualAddress, virtualAddress+size)` to physical `physicalAddress` with `flags`.
    /// All or nothing: when it throws, the tables are as they were.
    public mutating func map(virtual va: UInt64, physical pa: UInt64, size: UInt64, flags: PageFlags) throws(PageTableError) {
        guard va % 4096 == 0, pa % 4096 == 0, size % 4096 == 0 else { throw .misaligned(va) }
        let (end, o) = va.addingReportingOverflow(size)
        guard !o, end <= (1 << 47) else { throw .nonCanonical(va) }
        let (physicalEnd, po) = pa.addingReportingOverflow(size)
        guard !po, physicalEnd <= (1 << 52) else { throw .physicalOutOfRange(pa) }
        var updated = self
        try updated.mapChecked(virtual: va, physical: pa, size: size, flags: flags)
        self = updated
    }

    private mutating func mapChecked(virtual va: UInt64, physical pa: UInt64, size: UInt64, flags: PageFlags) throws(PageTableError) {
        var offset: UInt64 = 0
        while offset < size {
            let v = va + offset, p = pa + offset
            let remaining = size - offset
            if v % (2 << 20) == 0, p % (2 << 20) == 0, remaining >= (2 << 20) {
                let pd = try table(for: v, level: 2)
                let i = Int((v >> 21) & 511)
                guard (tables[pd]?[i] ?? 0) & Self.present == 0 else { throw .overlap(v) }
                tables[pd]?[i] = p | Self.leafBits(flags) | Self.ps
                offset += 2 << 20
            } else {
                let pt = try table(for: v, level: 1)
                let i = Int((v >> 12) & 511)
                guard (tables[pt]?[i] ?? 0) & Self.present == 0 else { throw .overlap(v) }
                tables[pt]?[i] = p | Self.leafBits(flags)
                offset += 4096
            }
        }
    }

    /// The table pages to copy into guest memory, in allocation order.
    public func pages() -> [(address: UInt64, bytes: [UInt8])] {
        order.map { addr in
            var w = ByteWriter(size: 4096)
            for (i, e) in (tables[addr] ?? []).enumerated() { w.put(e, at: i * 8) }
            return (addr, w.bytes)
        }
    }

    /// Translates `va` the way the MMU would, for tests: the physical address and effective flags.
    public func translate(_ va: UInt64) -> (physical: UInt64, flags: PageFlags)? {
        var current = root
        var user = true, writable = true, executable = true
        for level in stride(from: 4, through: 1, by: -1) {
            let index = Int((va >> (12 + 9 * UInt64(level - 1))) & 511)
            guard let e = tables[current]?[index], e & Self.present != 0 else { return nil }
            user = user && e & Self.us != 0
            writable = writable && e & Self.rw != 0
            executable = executable && e & Self.nx == 0
            let isLeaf = level == 1 || (level == 2 && e & Self.ps != 0)
            if isLeaf {
                let pageMask: UInt64 = level == 2 ? (2 << 20) - 1 : 4095
                var f: PageFlags = []
                if user { f.insert(.user) }
                if writable { f.insert(.writable) }
                if executable { f.insert(.executable) }
                return ((e & Self.addressMask & ~pageMask) | (va & pageMask), f)
            }
            current = e & Self.addressMask
        }
        return nil
    }
}
