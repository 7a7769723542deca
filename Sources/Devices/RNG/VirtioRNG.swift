import Virtio

/// virtio-rng (virtio 1.2 §5.4): one queue; the device fills each device-writable buffer with
/// random bytes from its entropy source.
///
/// Threats: the driver chooses the buffer sizes; each request is capped at `maxRequest` bytes so
/// one notification cannot make the VMM generate gigabytes. Device-readable buffers are ignored.
public final class VirtioRNG: VirtioDeviceModel {
    public static let maxRequest = 64 * 1024
    public let deviceType = Virtio.DeviceType.entropy
    public let features: UInt64 = 0
    public let queueSizes: [UInt16] = [256]
    public let config: [UInt8] = []
    private let source: (Int) -> [UInt8]?
    public private(set) var bytesServed: UInt64 = 0
    public private(set) var brokenChains: UInt64 = 0

    /// `source(n)` returns n random bytes, or nil when the source failed.
    public init(source: @escaping (Int) -> [UInt8]?) { self.source = source }

    public func reset() {}

    public func process(queue index: Int, _ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter?) throws(VirtqueueError) -> Bool {
        try queue.serveAll(ram: ram, limit: limit, onBroken: { _ in self.brokenChains += 1 }) { chain in
            let n = Int(min(chain.writableLength, UInt64(Self.maxRequest)))
            guard n > 0, let bytes = source(n), bytes.count == n,
                  let written = try? chain.scatter(bytes, to: ram) else { return 0 }
            bytesServed += UInt64(written)
            return UInt32(written)
        }
    }
}
