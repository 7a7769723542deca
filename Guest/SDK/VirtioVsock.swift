// Bulkhead guest SDK — virtio socket device driver (virtio 1.2 §5.10): stream connections from
// the guest to the host (CID 2), polled.
//
// Queues: rx (queue 0), where the driver posts device-writable buffers that the device fills
// with one packet each; tx (queue 1), where the driver posts packets for the host; event
// (queue 2), where the driver posts device-writable buffers for `struct virtio_vsock_event`
// (le32 id; the only event, TRANSPORT_RESET, resets every connection and may change the CID).
// Configuration space: guest_cid, le64 at offset 0 (read at start-up and after a transport
// reset; 3 ... 0xffff_fffe are accepted). Features: VIRTIO_F_VERSION_1 only (stream sockets;
// no SEQPACKET, no datagrams, no indirect descriptors, no event index).
//
// Packets: `struct virtio_vsock_hdr`, 44 bytes little-endian — src_cid u64, dst_cid u64,
// src_port u32, dst_port u32, len u32, type u16 (1 = STREAM), op u16, flags u32, buf_alloc u32,
// fwd_cnt u32 — followed by `len` payload bytes (RW only). Ops: REQUEST 1, RESPONSE 2, RST 3,
// SHUTDOWN 4 (flags: 1 = the sender receives no more, 2 = sends no more), RW 5, CREDIT_UPDATE 6,
// CREDIT_REQUEST 7.
//
// Memory (SDK heap, never freed): one rx buffer of 44 + `rxPayloadSize` bytes (default 4 KiB)
// per rx descriptor, all posted at start-up as one-descriptor chains and re-posted as soon as
// the packet in them has been handled; one tx buffer of 44 + `txPayloadSize` bytes (default
// 4 KiB) per tx descriptor, holding header and payload contiguously (a one-descriptor chain);
// 8 bytes per event descriptor; per connection slot (at most `maxConnections`, default 4) a
// receive ring of `receiveBufferSize` bytes (a power of two, default 64 KiB), allocated on the
// slot's first use and reused. As with the other drivers a chain's head names its buffer.
//
// Connections: `connect(port:)` picks a local port (random start in 49152...65535, then
// increasing, skipping ports in use), sends REQUEST and polls until RESPONSE (connected) or
// RST (refused). A connection is identified by (host port, local port); the device's packets
// are matched against the live slots. `close` sends SHUTDOWN with both flags and waits for the
// peer's RST (or, after `timeout`, sends RST itself). A SHUTDOWN with both flags from the host
// is answered with RST at once (§5.10.6.5); what is already in the receive ring stays readable,
// then `receive` reports `.closed`. A SHUTDOWN with only SEND from the host: end of stream after
// the ring drains, sending goes on. A SHUTDOWN with RECEIVE: `send` fails with `peerShutdown`.
//
// Credit (§5.10.6.3): every packet the driver sends carries buf_alloc = `receiveBufferSize` and
// fwd_cnt = bytes the program has taken out of the ring with `receive`. `receive` sends a
// CREDIT_UPDATE once a quarter of the ring has been consumed since the peer last heard our
// fwd_cnt (the host can then never be stalled waiting for credit: if it has used all its credit,
// the unconsumed plus consumed-but-unannounced bytes fill the ring, so consuming it crosses the
// threshold), and answers the peer's CREDIT_REQUEST. Sending stays within the peer's credit,
// peer buf_alloc - (tx_cnt - peer fwd_cnt), from the latest header the peer sent; RW payloads
// are at most `txPayloadSize`. With no credit, `send` sends a CREDIT_REQUEST and polls for the
// update; while it waits it asks again at most every millisecond (every 10 ms while a request
// is unanswered): a device may only look for freed space when it hears from the driver.
//
// Polling: there are no interrupts. Every wait (`connect`, `send` without credit or tx
// descriptors, `waitReceive`, `close`) spins with `pause` (`VirtQueue.spinIterations`), then backs
// off with the `wait` hypercall (yield, then 10 µs doubling to 1 ms), checking Status for
// DEVICE_NEEDS_RESET. While it waits for a reply (RESPONSE, CREDIT_UPDATE, RST) it also rings the
// rx doorbell every 4096 spins and at every back-off step: a device may hold a reply until it
// next looks at the rx queue (a doorbell with nothing new costs it one empty pass); waiting for
// data (`waitReceive`) rings it only once, when the back-off starts. `poll()` does
// one round of that work: takes every used rx and event buffer, handles and re-posts it (one rx
// doorbell per round), reclaims tx buffers, and sends pending replies (RST, CREDIT_UPDATE).
//
// Nothing the device writes is trusted. Used lengths above the buffer are a device error
// (`badUsedLength`); used ids must name a chain in flight. An rx packet shorter than a header,
// or not from the host CID to our CID, is dropped and counted. Otherwise it is matched by ports
// to a live connection; for that connection these are protocol violations, which reset it (RST
// sent; `send` throws `protocolViolation` at once, `receive` once the data stored before the
// violation was read, even after an end of stream): `len` different from the payload bytes present,
// a type other than STREAM, a payload on a control op, a fwd_cnt that goes backwards or beyond
// what was sent, RW data beyond the credit the driver advertised or after the peer's
// SHUTDOWN(SEND), an op the state does not allow (RESPONSE when connected, REQUEST, RW before
// RESPONSE), an unknown op. A packet for no connection is answered with RST (never an RST
// itself), at most 16 such answers queued. The header is copied once out of the buffer before it
// is checked.
//
// Not supported: listening (host-initiated REQUESTs are answered RST), connections to CIDs other
// than the host, SEQPACKET (VIRTIO_VSOCK_F_SEQPACKET is not negotiated), several vCPUs using one
// driver at once.

