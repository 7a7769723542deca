import Virtio

/// Why a `VirtioNet` configuration was refused.
public enum VirtioNetConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A MAC address is 6 bytes.
    case macLength(Int)
    /// The I/G bit (bit 0 of the first byte) is set: a group address cannot be a station's.
    case multicastMAC([UInt8])
    /// 00:00:00:00:00:00 is no station's address.
    case zeroMAC
    /// The MTU must be 68 (the IPv4 minimum, §5.1.4.1) to `VirtioNet.maxMTU`.
    case mtuOutOfRange(UInt16)

    public var description: String {
        switch self {
        case .macLength(let n): return "a MAC address has 6 bytes, not \(n)"
        case .multicastMAC(let m): return "MAC \(VirtioNet.format(mac: m)) is a multicast (group) address; use a unicast one (first byte even), e.g. locally administered 02:xx:xx:xx:xx:xx"
        case .zeroMAC: return "MAC 00:00:00:00:00:00 is not a station address"
        case .mtuOutOfRange(let m): return "MTU \(m) is outside \(VirtioNet.minMTU)...\(VirtioNet.maxMTU)"
        }
    }
}

/// virtio-net (virtio 1.2 §5.1) as a pure state machine: one receive queue (0) and one transmit
/// queue (1), no control queue, no multiqueue, no offloads. Frames go to and come from a
/// `FrameBackend`.
///
/// Offered features: VIRTIO_NET_F_MAC (the configured address), VIRTIO_NET_F_STATUS (link always
/// up) and VIRTIO_NET_F_MTU. With VIRTIO_F_VERSION_1 every frame is preceded by a 12-byte
/// `virtio_net_hdr` {flags u8, gso_type u8, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers: le16}. Configuration space: mac[6], status le16 = LINK_UP, max_virtqueue_pairs
/// le16 = 1, mtu le16.
///
/// Threats (every byte of every chain comes from a hostile driver; frames from the link come from
/// another tenant and are just as hostile):
/// - Spoofing: a transmitted frame whose source MAC is not the device's is dropped and counted,
///   before it reaches the back end. A tenant cannot impersonate another station, poison a
///   switch's MAC table with addresses it does not own, or send with a multicast source. (A driver
///   that did not negotiate VIRTIO_NET_F_MAC and chose its own address can send nothing: by
///   design.) The destination is not filtered here; that is the switch's job.
/// - Offloads: no checksum or segmentation offload is offered, so a header with NEEDS_CSUM or a
///   `gso_type` other than NONE is a request the device never agreed to: the frame is dropped and
///   counted (§5.1.6.2.1), never forwarded with an unfinished checksum or as a 64 KiB super-frame.
///   Other flag bits are ignored, as §5.1.6.2.2 requires; `hdr_len`, `gso_size`, `csum_start`,
///   `csum_offset` and `num_buffers` mean nothing without offloads and are never used.
/// - Frame size: a transmitted frame is 14 (Ethernet header) to `mtu` + 14 bytes, or `mtu` + 18
///   with an 802.1Q tag. The chain's readable length is checked before anything is copied, so a
///   4 GiB chain costs nothing; the frame is copied out of guest memory once, then parsed.
/// - Received frames: the link's frames get the same size check (§5.1.4.1: never pass a frame
///   larger than the MTU to a driver that negotiated it). Each goes whole into one chain
///   (no VIRTIO_NET_F_MRG_RXBUF, so `num_buffers` is 1, §5.1.6.3.2) whose device-writable bytes
///   must hold the header and the frame; a smaller chain is returned with used length 0 (nothing
///   written; Linux counts it as a length error and reposts the buffer) and the frame is
///   dropped, never truncated (the spec defines no partial delivery without MRG_RXBUF). The used length never exceeds the chain's writable bytes; the device writes only
///   into those buffers.
/// - Back pressure: when the back end would block, the chain goes back to the available ring
///   (`undoPop`) and transmission stops; the device does not spin, and the VMM resumes it when the
///   back end is writable (`blockedTransmitDescriptors`). When the guest has no receive buffer, one
///   frame is held (never more) and `receive` answers needsBuffers, so the VMM stops polling the
///   link until the guest rings a doorbell.
/// - Work per call: transmit serves at most one queue's worth of chains (and honours the queue's
///   rate limit, as `serveAll` does); receive takes at most `maxFramesPerPass` frames from the
///   link, each using at most one chain.
/// - Broken chains are returned with used length 0 and counted; ring corruption (`pop` throws)
///   asks for a reset, as for every device. A reset drops the held frame.
public final class VirtioNet: VirtioDeviceModel, VirtioBackendInput {
    /// Feature bits (§5.1.3).
    public enum Feature {
        public static let csum: UInt64 = 1 << 0        // VIRTIO_NET_F_CSUM (not offered)
        public static let mtu: UInt64 = 1 << 3         // VIRTIO_NET_F_MTU
        public static let mac: UInt64 = 1 << 5         // VIRTIO_NET_F_MAC
        public static let mergeRxBuffers: UInt64 = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF (not offered)
        public static let status: UInt64 = 1 << 16     // VIRTIO_NET_F_STATUS
    }

