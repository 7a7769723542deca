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
