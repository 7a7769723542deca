import GuestABI

/// The virtio-mmio transport, version 2 (virtio 1.2 §4.2), as a pure state machine.
///
/// The VMM hands it every guest access to the device's MMIO window; it answers reads and returns
/// the actions a write causes (a queue became ready, a notification, a reset...). It never touches
/// guest memory itself. Every register write is validated against the spec's rules; a write the
/// spec forbids is ignored and counted, and the state stays valid.
public struct MMIOTransport: Equatable, Sendable {
    /// Register offsets (§4.2.2). The decoder's own enum (raw values must be literals); each
    /// offset a guest driver uses is pinned to GuestABI's `VirtioMMIORegister` by TransportTests.
    public enum Register: UInt64 {
        case magic = 0x000, version = 0x004, deviceID = 0x008, vendorID = 0x00c
        case deviceFeatures = 0x010, deviceFeaturesSel = 0x014
        case driverFeatures = 0x020, driverFeaturesSel = 0x024
        case queueSel = 0x030, queueNumMax = 0x034, queueNum = 0x038, queueReady = 0x044
        case queueNotify = 0x050, interruptStatus = 0x060, interruptAck = 0x064, status = 0x070
        case queueDescLow = 0x080, queueDescHigh = 0x084, queueDriverLow = 0x090, queueDriverHigh = 0x094
        case queueDeviceLow = 0x0a0, queueDeviceHigh = 0x0a4, shmSel = 0x0ac
        case shmLenLow = 0x0b0, shmLenHigh = 0x0b4, shmBaseLow = 0x0b8, shmBaseHigh = 0x0bc
        case queueReset = 0x0c0, configGeneration = 0x0fc
    }

    public static let magicValue: UInt32 = VirtioMMIORegister.magic // "virt"
    public static let vendor: UInt32 = 0x4b48_4842      // "BHHK"
    public static let configOffset = UInt64(VirtioMMIORegister.config)
    public static let windowSize = UInt64(VirtioMMIORegister.windowSize)

    /// Interrupt status bits (§4.2.2).
    public static let interruptUsedBuffer: UInt32 = 1
    public static let interruptConfigChange: UInt32 = 2

    /// What the device model must do after a write.
    public enum Action: Equatable, Sendable {
        /// The driver wrote 0 to Status: drop all queue state and in-flight work.
        case reset
        /// FEATURES_OK was accepted with these features.
        case featuresAccepted(UInt64)
        /// The driver set QueueReady on a configured queue: validate it against guest RAM.
        case queueReady(Int, SplitQueue)
        /// DRIVER_OK: the device may start processing.
        case driverOK
        /// The driver notified queue `index` (normally this arrives through an ioeventfd).
        case notify(Int)
        /// The driver wrote device configuration space.
        case configWrite(offset: Int, bytes: [UInt8])
    }

    public struct QueueState: Equatable, Sendable {
        public var maxSize: UInt16
        public var size: UInt16
        public var ready = false
        public var desc: UInt64 = 0, driver: UInt64 = 0, device: UInt64 = 0
        public init(maxSize: UInt16) { self.maxSize = maxSize; self.size = maxSize }
    }

    public let deviceID: UInt32
    public let deviceFeatures: UInt64
    public private(set) var driverFeatures: UInt64 = 0
    public private(set) var status: Virtio.Status = []
    public private(set) var queues: [QueueState]
    public private(set) var interruptStatus: UInt32 = 0
    public private(set) var configGeneration: UInt32 = 0
    /// The device's configuration space as the driver reads it.
    public var config: [UInt8]
    /// Accesses the spec forbids (ignored): a hostile or buggy driver is visible here.
    public private(set) var rejectedAccesses: UInt64 = 0
    private var deviceFeaturesSel: UInt32 = 0
    private var driverFeaturesSel: UInt32 = 0
    private var queueSel: UInt32 = 0

    /// `features` must include VIRTIO_F_VERSION_1: this is a modern (version 2) transport only.
    public init(deviceID: UInt32, features: UInt64, queueSizes: [UInt16], config: [UInt8]) {
        self.deviceID = deviceID
        self.deviceFeatures = features | Virtio.Feature.version1
        self.queues = queueSizes.map { QueueState(maxSize: min($0, Virtio.maxQueueSize)) }
        self.config = config
    }

    public var negotiated: Bool { status.contains(.featuresOK) }
    public var running: Bool { status.contains(.driverOK) && !status.contains(.deviceNeedsReset) }

