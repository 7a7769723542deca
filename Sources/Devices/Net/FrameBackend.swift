import Virtio

/// What a `FrameBackend` did with one frame.
public enum FrameSendResult: Equatable, Sendable {
    /// The frame is on its way.
    case sent
    /// The back end cannot take it now (its buffer is full); the same frame can be offered again
    /// once `waitHandle` is writable.
    case wouldBlock
    /// The back end refused it for good (the peer is gone, the frame is too large for the link):
    /// the frame is dropped.
    case failed
}

/// What virtio-net needs of a link: whole Ethernet frames (without the virtio header) in and out,
/// never blocking. The device validates every frame before `send` (size, source MAC), so a back
/// end sees only frames the guest was allowed to send.
public protocol FrameBackend: AnyObject {
    /// What is readable when `receive` has a frame (and writable when `send` would take one), for
    /// the VMM's poll loop; nil when there is nothing to wait on (in-memory back ends).
    var waitHandle: WaitHandle? { get }
    /// Offers one frame to the link. Never blocks.
    func send(_ frame: [UInt8]) -> FrameSendResult
    /// The next frame from the link, or nil when none is ready. Never blocks.
    func receive() -> [UInt8]?
    /// The link is gone for good (the peer closed): no frame will ever arrive. The device stops
    /// asking the VMM to poll `waitHandle` (a hung-up socket is readable for ever).
    var isClosed: Bool { get }
}

extension FrameBackend {
    public var isClosed: Bool { false }
}
