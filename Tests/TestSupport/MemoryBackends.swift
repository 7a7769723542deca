import Devices

// In-memory back ends for the device models, for tests and fuzzers (never part of a product):
// a disk, a network link and a vsock host, each with failure injection and a record of what the
// device did with it.

/// An in-memory disk for tests and fuzzers, with failure injection and an observer that sees
/// every operation before it is carried out.
public final class MemoryBlockBackend: BlockBackend {
    public typealias Operation = BlockOperation

    /// The disk as the guest sees it.
    public private(set) var bytes: [UInt8]
    /// The disk as of the last successful flush: what would survive a host crash.
    public private(set) var durable: [UInt8]
    /// Operations that fail (nil / false, nothing changed) while they are in this set.
    public var failing: Set<Operation> = []
    /// Called with each operation and its sector range before it runs (flush: 0, 0).
    public var observer: ((Operation, UInt64, UInt64) -> Void)?
    /// How many times each operation was called (failed calls included).
    public private(set) var calls: [Operation: Int] = [:]
    /// Calls that named a range outside the disk, or a length not a multiple of 512. A correct
    /// device never makes one.
    public private(set) var refusedCalls = 0

    public var sectorCount: UInt64 { UInt64(bytes.count / VirtioBlock.sectorSize) }

    /// A disk of `sectors` sectors, every byte `fill`.
    public init(sectors: Int, fill: UInt8 = 0) {
        bytes = [UInt8](repeating: fill, count: max(0, sectors) * VirtioBlock.sectorSize)
        durable = bytes
    }

    /// A disk holding `contents`, cut to a whole number of sectors.
    public init(contents: [UInt8]) {
        bytes = Array(contents.prefix(contents.count - contents.count % VirtioBlock.sectorSize))
        durable = bytes
    }

    private func begin(_ op: Operation, _ sector: UInt64, _ sectors: UInt64) -> Range<Int>? {
        calls[op, default: 0] += 1
        observer?(op, sector, sectors)
        guard !failing.contains(op) else { return nil }
        let (end, o) = sector.addingReportingOverflow(sectors)
        guard !o, end <= sectorCount else { refusedCalls += 1; return nil }
        let size = UInt64(VirtioBlock.sectorSize)
        return Int(sector * size)..<Int(end * size)
    }

    public func read(sector: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, count % VirtioBlock.sectorSize == 0 else { refusedCalls += 1; return nil }
        guard let r = begin(.read, sector, UInt64(count / VirtioBlock.sectorSize)) else { return nil }
        return Array(bytes[r])
    }

    public func write(sector: UInt64, bytes data: [UInt8]) -> Bool {
        guard data.count % VirtioBlock.sectorSize == 0 else { refusedCalls += 1; return false }
        guard let r = begin(.write, sector, UInt64(data.count / VirtioBlock.sectorSize)) else { return false }
        bytes.replaceSubrange(r, with: data)
        return true
    }

    public func flush() -> Bool {
        calls[.flush, default: 0] += 1
        observer?(.flush, 0, 0)
        guard !failing.contains(.flush) else { return false }
        durable = bytes
        return true
    }

    public func discard(sector: UInt64, sectors: UInt64) -> Bool {
        guard let r = begin(.discard, sector, sectors) else { return false }
        // Contents are undefined after a discard; like a punched hole, they read as zero here.
        bytes.replaceSubrange(r, with: repeatElement(0, count: r.count))
        return true
    }

    public func writeZeroes(sector: UInt64, sectors: UInt64) -> Bool {
        guard let r = begin(.writeZeroes, sector, sectors) else { return false }
        bytes.replaceSubrange(r, with: repeatElement(0, count: r.count))
        return true
    }
}

/// A link in memory, for tests and fuzzers: frames for the guest wait in `inbound`, frames from
/// the guest collect in `sent`. `sendCapacity` and `failSends` model a full or broken link.
public final class MemoryFrameBackend: FrameBackend {
    public let waitHandle: WaitHandle? = nil
    /// Frames waiting for the guest, oldest first.
    public private(set) var inbound: [[UInt8]] = []
    /// Every frame the back end accepted, in order.
    public private(set) var sent: [[UInt8]] = []
    /// How many more frames `send` accepts before it answers `wouldBlock` (nil: no limit).
    public var sendCapacity: Int?
    /// `send` answers `failed` (nothing is recorded).
    public var failSends = false
    /// Calls of `send` and `receive`, whatever they answered.
    public private(set) var sendCalls = 0
    public private(set) var receiveCalls = 0
    public var isClosed = false

