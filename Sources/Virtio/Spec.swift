/// Constants of the virtio 1.2 specification that Bulkhead implements.
public enum Virtio {
    /// Device status bits (virtio 1.2 §2.1).
    public struct Status: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let acknowledge = Status(rawValue: 1)
        public static let driver = Status(rawValue: 2)
        public static let driverOK = Status(rawValue: 4)
        public static let featuresOK = Status(rawValue: 8)
        public static let deviceNeedsReset = Status(rawValue: 64)
        public static let failed = Status(rawValue: 128)
    }

    /// Reserved feature bits (virtio 1.2 §6).
    public enum Feature {
        public static let indirectDescriptors: UInt64 = 1 << 28   // VIRTIO_F_INDIRECT_DESC
        public static let eventIndex: UInt64 = 1 << 29            // VIRTIO_F_EVENT_IDX
        public static let version1: UInt64 = 1 << 32              // VIRTIO_F_VERSION_1
        public static let accessPlatform: UInt64 = 1 << 33
        public static let ringPacked: UInt64 = 1 << 34
    }

    /// Device types (virtio 1.2 §5).
    public enum DeviceType: UInt32, Sendable {
        case network = 1, block = 2, console = 3, entropy = 4, vsock = 19
    }

    /// Descriptor flags (virtio 1.2 §2.7.5).
    public enum DescriptorFlag {
        public static let next: UInt16 = 1
        public static let write: UInt16 = 2
        public static let indirect: UInt16 = 4
    }

    /// The largest split queue (virtio 1.2 §2.7: Queue Size is at most 32768).
    public static let maxQueueSize: UInt16 = 32768

    /// Used ring flag: the device does not want notifications (§2.7.10).
    public static let usedFlagNoNotify: UInt16 = 1
    /// Available ring flag: the driver does not want interrupts (§2.7.7).
    public static let availFlagNoInterrupt: UInt16 = 1
}
