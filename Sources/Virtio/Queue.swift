import Synchronization

/// Why a descriptor chain or a queue operation was refused. The device answers a broken chain by
/// failing that request (or, for ring corruption, by asking for a reset); it never trusts it.
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    case memory(address: UInt64, length: UInt64)
    case headOutOfRange(UInt16)
    case nextOutOfRange(UInt16)
    case chainTooLong(limit: Int)
    case indirectNotNegotiated
    case indirectWithNext
    case nestedIndirect
    case badIndirectTable(length: UInt32)
    case readableAfterWritable
    case totalLengthOverflow
    case availIndexJump(from: UInt16, to: UInt16)
    case queueNotReady
    case badLayout(String)

    public var description: String {
        func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .memory(let a, let l): return "buffer \(hex(a))+\(l) is not guest RAM"
        case .headOutOfRange(let i): return "chain head \(i) is outside the descriptor table (§2.7.6)"
        case .nextOutOfRange(let i): return "next index \(i) is outside the descriptor table (§2.7.5)"
        case .chainTooLong(let n): return "descriptor chain longer than \(n) descriptors: a loop? (§2.7.5.2)"
        case .indirectNotNegotiated: return "indirect descriptor without VIRTIO_F_INDIRECT_DESC (§2.7.5.3.1)"
        case .indirectWithNext: return "descriptor has both INDIRECT and NEXT (§2.7.5.3.1)"
        case .nestedIndirect: return "indirect descriptor inside an indirect table (§2.7.5.3.1)"
        case .badIndirectTable(let l): return "indirect table of \(l) bytes is empty, not a multiple of 16 or too large (§2.7.5.3)"
        case .readableAfterWritable: return "device-readable descriptor after a device-writable one (§2.7.4.2)"
        case .totalLengthOverflow: return "descriptor chain longer than 2^32 bytes (§2.7.5.2)"
        case .availIndexJump(let f, let t): return "available index moved from \(f) to \(t), more than the queue size (§2.7.6)"
        case .queueNotReady: return "queue is not ready"
        case .badLayout(let why): return "bad queue layout: \(why)"
        }
    }
}

/// One buffer of a descriptor chain: guest-physical address and length, already checked to be
/// guest RAM when the chain was parsed.
public struct GuestBuffer: Equatable, Sendable {
    public var address: UInt64
    public var length: UInt32
    public init(address: UInt64, length: UInt32) { self.address = address; self.length = length }
}

/// A parsed descriptor chain: the device-readable buffers, then the device-writable ones.
public struct DescriptorChain: Equatable, Sendable {
    public var head: UInt16
    public var readable: [GuestBuffer] = []
    public var writable: [GuestBuffer] = []

    public var readableLength: UInt64 { readable.reduce(0) { $0 + UInt64($1.length) } }
    public var writableLength: UInt64 { writable.reduce(0) { $0 + UInt64($1.length) } }

    /// Copies up to `limit` bytes of the readable buffers out of guest memory, in order.
    public func gather(from ram: GuestRAM, limit: Int = .max) throws(VirtqueueError) -> [UInt8] {
        var out: [UInt8] = []
        for b in readable where out.count < limit {
            let n = min(Int(b.length), limit - out.count)
            guard let bytes = ram.copyOut(at: b.address, count: n) else {
                throw .memory(address: b.address, length: UInt64(n))
            }
            out += bytes
        }
        return out
    }

    /// Copies `data` into the writable buffers, in order. Returns how many bytes were written
    /// (less than `data.count` when the buffers are smaller).
    @discardableResult
    public func scatter(_ data: [UInt8], to ram: GuestRAM, skipping skip: Int = 0) throws(VirtqueueError) -> Int {
        var toSkip = skip, written = 0
        for b in writable where written < data.count {
            var len = Int(b.length), addr = b.address
            if toSkip >= len { toSkip -= len; continue }
            addr += UInt64(toSkip); len -= toSkip; toSkip = 0
            let n = min(len, data.count - written)
            guard ram.copyIn(Array(data[written..<written + n]), at: addr) else {
                throw .memory(address: addr, length: UInt64(n))
            }
            written += n
        }
        return written
    }
}

/// What `pop` found: a head index and either its parsed chain or why the chain was refused.
public struct AvailableChain: Equatable, Sendable {
    public var head: UInt16
    public var result: Result<DescriptorChain, VirtqueueError>
}

/// One 16-byte descriptor (virtio 1.2 §2.7.5), decoded from a single copy.
struct Descriptor {
    var address: UInt64, length: UInt32, flags: UInt16, next: UInt16