    /// A split queue built from the driver's configuration of queue `index`.
    public func splitQueue(_ index: Int) -> SplitQueue? {
        guard queues.indices.contains(index), queues[index].ready else { return nil }
        let q = queues[index]
        return SplitQueue(size: q.size, descriptorTable: q.desc, availRing: q.driver, usedRing: q.device,
                          indirectAllowed: driverFeatures & Virtio.Feature.indirectDescriptors != 0,
                          eventIndex: driverFeatures & Virtio.Feature.eventIndex != 0)
    }

    // MARK: device-side events

    /// The device used buffers: raise the used-buffer interrupt bit.
    public mutating func signalUsedBuffers() { interruptStatus |= Self.interruptUsedBuffer }

    /// The device changed its configuration.
    public mutating func configChanged(_ newConfig: [UInt8]) {
        config = newConfig
        configGeneration &+= 1
        interruptStatus |= Self.interruptConfigChange
    }

    /// The device hit an error it cannot recover from without a reset (§2.1.2).
    public mutating func needsReset() {
        status.insert(.deviceNeedsReset)
        if status.contains(.driverOK) { interruptStatus |= Self.interruptConfigChange }
    }

    /// Marks queue `index` not ready (its layout was refused).
    public mutating func disableQueue(_ index: Int) {
        if queues.indices.contains(index) { queues[index].ready = false }
    }

    // MARK: guest accesses

    /// A guest read of `size` bytes at `offset` within the window.
    public func read(offset: UInt64, size: Int) -> UInt64 {
        if offset >= Self.configOffset {
            // Configuration space: any width the bytes allow (§4.2.2.2).
            let start = offset - Self.configOffset
            guard size >= 1, size <= 8, start < UInt64(config.count), start + UInt64(size) <= UInt64(config.count) else { return 0 }
            var v: UInt64 = 0
            for i in 0..<size { v |= UInt64(config[Int(start) + i]) << (8 * UInt64(i)) }
            return v
        }
        // Registers: 32-bit aligned accesses only (§4.2.2.2); anything else reads as 0.
        guard size == 4, offset % 4 == 0, let reg = Register(rawValue: offset) else { return 0 }
        let q = queues.indices.contains(Int(queueSel)) ? queues[Int(queueSel)] : nil
        let v: UInt32
        switch reg {
        case .magic: v = Self.magicValue
        case .version: v = 2
        case .deviceID: v = deviceID
        case .vendorID: v = Self.vendor
        case .deviceFeatures:
            v = deviceFeaturesSel == 0 ? UInt32(truncatingIfNeeded: deviceFeatures)
                : deviceFeaturesSel == 1 ? UInt32(truncatingIfNeeded: deviceFeatures >> 32) : 0
        case .queueNumMax: v = UInt32(q?.maxSize ?? 0)
        case .queueNum: v = UInt32(q?.size ?? 0)
        case .queueReady: v = (q?.ready ?? false) ? 1 : 0
        case .interruptStatus: v = interruptStatus
        case .status: v = status.rawValue
        case .queueDescLow: v = UInt32(truncatingIfNeeded: q?.desc ?? 0)
        case .queueDescHigh: v = UInt32(truncatingIfNeeded: (q?.desc ?? 0) >> 32)
        case .queueDriverLow: v = UInt32(truncatingIfNeeded: q?.driver ?? 0)
        case .queueDriverHigh: v = UInt32(truncatingIfNeeded: (q?.driver ?? 0) >> 32)
        case .queueDeviceLow: v = UInt32(truncatingIfNeeded: q?.device ?? 0)
        case .queueDeviceHigh: v = UInt32(truncatingIfNeeded: (q?.device ?? 0) >> 32)
        case .shmLenLow, .shmLenHigh, .shmBaseLow, .shmBaseHigh: v = 0xffff_ffff // no shared memory regions
        case .configGeneration: v = configGeneration
        default: v = 0 // write-only registers read as 0
        }
        return UInt64(v)
    }