/// `struct virtio_vsock_hdr` (virtio 1.2 §5.10.6), 44 bytes little-endian.
public struct VsockHeader: Equatable {
    public var srcCID: UInt64 = 0
    public var dstCID: UInt64 = 0
    public var srcPort: UInt32 = 0
    public var dstPort: UInt32 = 0
    public var len: UInt32 = 0
    public var type: UInt16 = VirtioVsock.typeStream
    public var op: UInt16 = 0
    public var flags: UInt32 = 0
    public var bufAlloc: UInt32 = 0
    public var fwdCnt: UInt32 = 0

    public static let size = VsockABI.headerSize

    public init() {}

    /// Copies the 44 bytes at `p` (any alignment).
    public init(loading p: UnsafeRawPointer) {
        srcCID = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        dstCID = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        srcPort = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        dstPort = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
        len = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt32.self))
        type = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 28, as: UInt16.self))
        op = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 30, as: UInt16.self))
        flags = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt32.self))
        bufAlloc = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 36, as: UInt32.self))
        fwdCnt = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt32.self))
    }

    /// Writes the 44 bytes to `p` (any alignment).
    public func store(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: srcCID.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: dstCID.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: srcPort.littleEndian, toByteOffset: 16, as: UInt32.self)
        p.storeBytes(of: dstPort.littleEndian, toByteOffset: 20, as: UInt32.self)
        p.storeBytes(of: len.littleEndian, toByteOffset: 24, as: UInt32.self)
        p.storeBytes(of: type.littleEndian, toByteOffset: 28, as: UInt16.self)
        p.storeBytes(of: op.littleEndian, toByteOffset: 30, as: UInt16.self)
        p.storeBytes(of: flags.littleEndian, toByteOffset: 32, as: UInt32.self)
        p.storeBytes(of: bufAlloc.littleEndian, toByteOffset: 36, as: UInt32.self)
        p.storeBytes(of: fwdCnt.littleEndian, toByteOffset: 40, as: UInt32.self)
    }
}

/// What the device did wrong on a connection (the driver reset it).
public enum VsockViolation: Equatable {
    /// `len` is not the number of payload bytes the device wrote.
    case lengthMismatch
    /// `type` is not STREAM.
    case badType
    /// A control op (not RW) with a payload.
    case payloadOnControl
    /// fwd_cnt went backwards, or beyond the bytes the driver sent.
    case badFwdCnt
    /// RW data beyond the credit the driver advertised.
    case creditOverrun
    /// RW data after the peer's SHUTDOWN(SEND).
    case dataAfterShutdown
    /// An op the connection's state does not allow.
    case unexpectedOp
    /// An op virtio 1.2 does not define.
    case unknownOp

    public var name: StaticString {
        switch self {
        case .lengthMismatch: return "header len differs from the payload present"
        case .badType: return "type is not STREAM"
        case .payloadOnControl: return "payload on a control packet"
        case .badFwdCnt: return "fwd_cnt went backwards or beyond what was sent"
        case .creditOverrun: return "data beyond the advertised credit"
        case .dataAfterShutdown: return "data after SHUTDOWN(SEND)"
        case .unexpectedOp: return "op not allowed in this state"
        case .unknownOp: return "unknown op"
        }
    }
}

/// Everything that can go wrong with a vsock connection.
public enum VsockError: Error, Equatable {
    /// The transport or a queue failed (no device, DEVICE_NEEDS_RESET, bad used ring...).
    case device(VirtioError)
    /// The configuration space holds a reserved CID.
    case invalidCID(UInt64)
    /// The host answered REQUEST with RST (nothing listens on that port).
    case refused
    /// The peer did not answer in time.
    case timeout
    /// The peer reset an established connection.
    case connectionReset
    /// The peer said it receives no more (SHUTDOWN with RECEIVE, or both): sending is over.
    case peerShutdown
    /// The program shut down sending (or closed) and then sent.
    case shutDown
    /// Every connection slot is in use.
    case noFreeSlot
    /// The handle is stale (closed) or not from this driver.
    case badConnection
    /// The device broke the protocol on this connection; the driver reset it.
    case protocolViolation(VsockViolation)
    /// The device reported TRANSPORT_RESET: every connection is gone.
    case transportReset
    /// A buffer or argument the driver refuses (e.g. port 0xffff_ffff).
    case badArgument

    public var name: StaticString {
        switch self {
        case .device(let e): return e.name
        case .invalidCID: return "reserved guest CID in the configuration space"
        case .refused: return "connection refused (RST)"
        case .timeout: return "timeout"
        case .connectionReset: return "connection reset by the peer"
        case .peerShutdown: return "the peer shut down receiving"
        case .shutDown: return "sending was shut down"
        case .noFreeSlot: return "no free connection slot"
        case .badConnection: return "stale connection handle"
        case .protocolViolation(let v): return v.name
        case .transportReset: return "transport reset by the device"
        case .badArgument: return "bad argument"
        }
    }
}

extension LineWriter {
    /// Appends a description of `error` (`device error: ...`, `protocol violation: ...`).
    public mutating func append(vsockError error: VsockError) {
        switch error {
        case .device: append("device error: ")
        case .protocolViolation: append("protocol violation: ")
        case .invalidCID(let cid):
            append("reserved guest CID ")
            append(decimal: cid)
            return
        default: break
        }
        append(error.name)
    }
}

/// A connection handle (a slot and its generation: stale handles are refused).
public struct VsockConnection: Equatable {
    public let slot: Int
    public let generation: UInt32
    /// Our port (the guest side).
    public let localPort: UInt32
    /// The host port.
    public let remotePort: UInt32
}

/// What `receive` found.
public enum VsockReceiveResult: Equatable {
    /// This many bytes were copied into the buffer (0 only for an empty buffer).
    case data(Int)
    /// Nothing yet (non-blocking call, or the wait timed out).
    case wouldBlock
    /// End of stream: the peer sends no more (or the connection was closed cleanly) and
    /// everything it sent has been read.
    case closed
}

/// The lifecycle of a connection slot.
public enum VsockState: Equatable {
    case free
    /// REQUEST sent, waiting for RESPONSE.
    case connecting
    case connected
    /// SHUTDOWN with both flags sent, waiting for the peer's RST.
    case closing
    /// Over: cleanly, or with an error (RST, violation, transport reset). Buffered data can
    /// still be read until `close`.
    case closed
}