    /// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1 and no hash report (§5.1.6).
    public static let headerSize = 12
    public static let ethernetHeaderSize = 14
    /// An 802.1Q tag: 4 more bytes after the MAC addresses, ethertype 0x8100.
    public static let vlanTagSize = 4
    public static let vlanEthertype: UInt16 = 0x8100
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM.
    public static let flagNeedsChecksum: UInt8 = 1
    /// VIRTIO_NET_S_LINK_UP.
    public static let statusLinkUp: UInt16 = 1
    public static let minMTU: UInt16 = 68
    /// Jumbo frames up to 9216 bytes of payload; larger links are not supported.
    public static let maxMTU: UInt16 = 9216
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    public static let queueSize: UInt16 = 256
    /// Frames taken from the link per `receive` call, so a flooding peer cannot keep the device
    /// thread from the other devices.
    public static let maxFramesPerPass = 256

    public let deviceType = Virtio.DeviceType.network
    public let features: UInt64 = Feature.mac | Feature.status | Feature.mtu
    public let queueSizes: [UInt16] = [queueSize, queueSize]
    public let mac: [UInt8]
    public let mtu: UInt16
    public let backend: FrameBackend
    public private(set) var counters = NetCounters()
    /// A frame from the link waiting for a receive buffer (at most one).
    public private(set) var pendingFrame: [UInt8]?
    /// Transmission stopped because the back end would block; chains wait in the queue.
    public private(set) var transmitBlocked = false

    /// Refuses a MAC that is not 6 bytes, is multicast or all zero, and an MTU outside
    /// `minMTU...maxMTU`.
    public init(backend: FrameBackend, mac: [UInt8], mtu: UInt16 = 1500) throws(VirtioNetConfigError) {
        guard mac.count == 6 else { throw .macLength(mac.count) }
        guard mac[0] & 1 == 0 else { throw .multicastMAC(mac) }
        guard mac.contains(where: { $0 != 0 }) else { throw .zeroMAC }
        guard (Self.minMTU...Self.maxMTU).contains(mtu) else { throw .mtuOutOfRange(mtu) }
        self.backend = backend
        self.mac = mac
        self.mtu = mtu
    }

    /// The largest frame (Ethernet header included, no virtio header) that may pass, tagged or not.
    public var maxFrameSize: Int { Int(mtu) + Self.ethernetHeaderSize + Self.vlanTagSize }

    public var config: [UInt8] {
        var c = mac
        c += le16(Self.statusLinkUp)   // status
        c += le16(1)                   // max_virtqueue_pairs (no MQ: exists for the layout only)
        c += le16(mtu)                 // mtu
        return c
    }

    public var inputHandles: [WaitHandle] {
        guard let h = backend.waitHandle, !backend.isClosed else { return [] }
        return [h]
    }

    /// What to poll for writability: while transmission is blocked, the VMM waits for the back
    /// end to become writable and then notifies `transmitQueue` again (the guest may not ring:
    /// its queue can be full, or with event index it has already told the device).
    public var blockedTransmitHandles: [WaitHandle] {
        guard transmitBlocked, let h = backend.waitHandle else { return [] }
        return [h]
    }

    public func reset() {
        if pendingFrame != nil { record(.rxReset) }
        pendingFrame = nil
        transmitBlocked = false
    }

    public func process(queue index: Int, _ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter?) throws(VirtqueueError) -> Bool {
        switch index {
        case Self.receiveQueue:
            // New receive buffers: a held frame (and whatever else the link has) can go in.
            return try fill(&queue, ram: ram, limit: limit).used
        case Self.transmitQueue:
            return try transmitAll(&queue, ram: ram, limit: limit)
        default:
            return false
        }
    }