    init(_ b: [UInt8], at o: Int = 0) {
        var a: UInt64 = 0
        for i in 0..<8 { a |= UInt64(b[o + i]) << (8 * UInt64(i)) }
        address = a
        length = UInt32(b[o + 8]) | UInt32(b[o + 9]) << 8 | UInt32(b[o + 10]) << 16 | UInt32(b[o + 11]) << 24
        flags = UInt16(b[o + 12]) | UInt16(b[o + 13]) << 8
        next = UInt16(b[o + 14]) | UInt16(b[o + 15]) << 8
    }
}

/// The device side of a split virtqueue (virtio 1.2 §2.7).
///
/// Everything it reads from the rings is guest-controlled: indices are range-checked, chains have
/// a time-to-live (at most the queue size, or the indirect table's entry count), lengths are summed
/// with overflow checks, every buffer must be guest RAM, and each descriptor is read exactly once.
public struct SplitQueue: Equatable, Sendable {
    public var size: UInt16
    public var descriptorTable: UInt64
    public var availRing: UInt64
    public var usedRing: UInt64
    public var indirectAllowed: Bool
    public var eventIndex: Bool
    /// The next available-ring entry the device will consume.
    public private(set) var nextAvail: UInt16 = 0
    /// The next used-ring entry the device will fill.
    public private(set) var nextUsed: UInt16 = 0
    /// `nextUsed` when the driver was last notified (for event-index suppression).
    private var signalledUsed: UInt16 = 0

    /// Whether the driver has published chains the device has not taken yet.
    public func hasPending(in ram: GuestRAM) -> Bool {
        guard let availIdx = ram.u16(at: availRing + 2) else { return false }
        return availIdx != nextAvail
    }

    /// Put back the chain `pop` just took, so that it is taken again later (a rate-limited
    /// device defers it). Only valid right after a `pop` that returned a chain.
    public mutating func undoPop() { nextAvail &-= 1 }

    public init(size: UInt16, descriptorTable: UInt64, availRing: UInt64, usedRing: UInt64,
                indirectAllowed: Bool = false, eventIndex: Bool = false) {
        self.size = size; self.descriptorTable = descriptorTable; self.availRing = availRing
        self.usedRing = usedRing; self.indirectAllowed = indirectAllowed; self.eventIndex = eventIndex
    }

    /// Checks the queue's size, alignment (§2.7 table "Virtqueue Part Alignment") and that its
    /// three parts lie in guest RAM. Called when the driver sets QueueReady.
    public func validate(in ram: GuestRAM) throws(VirtqueueError) {
        guard size > 0, size <= Virtio.maxQueueSize, size.nonzeroBitCount == 1 else {
            throw .badLayout("size \(size) is not a power of two in 1...32768")
        }
        guard descriptorTable % 16 == 0, availRing % 2 == 0, usedRing % 4 == 0 else {
            throw .badLayout("misaligned rings (descriptors 16, available 2, used 4)")
        }
        let n = UInt64(size)
        for (addr, len) in [(descriptorTable, 16 * n), (availRing, 6 + 2 * n), (usedRing, 6 + 8 * n)] {
            guard ram.isRAM(addr, length: len) else { throw .badLayout("ring at 0x\(String(addr, radix: 16)) is not guest RAM") }
        }
        // The device writes the used ring: it must be memory the device may write (§2.7.8).
        guard ram.isWritable(usedRing, length: 6 + 8 * n) else {
            throw .badLayout("used ring at 0x\(String(usedRing, radix: 16)) is not writable guest RAM")
        }
    }

    /// Takes the next available chain, or nil when the driver has published nothing new.
    ///
    /// Throws only when the ring itself is broken (unreadable, or the index jumped): the device
    /// then needs a reset. A broken *chain* comes back as a failure with its head, so the device
    /// can fail that one request and return the head to the driver.
    public mutating func pop(from ram: GuestRAM) throws(VirtqueueError) -> AvailableChain? {
        guard let availIdx = ram.u16(at: availRing + 2) else { throw .memory(address: availRing + 2, length: 2) }
        if availIdx == nextAvail { return nil }
        // §2.7.6: the driver can be at most a queue's worth ahead of the device.
        guard availIdx &- nextAvail <= size else { throw .availIndexJump(from: nextAvail, to: availIdx) }
        let slot = availRing + 4 + 2 * UInt64(nextAvail % size)
        guard let head = ram.u16(at: slot) else { throw .memory(address: slot, length: 2) }
        nextAvail &+= 1
        if eventIndex {
            // §2.7.10: publish avail_event so the driver notifies only for later buffers. The
            // next pop reads avail.idx after this store; x86 may let that load pass the store,
            // and the driver could then skip a notification the device needs: fence.
            _ = ram.store(nextAvail, at: usedRing + 4 + 8 * UInt64(size))
            atomicMemoryFence(ordering: .sequentiallyConsistent)
        }
        do { return AvailableChain(head: head, result: .success(try parseChain(head: head, in: ram))) } catch {
            return AvailableChain(head: head, result: .failure(error))
        }
    }