    /// A guest write of `size` bytes at `offset`. Returns what the device must do.
    public mutating func write(offset: UInt64, size: Int, value: UInt64) -> [Action] {
        if offset >= Self.configOffset {
            let start = offset - Self.configOffset
            guard size >= 1, size <= 8, start + UInt64(size) <= UInt64(config.count) else { rejectedAccesses += 1; return [] }
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
            return [.configWrite(offset: Int(start), bytes: bytes)]
        }
        guard size == 4, offset % 4 == 0, let reg = Register(rawValue: offset) else { rejectedAccesses += 1; return [] }
        let v = UInt32(truncatingIfNeeded: value)
        let qi = Int(queueSel)
        // Queue configuration is only writable before the queue is ready and the driver is done (§4.2.3.2).
        let queueWritable = queues.indices.contains(qi) && !queues[qi].ready && !status.contains(.driverOK)
        switch reg {
        case .deviceFeaturesSel: deviceFeaturesSel = v
        case .driverFeaturesSel: driverFeaturesSel = v
        case .driverFeatures:
            // Features are fixed once FEATURES_OK is set (§3.1.1).
            guard !status.contains(.featuresOK), status.contains(.driver), driverFeaturesSel <= 1 else { rejectedAccesses += 1; return [] }
            let shift = UInt64(driverFeaturesSel) * 32
            driverFeatures = (driverFeatures & ~(0xffff_ffff << shift)) | (UInt64(v) << shift)
        case .queueSel: queueSel = v
        case .queueNum:
            guard queueWritable, v > 0, v <= UInt32(queues[qi].maxSize), v.nonzeroBitCount == 1 else { rejectedAccesses += 1; return [] }
            queues[qi].size = UInt16(v)
        case .queueDescLow, .queueDescHigh, .queueDriverLow, .queueDriverHigh, .queueDeviceLow, .queueDeviceHigh:
            guard queueWritable else { rejectedAccesses += 1; return [] }
            setQueueAddress(reg, qi, v)
        case .queueReady:
            guard queues.indices.contains(qi), status.contains(.featuresOK) else { rejectedAccesses += 1; return [] }
            if v == 1 {
                guard !queues[qi].ready else { return [] }
                queues[qi].ready = true
                if let q = splitQueue(qi) { return [.queueReady(qi, q)] }
            } else if v == 0 {
                queues[qi].ready = false
            } else {
                rejectedAccesses += 1
            }
        case .queueNotify:
            let index = Int(v & 0xffff)
            guard running, queues.indices.contains(index), queues[index].ready else { rejectedAccesses += 1; return [] }
            return [.notify(index)]
        case .interruptAck:
            interruptStatus &= ~v
        case .status:
            return writeStatus(Virtio.Status(rawValue: v & 0xff))
        case .queueReset:
            guard queues.indices.contains(qi), v == 1 else { rejectedAccesses += 1; return [] }
            let max = queues[qi].maxSize
            queues[qi] = QueueState(maxSize: max)
        default:
            rejectedAccesses += 1 // read-only register
        }
        return []
    }

    private mutating func setQueueAddress(_ reg: Register, _ qi: Int, _ v: UInt32) {
        func low(_ old: UInt64) -> UInt64 { (old & 0xffff_ffff_0000_0000) | UInt64(v) }
        func high(_ old: UInt64) -> UInt64 { (old & 0xffff_ffff) | (UInt64(v) << 32) }
        switch reg {
        case .queueDescLow: queues[qi].desc = low(queues[qi].desc)
        case .queueDescHigh: queues[qi].desc = high(queues[qi].desc)
        case .queueDriverLow: queues[qi].driver = low(queues[qi].driver)
        case .queueDriverHigh: queues[qi].driver = high(queues[qi].driver)
        case .queueDeviceLow: queues[qi].device = low(queues[qi].device)
        default: queues[qi].device = high(queues[qi].device)
        }
    }

    /// The device-status state machine (§2.1, §3.1.1).
    private mutating func writeStatus(_ new: Virtio.Status) -> [Action] {
        if new.isEmpty {
            // Reset (§2.4): back to the initial state; the device drops everything.
            driverFeatures = 0
            status = []
            interruptStatus = 0
            deviceFeaturesSel = 0; driverFeaturesSel = 0; queueSel = 0
            queues = queues.map { QueueState(maxSize: $0.maxSize) }
            return [.reset]
        }
        // The driver may only add bits (§2.1.2: it MUST NOT clear a status bit); FAILED is final.
        guard new.isSuperset(of: status.subtracting(.deviceNeedsReset)) else { rejectedAccesses += 1; return [] }
        var actions: [Action] = []
        var next = new.subtracting(.deviceNeedsReset).union(status.intersection(.deviceNeedsReset))
        if next.contains(.driver) && !next.contains(.acknowledge) { rejectedAccesses += 1; return [] }
        if next.contains(.featuresOK) && !status.contains(.featuresOK) {
            // Accept only a subset of what was offered, and only modern drivers (§3.1.1, §6.1).
            let ok = next.contains(.driver) && driverFeatures & ~deviceFeatures == 0
                && driverFeatures & Virtio.Feature.version1 != 0
            if ok { actions.append(.featuresAccepted(driverFeatures)) } else { next.remove(.featuresOK); rejectedAccesses += 1 }
        }
        if next.contains(.driverOK) && !status.contains(.driverOK) {
            if next.contains(.featuresOK) { actions.append(.driverOK) } else { next.remove(.driverOK); rejectedAccesses += 1 }
        }
        status = next
        return actions
    }
}
