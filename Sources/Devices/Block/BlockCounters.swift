import GuestABI
import Virtio

/// What the device has done, for metrics. Counters only grow.
public struct BlockCounters: Equatable, Sendable {
    /// Chains taken from the queue (broken ones included).
    public var requests: UInt64 = 0
    public var reads: UInt64 = 0
    public var writes: UInt64 = 0
    public var flushes: UInt64 = 0
    public var getIDs: UInt64 = 0
    public var discards: UInt64 = 0
    public var writeZeroes: UInt64 = 0
    /// Bytes read from the disk into the guest / written from the guest to the disk.
    public var bytesRead: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    public var sectorsDiscarded: UInt64 = 0
    public var sectorsZeroed: UInt64 = 0
    /// Failed requests by kind.
    public var errors: [BlockRequestError.Kind: UInt64] = [:]
    /// The most recent failure, for diagnostics.
    public var lastError: BlockRequestError?

    public var totalErrors: UInt64 { errors.values.reduce(0, +) }
}