    /// Walks the chain starting at `head` (§2.7.5, §2.7.5.3).
    public func parseChain(head: UInt16, in ram: GuestRAM) throws(VirtqueueError) -> DescriptorChain {
        guard head < size else { throw .headOutOfRange(head) }
        var chain = DescriptorChain(head: head)
        var total: UInt64 = 0
        var index = head
        var budget = Int(size)        // time-to-live: a chain visits each descriptor at most once
        var table = descriptorTable
        var tableSize = size
        var inIndirect = false
        while true {
            guard budget > 0 else { throw .chainTooLong(limit: Int(inIndirect ? tableSize : size)) }
            budget -= 1
            let at = table + 16 * UInt64(index)
            guard let raw = ram.copyOut(at: at, count: 16) else { throw .memory(address: at, length: 16) }
            let d = Descriptor(raw)
            if d.flags & Virtio.DescriptorFlag.indirect != 0 {
                guard indirectAllowed else { throw .indirectNotNegotiated }
                guard !inIndirect else { throw .nestedIndirect }
                guard d.flags & Virtio.DescriptorFlag.next == 0 else { throw .indirectWithNext }
                guard d.length > 0, d.length % 16 == 0, d.length / 16 <= UInt32(Virtio.maxQueueSize) else {
                    throw .badIndirectTable(length: d.length)
                }
                guard ram.isRAM(d.address, length: UInt64(d.length)) else {
                    throw .memory(address: d.address, length: UInt64(d.length))
                }
                // The device ignores the WRITE flag of the descriptor that names the table.
                table = d.address
                tableSize = UInt16(d.length / 16)
                budget = Int(tableSize)
                inIndirect = true
                index = 0
                continue
            }
            guard ram.isRAM(d.address, length: UInt64(d.length)) else {
                throw .memory(address: d.address, length: UInt64(d.length))
            }
            total += UInt64(d.length)
            guard total <= UInt64(UInt32.max) else { throw .totalLengthOverflow }
            let buffer = GuestBuffer(address: d.address, length: d.length)
            if d.flags & Virtio.DescriptorFlag.write != 0 {
                chain.writable.append(buffer)
            } else {
                guard chain.writable.isEmpty else { throw .readableAfterWritable }
                chain.readable.append(buffer)
            }
            guard d.flags & Virtio.DescriptorFlag.next != 0 else { return chain }
            guard d.next < tableSize else { throw .nextOutOfRange(d.next) }
            index = d.next
        }
    }

    /// Returns a chain to the driver with the number of bytes the device wrote into it (§2.7.8).
    public mutating func push(head: UInt16, written: UInt32, to ram: GuestRAM) throws(VirtqueueError) {
        guard head < size else { throw .headOutOfRange(head) }
        let elem = usedRing + 4 + 8 * UInt64(nextUsed % size)
        guard ram.store(UInt32(head), at: elem), ram.store(written, at: elem + 4) else {
            throw .memory(address: elem, length: 8)
        }
        nextUsed &+= 1
        // The element is written before the index that publishes it.
        guard ram.store(nextUsed, at: usedRing + 2) else { throw .memory(address: usedRing + 2, length: 2) }
    }

    /// Whether the driver wants an interrupt for what was pushed since the last notification
    /// (§2.7.7: the NO_INTERRUPT flag, or with VIRTIO_F_EVENT_IDX the used_event index).
    public mutating func shouldNotify(_ ram: GuestRAM) -> Bool {
        defer { signalledUsed = nextUsed }
        // The used index was just stored; the driver's used_event / flags must be read after it
        // is visible (a store-load pair x86 may reorder).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            guard let usedEvent = ram.u16(at: availRing + 4 + 2 * UInt64(size)) else { return true }
            // Notify when used_event lies in (signalledUsed, nextUsed]: the vring_need_event rule.
            return nextUsed &- usedEvent &- 1 < nextUsed &- signalledUsed
        }
        guard let flags = ram.u16(at: availRing) else { return true }
        return flags & Virtio.availFlagNoInterrupt == 0
    }

    /// Asks the driver not to notify (or to notify again) for new buffers (§2.7.10, without
    /// event index).
    public func setNotificationsEnabled(_ enabled: Bool, in ram: GuestRAM) {
        guard !eventIndex else { return }
        _ = ram.store(enabled ? 0 : Virtio.usedFlagNoNotify, at: usedRing)
    }
}
