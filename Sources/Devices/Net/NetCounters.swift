import Virtio

/// Why virtio-net dropped a frame (or a chain). Each is counted in `NetCounters.drops`.
public enum NetDrop: String, Error, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    // Transmit (guest to link).
    /// Fewer than 12 device-readable bytes: no complete `virtio_net_hdr`.
    case txShortHeader
    /// The header asks for an offload that was not offered: VIRTIO_NET_HDR_F_NEEDS_CSUM without
    /// VIRTIO_NET_F_CSUM, or a `gso_type` other than NONE without any HOST_TSO/UFO/USO (§5.1.6.2.1).
    case txOffload
    /// The frame is shorter than an Ethernet header (14 bytes).
    case txTooShort
    /// The frame is longer than `mtu` + 14 (+ 4 with an 802.1Q tag).
    case txTooLong
    /// The frame's source MAC is not the device's: spoofing (see `VirtioNet`).
    case txSpoofedSource
    /// The back end refused the frame for good.
    case txBackendFailed
    // Receive (link to guest).
    /// A frame from the link shorter than an Ethernet header.
    case rxTooShort
    /// A frame from the link longer than `mtu` + 14 (+ 4 with an 802.1Q tag): the guest must not
    /// be handed it (§5.1.4.1, VIRTIO_NET_F_MTU).
    case rxTooLong
    /// The receive chain's device-writable bytes cannot hold the header and the frame.
    case rxChainTooSmall
    /// The driver reset the device while a frame waited for a receive buffer.
    case rxReset
    // Either direction.
    /// The virtqueue refused the chain (loop, bad index, buffer outside RAM...); on receive the
    /// frame that would have gone into it is dropped too.
    case brokenChain
    /// Copying to or from a chain's buffers failed (memory the device may not write).
    case memory

    public var description: String {
        switch self {
        case .txShortHeader: return "transmit chain shorter than the 12-byte virtio_net_hdr"
        case .txOffload: return "transmit header asks for a checksum or segmentation offload that was not offered (§5.1.6.2.1)"
        case .txTooShort: return "transmitted frame shorter than an Ethernet header"
        case .txTooLong: return "transmitted frame longer than the MTU allows"
        case .txSpoofedSource: return "transmitted frame's source MAC is not the device's"
        case .txBackendFailed: return "the link refused a transmitted frame"
        case .rxTooShort: return "received frame shorter than an Ethernet header"
        case .rxTooLong: return "received frame longer than the MTU allows"
        case .rxChainTooSmall: return "receive buffer too small for the header and the frame"
        case .rxReset: return "a frame waiting for a receive buffer was dropped by a device reset"
        case .brokenChain: return "broken descriptor chain"
        case .memory: return "copying to or from guest memory failed"
        }
    }
}

/// What the device has done, for metrics. Counters only grow (a device reset keeps them).
public struct NetCounters: Equatable, Sendable {
    /// Frames the back end accepted, and their bytes (Ethernet frame, no virtio header).
    public var framesSent: UInt64 = 0
    public var bytesSent: UInt64 = 0
    /// Frames placed in the guest's receive buffers, and their bytes (no virtio header).
    public var framesReceived: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    /// Times transmission stopped because the back end would block.
    public var transmitBlocked: UInt64 = 0
    /// Times a frame had to wait because the guest had posted no receive buffer.
    public var receiveNoBuffers: UInt64 = 0
    /// Dropped frames (and refused chains) by reason.
    public var drops: [NetDrop: UInt64] = [:]
    /// The most recent drop, for diagnostics.
    public var lastDrop: NetDrop?

    public var totalDrops: UInt64 { drops.values.reduce(0, +) }
    public subscript(drop: NetDrop) -> UInt64 { drops[drop] ?? 0 }
}
