import CLinux
import HostOS
import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A failed guest-memory access. Always carries the guest-physical address that failed.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible, Sendable {
    /// `[address, address+length)` is not entirely inside guest RAM.
    case outOfRange(address: UInt64, length: UInt64)
    /// `address + length` does not fit in 64 bits.
    case overflow(address: UInt64, length: UInt64)

    public var description: String {
        switch self {
        case .outOfRange(let a, let l):
            return "guest memory access of \(l) bytes at 0x\(String(a, radix: 16)) is outside guest RAM"
        case .overflow(let a, let l):
            return "guest memory access of \(l) bytes at 0x\(String(a, radix: 16)) overflows the address space"
        }
    }
}

/// Guest RAM: one private anonymous mapping, registered with KVM at `base`.
///
/// This is the only way any Bulkhead code reads or writes guest memory. Every access is
/// bounds-checked with checked arithmetic and copies bytes in or out; no pointer into guest RAM
/// leaves this type. The guest can change its memory at any time, so callers copy data out
/// once and validate the copy (no double fetch).
///
/// The mapping is private (never shared with another process), marked unmergeable (no KSM:
/// no cross-VM page deduplication side channel), excluded from core dumps, and backed by
/// transparent huge pages where the kernel allows. Anonymous memory reads as zero on first touch.
public final class GuestMemory: @unchecked Sendable {
    // Sendable: `region` and `size` never change after init; the bytes behind them are shared
    // with the guest by design and are only touched through bounds-checked copies.
    public let base: UInt64
    public let size: UInt64
    private let region: UnsafeMutableRawPointer

    /// Maps `size` bytes (a multiple of 4 KiB) of fresh, zeroed guest RAM.
    public init(base: UInt64, size: UInt64) throws(KVMError) {
        guard size > 0, size % 4096 == 0, base % 4096 == 0 else {
            throw .invalidMemoryRegion("size \(size) and base 0x\(String(base, radix: 16)) must be non-zero multiples of 4 KiB")
        }
        guard base.addingReportingOverflow(size).overflow == false, size <= UInt64(Int.max) else {
            throw .invalidMemoryRegion("region at 0x\(String(base, radix: 16)) of \(size) bytes overflows")
        }
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else {
            throw .system(SystemError("mmap of \(size) bytes of guest memory", errno: errno))
        }
        // SAFETY: `p` is a fresh mapping of exactly `size` bytes that this object owns until deinit.
        self.region = p
        self.base = base
        self.size = size
        // Huge pages make first touch and teardown much faster; best effort.
        _ = madvise(p, Int(size), MADV_HUGEPAGE)
        // Never merge guest pages with other processes' pages. EINVAL means the kernel has no
        // KSM at all, which is just as good.
        if madvise(p, Int(size), MADV_UNMERGEABLE) != 0 && errno != EINVAL {
            let e = errno
            munmap(p, Int(size))
            throw .system(SystemError("madvise(MADV_UNMERGEABLE)", errno: e))
        }
        if madvise(p, Int(size), MADV_DONTDUMP) != 0 {
            let e = errno
            munmap(p, Int(size))
            throw .system(SystemError("madvise(MADV_DONTDUMP)", errno: e))
        }
        // Never copied into a child: a process that forks (the in-process VMM hands its last
        // descriptors to a child at exit, see `releaseDescriptorsAfterExit`) must not duplicate
        // the guest's RAM or its page tables.
        if madvise(p, Int(size), MADV_DONTFORK) != 0 {
            let e = errno
            munmap(p, Int(size))
            throw .system(SystemError("madvise(MADV_DONTFORK)", errno: e))
        }
    }

    deinit {
        // SAFETY: `region` was mapped in init with exactly `size` bytes and is not used after this.
        munmap(region, Int(size))
    }

    /// The host address KVM needs for KVM_SET_USER_MEMORY_REGION. Only the KVM module sees it.
    var hostAddress: UInt64 { UInt64(UInt(bitPattern: region)) }