/// Driver counters (only grow).
public struct VsockCounters: Equatable {
    public var packetsSent: UInt64 = 0
    public var packetsReceived: UInt64 = 0
    /// Payload bytes sent in RW packets / stored from RW packets.
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var creditRequestsSent: UInt64 = 0
    public var creditUpdatesSent: UInt64 = 0
    public var creditUpdatesReceived: UInt64 = 0
    /// The most bytes a receive ring ever held (`receiveBufferSize`: the peer used all the
    /// credit the driver gave it).
    public var peakBuffered: UInt64 = 0
    /// Times `send` had to wait (no credit, or every tx descriptor in flight).
    public var sendWaits: UInt64 = 0
    /// Packets shorter than a header.
    public var malformed: UInt64 = 0
    /// Packets not from the host CID to our CID (dropped).
    public var misaddressed: UInt64 = 0
    /// Packets for no connection (answered with RST unless they were RST).
    public var stray: UInt64 = 0
    /// RST answers dropped because the queue of them was full.
    public var strayResetsDropped: UInt64 = 0
    /// Connections the driver reset for a protocol violation.
    public var violations: UInt64 = 0
    /// RW bytes dropped after our own SHUTDOWN(RECEIVE).
    public var discardedBytes: UInt64 = 0
    public var events: UInt64 = 0
    public var transportResets: UInt64 = 0
}

struct VsockSlot {
    var state: VsockState = .free
    var generation: UInt32 = 0
    var localPort: UInt32 = 0
    var remotePort: UInt32 = 0
    /// Receive ring (`receiveBufferSize` bytes); byte n of the stream is at n & (size - 1).
    var ring: UnsafeMutableRawPointer? = nil
    /// Bytes stored into the ring / taken out by the program (our fwd_cnt) / last announced.
    var rxCnt: UInt32 = 0
    var fwdCnt: UInt32 = 0
    var advertisedFwdCnt: UInt32 = 0
    /// Bytes sent, and the peer's credit from its latest header.
    var txCnt: UInt32 = 0
    var peerBufAlloc: UInt32 = 0
    var peerFwdCnt: UInt32 = 0
    var creditRequestOutstanding = false
    var creditRequestTime: UInt64 = 0
    /// SHUTDOWN flags received from the peer / sent by us.
    var peerShutdown: UInt32 = 0
    var localShutdown: UInt32 = 0
    /// Replies owed to the peer (sent by `flushPending` when a tx descriptor is free).
    var wantRST = false
    var wantCreditUpdate = false
    /// Why the connection ended (nil: cleanly or not yet).
    var failure: VsockError? = nil
}

public final class VirtioVsock {
    // The numbers the device uses too: GuestABI's VsockABI.
    public static let hostCID = VsockABI.hostCID
    public static let typeStream = VsockABI.typeStream
    public typealias Op = VsockABI.Op
    /// SHUTDOWN flags: the sender will receive no more / send no more.
    public static let shutdownReceive = VsockABI.shutdownReceive
    public static let shutdownSend = VsockABI.shutdownSend
    public static let shutdownBoth = VsockABI.shutdownReceive | VsockABI.shutdownSend
    /// `struct virtio_vsock_event` id.
    public static let eventTransportReset: UInt32 = 0

    public static let receiveQueueIndex = UInt32(VsockABI.receiveQueue)
    public static let transmitQueueIndex = UInt32(VsockABI.transmitQueue)
    public static let eventQueueIndex = UInt32(VsockABI.eventQueue)
    /// The largest payload a packet may carry (what Bulkhead's device accepts).
    public static let maxPayload = VsockABI.maxPayload
    static let eventBufferSize = 8
    static let maxStrayResets = 16

    public var transport: VirtioMMIO
    public var rxQueue: VirtQueue
    public var txQueue: VirtQueue
    public var eventQueue: VirtQueue

    /// The guest's CID (configuration space).
    public private(set) var guestCID: UInt64 = 0
    /// Payload room of each rx buffer (the buffer is 44 bytes larger).
    public let rxPayloadSize: Int
    /// Largest RW payload sent per packet.
    public let txPayloadSize: Int
    /// Per-connection receive ring: the buf_alloc the driver advertises.
    public let receiveBufferSize: Int
    /// Default timeout (ns) for connect, close and waits without an explicit one.
    public var timeout: UInt64 = 5_000_000_000
    public private(set) var counters = VsockCounters()

    let rxBuffers: UnsafeMutableRawPointer
    let txBuffers: UnsafeMutableRawPointer
    let eventBuffers: UnsafeMutableRawPointer
    let rxStride: Int
    let txStride: Int
    var slots: [VsockSlot]
    var nextPort: UInt32
    /// RST answers to packets for no connection: (our port, their port).
    var strayResets: [(local: UInt32, remote: UInt32)] = []

