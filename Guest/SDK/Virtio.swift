// Bulkhead guest SDK — virtio-mmio (version 2) transport and split virtqueues
// (virtio 1.2 §4.2, §3.1.1, §2.7; docs/guest-abi.md, "Devices (virtio-mmio)").
//
// Guest programs get no interrupts: a request is published in the available ring, the
// device is told through QueueNotify (an ioeventfd doorbell on the host: no exit to the
// VMM's user space), and the driver polls the used ring's index — first spinning with
// `pause`, then backing off with the `wait` hypercall, until a timeout.
//
// Every register access is exactly one 32-bit volatile load or store (§4.2.2.2). Ring
// memory is plain guest RAM shared with the device: everything the driver writes there and
// the device reads (descriptors, available entries and index) is written with volatile
// stores, and everything the device writes (used index and entries) is read with volatile
// loads, so the compiler can neither drop, merge nor reorder those accesses. On x86 stores
// are not reordered with other stores, so a compiler barrier between filling a descriptor
// chain and publishing the index is enough (§2.7.13); the used entry is read after the
// used index behind an acquiring (compiler) fence for the same reason.
//
// Nothing the device writes is trusted: used ids are range-checked against the chains the
// driver has in flight, used indices that run ahead by more than the queue size are
// reported, and free-descriptor bookkeeping lives in driver-private memory, not in the
// descriptor table the device can read.

import Synchronization

// MARK: - Device list (boot information)

// The device types (VirtioDeviceType), feature bits (VirtioFeature), status bits (VirtioStatus),
// register offsets (VirtioMMIORegister) and descriptor flags (VirtioDescriptorFlag) are
// GuestABI's: Sources/GuestABI/GuestABI.swift, compiled into every guest and into the host.

/// One device-list entry of the boot-information block (24 bytes:
/// `kind u32, irq u32, base u64, size u64`).
public struct VirtioDeviceEntry {
    /// The virtio device type (`VirtioDeviceType`; unknown values are kept).
    public var kind: UInt32
    /// The interrupt a Linux guest would use (guest programs poll instead).
    public var irq: UInt32
    /// Guest-physical (= virtual) base of the virtio-mmio register window.
    public var base: UInt64
    /// Size of the window in bytes.
    public var size: UInt64

    public var type: VirtioDeviceType? { VirtioDeviceType(rawValue: kind) }
}

extension BootInfo {
    /// Size of one device-list entry.
    public static let deviceEntrySize = 24
    /// The most entries the device list can hold (offsets 0x100–0x3ff of the block).
    public static let maxDevices = 32

    /// Number of device-list entries, bounded by `maxDevices`.
    public var boundedDeviceCount: Int { min(deviceCount, BootInfo.maxDevices) }

