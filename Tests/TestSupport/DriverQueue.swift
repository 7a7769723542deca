import GuestABI
import Virtio

/// The driver side of one split virtqueue over an `ArrayRAM`, for tests (in the manner of
/// rust-vmm's virtio-queue mock): writes descriptors, publishes chains in the available ring, and
/// reads back the used ring. Every device test drives its queues through this one type.
public struct DriverQueue {
    /// One buffer of a chain.
    public enum Part {
        /// A device-readable buffer holding these bytes.
        case readable([UInt8])
        /// A device-writable buffer of this many bytes, each `DriverQueue.sentinel` beforehand.
        case writable(Int)
    }

    /// What writable buffers hold before the device runs: a byte left as it was was not written.
    public static let sentinel: UInt8 = 0xee

    public let ram: ArrayRAM
    public let size: UInt16
    public let descriptorTable: UInt64
    public let availRing: UInt64
    public let usedRing: UInt64
    /// The driver's available index (the next slot it publishes).
    public private(set) var availIndex: UInt16 = 0
    /// The used entries the driver has taken.
    public var usedSeen: UInt16 = 0
    /// The descriptor `submit` uses next (wrapping at `size`).
    public var nextDescriptor: UInt16 = 0

    public init(ram: ArrayRAM, size: UInt16, descriptorTable: UInt64, availRing: UInt64, usedRing: UInt64) {
        self.ram = ram; self.size = size
        self.descriptorTable = descriptorTable; self.availRing = availRing; self.usedRing = usedRing
    }

    /// After a device reset the driver starts its rings over: nothing published, nothing used.
    public mutating func restart() {
        availIndex = 0; usedSeen = 0; nextDescriptor = 0
    }

    /// The device's view of the same rings.
    public func splitQueue(indirect: Bool = false, eventIndex: Bool = false) -> SplitQueue {
        SplitQueue(size: size, descriptorTable: descriptorTable, availRing: availRing, usedRing: usedRing,
                   indirectAllowed: indirect, eventIndex: eventIndex)
    }

    /// Writes descriptor `i` of the queue's table (or of an indirect `table`).
    public func setDescriptor(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0, table: UInt64? = nil) {
        var b: [UInt8] = []
        for s in stride(from: 0, to: 64, by: 8) { b.append(UInt8(truncatingIfNeeded: address >> UInt64(s))) }
        for s in stride(from: 0, to: 32, by: 8) { b.append(UInt8(truncatingIfNeeded: length >> UInt32(s))) }
        b += [UInt8(flags & 0xff), UInt8(flags >> 8), UInt8(next & 0xff), UInt8(next >> 8)]
        _ = ram.copyIn(b, at: (table ?? descriptorTable) + 16 * UInt64(i))
    }

    /// Puts `head` in the available ring and moves the index on.
    public mutating func publish(_ head: UInt16) {
        _ = ram.store(head, at: availRing + 4 + 2 * UInt64(availIndex % size))
        availIndex &+= 1
        _ = ram.store(availIndex, at: availRing + 2)
    }

    /// Lays out a chain of `parts` in buffers from `arena`, links it from `nextDescriptor` on,
    /// and publishes it. Returns its head and its buffers in order.
    public mutating func submit(_ parts: [Part], arena: inout BufferArena) -> (head: UInt16, buffers: [(buffer: GuestBuffer, writable: Bool)]) {
        let head = nextDescriptor
        var buffers: [(buffer: GuestBuffer, writable: Bool)] = []
        for (i, part) in parts.enumerated() {
            let index = nextDescriptor
            nextDescriptor = (nextDescriptor + 1) % size
            let bytes: [UInt8]
            var flags: UInt16 = 0
            switch part {
            case .readable(let b): bytes = b
            case .writable(let n): bytes = [UInt8](repeating: Self.sentinel, count: n); flags |= VirtioDescriptorFlag.write
            }
            let address = arena.allocate(bytes.count)
            _ = ram.copyIn(bytes, at: address)
            if i < parts.count - 1 { flags |= VirtioDescriptorFlag.next }
            setDescriptor(index, address: address, length: UInt32(bytes.count), flags: flags, next: nextDescriptor)
            buffers.append((GuestBuffer(address: address, length: UInt32(bytes.count)), flags & VirtioDescriptorFlag.write != 0))
        }
        publish(head)
        return (head, buffers)
    }

    /// The device's used index (0xdead when the ring is outside RAM).
    public var usedIndex: UInt16 { ram.u16(at: usedRing + 2) ?? 0xdead }

    /// Used element `slot` (taken modulo the size): the chain's head and the length written.
    public func usedElement(_ slot: UInt16) -> (id: UInt32, length: UInt32) {
        let b = ram.copyOut(at: usedRing + 4 + 8 * UInt64(slot % size), count: 8) ?? [UInt8](repeating: 0, count: 8)
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
        return (u32(0), u32(4))
    }

    /// The used elements the device added since the last call.
    public mutating func takeUsed() -> [(id: UInt32, length: UInt32)] {
        var out: [(id: UInt32, length: UInt32)] = []
        while usedSeen != usedIndex {
            out.append(usedElement(usedSeen))
            usedSeen &+= 1
        }
        return out
    }

    /// The bytes of `buffers`, in order.
    public func contents(_ buffers: [GuestBuffer]) -> [UInt8] {
        buffers.flatMap { ram.copyOut(at: $0.address, count: Int($0.length)) ?? [] }
    }
}

/// Buffer space for chains: from `start` to the end of RAM, handed out 16-byte aligned, starting
/// over at `start` when the end is reached.
public struct BufferArena {
    public let start: UInt64
    public let end: UInt64
    public private(set) var cursor: UInt64

    public init(start: UInt64, end: UInt64) {
        self.start = start; self.end = end; cursor = start
    }

    public mutating func allocate(_ length: Int) -> UInt64 {
        if cursor + UInt64(length) > end { cursor = start }
        precondition(cursor + UInt64(length) <= end, "test RAM too small for a \(length)-byte buffer")
        defer { cursor = (cursor + UInt64(length) + 15) & ~15 }
        return cursor
    }
}