    /// Initialises the vsock device behind `entry`: negotiates VERSION_1 only, sets up the
    /// three queues (sizes rounded down to a power of two and QueueNumMax), reads the CID,
    /// posts every rx and event buffer and sets DRIVER_OK.
    public init(_ entry: VirtioDeviceEntry, rxQueueSize: UInt16 = 64, txQueueSize: UInt16 = 64,
                eventQueueSize: UInt16 = 4, rxPayloadSize: Int = 4096, txPayloadSize: Int = 4096,
                receiveBufferSize: Int = 64 * 1024, maxConnections: Int = 4) throws(VsockError) {
        guard rxPayloadSize >= 1, rxPayloadSize <= VirtioVsock.maxPayload,
              txPayloadSize >= 1, txPayloadSize <= VirtioVsock.maxPayload,
              receiveBufferSize >= 4096, receiveBufferSize <= 1 << 30,
              receiveBufferSize & (receiveBufferSize - 1) == 0,
              maxConnections >= 1, maxConnections <= 256 else { throw .badArgument }
        do throws(VirtioError) {
            var t = try VirtioMMIO(entry, expecting: .vsock)
            try t.negotiate(wanted: 0)
            transport = t
            rxQueue = try t.setupQueue(VirtioVsock.receiveQueueIndex, maxSize: rxQueueSize)
            txQueue = try t.setupQueue(VirtioVsock.transmitQueueIndex, maxSize: txQueueSize)
            eventQueue = try t.setupQueue(VirtioVsock.eventQueueIndex, maxSize: eventQueueSize)
        } catch {
            throw .device(error)
        }
        let rxStride = (VsockHeader.size + rxPayloadSize + 63) & ~63
        let txStride = (VsockHeader.size + txPayloadSize + 63) & ~63
        guard let rx = Heap.allocate(byteCount: Int(rxQueue.size) * rxStride, alignment: 4096),
              let tx = Heap.allocate(byteCount: Int(txQueue.size) * txStride, alignment: 4096),
              let ev = Heap.allocate(byteCount: Int(eventQueue.size) * VirtioVsock.eventBufferSize, alignment: 64) else {
            transport.fail()
            throw .device(.outOfMemory)
        }
        self.rxBuffers = rx
        self.txBuffers = tx
        self.eventBuffers = ev
        self.rxStride = rxStride
        self.txStride = txStride
        self.rxPayloadSize = rxPayloadSize
        self.txPayloadSize = txPayloadSize
        self.receiveBufferSize = receiveBufferSize
        self.slots = [VsockSlot](repeating: VsockSlot(), count: maxConnections)
        self.nextPort = 49152 + UInt32(truncatingIfNeeded: randomUInt64() % 16384)
        strayResets.reserveCapacity(VirtioVsock.maxStrayResets)
        try start()
    }

    /// The first vsock device in the boot-info device list.
    public convenience init(bootInfo: BootInfo, rxQueueSize: UInt16 = 64, txQueueSize: UInt16 = 64,
                            rxPayloadSize: Int = 4096, txPayloadSize: Int = 4096,
                            receiveBufferSize: Int = 64 * 1024, maxConnections: Int = 4) throws(VsockError) {
        guard let entry = bootInfo.firstDevice(.vsock) else { throw .device(.noDevice) }
        try self.init(entry, rxQueueSize: rxQueueSize, txQueueSize: txQueueSize, rxPayloadSize: rxPayloadSize,
                      txPayloadSize: txPayloadSize, receiveBufferSize: receiveBufferSize, maxConnections: maxConnections)
    }

    /// Reset and initialise again on the same memory (after DEVICE_NEEDS_RESET). Every
    /// connection ends with `transportReset`.
    public func reinitialize() throws(VsockError) {
        endAllConnections()
        do throws(VirtioError) {
            try transport.negotiate(wanted: 0)
            try transport.setupQueue(reusing: &rxQueue)
            try transport.setupQueue(reusing: &txQueue)
            try transport.setupQueue(reusing: &eventQueue)
        } catch {
            throw .device(error)
        }
        try start()
    }

    /// Reads the CID, posts every rx and event buffer, DRIVER_OK, then rings both doorbells
    /// (a device may ignore doorbells before DRIVER_OK).
    func start() throws(VsockError) {
        try readCID()
        do throws(VirtioError) {
            while rxQueue.freeCount > 0 { try postReceiveBuffer() }
            while eventQueue.freeCount > 0 { try postEventBuffer() }
            try transport.driverOK()
        } catch {
            throw .device(error)
        }
        rxQueue.notify()
        eventQueue.notify()
        strayResets.removeAll(keepingCapacity: true)
    }

    func readCID() throws(VsockError) {
        let cid = transport.config64(0)
        guard cid >= 3, cid < 0xffff_ffff else {
            transport.fail()
            throw .invalidCID(cid)
        }
        guestCID = cid
    }

    // MARK: buffers

    @inline(__always)
    func rxBuffer(_ head: UInt16) -> UnsafeMutableRawPointer { rxBuffers + Int(head & (rxQueue.size - 1)) * rxStride }

    @inline(__always)
    func txBuffer(_ head: UInt16) -> UnsafeMutableRawPointer { txBuffers + Int(head & (txQueue.size - 1)) * txStride }

    /// Posts the buffer of the next free rx descriptor (every free descriptor's buffer is idle).
    func postReceiveBuffer() throws(VirtioError) {
        let head = rxQueue.nextHead
        var buffer = VirtqBuffer(address: address(of: rxBuffer(head)), length: UInt32(VsockHeader.size + rxPayloadSize),
                                 deviceWritable: true)
        let added = try withUnsafePointer(to: &buffer) { (p: UnsafePointer<VirtqBuffer>) throws(VirtioError) -> UInt16 in
            try rxQueue.add(UnsafeBufferPointer(start: p, count: 1))
        }
        rxQueue.publish(added)
    }

    func postEventBuffer() throws(VirtioError) {
        let head = eventQueue.nextHead
        let p = eventBuffers + Int(head & (eventQueue.size - 1)) * VirtioVsock.eventBufferSize
        var buffer = VirtqBuffer(address: address(of: p), length: UInt32(VirtioVsock.eventBufferSize), deviceWritable: true)
        let added = try withUnsafePointer(to: &buffer) { (p: UnsafePointer<VirtqBuffer>) throws(VirtioError) -> UInt16 in
            try eventQueue.add(UnsafeBufferPointer(start: p, count: 1))
        }
        eventQueue.publish(added)
    }

    // MARK: polling

    /// One round of device work: handles every packet and event the device returned (re-posting
    /// the buffers, one doorbell per queue), reclaims tx buffers and sends owed replies.
    public func poll() throws(VsockError) {
        try pollReceive()
        try pollEvents()
        try reclaimTransmitted()
        try flushPending()
    }