    /// Device-list entry `index` (0 ..< boundedDeviceCount).
    public func device(_ index: Int) -> VirtioDeviceEntry {
        precondition(index >= 0 && index < boundedDeviceCount)
        let entry = UnsafeRawPointer(bitPattern: UInt(deviceListAddress))!
            + index * BootInfo.deviceEntrySize
        return VirtioDeviceEntry(
            kind: entry.loadUnaligned(fromByteOffset: 0, as: UInt32.self),
            irq: entry.loadUnaligned(fromByteOffset: 4, as: UInt32.self),
            base: entry.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
            size: entry.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
    }

    /// Calls `body` with each device-list entry and its index, in order.
    public func forEachDevice(_ body: (Int, VirtioDeviceEntry) -> Void) {
        var index = 0
        while index < boundedDeviceCount {
            body(index, device(index))
            index += 1
        }
    }

    /// The first device of `type` in the device list.
    public func firstDevice(_ type: VirtioDeviceType) -> VirtioDeviceEntry? {
        var index = 0
        while index < boundedDeviceCount {
            let entry = device(index)
            if entry.kind == type.rawValue { return entry }
            index += 1
        }
        return nil
    }
}

// MARK: - Errors

/// Everything that can go wrong talking to a virtio device.
public enum VirtioError: Error, Equatable {
    /// No device of the wanted type in the device list.
    case noDevice
    /// The window is not a virtio-mmio window (MagicValue is not "virt"), or too small.
    case badMagic(UInt32)
    /// The transport is not virtio-mmio version 2 (legacy version 1 is not supported).
    case unsupportedVersion(UInt32)
    /// DeviceID is not the expected device type (0 = no device behind the window).
    case wrongDeviceType(UInt32)
    /// The device does not offer VIRTIO_F_VERSION_1.
    case version1NotOffered
    /// FEATURES_OK did not stay set: the device refused the feature subset.
    case featuresRejected
    /// The device set FAILED or DEVICE_NEEDS_RESET during initialisation.
    case deviceFailed(UInt32)
    /// The queue does not exist (QueueNumMax 0) or was already live.
    case queueUnavailable(UInt32)
    /// QueueReady did not read back 1: the device refused the queue's layout.
    case queueRefused(UInt32)
    /// The SDK heap is exhausted.
    case outOfMemory
    /// Not enough free descriptors for the chain (or an empty / oversized chain).
    case noDescriptors
    /// The device did not answer in time.
    case timeout
    /// The device set DEVICE_NEEDS_RESET: reset and re-initialise it.
    case deviceNeedsReset
    /// The device's used index ran ahead of what the driver published.
    case badUsedIndex(UInt16)
    /// A used element names a chain the driver does not have in flight.
    case badUsedID(UInt32)
    /// Block: the device answered VIRTIO_BLK_S_IOERR.
    case ioError
    /// Block: the device answered VIRTIO_BLK_S_UNSUPP.
    case unsupported
    /// Block: the device returned the chain without writing a status byte (it refused
    /// the request as malformed).
    case requestRejected
    /// Block: a status byte that is not OK, IOERR or UNSUPP.
    case badStatus(UInt8)
    /// The device reported writing more than the buffers hold.
    case badUsedLength(UInt32)
    /// The device keeps returning buffers without filling them.
    case noProgress
    /// A request the driver refuses to send (bad length, beyond capacity, read-only).
    case badArgument

    /// A short description (no heap).
    public var name: StaticString {
        switch self {
        case .noDevice: return "no such device"
        case .badMagic: return "not a virtio-mmio window"
        case .unsupportedVersion: return "not virtio-mmio version 2"
        case .wrongDeviceType: return "wrong device type"
        case .version1NotOffered: return "VIRTIO_F_VERSION_1 not offered"
        case .featuresRejected: return "FEATURES_OK refused"
        case .deviceFailed: return "device failed during initialisation"
        case .queueUnavailable: return "queue unavailable"
        case .queueRefused: return "queue layout refused"
        case .outOfMemory: return "out of heap memory"
        case .noDescriptors: return "no free descriptors"
        case .timeout: return "timeout"
        case .deviceNeedsReset: return "DEVICE_NEEDS_RESET"
        case .badUsedIndex: return "used index ran ahead"
        case .badUsedID: return "used element with an unknown id"
        case .ioError: return "IOERR"
        case .unsupported: return "UNSUPP"
        case .requestRejected: return "request rejected (no status written)"
        case .badStatus: return "bad status byte"
        case .badUsedLength: return "used length larger than the buffers"
        case .noProgress: return "device returns empty buffers"
        case .badArgument: return "bad argument"
        }
    }
}

// MARK: - Transport

/// The driver side of one virtio-mmio version 2 register window (virtio 1.2 §4.2).
public struct VirtioMMIO {
    /// Register offsets (§4.2.2).
    public typealias Register = VirtioMMIORegister

    public static let magic = VirtioMMIORegister.magic  // "virt"

    /// Base address of the register window.
    public let base: UInt64
    /// The window's size from the device list.
    public let windowSize: UInt64
    /// DeviceID (the virtio device type).
    public let deviceID: UInt32
    /// The features both sides agreed on (valid after `negotiate`).
    public private(set) var features: UInt64 = 0
    /// The features the device offered (valid after `negotiate`).
    public private(set) var offeredFeatures: UInt64 = 0

