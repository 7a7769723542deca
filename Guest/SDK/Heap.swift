// Bulkhead guest SDK — memory allocation.
//
// A lock-free bump allocator over the largest free-RAM region of the boot-info memory
// map. Without boot information (a loader that passes rdi = 0) the heap is empty.
// `free` never gives memory back. Safe to use from several vCPUs at once.
// Embedded Swift's runtime allocates class instances and array storage through
// `posix_memalign` and `free`; entry.S defines those two symbols (`free` is a no-op,
// `posix_memalign` jumps to `bh_posix_memalign` below), because Swift reserves the names.

import Synchronization

let heapCursor = Atomic<UInt64>(0)  // 0 = not initialised yet
let heapEnd = Atomic<UInt64>(0)

public enum Heap {
    /// The region the heap hands out: [start, end). Deterministic, so several vCPUs
    /// initialising at the same time agree.
    static func region() -> (start: UInt64, end: UInt64) {
        if let info = BootInfo.current, let free = info.largestFreeRegion, free.size > 0 {
            return (free.base, free.end)
        }
        return (1, 1)  // empty
    }

    static func initialise() {
        let (start, end) = region()
        // Publish end before cursor; losers of the race computed the same values.
        heapEnd.store(end, ordering: .sequentiallyConsistent)
        _ = heapCursor.compareExchange(expected: 0, desired: max(start, 1), ordering: .sequentiallyConsistent)
    }

    /// Allocates `byteCount` bytes aligned to `alignment` (a power of two), or nil if the
    /// heap is exhausted. Memory is never reused, so it comes zero-filled (guest RAM reads
    /// as zero when first touched).
    public static func allocate(byteCount: Int, alignment: Int = 16) -> UnsafeMutableRawPointer? {
        guard byteCount >= 0, alignment > 0, alignment & (alignment - 1) == 0 else { return nil }
        if heapCursor.load(ordering: .sequentiallyConsistent) == 0 { initialise() }
        let end = heapEnd.load(ordering: .sequentiallyConsistent)
        let mask = UInt64(alignment) - 1
        var current = heapCursor.load(ordering: .sequentiallyConsistent)
        while true {
            let (bumped, o1) = current.addingReportingOverflow(mask)
            let aligned = bumped & ~mask
            let (next, o2) = aligned.addingReportingOverflow(UInt64(max(byteCount, 1)))
            if o1 || o2 || next > end { return nil }
            let (exchanged, original) = heapCursor.compareExchange(
                expected: current, desired: next, ordering: .sequentiallyConsistent)
            if exchanged { return UnsafeMutableRawPointer(bitPattern: UInt(aligned)) }
            current = original
        }
    }

    /// Bytes still available (approximate when other vCPUs allocate concurrently).
    public static var bytesFree: UInt64 {
        if heapCursor.load(ordering: .sequentiallyConsistent) == 0 { initialise() }
        let end = heapEnd.load(ordering: .sequentiallyConsistent)
        let cursor = heapCursor.load(ordering: .sequentiallyConsistent)
        return end > cursor ? end - cursor : 0
    }
}

/// `posix_memalign` (entry.S jumps here).
@_cdecl("bh_posix_memalign")
public func bh_posix_memalign(
    _ memptr: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ alignment: Int, _ size: Int
) -> CInt {
    guard let p = Heap.allocate(byteCount: size, alignment: max(alignment, 16)) else {
        return 12  // ENOMEM
    }
    memptr.pointee = p
    return 0
}
