import GuestABI
import Virtio

/// Why a `VirtioVsock` configuration was refused.
public enum VirtioVsockConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    /// CIDs 0-2 are reserved (hypervisor, local, host); 0xffffffff is VMADDR_CID_ANY, and Linux
    /// uses 32-bit CIDs.
    case reservedCID(UInt64)

    public var description: String {
        switch self {
        case .reservedCID(let c): return "guest CID \(c) is reserved; use 3...4294967294"
        }
    }
}

/// virtio-vsock (virtio 1.2 §5.10) as a pure state machine: guest-initiated STREAM connections
/// to the host (CID 2), each handed to a `VsockHost`. Queues: 0 rx, 1 tx, 2 event (never used:
/// there is no live migration). Configuration space: guest_cid le64. No feature bits are offered
/// (stream only, as with no feature negotiated).
///
/// Threats (every header is the guest's):
/// - Each TX chain is copied out once (at most 44 + 64 KiB bytes) and its header parsed from
///   that copy. `src_cid` must be the guest's CID (anti-spoofing: dropped without reply),
///   `dst_cid` the host, `type` STREAM, `len` at most the payload present and 64 KiB; anything
///   else is answered with RST, and an existing connection with those ports is torn down.
/// - Flow control (§5.10.6.3): the device advertises `bufferSize` bytes of buffer per
///   connection. Data the host cannot take at once waits in that buffer; an RW that would
///   overflow it is data beyond the advertised credit: the connection is reset. The host thus
///   never holds more than a connection's worth per connection in the device.
/// - Host to guest: data is read from the host only up to the guest's credit
///   (buf_alloc - (tx_cnt - fwd_cnt), from the guest's latest header) and the receive chain's
///   room, so the device never holds host data it cannot deliver.
/// - Bounded state: at most `maxConnections` connections (more: RST) and `maxControl` queued
///   control packets; when control packets back up (the guest posts no receive buffers), TX
///   processing stops, leaving chains in the queue, until receive drains them.
/// - Work per call: at most a queue's worth of chains per queue.
public final class VirtioVsock: VirtioDeviceModel, VirtioBackendInput {
    // The numbers a guest driver uses too: GuestABI's VsockABI.
    public static let hostCID = VsockABI.hostCID
    public static let typeStream = VsockABI.typeStream
    public typealias Op = VsockABI.Op
    /// VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE / _SEND.
    public static let shutdownReceive = VsockABI.shutdownReceive
    public static let shutdownSend = VsockABI.shutdownSend

    public static let receiveQueue = VsockABI.receiveQueue
    public static let transmitQueue = VsockABI.transmitQueue
    public static let eventQueue = VsockABI.eventQueue
    public static let queueSize: UInt16 = 256
    public static let maxPayload = VsockABI.maxPayload
    public static let maxConnections = 64
    public static let maxControl = 2 * maxConnections + 32

    public let deviceType = Virtio.DeviceType.vsock
    public let features: UInt64 = 0
    public let queueSizes: [UInt16] = [queueSize, queueSize, queueSize]
    public let guestCID: UInt64
    public let host: VsockHost
    /// The buffer (and credit) the device advertises per connection for guest-to-host data.
    public let bufferSize: UInt32
    public private(set) var counters = VsockCounters()

    struct Key: Equatable { var guestPort: UInt32, hostPort: UInt32 }

    struct Connection {
        var key: Key
        var id: UInt64
        /// Guest data the host has not accepted yet (at most `bufferSize`).
        var toHost: [UInt8] = []
        /// Bytes handed to the host (our fwd_cnt), and the value last told to the guest.
        var fwdCnt: UInt32 = 0
        var advertisedFwdCnt: UInt32 = 0
        /// The guest's credit: its buf_alloc and fwd_cnt, and what we sent it (tx_cnt).
        var peerBufAlloc: UInt32 = 0
        var peerFwdCnt: UInt32 = 0
        var txCnt: UInt32 = 0
        var creditUpdateWanted = false
        /// The guest will send no more / receive no more.
        var guestShutSend = false
        var guestShutReceive = false
        /// The host will send no more (end of stream); SHUTDOWN(SEND) was queued for the guest.
        var hostClosed = false
        /// The host was told the guest sends no more (`finishSending`).
        var hostFinished = false

