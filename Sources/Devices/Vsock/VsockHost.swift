import GuestABI
import Virtio

/// What a `VsockHost` had for one connection.
public enum VsockHostRead: Equatable, Sendable {
    /// Bytes for the guest (never more than asked for, never empty).
    case data([UInt8])
    /// Nothing now; try again when the connection's descriptor is readable.
    case empty
    /// The host side closed: no more data will come.
    case closed
    /// The host side reset the connection (data may have been lost): the guest gets RST.
    case reset
}

/// The host side of virtio-vsock: where guest-initiated stream connections to the host (CID 2)
/// go. The device validates every packet before it calls the host, so a host sees only
/// connections and bytes the guest was allowed to make. Never blocks.
public protocol VsockHost: AnyObject {
    /// Opens a connection for a guest connecting to host port `port` (Firecracker maps this to
    /// the Unix socket "PATH_PORT"). Returns a connection id, or nil when nothing listens there.
    func connect(port: UInt32) -> UInt64?
    /// Offers bytes to connection `id`; returns how many it accepted now (0...bytes.count), or
    /// nil when the host end is gone for good (the device then resets the connection).
    func send(_ id: UInt64, _ bytes: [UInt8]) -> Int?
    /// Reads at most `max` (> 0) bytes from connection `id`.
    func receive(_ id: UInt64, max: Int) -> VsockHostRead
    /// The guest will send nothing more on connection `id`, and everything it sent was accepted:
    /// the host end sees end-of-stream (a half close; data may still flow to the guest).
    func finishSending(_ id: UInt64)
    /// Closes connection `id` (the guest reset or shut it down). The id is not used again.
    func close(_ id: UInt64)
    /// What is readable when connection `id` has data, for the VMM's poll loop; nil if nothing.
    func waitHandle(_ id: UInt64) -> WaitHandle?
}

extension VsockHost {
    public func waitHandle(_ id: UInt64) -> WaitHandle? { nil }
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