    public init() {}

    /// Queues `frame` for the guest.
    public func deliver(_ frame: [UInt8]) { inbound.append(frame) }

    public func send(_ frame: [UInt8]) -> FrameSendResult {
        sendCalls += 1
        if failSends { return .failed }
        if let c = sendCapacity {
            guard c > 0 else { return .wouldBlock }
            sendCapacity = c - 1
        }
        sent.append(frame)
        return .sent
    }

    public func receive() -> [UInt8]? {
        receiveCalls += 1
        guard !inbound.isEmpty else { return nil }
        return inbound.removeFirst()
    }
}

/// A host in memory, for tests and fuzzers: `listening` ports accept, bytes from the guest
/// collect per connection, bytes for the guest wait in `inbound`.
public final class MemoryVsockHost: VsockHost {
    public struct Connection: Equatable, Sendable {
        public var port: UInt32
        /// Everything the host accepted from the guest, in order.
        public var received: [UInt8] = []
        /// Bytes waiting for the guest.
        public var inbound: [UInt8] = []
        /// The host side is closing: after `inbound` drains, reads answer `.closed`.
        public var hostClosed = false
        /// Closed by the device.
        public var closed = false
        /// The device said the guest will send no more (`finishSending`).
        public var guestFinished = false
        /// Sends fail as if the host end were gone.
        public var broken = false
        /// Reads report a reset.
        public var reset = false
        /// How many more bytes `send` accepts (nil: no limit).
        public var sendCapacity: Int?
    }

    public var listening: Set<UInt32> = []
    public private(set) var connections: [UInt64: Connection] = [:]
    public private(set) var nextID: UInt64 = 1
    /// The capacity new connections start with (nil: no limit).
    public var defaultSendCapacity: Int?

    public init(listening: Set<UInt32> = []) { self.listening = listening }

    /// Connections not closed by the device.
    public var openCount: Int { connections.values.filter { !$0.closed }.count }
    /// All bytes every connection accepted.
    public var totalReceived: Int { connections.values.reduce(0) { $0 + $1.received.count } }

    public func connect(port: UInt32) -> UInt64? {
        guard listening.contains(port) else { return nil }
        let id = nextID
        nextID += 1
        connections[id] = Connection(port: port, sendCapacity: defaultSendCapacity)
        return id
    }

    public func send(_ id: UInt64, _ bytes: [UInt8]) -> Int? {
        guard var c = connections[id], !c.closed, !c.guestFinished else { return 0 }
        if c.broken { return nil }
        let n = min(bytes.count, c.sendCapacity ?? .max)
        c.received += bytes.prefix(n)
        if let cap = c.sendCapacity { c.sendCapacity = cap - n }
        connections[id] = c
        return n
    }

    public func receive(_ id: UInt64, max: Int) -> VsockHostRead {
        guard var c = connections[id], !c.closed else { return .closed }
        if c.reset { return .reset }
        if c.inbound.isEmpty { return c.hostClosed ? .closed : .empty }
        let n = min(max, c.inbound.count)
        let out = Array(c.inbound.prefix(n))
        c.inbound.removeFirst(n)
        connections[id] = c
        return .data(out)
    }

    public func close(_ id: UInt64) { connections[id]?.closed = true }

    public func finishSending(_ id: UInt64) { connections[id]?.guestFinished = true }

    /// Queues bytes for the guest on connection `id`.
    public func deliver(_ bytes: [UInt8], to id: UInt64) { connections[id]?.inbound += bytes }
    /// The host closes connection `id` (after its queued bytes).
    public func hangUp(_ id: UInt64) { connections[id]?.hostClosed = true }
    /// Lets connection `id` accept `n` more bytes.
    public func setSendCapacity(_ n: Int?, for id: UInt64) { connections[id]?.sendCapacity = n }
    /// The host resets connection `id`: reads report it.
    public func resetConnection(_ id: UInt64) { connections[id]?.reset = true }
    /// Makes every later send on connection `id` fail (a host peer that went away).
    public func breakConnection(_ id: UInt64) { connections[id]?.broken = true }
}