    /// Checks MagicValue, Version (2) and DeviceID (`expecting`, or any non-zero type).
    /// Touches only read-only registers.
    public init(base: UInt64, size: UInt64 = 0x1000, expecting type: VirtioDeviceType? = nil) throws(VirtioError) {
        guard base != 0, base & 0xfff == 0, size >= 0x200, base <= UInt64(UInt32.max) else { throw .badMagic(0) }
        func load(_ offset: Int) -> UInt32 {
            volatileLoad32(UnsafeRawPointer(bitPattern: UInt(base) + UInt(offset))!)
        }
        let magic = load(Register.magicValue)
        guard magic == VirtioMMIO.magic else { throw .badMagic(magic) }
        let version = load(Register.version)
        guard version == 2 else { throw .unsupportedVersion(version) }
        let id = load(Register.deviceID)
        guard id != 0 else { throw .wrongDeviceType(0) }
        if let type, id != type.rawValue { throw .wrongDeviceType(id) }
        self.base = base
        self.windowSize = size
        self.deviceID = id
    }

    /// The transport for a device-list entry.
    public init(_ entry: VirtioDeviceEntry, expecting type: VirtioDeviceType? = nil) throws(VirtioError) {
        try self.init(base: entry.base, size: entry.size, expecting: type)
    }

    // MARK: registers

    @inline(__always)
    func register(_ offset: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: UInt(base) + UInt(offset))!
    }

    /// One 32-bit volatile load of the register at `offset`.
    @inline(__always)
    public func read32(_ offset: Int) -> UInt32 { volatileLoad32(register(offset)) }

    /// One 32-bit volatile store to the register at `offset`.
    @inline(__always)
    public func write32(_ offset: Int, _ value: UInt32) { volatileStore32(value, to: register(offset)) }

    /// The Status register.
    public var status: UInt32 { read32(Register.status) }

    /// True once the device has set DEVICE_NEEDS_RESET.
    public var needsReset: Bool { status & VirtioStatus.deviceNeedsReset != 0 }

    /// Writes Status (bits accumulate: pass the full new value).
    public func setStatus(_ value: UInt32) { write32(Register.status, value) }

    /// Resets the device (Status = 0) and waits until Status reads 0 (§2.4.2), at most
    /// about a second. Returns false if it never did.
    @discardableResult
    public func reset() -> Bool {
        setStatus(0)
        var tries = 0
        while status != 0 {
            tries += 1
            if tries > 1000 { return false }
            _ = wait(tries < 10 ? 0 : 1_000_000)
        }
        return true
    }

    /// Tells the device the driver gave up on it (FAILED, §2.1).
    public func fail() { setStatus(status | VirtioStatus.failed) }

    /// The 64 feature bits the device offers (DeviceFeaturesSel 0 and 1).
    public func readDeviceFeatures() -> UInt64 {
        write32(Register.deviceFeaturesSel, 0)
        let low = read32(Register.deviceFeatures)
        write32(Register.deviceFeaturesSel, 1)
        let high = read32(Register.deviceFeatures)
        return UInt64(high) << 32 | UInt64(low)
    }

    /// Writes the 64 driver feature bits (DriverFeaturesSel 0 and 1).
    public func writeDriverFeatures(_ value: UInt64) {
        write32(Register.driverFeaturesSel, 0)
        write32(Register.driverFeatures, UInt32(truncatingIfNeeded: value))
        write32(Register.driverFeaturesSel, 1)
        write32(Register.driverFeatures, UInt32(truncatingIfNeeded: value >> 32))
    }