    func pollReceive() throws(VsockError) {
        var reposted = 0
        defer { if reposted > 0 { rxQueue.notify() } }
        do throws(VirtioError) {
            while let element = try rxQueue.nextUsed() {
                guard element.known else { throw .badUsedID(element.id) }
                let head = UInt16(truncatingIfNeeded: element.id)
                let length = element.length
                if length <= UInt32(VsockHeader.size + rxPayloadSize) {
                    handlePacket(rxBuffer(head), length: Int(length))
                }
                try postReceiveBuffer()
                reposted += 1
                guard length <= UInt32(VsockHeader.size + rxPayloadSize) else { throw .badUsedLength(length) }
            }
        } catch {
            throw .device(error)
        }
    }

    func pollEvents() throws(VsockError) {
        var reposted = 0
        defer { if reposted > 0 { eventQueue.notify() } }
        do throws(VirtioError) {
            while let element = try eventQueue.nextUsed() {
                guard element.known else { throw .badUsedID(element.id) }
                let head = UInt16(truncatingIfNeeded: element.id)
                let p = eventBuffers + Int(head & (eventQueue.size - 1)) * VirtioVsock.eventBufferSize
                let length = element.length
                let id = UInt32(littleEndian: p.loadUnaligned(as: UInt32.self))
                try postEventBuffer()
                reposted += 1
                guard length <= UInt32(VirtioVsock.eventBufferSize) else { throw .badUsedLength(length) }
                counters.events &+= 1
                if length >= 4 && id == VirtioVsock.eventTransportReset { transportWasReset = true }
            }
        } catch {
            throw .device(error)
        }
        if transportWasReset {
            transportWasReset = false
            counters.transportResets &+= 1
            endAllConnections()
            try readCID()
        }
    }
    var transportWasReset = false

    /// Every live connection ends with `transportReset` (no RST: the device forgot them).
    func endAllConnections() {
        var i = 0
        while i < slots.count {
            if slots[i].state != .free && slots[i].state != .closed {
                slots[i].state = .closed
                slots[i].failure = .transportReset
            }
            slots[i].wantRST = false
            slots[i].wantCreditUpdate = false
            i += 1
        }
        strayResets.removeAll(keepingCapacity: true)
    }

    /// Reclaims every tx chain the device has returned.
    func reclaimTransmitted() throws(VsockError) {
        do throws(VirtioError) {
            while let element = try txQueue.nextUsed() {
                guard element.known else { throw .badUsedID(element.id) }
            }
        } catch {
            throw .device(error)
        }
    }

    /// Polls until `done` is true (returns true) or `timeout` ns passed (returns false): spins,
    /// then backs off with `wait`, calling `idle` before each nap. With `expectingReply` (a
    /// control packet from the device is awaited) it rings the rx doorbell every 4096 spins and
    /// before every nap; without, once when the back-off starts.
    func waitUntil(_ timeout: UInt64, expectingReply: Bool = true, idle: () throws(VsockError) -> Void = {},
                   _ done: () throws(VsockError) -> Bool) throws(VsockError) -> Bool {
        var spins = 0
        while spins < VirtQueue.spinIterations {
            try poll()
            if try done() { return true }
            cpuRelax()
            spins += 1
            if expectingReply && spins & 4095 == 0 { rxQueue.notify() }
        }
        let start = time()
        var nap: UInt64 = 0
        while true {
            try poll()
            if try done() { return true }
            if transport.needsReset { throw .device(.deviceNeedsReset) }
            if time() &- start >= timeout { return false }
            try idle()
            if expectingReply || nap == 0 { rxQueue.notify() }
            _ = wait(nap)
            nap = nap == 0 ? 10_000 : min(nap * 2, 1_000_000)
        }
    }

    // MARK: packets from the device

    func findSlot(local: UInt32, remote: UInt32) -> Int? {
        var i = 0
        while i < slots.count {
            let s = slots[i]
            if s.localPort == local && s.remotePort == remote
                && (s.state == .connecting || s.state == .connected || s.state == .closing) { return i }
            i += 1
        }
        return nil
    }

    /// Resets connection `i` for a protocol violation: RST owed, later calls throw.
    func violate(_ i: Int, _ why: VsockViolation) {
        counters.violations &+= 1
        slots[i].state = .closed
        slots[i].failure = .protocolViolation(why)
        slots[i].wantRST = true
        slots[i].wantCreditUpdate = false
    }

    func queueStrayReset(local: UInt32, remote: UInt32) {
        guard strayResets.count < VirtioVsock.maxStrayResets else {
            counters.strayResetsDropped &+= 1
            return
        }
        strayResets.append((local, remote))
    }