    public func receive(queues: inout [SplitQueue?], ram: GuestRAM, limits: [QueueLimiter?]) throws(VirtqueueError) -> ReceiveResult {
        guard queues.indices.contains(Self.receiveQueue), var rx = queues[Self.receiveQueue] else {
            // No receive queue yet: hold one frame and wait for the driver's first doorbell.
            if pendingFrame == nil { pendingFrame = nextFrame(budget: Self.maxFramesPerPass) }
            return ReceiveResult(used: false, needsBuffers: pendingFrame != nil)
        }
        let r = try fill(&rx, ram: ram, limit: limits.limit(Self.receiveQueue))
        queues[Self.receiveQueue] = rx
        return r
    }

    // MARK: Transmit

    /// Serves the transmit queue: at most one queue's worth of chains, each a frame to validate
    /// and send. Stops, leaving the chain in the queue, when the back end would block or the rate
    /// limit says wait.
    func transmitAll(_ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter? = nil) throws(VirtqueueError) -> Bool {
        transmitBlocked = false
        var used = false
        for _ in 0..<Int(queue.size) {
            guard let next = try queue.pop(from: ram) else { break }
            switch next.result {
            case .failure:
                record(.brokenChain)
            case .success(let chain):
                // As `serveAll`: a chain the buckets cannot cover yet waits in the queue.
                if let limit, !limit.admit(bytes: chain.readableLength + chain.writableLength) {
                    queue.undoPop()
                    return used
                }
                if transmit(chain, ram: ram) == .wouldBlock {
                    // Back pressure reaches the guest: the chain stays available, its queue
                    // fills, its stack slows down. Charged to the rate limit again on retry.
                    queue.undoPop()
                    return used
                }
            }
            // §5.1.6.2: nothing is written into a transmit chain; its used length is 0.
            if next.head < queue.size { try queue.push(head: next.head, written: 0, to: ram) }
            used = true
        }
        return used
    }

    /// What became of one transmit chain.
    public enum TransmitOutcome: Equatable, Sendable {
        case sent
        case dropped(NetDrop)
        /// The back end would block: the chain must go back to the queue.
        case wouldBlock
    }

    /// Validates one transmit chain and offers its frame to the back end. Writes nothing into
    /// guest memory. Sets `transmitBlocked` on `wouldBlock`.
    public func transmit(_ chain: DescriptorChain, ram: GuestRAM) -> TransmitOutcome {
        switch Self.parseTransmit(chain, ram: ram, mac: mac, mtu: mtu) {
        case .failure(let drop):
            record(drop)
            return .dropped(drop)
        case .success(let frame):
            switch backend.send(frame) {
            case .sent:
                counters.framesSent += 1
                counters.bytesSent += UInt64(frame.count)
                return .sent
            case .failed:
                record(.txBackendFailed)
                return .dropped(.txBackendFailed)
            case .wouldBlock:
                transmitBlocked = true
                counters.transmitBlocked += 1
                return .wouldBlock
            }
        }
    }

    /// Turns a transmit chain into the Ethernet frame to send, or the reason to drop it. Pure
    /// apart from copying the chain's readable bytes out of `ram`, once.
    public static func parseTransmit(_ chain: DescriptorChain, ram: GuestRAM, mac: [UInt8],
                                     mtu: UInt16) -> Result<[UInt8], NetDrop> {
        // Sums of at most 32768 UInt32 lengths, already capped at 2^32 by the queue: no overflow.
        let readable = chain.readableLength
        guard readable >= UInt64(headerSize) else { return .failure(.txShortHeader) }
        let maxFrame = UInt64(mtu) + UInt64(ethernetHeaderSize + vlanTagSize)
        // Decided from the lengths, before anything is copied: the driver chose them.
        guard readable - UInt64(headerSize) <= maxFrame else { return .failure(.txTooLong) }
        let bytes: [UInt8]
        do { bytes = try chain.gather(from: ram, limit: Int(readable)) } catch { return .failure(.memory) }
        guard bytes.count == Int(readable) else { return .failure(.memory) }
        let flags = bytes[0], gsoType = bytes[1]
        guard flags & flagNeedsChecksum == 0, gsoType == 0 else { return .failure(.txOffload) }
        let frame = Array(bytes[headerSize...])
        if let drop = checkSize(frame, mtu: mtu, tooShort: .txTooShort, tooLong: .txTooLong) { return .failure(drop) }
        guard frame[6..<12].elementsEqual(mac) else { return .failure(.txSpoofedSource) }
        return .success(frame)
    }