    /// §3.1.1 steps 1–6: reset, ACKNOWLEDGE, DRIVER, read the offered features, accept
    /// VIRTIO_F_VERSION_1 plus those of `wanted` the device offers, FEATURES_OK, and check
    /// that FEATURES_OK stuck. Returns the accepted features. Set up the queues next, then
    /// call `driverOK()`.
    @discardableResult
    public mutating func negotiate(wanted: UInt64) throws(VirtioError) -> UInt64 {
        features = 0
        guard reset() else { throw .deviceFailed(status) }
        setStatus(VirtioStatus.acknowledge)
        setStatus(VirtioStatus.acknowledge | VirtioStatus.driver)
        let offered = readDeviceFeatures()
        offeredFeatures = offered
        guard offered & VirtioFeature.version1 != 0 else {
            fail()
            throw .version1NotOffered
        }
        let accepted = offered & (wanted | VirtioFeature.version1)
        writeDriverFeatures(accepted)
        setStatus(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
        let now = status
        if now & (VirtioStatus.failed | VirtioStatus.deviceNeedsReset) != 0 { throw .deviceFailed(now) }
        guard now & VirtioStatus.featuresOK != 0 else {
            fail()
            throw .featuresRejected
        }
        features = accepted
        return accepted
    }

    /// §3.1.1 step 8: DRIVER_OK. Throws if the device failed or needs a reset.
    public func driverOK() throws(VirtioError) {
        setStatus(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK)
        let now = status
        if now & (VirtioStatus.failed | VirtioStatus.deviceNeedsReset) != 0 || now & VirtioStatus.driverOK == 0 {
            throw .deviceFailed(now)
        }
    }

    /// QueueNumMax of queue `index` (0: the queue does not exist).
    public func queueMaxSize(_ index: UInt32) -> UInt32 {
        write32(Register.queueSel, index)
        return read32(Register.queueNumMax)
    }

    /// Sets up queue `index` (§4.2.3.2) with at most `maxSize` entries (rounded down to a power
    /// of two, and to QueueNumMax), allocating zeroed ring memory from the SDK heap. Call
    /// between `negotiate` and `driverOK`.
    public func setupQueue(_ index: UInt32, maxSize: UInt16 = 128) throws(VirtioError) -> VirtQueue {
        write32(Register.queueSel, index)
        guard read32(Register.queueReady) == 0 else { throw .queueUnavailable(index) }
        let deviceMax = read32(Register.queueNumMax)
        guard deviceMax > 0 else { throw .queueUnavailable(index) }
        var size = UInt32(max(maxSize, 1))
        size = min(size, deviceMax, 32768)
        size = UInt32(1) << UInt32(31 - size.leadingZeroBitCount)  // round down to a power of two
        guard let queue = VirtQueue(index: index, size: UInt16(size), window: base) else { throw .outOfMemory }
        try program(queue)
        return queue
    }

    /// Sets up queue `queue.index` again on the same ring memory (after a reset and a new
    /// `negotiate`): the rings are zeroed and the driver's bookkeeping starts over.
    public func setupQueue(reusing queue: inout VirtQueue) throws(VirtioError) {
        write32(Register.queueSel, queue.index)
        guard read32(Register.queueReady) == 0 else { throw .queueUnavailable(queue.index) }
        let deviceMax = read32(Register.queueNumMax)
        guard deviceMax >= UInt32(queue.size) else { throw .queueUnavailable(queue.index) }
        queue.restart()
        try program(queue)
    }

    /// Writes QueueNum, the three ring addresses and QueueReady = 1 for `queue`, then checks
    /// that QueueReady reads back 1.
    public func program(_ queue: VirtQueue) throws(VirtioError) {
        write32(Register.queueSel, queue.index)
        write32(Register.queueNum, UInt32(queue.size))
        let desc = address(of: queue.descriptors)
        let avail = address(of: queue.availRing)
        let used = address(of: queue.usedRing)
        write32(Register.queueDescLow, UInt32(truncatingIfNeeded: desc))
        write32(Register.queueDescHigh, UInt32(truncatingIfNeeded: desc >> 32))
        write32(Register.queueDriverLow, UInt32(truncatingIfNeeded: avail))
        write32(Register.queueDriverHigh, UInt32(truncatingIfNeeded: avail >> 32))
        write32(Register.queueDeviceLow, UInt32(truncatingIfNeeded: used))
        write32(Register.queueDeviceHigh, UInt32(truncatingIfNeeded: used >> 32))
        write32(Register.queueReady, 1)
        guard read32(Register.queueReady) == 1 else { throw .queueRefused(queue.index) }
    }

    // MARK: configuration space (any width, §4.2.2.2; little-endian)

    /// Config space byte at `offset`.
    public func config8(_ offset: Int) -> UInt8 {
        volatileLoadByte(register(Register.config + offset))
    }

    /// Config space 16-bit field at `offset`.
    public func config16(_ offset: Int) -> UInt16 {
        volatileLoad16(register(Register.config + offset))
    }

    /// Config space 32-bit field at `offset`.
    public func config32(_ offset: Int) -> UInt32 {
        volatileLoad32(register(Register.config + offset))
    }

    /// Config space 64-bit field at `offset`, read as two 32-bit halves and retried until
    /// ConfigGeneration is the same before and after (§2.5.1, §4.2.2.2).
    public func config64(_ offset: Int) -> UInt64 {
        var tries = 0
        while true {
            let before = read32(Register.configGeneration)
            let low = config32(offset)
            let high = config32(offset + 4)
            let after = read32(Register.configGeneration)
            tries += 1
            if before == after || tries >= 100 { return UInt64(high) << 32 | UInt64(low) }
        }
    }
}

// MARK: - Split virtqueue (driver side)

/// One buffer of a descriptor chain.
public struct VirtqBuffer {
    public var address: UInt64
    public var length: UInt32
    /// True for buffers the device writes (VIRTQ_DESC_F_WRITE), false for ones it reads.
    public var deviceWritable: Bool

