import GuestABI

/// Constants of the virtio 1.2 specification that Bulkhead implements (the numbers a guest driver
/// uses too are GuestABI's).
public enum Virtio {
    /// Device status bits (virtio 1.2 §2.1).
    public struct Status: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let acknowledge = Status(rawValue: VirtioStatus.acknowledge)
        public static let driver = Status(rawValue: VirtioStatus.driver)
        public static let driverOK = Status(rawValue: VirtioStatus.driverOK)
        public static let featuresOK = Status(rawValue: VirtioStatus.featuresOK)
        public static let deviceNeedsReset = Status(rawValue: VirtioStatus.deviceNeedsReset)
        public static let failed = Status(rawValue: VirtioStatus.failed)
    }

    /// Reserved feature bits (virtio 1.2 §6), device types (§5) and descriptor flags (§2.7.5):
    /// GuestABI's, which the guest SDK compiles too.
    public typealias Feature = VirtioFeature
    public typealias DeviceType = VirtioDeviceType
    public typealias DescriptorFlag = VirtioDescriptorFlag

    /// The largest split queue (virtio 1.2 §2.7: Queue Size is at most 32768).
    public static let maxQueueSize: UInt16 = 32768

    /// Used ring flag: the device does not want notifications (§2.7.10).
    public static let usedFlagNoNotify: UInt16 = 1
    /// Available ring flag: the driver does not want interrupts (§2.7.7).
    public static let availFlagNoInterrupt: UInt16 = 1
}
