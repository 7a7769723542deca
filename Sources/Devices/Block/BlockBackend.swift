import GuestABI
import Virtio

/// What virtio-blk needs of a disk: whole-sector reads and writes, a durable flush, and the two
/// "free this range" operations. Sectors are always 512 bytes (virtio 1.2 §5.2.4).
///
/// The device checks every range against `sectorCount` before it calls the back end; back ends
/// check again (defence in depth) and refuse a range outside the disk by failing.
/// Guest memory that a back end can read a file into directly (one copy instead of two).
public protocol DirectFileTarget: AnyObject {
    /// Reads `count` bytes of `fd` at `fileOffset` into guest memory at `address`, which must be
    /// memory the device may write. False on any failure.
    func readFile(_ fd: Int32, fileOffset: UInt64, into address: UInt64, count: Int) -> Bool
    /// Reads consecutive bytes of `fd` from `fileOffset` into each range in turn (all of which
    /// must be memory the device may write), in as few system calls as it can.
    func readFile(_ fd: Int32, fileOffset: UInt64, into ranges: [(address: UInt64, count: Int)]) -> Bool
    /// Writes each range in turn (all of which must be memory the device may read) to `fd` from
    /// `fileOffset`, in as few system calls as it can. False on any failure.
    func writeFile(_ fd: Int32, fileOffset: UInt64, from ranges: [(address: UInt64, count: Int)]) -> Bool
}

extension DirectFileTarget {
    public func readFile(_ fd: Int32, fileOffset: UInt64, into ranges: [(address: UInt64, count: Int)]) -> Bool {
        var done: UInt64 = 0
        for r in ranges {
            guard readFile(fd, fileOffset: fileOffset + done, into: r.address, count: r.count) else { return false }
            done += UInt64(r.count)
        }
        return true
    }
}

public protocol BlockBackend: AnyObject {
    /// The disk's size in 512-byte sectors. Must not change while a device uses the back end.
    var sectorCount: UInt64 { get }
    /// Reads `count` bytes (a multiple of 512) starting at `sector`; nil on failure.
    func read(sector: UInt64, count: Int) -> [UInt8]?
    /// Writes `bytes` (a multiple of 512 long) starting at `sector`; false on failure.
    func write(sector: UInt64, bytes: [UInt8]) -> Bool
    /// Makes every completed write durable (on stable storage) before returning true.
    func flush() -> Bool
    /// The guest no longer needs `sectors` sectors at `sector`; their contents become undefined.
    func discard(sector: UInt64, sectors: UInt64) -> Bool
    /// Sets `sectors` sectors at `sector` to zero.
    func writeZeroes(sector: UInt64, sectors: UInt64) -> Bool
    /// Reads `count` bytes at `sector` straight into the chain's writable buffers, in order.
    /// nil: this back end or this memory cannot (the caller copies through a buffer instead).
    func readDirect(sector: UInt64, count: Int, into chain: DescriptorChain, ram: GuestRAM) -> Bool?
    /// Writes `count` bytes at `sector` straight from the chain's readable buffers, after the
    /// first `skipping` bytes (the request header). nil: cannot (the caller copies instead).
    func writeDirect(sector: UInt64, count: Int, from chain: DescriptorChain, skipping: UInt64, ram: GuestRAM) -> Bool?
}

extension BlockBackend {
    public func readDirect(sector: UInt64, count: Int, into chain: DescriptorChain, ram: GuestRAM) -> Bool? { nil }
    public func writeDirect(sector: UInt64, count: Int, from chain: DescriptorChain, skipping: UInt64, ram: GuestRAM) -> Bool? { nil }
}

/// The operations of a `BlockBackend`.
public enum BlockOperation: String, Hashable, Sendable, CaseIterable {
    case read, write, flush, discard, writeZeroes
}