    /// Handles one packet of `length` (≤ the buffer) bytes the device wrote at `p`.
    func handlePacket(_ p: UnsafeRawPointer, length: Int) {
        counters.packetsReceived &+= 1
        guard length >= VsockHeader.size else {
            counters.malformed &+= 1
            return
        }
        let h = VsockHeader(loading: p)   // one copy: everything below checks the copy
        guard h.srcCID == VirtioVsock.hostCID, h.dstCID == guestCID else {
            counters.misaddressed &+= 1
            return
        }
        guard let i = findSlot(local: h.dstPort, remote: h.srcPort) else {
            counters.stray &+= 1
            if h.op != Op.rst { queueStrayReset(local: h.dstPort, remote: h.srcPort) }
            return
        }
        let present = length - VsockHeader.size
        guard Int(h.len) == present else { return violate(i, .lengthMismatch) }
        guard h.type == VirtioVsock.typeStream else { return violate(i, .badType) }
        guard h.op == Op.rw || h.len == 0 else { return violate(i, .payloadOnControl) }

        if h.op == Op.rst {
            // An RST need not carry the connection's credit (the peer may have forgotten it).
            switch slots[i].state {
            case .connecting:
                slots[i].failure = .refused
            case .closing:
                break   // the answer to our SHUTDOWN: a clean close
            default:
                slots[i].failure = .connectionReset
            }
            slots[i].state = .closed
            slots[i].wantCreditUpdate = false
            return
        }
        // Every other header carries the peer's credit: fwd_cnt may only move forward, and
        // never past what we sent.
        let sent = slots[i].txCnt
        guard sent &- h.fwdCnt <= sent &- slots[i].peerFwdCnt else { return violate(i, .badFwdCnt) }
        slots[i].peerBufAlloc = h.bufAlloc
        slots[i].peerFwdCnt = h.fwdCnt

        switch h.op {
        case Op.response:
            guard slots[i].state == .connecting else { return violate(i, .unexpectedOp) }
            slots[i].state = .connected
        case Op.rw:
            guard slots[i].state != .connecting else { return violate(i, .unexpectedOp) }
            guard slots[i].peerShutdown & VirtioVsock.shutdownSend == 0 else { return violate(i, .dataAfterShutdown) }
            if slots[i].localShutdown & VirtioVsock.shutdownReceive != 0 {
                counters.discardedBytes &+= UInt64(h.len)
                return
            }
            let buffered = Int(slots[i].rxCnt &- slots[i].fwdCnt)
            guard Int(h.len) <= receiveBufferSize - buffered, let ring = slots[i].ring else {
                return violate(i, .creditOverrun)
            }
            // Copy into the ring, in at most two pieces.
            let mask = receiveBufferSize - 1
            let at = Int(slots[i].rxCnt) & mask
            let first = min(present, receiveBufferSize - at)
            (ring + at).copyMemory(from: p + VsockHeader.size, byteCount: first)
            if present > first {
                ring.copyMemory(from: p + VsockHeader.size + first, byteCount: present - first)
            }
            slots[i].rxCnt &+= h.len
            counters.bytesReceived &+= UInt64(h.len)
            counters.peakBuffered = max(counters.peakBuffered, UInt64(buffered + present))
        case Op.shutdown:
            guard slots[i].state != .connecting else { return violate(i, .unexpectedOp) }
            slots[i].peerShutdown |= h.flags & VirtioVsock.shutdownBoth
            if slots[i].peerShutdown == VirtioVsock.shutdownBoth {
                // §5.10.6.5: the peer is done both ways; our RST completes the close.
                slots[i].state = .closed
                slots[i].wantRST = true
                slots[i].wantCreditUpdate = false
            }
        case Op.creditUpdate:
            counters.creditUpdatesReceived &+= 1
            slots[i].creditRequestOutstanding = false
        case Op.creditRequest:
            slots[i].wantCreditUpdate = true
        case Op.request:
            return violate(i, .unexpectedOp)
        default:
            return violate(i, .unknownOp)
        }
    }

    // MARK: packets to the device

    /// Writes one packet into a free tx buffer, publishes it and rings the doorbell (unless
    /// `notify` is false: the caller rings it after a batch). Returns
    /// false (nothing sent) when every tx descriptor is in flight. With a slot, the header
    /// carries that connection's ports and credit; without, `ports` and no credit.
    func emit(slot: Int?, ports: (local: UInt32, remote: UInt32) = (0, 0), op: UInt16, flags: UInt32 = 0,
              payload: UnsafeRawBufferPointer? = nil, notify: Bool = true) throws(VsockError) -> Bool {
        try reclaimTransmitted()
        guard txQueue.freeCount > 0 else { return false }
        let count = payload?.count ?? 0
        guard count <= txPayloadSize else { throw .badArgument }
        var h = VsockHeader()
        h.srcCID = guestCID
        h.dstCID = VirtioVsock.hostCID
        h.op = op
        h.flags = flags
        h.len = UInt32(count)
        if let i = slot {
            h.srcPort = slots[i].localPort
            h.dstPort = slots[i].remotePort
            h.bufAlloc = UInt32(receiveBufferSize)
            h.fwdCnt = slots[i].fwdCnt
        } else {
            h.srcPort = ports.local
            h.dstPort = ports.remote
        }
        let head = txQueue.nextHead
        let buffer = txBuffer(head)
        h.store(to: buffer)
        if let source = payload?.baseAddress, count > 0 {
            (buffer + VsockHeader.size).copyMemory(from: source, byteCount: count)
        }
        var chain = VirtqBuffer(address: address(of: buffer), length: UInt32(VsockHeader.size + count), deviceWritable: false)
        do throws(VirtioError) {
            let added = try withUnsafePointer(to: &chain) { (p: UnsafePointer<VirtqBuffer>) throws(VirtioError) -> UInt16 in
                try txQueue.add(UnsafeBufferPointer(start: p, count: 1))
            }
            txQueue.publish(added)
        } catch {
            throw .device(error)
        }
        if notify { txQueue.notify() }
        if let i = slot { slots[i].advertisedFwdCnt = h.fwdCnt }
        counters.packetsSent &+= 1
        return true
    }

    /// `emit`, waiting up to `timeout` for a free tx descriptor.
    func emitWaiting(slot: Int, op: UInt16, flags: UInt32 = 0, timeout: UInt64) throws(VsockError) {
        if try emit(slot: slot, op: op, flags: flags) { return }
        var sent = false
        let ok = try waitUntil(timeout) { () throws(VsockError) -> Bool in
            sent = try emit(slot: slot, op: op, flags: flags)
            return sent
        }
        if !ok { throw .timeout }
    }

    /// Sends the replies owed (RSTs, CREDIT_UPDATEs) while tx descriptors are free.
    func flushPending() throws(VsockError) {
        var i = 0
        while i < slots.count {
            if slots[i].wantRST {
                guard try emit(slot: i, op: Op.rst) else { return }
                slots[i].wantRST = false
            }
            if slots[i].wantCreditUpdate {
                if slots[i].state == .connected || slots[i].state == .closing {
                    guard try emit(slot: i, op: Op.creditUpdate) else { return }
                    counters.creditUpdatesSent &+= 1
                }
                slots[i].wantCreditUpdate = false
            }
            i += 1
        }
        while !strayResets.isEmpty {
            guard try emit(slot: nil, ports: strayResets[strayResets.count - 1], op: Op.rst) else { return }
            strayResets.removeLast()
        }
    }

    // MARK: connections

    func slotIndex(_ c: VsockConnection) throws(VsockError) -> Int {
        guard c.slot >= 0, c.slot < slots.count, slots[c.slot].generation == c.generation,
              slots[c.slot].state != .free else { throw .badConnection }
        return c.slot
    }