    /// Checks `[address, address+length)` against guest RAM and returns the offset into the region.
    public func offset(of address: UInt64, length: UInt64) throws(GuestMemoryError) -> Int {
        let (end, overflow) = address.addingReportingOverflow(length)
        if overflow { throw .overflow(address: address, length: length) }
        guard address >= base, end <= base &+ size else {
            throw .outOfRange(address: address, length: length)
        }
        return Int(address - base)
    }

    /// Whether `[address, address+length)` lies inside guest RAM.
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        (try? offset(of: address, length: length)) != nil
    }

    /// Copies `count` bytes out of guest memory.
    public func read(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        guard count >= 0 else { throw .outOfRange(address: address, length: 0) }
        let off = try offset(of: address, length: UInt64(count))
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            // SAFETY: `off..<off+count` was checked to lie inside the mapping; `buffer` has room
            // for exactly `count` bytes and does not overlap guest memory.
            if count > 0, let dst = buffer.baseAddress {
                dst.update(from: region.advanced(by: off).assumingMemoryBound(to: UInt8.self), count: count)
            }
            initialized = count
        }
    }

    /// Copies `bytes` into guest memory.
    public func write(_ bytes: [UInt8], at address: UInt64) throws(GuestMemoryError) {
        let off = try offset(of: address, length: UInt64(bytes.count))
        bytes.withUnsafeBytes { src in
            // SAFETY: the destination range was checked to lie inside the mapping; `src` is a
            // Swift array's own storage, which cannot overlap guest memory.
            if let s = src.baseAddress, src.count > 0 {
                region.advanced(by: off).copyMemory(from: s, byteCount: src.count)
            }
        }
    }

    /// Fills `[address, address+count)` with zeros.
    public func zero(at address: UInt64, count: UInt64) throws(GuestMemoryError) {
        let off = try offset(of: address, length: count)
        // SAFETY: the range was checked to lie inside the mapping.
        memset(region.advanced(by: off), 0, Int(count))
    }

    /// Reads a little-endian integer.
    public func load<T: FixedWidthInteger>(_ type: T.Type, at address: UInt64) throws(GuestMemoryError) -> T {
        let off = try offset(of: address, length: UInt64(MemoryLayout<T>.size))
        // SAFETY: bounds checked above; loadUnaligned tolerates any guest alignment.
        return T(littleEndian: region.loadUnaligned(fromByteOffset: off, as: T.self))
    }

    /// Writes a little-endian integer.
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        let off = try offset(of: address, length: UInt64(MemoryLayout<T>.size))
        // SAFETY: bounds checked above; storeBytes has no alignment requirement for trivial types.
        region.storeBytes(of: value.littleEndian, toByteOffset: off, as: T.self)
    }

    /// Fills `buffer` with bytes from the kernel's random source, written straight into guest RAM.
    public func fillRandom(at address: UInt64, count: Int) throws(GuestMemoryError) -> Bool {
        let off = try offset(of: address, length: UInt64(max(count, 0)))
        var done = 0
        while done < count {
            // SAFETY: `off+done ..< off+count` lies inside the checked range.
            let n = SystemCall.uninterrupted { getrandom(region.advanced(by: off + done), count - done, 0) }
            if n < 0 { return false }
            done += n
        }
        return true
    }

    /// Counts how many bytes of `[address, address+count)` are non-zero (used by hygiene tests).
    public func nonZeroByteCount(at address: UInt64, count: UInt64) throws(GuestMemoryError) -> Int {
        let off = try offset(of: address, length: count)
        // SAFETY: bounds checked above; read-only view of the checked range, not retained.
        let view = UnsafeRawBufferPointer(start: region.advanced(by: off), count: Int(count))
        var n = 0
        for b in view where b != 0 { n += 1 }
        return n
    }
}