    public init(address: UInt64, length: UInt32, deviceWritable: Bool) {
        self.address = address
        self.length = length
        self.deviceWritable = deviceWritable
    }

    public init(_ buffer: UnsafeRawBufferPointer) {
        self.init(address: UInt64(UInt(bitPattern: buffer.baseAddress)), length: UInt32(buffer.count), deviceWritable: false)
    }

    public init(_ buffer: UnsafeMutableRawBufferPointer, deviceWritable: Bool) {
        self.init(address: UInt64(UInt(bitPattern: buffer.baseAddress)), length: UInt32(buffer.count),
                  deviceWritable: deviceWritable)
    }
}

/// One used-ring element: the chain's head and how many bytes the device wrote into it.
public struct VirtqUsedElement: Equatable {
    public var id: UInt32
    public var length: UInt32
    /// False when `id` is not a chain the driver had in flight (the element was consumed,
    /// but nothing was reclaimed).
    public var known: Bool
}

/// The driver side of a split virtqueue (virtio 1.2 §2.7) whose rings live in SDK-heap RAM:
/// the descriptor table (16-byte aligned), the available ring (2-byte) and the used ring
/// (4-byte; placed on its own 64-byte line). Free descriptors are tracked in driver-private
/// arrays, so a chain is reclaimed correctly even if its table entries were overwritten.
public struct VirtQueue {
    /// Descriptor flags (§2.7.5).
    public static let flagNext = VirtioDescriptorFlag.next
    public static let flagWrite = VirtioDescriptorFlag.write
    public static let flagIndirect = VirtioDescriptorFlag.indirect

    /// Spin iterations (`pause`) before the first `wait` back-off.
    public static let spinIterations = 16384

    /// The queue's index (QueueSel / QueueNotify value).
    public let index: UInt32
    /// Number of descriptors and ring entries (a power of two).
    public let size: UInt16
    public let descriptors: UnsafeMutableRawPointer
    public let availRing: UnsafeMutableRawPointer
    public let usedRing: UnsafeMutableRawPointer
    let window: UInt64
    let ringBytes: Int
    /// Driver-private: the next descriptor of a chain, or of the free list.
    let links: UnsafeMutablePointer<UInt16>
    /// Driver-private: for each head in flight, the number of descriptors in its chain (0 = free).
    let chainLengths: UnsafeMutablePointer<UInt16>
    var freeHead: UInt16 = 0
    /// Descriptors not in flight.
    public private(set) var freeCount: Int = 0
    /// The head the next `add` will use (meaningful while `freeCount > 0`).
    public var nextHead: UInt16 { freeHead }
    /// The available index the driver publishes next.
    public private(set) var availIndex: UInt16 = 0
    /// The used index the driver consumes next.
    public private(set) var usedIndex: UInt16 = 0
    /// Chains published and not yet returned.
    public private(set) var inFlight: Int = 0
    /// Default timeout for `waitUsed`, in nanoseconds.
    public var timeout: UInt64 = 5_000_000_000

