import GuestABI
import Virtio

/// Why virtio-vsock refused a packet (or a chain). Each is counted in `VsockCounters.drops`.
public enum VsockDrop: String, Error, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// Fewer than 44 device-readable bytes: no complete header. Dropped, no reply.
    case shortHeader
    /// `src_cid` is not the guest's CID: spoofing. Dropped, no reply (the address is forged).
    case spoofedSource
    /// `dst_cid` is not the host (2). Answered with RST.
    case wrongDestination
    /// `type` is not STREAM. Answered with RST.
    case badType
    /// `len` exceeds the payload bytes present, or 64 KiB. Answered with RST.
    case badLength
    /// An op the device does not know (or one the guest may not send). Answered with RST.
    case unknownOp
    /// A packet (RW, SHUTDOWN, CREDIT_*) for a connection that does not exist. Answered with RST
    /// (except RST itself).
    case noConnection
    /// RW data beyond the credit the device advertised, or after the guest's SHUTDOWN(SEND).
    /// The connection is reset.
    case creditOverrun
    /// REQUEST while the connection table is full. Answered with RST.
    case tableFull
    /// REQUEST to a port where nothing listens. Answered with RST.
    case connectRefused
    /// REQUEST for a connection that already exists: both are reset.
    case duplicateRequest
    /// A receive chain whose writable bytes cannot hold a header: the packet meant for it is lost.
    case rxChainTooSmall
    /// The host end of a connection went away (a send failed for good, or the host reset the
    /// connection): the guest gets RST, never an orderly end, since data may have been lost.
    case hostGone
    /// The virtqueue refused the chain.
    case brokenChain
    /// Copying to or from guest memory failed.
    case memory

    public var description: String { rawValue }
}

/// What the device has done, for metrics. Counters only grow.
public struct VsockCounters: Equatable, Sendable {
    public var packetsFromGuest: UInt64 = 0
    public var packetsToGuest: UInt64 = 0
    /// Payload bytes the host accepted, and payload bytes delivered to the guest.
    public var bytesToHost: UInt64 = 0
    public var bytesToGuest: UInt64 = 0
    public var connectionsOpened: UInt64 = 0
    public var drops: [VsockDrop: UInt64] = [:]
    public var lastDrop: VsockDrop?

    public var totalDrops: UInt64 { drops.values.reduce(0, +) }
    public subscript(drop: VsockDrop) -> UInt64 { drops[drop] ?? 0 }
}