    func portInUse(_ port: UInt32) -> Bool {
        for s in slots where s.state != .free && s.localPort == port { return true }
        return false
    }

    /// Forgets slot `i` (an owed RST is handed to the stray queue) and invalidates its handles.
    func release(_ i: Int) {
        if slots[i].wantRST { queueStrayReset(local: slots[i].localPort, remote: slots[i].remotePort) }
        let ring = slots[i].ring
        let generation = slots[i].generation &+ 1
        slots[i] = VsockSlot()
        slots[i].ring = ring
        slots[i].generation = generation
    }

    /// Connects to host port `port` (CID 2): sends REQUEST and polls for the answer. Throws
    /// `refused` (RST), `timeout` (after `timeout` ns, default `self.timeout`; an RST is sent),
    /// `noFreeSlot`, or a device error.
    public func connect(port: UInt32, timeout: UInt64? = nil) throws(VsockError) -> VsockConnection {
        guard port != 0xffff_ffff else { throw .badArgument }   // VMADDR_PORT_ANY
        var free = -1
        var i = 0
        while i < slots.count {
            if slots[i].state == .free { free = i; break }
            i += 1
        }
        guard free >= 0 else { throw .noFreeSlot }
        i = free
        if slots[i].ring == nil {
            guard let ring = Heap.allocate(byteCount: receiveBufferSize, alignment: 4096) else { throw .device(.outOfMemory) }
            slots[i].ring = ring
        }
        var local = nextPort
        while portInUse(local) { local = local >= 65535 ? 49152 : local + 1 }
        nextPort = local >= 65535 ? 49152 : local + 1
        release(i)
        slots[i].localPort = local
        slots[i].remotePort = port
        slots[i].state = .connecting
        let limit = timeout ?? self.timeout
        do throws(VsockError) {
            try emitWaiting(slot: i, op: Op.request, timeout: limit)
            let answered = try waitUntil(limit) { slots[i].state != .connecting }
            if !answered {
                slots[i].wantRST = true
                try flushPending()
                release(i)
                throw .timeout
            }
        } catch {
            if slots[i].state != .free { release(i) }
            throw error
        }
        guard slots[i].state == .connected else {
            let failure = slots[i].failure ?? .refused
            release(i)
            throw failure
        }
        return VsockConnection(slot: i, generation: slots[i].generation, localPort: local, remotePort: port)
    }

    /// The connection's state.
    public func state(of c: VsockConnection) -> VsockState {
        guard c.slot >= 0, c.slot < slots.count, slots[c.slot].generation == c.generation else { return .free }
        return slots[c.slot].state
    }

    /// Bytes waiting in the connection's receive ring.
    public func bytesAvailable(_ c: VsockConnection) throws(VsockError) -> Int {
        let i = try slotIndex(c)
        return Int(slots[i].rxCnt &- slots[i].fwdCnt)
    }

    /// The peer's credit for us: buf_alloc - (tx_cnt - fwd_cnt) from its latest header.
    public func sendCredit(_ c: VsockConnection) throws(VsockError) -> Int { credit(try slotIndex(c)) }

    func credit(_ i: Int) -> Int {
        let inFlight = slots[i].txCnt &- slots[i].peerFwdCnt
        return inFlight >= slots[i].peerBufAlloc ? 0 : Int(slots[i].peerBufAlloc - inFlight)
    }

    /// Throws why connection `i` cannot send.
    func checkSendable(_ i: Int) throws(VsockError) {
        let s = slots[i]
        if s.localShutdown & VirtioVsock.shutdownSend != 0 { throw .shutDown }
        if s.state == .closed, let failure = s.failure { throw failure }
        if s.peerShutdown & VirtioVsock.shutdownReceive != 0 || s.state == .closed { throw .peerShutdown }
        guard s.state == .connected else { throw .badConnection }
    }

    /// Sends a CREDIT_REQUEST. Without `now` (the first attempt) only if none is outstanding;
    /// with it (while waiting) at most every millisecond once the last one was answered, every
    /// 10 ms while it is not.
    func requestCredit(_ i: Int, now: UInt64?) throws(VsockError) {
        guard slots[i].state == .connected else { return }
        if let now {
            let interval: UInt64 = slots[i].creditRequestOutstanding ? 10_000_000 : 1_000_000
            guard now &- slots[i].creditRequestTime >= interval else { return }
        } else if slots[i].creditRequestOutstanding {
            return
        }
        if try emit(slot: i, op: Op.creditRequest) {
            counters.creditRequestsSent &+= 1
            slots[i].creditRequestOutstanding = true
            slots[i].creditRequestTime = now ?? time()
        }
    }

    /// Sends as much of `bytes` as the peer's credit and the free tx descriptors allow now.
    /// Returns the number of bytes queued (0: no credit — a CREDIT_REQUEST went out — or no
    /// free descriptor). Throws if the connection cannot send.
    public func trySend(_ c: VsockConnection, _ bytes: UnsafeRawBufferPointer) throws(VsockError) -> Int {
        try poll()
        let i = try slotIndex(c)
        try checkSendable(i)
        guard let base = bytes.baseAddress else { return 0 }
        var done = 0
        defer { if done > 0 { txQueue.notify() } }   // one doorbell for the batch
        while done < bytes.count {
            let room = credit(i)
            if room == 0 {
                if done == 0 { try requestCredit(i, now: nil) }
                break
            }
            let n = min(room, bytes.count - done, txPayloadSize)
            guard try emit(slot: i, op: Op.rw, payload: UnsafeRawBufferPointer(start: base + done, count: n),
                           notify: false) else { break }
            slots[i].txCnt &+= UInt32(n)
            counters.bytesSent &+= UInt64(n)
            done += n
        }
        return done
    }

