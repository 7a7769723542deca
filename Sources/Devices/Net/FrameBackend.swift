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