        var peerFree: Int {
            let inFlight = txCnt &- peerFwdCnt
            return inFlight > peerBufAlloc ? 0 : Int(peerBufAlloc - inFlight)
        }
    }

    struct Control { var key: Key, op: UInt16, flags: UInt32 = 0 }

    private(set) var connections: [Connection] = []
    private(set) var control: [Control] = []
    /// TX stopped because `control` is full.
    public private(set) var transmitBlocked = false
    private var nextRoundRobin = 0

    public var connectionCount: Int { connections.count }
    public var pendingControlCount: Int { control.count }
    /// Guest data waiting for the host, over all connections (each at most `bufferSize`).
    public var bufferedToHost: Int { connections.reduce(0) { $0 + $1.toHost.count } }

    public init(guestCID: UInt64, host: VsockHost, bufferSize: UInt32 = 64 * 1024) throws(VirtioVsockConfigError) {
        guard guestCID >= 3, guestCID < 0xffff_ffff else { throw .reservedCID(guestCID) }
        self.guestCID = guestCID
        self.host = host
        self.bufferSize = max(1, bufferSize)
    }

    public var config: [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: guestCID >> (8 * UInt64($0))) } }

    /// Guest data waits for a host socket that was full: retry soon (`receive` flushes).
    public var hasOutputBacklog: Bool { bufferedToHost > 0 }

    /// What to wait on for connections that can take data for the guest now.
    public var inputHandles: [WaitHandle] {
        connections.compactMap { c in
            guard !c.hostClosed, !c.guestShutReceive, c.peerFree > 0 else { return nil }
            return host.waitHandle(c.id)
        }
    }

    public func reset() {
        for c in connections { host.close(c.id) }
        connections = []
        control = []
        transmitBlocked = false
    }

    public func process(queue index: Int, _ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter?) throws(VirtqueueError) -> Bool {
        switch index {
        case Self.receiveQueue: return try fill(&queue, ram: ram, limit: limit).used
        case Self.transmitQueue: return try transmitAll(&queue, ram: ram, limit: limit)
        default: return false
        }
    }

    public func receive(queues: inout [SplitQueue?], ram: GuestRAM, limits: [QueueLimiter?]) throws(VirtqueueError) -> ReceiveResult {
        let rxLimit = limits.limit(Self.receiveQueue)
        flushAll()
        guard queues.indices.contains(Self.receiveQueue), var rx = queues[Self.receiveQueue] else {
            return ReceiveResult(used: false, needsBuffers: !control.isEmpty)
        }
        var r = try fill(&rx, ram: ram, limit: rxLimit)
        queues[Self.receiveQueue] = rx
        // Control packets drained: TX that stopped for them can go on.
        if transmitBlocked, control.count < Self.maxControl,
           queues.indices.contains(Self.transmitQueue), var tx = queues[Self.transmitQueue] {
            // TX resumed from here is limited by the transmit queue's own limiter.
            let txLimit = limits.limit(Self.transmitQueue)
            if let txLimit { txLimit.start(at: txLimit.now) }
            let txUsed = try transmitAll(&tx, ram: ram, limit: txLimit)
            queues[Self.transmitQueue] = tx
            let r2 = try fill(&rx, ram: ram, limit: rxLimit)
            queues[Self.receiveQueue] = rx
            r = ReceiveResult(used: r.used || r2.used || txUsed, needsBuffers: r2.needsBuffers)
        }
        return r
    }

    // MARK: Transmit

    /// Under a rate limit, a chain the buckets cannot cover (its readable bytes, one operation)
    /// waits in the queue and `limit` records for how long: the guest is slowed, not failed.
    func transmitAll(_ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter? = nil) throws(VirtqueueError) -> Bool {
        transmitBlocked = false
        var used = false
        for _ in 0..<Int(queue.size) {
            // Each packet queues at most one control packet: stop while they back up.
            guard control.count < Self.maxControl else { transmitBlocked = true; break }
            guard let next = try queue.pop(from: ram) else { break }
            switch next.result {
            case .failure: record(.brokenChain)
            case .success(let chain):
                if let limit, !limit.admit(bytes: chain.readableLength) {
                    queue.undoPop()
                    return used
                }
                transmit(chain, ram: ram)
            }
            // §5.10.6.2: the device writes nothing into a TX chain.
            if next.head < queue.size { try queue.push(head: next.head, written: 0, to: ram) }
            used = true
        }
        return used
    }

    /// Copies one TX chain out once (header and at most 64 KiB of payload) and handles it.
    /// Writes nothing into guest memory.
    public func transmit(_ chain: DescriptorChain, ram: GuestRAM) {
        guard chain.readableLength >= UInt64(VsockHeader.size) else { record(.shortHeader); return }
        let bytes: [UInt8]
        do { bytes = try chain.gather(from: ram, limit: VsockHeader.size + Self.maxPayload) } catch {
            record(.memory); return
        }
        guard let h = VsockHeader(bytes) else { record(.memory); return }
        handle(h, payload: bytes[VsockHeader.size...])
        flushAll()
    }

    /// Handles one packet from the guest.
    func handle(_ h: VsockHeader, payload: ArraySlice<UInt8>) {
        counters.packetsFromGuest += 1
        guard h.srcCID == guestCID else { record(.spoofedSource); return }
        let key = Key(guestPort: h.srcPort, hostPort: h.dstPort)
        let index = connections.firstIndex { $0.key == key }
        func refuse(_ why: VsockDrop) {
            record(why)
            if let i = index { drop(at: i) }
            if h.op != Op.rst { control.append(Control(key: key, op: Op.rst)) }
        }
        guard h.dstCID == Self.hostCID else { return refuse(.wrongDestination) }
        guard h.type == Self.typeStream else { return refuse(.badType) }
        guard Int(h.len) <= Self.maxPayload, Int(h.len) <= payload.count else { return refuse(.badLength) }

        if h.op == Op.request {
            if index != nil { return refuse(.duplicateRequest) }
            guard connections.count < Self.maxConnections else { return refuse(.tableFull) }
            guard let id = host.connect(port: h.dstPort) else { return refuse(.connectRefused) }
            counters.connectionsOpened += 1
            connections.append(Connection(key: key, id: id, peerBufAlloc: h.bufAlloc, peerFwdCnt: h.fwdCnt))
            control.append(Control(key: key, op: Op.response))
            return
        }
        guard [Op.rst, Op.shutdown, Op.rw, Op.creditUpdate, Op.creditRequest].contains(h.op) else {
            return refuse(.unknownOp)
        }
        guard let i = index else {
            // RST for nothing: ignore (never answer RST with RST).
            if h.op != Op.rst { refuse(.noConnection) }
            return
        }
        // Every header carries the guest's credit.
        connections[i].peerBufAlloc = h.bufAlloc
        connections[i].peerFwdCnt = h.fwdCnt
        switch h.op {
        case Op.rst:
            drop(at: i)
        case Op.shutdown:
            if h.flags & Self.shutdownSend != 0 { connections[i].guestShutSend = true }
            if h.flags & Self.shutdownReceive != 0 { connections[i].guestShutReceive = true }
            // Both directions closed: the device ends the connection (§5.10.6.5), but only
            // after the data the guest sent before its SHUTDOWN has reached the host.
            settle(i)
        case Op.rw:
            let c = connections[i]
            guard !c.guestShutSend, c.toHost.count + Int(h.len) <= Int(bufferSize) else {
                return refuse(.creditOverrun)
            }
            connections[i].toHost += payload.prefix(Int(h.len))
        case Op.creditRequest:
            connections[i].creditUpdateWanted = true
        default:
            break   // CREDIT_UPDATE: the credit was taken above.
        }
    }

    /// Closes connection `i` on the host and forgets it (and its queued control packets).
    private func drop(at i: Int) {
        let c = connections.remove(at: i)
        host.close(c.id)
        control.removeAll { $0.key == c.key }
    }

    /// After a half close: tells the host once the guest's data has all gone out, and ends the
    /// connection (RST) when neither side will send any more: the host closed its side, or the
    /// guest shut both. Data the guest sent first is never cut off by its own SHUTDOWN; a guest
    /// that will not wait for it resets the connection instead. Returns whether it was dropped.
    @discardableResult
    private func settle(_ i: Int) -> Bool {
        let c = connections[i]
        guard c.guestShutSend, c.toHost.isEmpty else { return false }
        if !c.hostFinished {
            connections[i].hostFinished = true
            host.finishSending(c.id)
        }
        guard c.hostClosed || c.guestShutReceive else { return false }
        drop(at: i)
        control.append(Control(key: c.key, op: Op.rst))
        return true
    }

    /// Offers every connection's buffered guest data to the host.
    func flushAll() {
        var i = 0
        while i < connections.count {
            defer { i += 1 }
            guard !connections[i].toHost.isEmpty else { continue }
            guard let sent = host.send(connections[i].id, connections[i].toHost) else {
                // The host end is gone: the guest's data has nowhere to go.
                record(.hostGone)
                let key = connections[i].key
                drop(at: i)
                control.append(Control(key: key, op: Op.rst))
                i -= 1
                continue
            }
            let n = max(0, min(sent, connections[i].toHost.count))
            guard n > 0 else { continue }
            connections[i].toHost.removeFirst(n)
            connections[i].fwdCnt &+= UInt32(n)
            counters.bytesToHost += UInt64(n)
            // Tell the guest about freed space before it can run out of credit.
            if connections[i].fwdCnt &- connections[i].advertisedFwdCnt >= bufferSize / 2 {
                connections[i].creditUpdateWanted = true
            }
            if settle(i) { i -= 1 }
        }
    }

    // MARK: Receive

    /// Fills receive chains: control packets first, then credit updates, then host data
    /// (round robin, within the guest's credit). At most a queue's worth of chains.
    func fill(_ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter? = nil) throws(VirtqueueError) -> ReceiveResult {
        var used = false
        for _ in 0..<Int(queue.size) {
            guard let next = try queue.pop(from: ram) else {
                return ReceiveResult(used: used, needsBuffers: hasWork)
            }
            var written: UInt32 = 0
            switch next.result {
            case .failure:
                record(.brokenChain)
            case .success(let chain):
                guard chain.writableLength >= UInt64(VsockHeader.size) else {
                    // Nothing is taken for it: no packet is lost to a tiny buffer.
                    record(.rxChainTooSmall)
                    break
                }
                let room = Int(min(chain.writableLength - UInt64(VsockHeader.size), UInt64(Self.maxPayload)))
                guard let (h, payload) = takePacket(room: room, limit: limit) else {
                    // Nothing for the guest: the chain stays available.
                    queue.undoPop()
                    return ReceiveResult(used: used, needsBuffers: false)
                }
                written = deliver(h, payload, into: chain, ram: ram)
            }
            if next.head < queue.size { try queue.push(head: next.head, written: written, to: ram) }
            used = true
        }
        return ReceiveResult(used: used, needsBuffers: false)
    }

    /// Whether a packet may be waiting for a receive buffer (control packets certainly; data
    /// possibly, for a connection the guest gave credit).
    private var hasWork: Bool {
        if !control.isEmpty || connections.contains(where: { $0.creditUpdateWanted }) { return true }
        return connections.contains { !$0.hostClosed && !$0.guestShutReceive && $0.peerFree > 0 }
    }

    private func header(_ c: Connection?, key: Key, op: UInt16, len: UInt32 = 0, flags: UInt32 = 0) -> VsockHeader {
        VsockHeader(srcCID: Self.hostCID, dstCID: guestCID, srcPort: key.hostPort, dstPort: key.guestPort,
                    len: len, op: op, flags: flags, bufAlloc: bufferSize, fwdCnt: c?.fwdCnt ?? 0)
    }

    /// The next packet for a chain with `room` payload bytes, or nil when there is none.
    private func takePacket(room: Int, limit: QueueLimiter?) -> (VsockHeader, [UInt8])? {
        if !control.isEmpty {
            let k = control.removeFirst()
            let i = connections.firstIndex { $0.key == k.key }
            if let i { connections[i].advertisedFwdCnt = connections[i].fwdCnt }
            return (header(i.map { connections[$0] }, key: k.key, op: k.op, flags: k.flags), [])
        }
        if let i = connections.firstIndex(where: { $0.creditUpdateWanted }) {
            connections[i].creditUpdateWanted = false
            connections[i].advertisedFwdCnt = connections[i].fwdCnt
            return (header(connections[i], key: connections[i].key, op: Op.creditUpdate), [])
        }
        guard !connections.isEmpty else { return nil }
        let n = connections.count
        for step in 0..<n {
            let i = (nextRoundRobin + step) % n
            let c = connections[i]
            guard !c.hostClosed, !c.guestShutReceive else { continue }
            var want = min(room, c.peerFree)
            guard want > 0 else { continue }
            if let limit {
                // A receive rate limit: host data waits in the host socket (its sender is slowed by
                // the socket filling) until the buckets cover a packet. Charged for the packet's
                // room up front; what the host did not have is given back below.
                want = min(want, 4096)
                guard limit.admit(bytes: UInt64(want)) else { return nil }
            }
            let read = host.receive(c.id, max: want)
            if let limit {
                var delivered = 0
                if case .data(let b) = read { delivered = min(b.count, want) }
                limit.refund(bytes: UInt64(want - delivered), operation: delivered == 0)
            }
            switch read {
            case .empty:
                continue
            case .reset:
                // Not an orderly end: the guest must not take it for one.
                record(.hostGone)
                nextRoundRobin = 0
                let h = header(nil, key: c.key, op: Op.rst)
                drop(at: i)
                return (h, [])
            case .closed:
                // End of stream from the host: it sends no more, but may still take the guest's
                // data (a half close), so only SEND is shut. A host that is gone altogether fails
                // its next send, and that resets the connection.
                connections[i].hostClosed = true
                connections[i].advertisedFwdCnt = c.fwdCnt
                nextRoundRobin = (i + 1) % n
                let shutdown = header(c, key: c.key, op: Op.shutdown, flags: Self.shutdownSend)
                if c.guestShutSend && c.toHost.isEmpty {
                    // Nobody will send again: RST follows the SHUTDOWN.
                    settle(i)
                }
                return (shutdown, [])
            case .data(var bytes):
                if bytes.count > want { bytes = Array(bytes.prefix(want)) }   // a host that overreads
                guard !bytes.isEmpty else { continue }
                connections[i].txCnt &+= UInt32(bytes.count)
                connections[i].advertisedFwdCnt = c.fwdCnt
                nextRoundRobin = (i + 1) % n
                return (header(c, key: c.key, op: Op.rw, len: UInt32(bytes.count)), bytes)
            }
        }
        return nil
    }

    /// Writes header and payload into the chain's writable buffers. Returns the used length.
    private func deliver(_ h: VsockHeader, _ payload: [UInt8], into chain: DescriptorChain, ram: GuestRAM) -> UInt32 {
        let packet = h.bytes + payload
        do {
            guard try chain.scatter(packet, to: ram) == packet.count else { record(.memory); return 0 }
        } catch {
            record(.memory)
            return 0
        }
        counters.packetsToGuest += 1
        counters.bytesToGuest += UInt64(payload.count)
        return UInt32(packet.count)
    }

    private func record(_ drop: VsockDrop) {
        counters.drops[drop, default: 0] += 1
        counters.lastDrop = drop
    }
}