extension GuestMemory {
    /// Writes several guest ranges, in order, to `fd` as consecutive bytes from `fileOffset`, with
    /// one `pwritev` per 1024 ranges (a virtio request's scattered buffers in one system call).
    /// Every range is checked before anything is written. False when a write fails.
    public func copyToFile(_ fd: Int32, fileOffset: UInt64, from ranges: [(address: UInt64, count: Int)]) throws(GuestMemoryError) -> Bool {
        // SAFETY: pwritev only reads the iovecs it is given, each inside the mapping.
        try transferVectored(ranges, fileOffset: fileOffset) { pwritev(fd, $0, $1, $2) }
    }

    /// Reads consecutive bytes of `fd` from `fileOffset` into several guest ranges, in order, with
    /// one `preadv` per 1024 ranges (a virtio request's scattered buffers in one system call).
    /// Every range is checked before anything is read. False when the file ends early or a read
    /// fails.
    public func copyFromFile(_ fd: Int32, fileOffset: UInt64, into ranges: [(address: UInt64, count: Int)]) throws(GuestMemoryError) -> Bool {
        // SAFETY: preadv only writes into the iovecs it is given, each inside the mapping.
        try transferVectored(ranges, fileOffset: fileOffset) { preadv(fd, $0, $1, $2) }
    }

    /// Moves the bytes of `ranges` (checked against the mapping first) with `io` — preadv or
    /// pwritev — in batches of 1024 iovecs, from file position `fileOffset` on, resuming after
    /// short transfers. False when `io` fails or transfers nothing.
    private func transferVectored(_ ranges: [(address: UInt64, count: Int)], fileOffset: UInt64,
                                  _ io: (UnsafePointer<iovec>?, Int32, off_t) -> Int) throws(GuestMemoryError) -> Bool {
        var spans: [(offset: Int, count: Int)] = []
        spans.reserveCapacity(ranges.count)
        for r in ranges where r.count > 0 {
            spans.append((try offset(of: r.address, length: UInt64(r.count)), r.count))
        }
        var position = off_t(fileOffset)
        var first = 0        // the first span not completely transferred
        var skip = 0         // bytes of it already transferred
        while first < spans.count {
            let batch = min(spans.count - first, 1024)
            var vectors: [iovec] = []
            vectors.reserveCapacity(batch)
            for k in first..<(first + batch) {
                let s = spans[k], lead = k == first ? skip : 0
                // SAFETY: `s.offset + lead ..< s.offset + s.count` lies inside a range checked
                // against the mapping above; the mapping outlives this call.
                vectors.append(iovec(iov_base: region.advanced(by: s.offset + lead), iov_len: s.count - lead))
            }
            // SAFETY: the iovec array lives for the duration of the call.
            let n = SystemCall.uninterrupted { vectors.withUnsafeBufferPointer { io($0.baseAddress, Int32($0.count), position) } }
            if n < 0 { return false }
            if n == 0 { return false }
            position += off_t(n)
            var left = n
            while left > 0, first < spans.count {
                let room = spans[first].count - skip
                if left >= room { left -= room; first += 1; skip = 0 } else { skip += left; left = 0 }
            }
        }
        return true
    }

    /// Reads `count` bytes of the file `fd` at `fileOffset` straight into guest memory at
    /// `address` (one copy, no intermediate buffer). False when the file ends early or the read
    /// fails; the range must be guest RAM.
    public func copyFromFile(_ fd: Int32, fileOffset: UInt64, into address: UInt64, count: Int) throws(GuestMemoryError) -> Bool {
        let off = try offset(of: address, length: UInt64(max(count, 0)))
        var done = 0
        while done < count {
            // SAFETY: `off+done ..< off+count` lies inside the checked range of the mapping.
            let n = SystemCall.uninterrupted { pread(fd, region.advanced(by: off + done), count - done, off_t(fileOffset) + off_t(done)) }
            if n < 0 { return false }
            if n == 0 { return false }
            done += n
        }
        return true
    }
}