    /// 14 bytes at least; at most `mtu` + 14, or `mtu` + 18 when the frame carries an 802.1Q tag.
    static func checkSize(_ frame: [UInt8], mtu: UInt16, tooShort: NetDrop, tooLong: NetDrop) -> NetDrop? {
        guard frame.count >= ethernetHeaderSize else { return tooShort }
        let untagged = Int(mtu) + ethernetHeaderSize
        guard frame.count > untagged else { return nil }
        let tagged = UInt16(frame[12]) << 8 | UInt16(frame[13]) == vlanEthertype
        return tagged && frame.count <= untagged + vlanTagSize ? nil : tooLong
    }

    // MARK: Receive

    /// What one read from the link gave.
    private enum LinkRead { case frame([UInt8]), dropped, empty }

    /// Reads one frame from the link; one of the wrong size is dropped and counted.
    private func readFrame() -> LinkRead {
        guard let frame = backend.receive() else { return .empty }
        if let drop = Self.checkSize(frame, mtu: mtu, tooShort: .rxTooShort, tooLong: .rxTooLong) {
            record(drop)
            return .dropped
        }
        return .frame(frame)
    }

    /// Reads at most `budget` frames until an acceptable one comes; nil if none did.
    private func nextFrame(budget: Int) -> [UInt8]? {
        for _ in 0..<budget {
            switch readFrame() {
            case .frame(let f): return f
            case .dropped: continue
            case .empty: return nil
            }
        }
        return nil
    }

    /// Moves frames (the held one first) into receive chains, one chain per frame, until the link
    /// has no more, `maxFramesPerPass` frames were read, or the guest has no buffer left.
    func fill(_ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter? = nil) throws(VirtqueueError) -> ReceiveResult {
        var used = false
        var read = 0
        while true {
            if pendingFrame == nil {
                // Stop after a pass's worth: the link's descriptor stays readable, so the VMM
                // comes back after serving the other devices.
                guard read < Self.maxFramesPerPass else { break }
                read += 1
                switch readFrame() {
                case .empty: return ReceiveResult(used: used, needsBuffers: false)
                case .dropped: continue
                case .frame(let f): pendingFrame = f
                }
            }
            guard let frame = pendingFrame else { break }
            guard let next = try queue.pop(from: ram) else {
                counters.receiveNoBuffers += 1
                return ReceiveResult(used: used, needsBuffers: true)
            }
            // A receive rate limit: the frame waits in the device, and the chain in the queue (the
            // socket is not read meanwhile, so the peer's sends back up), until the buckets cover
            // it. Charged once, when it goes.
            if let limit, !limit.admit(bytes: UInt64(frame.count)) {
                queue.undoPop()
                return ReceiveResult(used: used, needsBuffers: false)
            }
            // This chain takes this frame, delivered or not: one chain per frame bounds the work.
            pendingFrame = nil
            var written: UInt32 = 0
            switch next.result {
            case .failure:
                record(.brokenChain)
            case .success(let chain):
                written = deliver(frame, into: chain, ram: ram)
            }
            if next.head < queue.size { try queue.push(head: next.head, written: written, to: ram) }
            used = true
        }
        return ReceiveResult(used: used, needsBuffers: false)
    }

    /// Writes the header and `frame` into `chain`'s device-writable buffers, and nowhere else.
    /// Returns the used length: header + frame, or 0 when the chain is too small or the copy
    /// failed (the frame is then dropped and counted).
    public func deliver(_ frame: [UInt8], into chain: DescriptorChain, ram: GuestRAM) -> UInt32 {
        let total = Self.headerSize + frame.count
        guard chain.writableLength >= UInt64(total) else {
            record(.rxChainTooSmall)
            return 0
        }
        // flags 0 (no GUEST_CSUM: the checksum is whatever the sender wrote), gso_type NONE,
        // num_buffers 1 (§5.1.6.3.2, no MRG_RXBUF).
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        header[10] = 1
        do {
            guard try chain.scatter(header + frame, to: ram) == total else { record(.memory); return 0 }
        } catch {
            record(.memory)
            return 0
        }
        counters.framesReceived += 1
        counters.bytesReceived += UInt64(frame.count)
        return UInt32(total)
    }

    private func record(_ drop: NetDrop) {
        counters.drops[drop, default: 0] += 1
        counters.lastDrop = drop
    }

    /// "52:54:00:12:34:56".
    public static func format(mac: [UInt8]) -> String {
        mac.map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined(separator: ":")
    }
}