    /// Bytes of ring memory a queue of `size` entries needs.
    public static func ringBytes(size: Int) -> Int {
        let usedOffset = (16 * size + 6 + 2 * size + 63) & ~63
        return usedOffset + 6 + 8 * size
    }

    /// Allocates (zeroed, page-aligned) ring memory from the SDK heap. nil if the heap is
    /// exhausted or `size` is not a power of two.
    init?(index: UInt32, size: UInt16, window: UInt64) {
        guard size > 0, size & (size - 1) == 0 else { return nil }
        let n = Int(size)
        let bytes = VirtQueue.ringBytes(size: n)
        guard let ring = Heap.allocate(byteCount: bytes, alignment: 4096),
              let private_ = Heap.allocate(byteCount: 4 * n, alignment: 16) else { return nil }
        self.index = index
        self.size = size
        self.window = window
        self.ringBytes = bytes
        self.descriptors = ring
        self.availRing = ring + 16 * n
        self.usedRing = ring + ((16 * n + 6 + 2 * n + 63) & ~63)
        self.links = private_.bindMemory(to: UInt16.self, capacity: 2 * n)
        self.chainLengths = links + n
        restart()
    }

    /// Zeroes the rings and frees every descriptor (the device must be reset or the queue
    /// not yet live).
    mutating func restart() {
        descriptors.initializeMemory(as: UInt8.self, repeating: 0, count: ringBytes)
        let n = Int(size)
        var i = 0
        while i < n {
            links[i] = UInt16(truncatingIfNeeded: i + 1)
            chainLengths[i] = 0
            i += 1
        }
        freeHead = 0
        freeCount = n
        availIndex = 0
        usedIndex = 0
        inFlight = 0
    }

    // MARK: building chains

    /// Writes descriptor `i` with volatile stores (for building unusual chains by hand).
    public func writeDescriptor(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let d = descriptors + 16 * Int(i & (size - 1))
        volatileStore(address, to: d)
        volatileStore32(length, to: d + 8)
        volatileStore16(flags, to: d + 12)
        volatileStore16(next, to: d + 14)
    }

    /// The descriptor after `i` in its chain (driver-private link; valid for chains in flight
    /// or just added).
    public func link(after i: UInt16) -> UInt16 { links[Int(i & (size - 1))] }

    /// Takes `buffers.count` free descriptors and writes the chain (NEXT on all but the last,
    /// WRITE on device-writable buffers). Returns the head; the chain is not yet visible to
    /// the device — `publish` it.
    public mutating func add(_ buffers: UnsafeBufferPointer<VirtqBuffer>) throws(VirtioError) -> UInt16 {
        let count = buffers.count
        guard count > 0, count <= freeCount else { throw .noDescriptors }
        let head = freeHead
        var d = head
        var i = 0
        while i < count {
            let b = buffers[i]
            let last = i == count - 1
            let next = links[Int(d)]
            var flags: UInt16 = b.deviceWritable ? VirtQueue.flagWrite : 0
            if !last { flags |= VirtQueue.flagNext }
            writeDescriptor(d, address: b.address, length: b.length, flags: flags, next: last ? 0 : next)
            if last { freeHead = next } else { d = next }
            i += 1
        }
        chainLengths[Int(head)] = UInt16(count)
        freeCount -= count
        return head
    }

    /// Makes chain `head` available to the device: the ring entry, a compiler barrier, then
    /// the index (both volatile). Any value is published as given (hostile tests use that).
    public mutating func publish(_ head: UInt16) {
        volatileStore16(head, to: availRing + 4 + 2 * Int(availIndex & (size - 1)))
        atomicMemoryFence(ordering: .releasing)
        availIndex &+= 1
        volatileStore16(availIndex, to: availRing + 2)
        inFlight += 1
    }

    /// Stores `value` as the available index without touching the ring (hostile tests: a jump
    /// larger than the queue is ring corruption; reset the device afterwards).
    public mutating func setAvailIndexRaw(_ value: UInt16) {
        atomicMemoryFence(ordering: .releasing)
        volatileStore16(value, to: availRing + 2)
    }