    /// Sends all of `bytes`, waiting for credit and tx descriptors as needed (`timeout` ns
    /// without progress, default `self.timeout`: throws `timeout`, with part of the bytes
    /// possibly sent). Returns once every byte is queued for the device.
    public func send(_ c: VsockConnection, _ bytes: UnsafeRawBufferPointer, timeout: UInt64? = nil) throws(VsockError) {
        guard let base = bytes.baseAddress else { return }
        let limit = timeout ?? self.timeout
        var done = 0
        while done < bytes.count {
            let n = try trySend(c, UnsafeRawBufferPointer(start: base + done, count: bytes.count - done))
            done += n
            if n > 0 || done == bytes.count { continue }
            let i = c.slot
            counters.sendWaits &+= 1
            let ready = try waitUntil(limit, idle: { () throws(VsockError) in
                try requestCredit(i, now: time())
            }) { () throws(VsockError) -> Bool in
                try checkSendable(i)
                return credit(i) > 0 && txQueue.freeCount > 0
            }
            if !ready { throw .timeout }
        }
    }

    /// Takes up to `buffer.count` bytes the peer sent, without waiting. `.closed` once the peer
    /// sends no more and everything was read; throws the connection's error (reset, violation)
    /// once the data that arrived before it was read.
    public func receive(_ c: VsockConnection, into buffer: UnsafeMutableRawBufferPointer) throws(VsockError) -> VsockReceiveResult {
        try poll()
        let i = try slotIndex(c)
        let available = Int(slots[i].rxCnt &- slots[i].fwdCnt)
        if available > 0 {
            guard let destination = buffer.baseAddress, buffer.count > 0, let ring = slots[i].ring else { return .data(0) }
            let n = min(available, buffer.count)
            let mask = receiveBufferSize - 1
            let at = Int(slots[i].fwdCnt) & mask
            let first = min(n, receiveBufferSize - at)
            destination.copyMemory(from: ring + at, byteCount: first)
            if n > first { (destination + first).copyMemory(from: ring, byteCount: n - first) }
            slots[i].fwdCnt &+= UInt32(n)
            // Tell the peer about the room once a quarter of the ring was consumed unannounced.
            if slots[i].state == .connected, slots[i].peerShutdown & VirtioVsock.shutdownSend == 0,
               Int(slots[i].fwdCnt &- slots[i].advertisedFwdCnt) >= receiveBufferSize / 4 {
                slots[i].wantCreditUpdate = true
                try flushPending()
            }
            return .data(n)
        }
        // An error (reset, violation) wins over an earlier end of stream: the program must
        // learn that the connection did not end cleanly.
        if slots[i].state == .closed, let failure = slots[i].failure { throw failure }
        if slots[i].state == .closed { return .closed }
        if slots[i].peerShutdown & VirtioVsock.shutdownSend != 0 { return .closed }
        if slots[i].localShutdown & VirtioVsock.shutdownReceive != 0 { return .closed }
        return .wouldBlock
    }

    /// `receive`, waiting up to `timeout` ns (default `self.timeout`) for data or the end of the
    /// stream. `.wouldBlock` means the wait timed out.
    public func waitReceive(_ c: VsockConnection, into buffer: UnsafeMutableRawBufferPointer,
                            timeout: UInt64? = nil) throws(VsockError) -> VsockReceiveResult {
        let first = try receive(c, into: buffer)
        if first != .wouldBlock { return first }
        let i = c.slot
        // Data and the host's SHUTDOWN come when the host has them, not in answer to us.
        _ = try waitUntil(timeout ?? self.timeout, expectingReply: false) {
            slots[i].rxCnt != slots[i].fwdCnt || slots[i].state == .closed
                || slots[i].peerShutdown & VirtioVsock.shutdownSend != 0
        }
        return try receive(c, into: buffer)
    }

    /// Sends SHUTDOWN with `flags` (`shutdownSend`, `shutdownReceive`, accumulated with earlier
    /// ones). After SEND no more data may be sent; after RECEIVE arriving data is dropped. With
    /// both, the connection is `closing` until the peer's RST (use `close` to wait for it).
    public func shutdown(_ c: VsockConnection, flags: UInt32, timeout: UInt64? = nil) throws(VsockError) {
        let i = try slotIndex(c)
        let wanted = flags & VirtioVsock.shutdownBoth
        guard wanted != 0 else { throw .badArgument }
        guard slots[i].state == .connected else { return }   // nothing left to shut down
        let all = slots[i].localShutdown | wanted
        try emitWaiting(slot: i, op: Op.shutdown, flags: all, timeout: timeout ?? self.timeout)
        slots[i].localShutdown = all
        if all == VirtioVsock.shutdownBoth { slots[i].state = .closing }
    }

    /// Closes the connection: SHUTDOWN with both flags, then waits up to `timeout` (default
    /// `self.timeout`) for the peer's RST; without one it sends RST itself. Returns true if the
    /// connection ended cleanly (the peer's RST, or its own SHUTDOWN of both directions, and no
    /// error before). The handle is invalid afterwards, whatever happens.
    @discardableResult
    public func close(_ c: VsockConnection, timeout: UInt64? = nil) throws(VsockError) -> Bool {
        let i = try slotIndex(c)
        let limit = timeout ?? self.timeout
        var clean = false
        do throws(VsockError) {
            if slots[i].state == .connected {
                try shutdown(c, flags: VirtioVsock.shutdownBoth, timeout: limit)
            }
            if slots[i].state == .closing {
                let answered = try waitUntil(limit) { slots[i].state != .closing }
                if !answered { slots[i].wantRST = true }
            }
            clean = slots[i].state == .closed && slots[i].failure == nil
            try flushPending()
        } catch {
            release(i)
            throw error
        }
        release(i)
        // Best effort: owed RSTs now in the stray queue.
        try flushPending()
        return clean
    }

    /// Waits up to `timeout` ns (default `self.timeout`) until the device has taken every
    /// packet from the tx queue.
    public func flush(timeout: UInt64? = nil) throws(VsockError) {
        let ok = try waitUntil(timeout ?? self.timeout) { txQueue.inFlight == 0 }
        if !ok { throw .timeout }
    }
}