    /// Rings the doorbell: QueueNotify = queue index (one 32-bit store, after the ring stores).
    public func notify() {
        atomicMemoryFence(ordering: .releasing)
        volatileStore32(index, to: UnsafeMutableRawPointer(bitPattern: UInt(window) + UInt(VirtioMMIO.Register.queueNotify))!)
    }

    /// add + publish + notify.
    public mutating func submit(_ buffers: UnsafeBufferPointer<VirtqBuffer>) throws(VirtioError) -> UInt16 {
        let head = try add(buffers)
        publish(head)
        notify()
        return head
    }

    // MARK: completions

    /// The used element the device returned next, or nil if there is none yet. Reclaims the
    /// element's chain if it is one the driver has in flight.
    public mutating func nextUsed() throws(VirtioError) -> VirtqUsedElement? {
        let deviceIndex = volatileLoad16(usedRing + 2)
        if deviceIndex == usedIndex { return nil }
        guard deviceIndex &- usedIndex <= size else { throw .badUsedIndex(deviceIndex) }
        atomicMemoryFence(ordering: .acquiring)
        let slot = usedRing + 4 + 8 * Int(usedIndex & (size - 1))
        let id = volatileLoad32(slot)
        let length = volatileLoad32(slot + 4)
        usedIndex &+= 1
        let known = reclaim(id)
        return VirtqUsedElement(id: id, length: length, known: known)
    }

    /// Returns chain `id` to the free list if it is in flight.
    mutating func reclaim(_ id: UInt32) -> Bool {
        guard id < UInt32(size) else { return false }
        let head = Int(id)
        let count = Int(chainLengths[head])
        guard count > 0 else { return false }
        var last = head
        var i = 1
        while i < count {
            last = Int(links[last])
            i += 1
        }
        links[last] = freeHead
        freeHead = UInt16(head)
        freeCount += count
        chainLengths[head] = 0
        if inFlight > 0 { inFlight -= 1 }
        return true
    }

    /// Polls for the next used element: spins (`pause`) for a while, then backs off with the
    /// `wait` hypercall (yield, then 10 µs doubling to 1 ms) until `timeout` nanoseconds have
    /// passed (default: `self.timeout`). While backing off it also reads Status and throws
    /// `deviceNeedsReset` as soon as the device sets it.
    public mutating func waitUsed(timeout: UInt64? = nil) throws(VirtioError) -> VirtqUsedElement {
        var spins = 0
        while spins < VirtQueue.spinIterations {
            if let element = try nextUsed() { return element }
            cpuRelax()
            spins += 1
        }
        let limit = timeout ?? self.timeout
        let start = time()
        var nap: UInt64 = 0
        let status = UnsafeRawPointer(bitPattern: UInt(window) + UInt(VirtioMMIO.Register.status))!
        while true {
            if let element = try nextUsed() { return element }
            if volatileLoad32(status) & VirtioStatus.deviceNeedsReset != 0 {
                // One last look: the device may have returned the chain before giving up.
                if let element = try nextUsed() { return element }
                throw .deviceNeedsReset
            }
            if time() &- start >= limit { throw .timeout }
            wait(nap)
            nap = nap == 0 ? 10_000 : min(nap * 2, 1_000_000)
        }
    }

    /// Waits until chain `head` comes back and returns its used element. Elements for other
    /// chains (late answers to requests given up on) are consumed and dropped.
    public mutating func waitFor(_ head: UInt16, timeout: UInt64? = nil) throws(VirtioError) -> VirtqUsedElement {
        let limit = timeout ?? self.timeout
        var deadline: UInt64 = 0  // the clock starts at the first stray element (time() is a hypercall)
        while true {
            let element = try waitUsed(timeout: limit)
            if element.id == UInt32(head) { return element }
            let now = time()
            if deadline == 0 { deadline = now &+ limit } else if now >= deadline { throw .timeout }
        }
    }
}

/// Prints `<program>: FAIL <why>[: <error>]` and exits 1: the shared failure path of the
/// device test programs.
public func failProgram(_ program: StaticString, _ why: StaticString, _ error: VirtioError? = nil) -> Never {
    Console.line { out in
        out.append(program)
        out.append(": FAIL ")
        out.append(why)
        if let error {
            out.append(": ")
            out.append(error.name)
        }
    }
    exit(1)
}
