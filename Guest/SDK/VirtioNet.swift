// Bulkhead guest SDK — virtio network device driver (virtio 1.2 §5.1).
//
// Two queues: receiveq (queue 0), where the driver posts device-writable buffers the device
// fills with one incoming frame each, and transmitq (queue 1), where the driver posts frames
// to send. With VIRTIO_F_VERSION_1 every frame, in either direction, is preceded by the
// 12-byte `struct virtio_net_hdr` (flags u8, gso_type u8, hdr_len u16, gso_size u16,
// csum_start u16, csum_offset u16, num_buffers u16); this driver negotiates no offloads, so
// it sends the header all zero and ignores the received one.
//
// Features accepted if offered: VIRTIO_NET_F_MAC (5: `mac` in config space), VIRTIO_NET_F_MTU
// (3: `mtu`), VIRTIO_NET_F_STATUS (16: the link-up bit). Nothing else (no checksum or
// segmentation offloads, no mergeable receive buffers, no control queue, no multiqueue).
//
// Memory (SDK heap, never freed): one buffer of `bufferSize` bytes (12 + the largest frame,
// 802.1Q-tagged: 12 + 18 + max(mtu, 1500)) per receive descriptor, all posted at start-up as
// one-descriptor chains; one transmit buffer of the same kind per transmit descriptor. Each
// chain is a single descriptor, so a chain's head is its descriptor index and names its
// buffer. `send` copies header + frame into the head's transmit buffer and rings the doorbell
// (or leaves that to `kickTransmit`, for batches); `receive` copies the frame out of the
// receive buffer and posts the buffer again at once, ringing the receive doorbell when it finds
// nothing more to take or a batch of buffers has piled up (a device that ran out of buffers
// waits for a doorbell). There are no interrupts: both directions poll the used rings
// (`waitReceive` spins, then backs off with `wait`).

/// A 48-bit Ethernet address. `value` holds byte i (in wire order) in bits 8i..8i+7.
public struct MACAddress: Equatable {
    public var value: UInt64

    public init(value: UInt64) { self.value = value & 0xffff_ffff_ffff }

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        value = UInt64(b0) | UInt64(b1) << 8 | UInt64(b2) << 16 | UInt64(b3) << 24
            | UInt64(b4) << 32 | UInt64(b5) << 40
    }

    /// The six bytes at `p` (wire order).
    public init(loading p: UnsafeRawPointer) {
        var v: UInt64 = 0
        var i = 0
        while i < 6 {
            v |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << UInt64(8 * i)
            i += 1
        }
        value = v
    }

    public static let broadcast = MACAddress(value: 0xffff_ffff_ffff)

    /// Byte `i` (0–5) in wire order.
    public subscript(i: Int) -> UInt8 { UInt8(truncatingIfNeeded: value >> UInt64(8 * i)) }

    /// Writes the six bytes to `p` (wire order).
    public func store(to p: UnsafeMutableRawPointer) {
        var i = 0
        while i < 6 {
            p.storeBytes(of: self[i], toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }

    /// The I/G bit: group (multicast or broadcast) address.
    public var isMulticast: Bool { value & 1 != 0 }
    public var isBroadcast: Bool { self == MACAddress.broadcast }
    /// The U/L bit: locally administered.
    public var isLocal: Bool { value & 2 != 0 }

    /// A random locally administered unicast address (from the `random` hypercall).
    public static func randomLocal() -> MACAddress {
        MACAddress(value: (randomUInt64() & ~UInt64(1)) | 2)
    }
}

extension LineWriter {
    /// Appends `aa:bb:cc:dd:ee:ff`.
    public mutating func append(mac: MACAddress) {
        var i = 0
        while i < 6 {
            if i > 0 { append(byte: UInt8(ascii: ":")) }
            append(hexByte: mac[i])
            i += 1
        }
    }
}

/// Ethernet frame layout helpers (no VLAN tags).
public enum Ethernet {
    /// Destination (6) + source (6) + EtherType (2).
    public static let headerSize = 14
    /// The largest frame with a 1500-byte payload.
    public static let maxStandardFrame = 1514
    /// The smallest frame on a wire (without FCS); shorter ones are padded by real NICs.
    public static let minFrame = 60
    /// An 802.1Q tag (4 bytes after the addresses, EtherType 0x8100).
    public static let vlanTagSize = 4
    public static let vlanEtherType: UInt16 = 0x8100

    public static func destination(_ frame: UnsafeRawPointer) -> MACAddress { MACAddress(loading: frame) }
    public static func source(_ frame: UnsafeRawPointer) -> MACAddress { MACAddress(loading: frame + 6) }
    /// The EtherType (big-endian on the wire).
    public static func etherType(_ frame: UnsafeRawPointer) -> UInt16 {
        UInt16(frame.load(fromByteOffset: 12, as: UInt8.self)) << 8 | UInt16(frame.load(fromByteOffset: 13, as: UInt8.self))
    }

    /// Writes destination, source and EtherType at `frame`.
    public static func writeHeader(_ frame: UnsafeMutableRawPointer, destination: MACAddress, source: MACAddress,
                                   etherType: UInt16) {
        destination.store(to: frame)
        source.store(to: frame + 6)
        frame.storeBytes(of: UInt8(truncatingIfNeeded: etherType >> 8), toByteOffset: 12, as: UInt8.self)
        frame.storeBytes(of: UInt8(truncatingIfNeeded: etherType), toByteOffset: 13, as: UInt8.self)
    }
}

public struct VirtioNet {
    /// Device feature bits (virtio 1.2 §5.1.3).
    public enum Feature {
        public static let csum: UInt64 = 1 << 0
        public static let guestCsum: UInt64 = 1 << 1
        public static let mtu: UInt64 = 1 << 3
        public static let mac: UInt64 = 1 << 5
        public static let guestTSO4: UInt64 = 1 << 7
        public static let mergeableRxBuffers: UInt64 = 1 << 15
        public static let status: UInt64 = 1 << 16
        public static let controlQueue: UInt64 = 1 << 17
        public static let multiqueue: UInt64 = 1 << 22
    }

    /// Configuration-space offsets (§5.1.4).
    public enum Config {
        public static let mac = 0          // u8[6]
        public static let status = 6       // le16, with VIRTIO_NET_F_STATUS
        public static let maxQueuePairs = 8  // le16, with VIRTIO_NET_F_MQ
        public static let mtu = 10         // le16, with VIRTIO_NET_F_MTU
    }

    /// `status` bit 0 (VIRTIO_NET_S_LINK_UP).
    public static let linkUpBit: UInt16 = 1

    /// MAC, MTU and STATUS: everything this driver understands.
    public static let defaultFeatures = Feature.mac | Feature.mtu | Feature.status

    /// Size of `struct virtio_net_hdr` with VIRTIO_F_VERSION_1 (§5.1.6).
    public static let headerSize = 12
    public static let receiveQueueIndex: UInt32 = 0
    public static let transmitQueueIndex: UInt32 = 1

    public var transport: VirtioMMIO
    public var rxQueue: VirtQueue
    public var txQueue: VirtQueue
    let wantedFeatures: UInt64

    /// The device's address (config `mac` with VIRTIO_NET_F_MAC; otherwise a random locally
    /// administered address chosen at start-up — a device that filters source addresses
    /// would then drop every frame sent).
    public private(set) var mac: MACAddress = MACAddress(value: 0)
    /// True when the MAC came from the device (VIRTIO_NET_F_MAC negotiated).
    public private(set) var macFromDevice = false
    /// The MTU (config `mtu` with VIRTIO_NET_F_MTU, else 1500).
    public private(set) var mtu: Int = 1500
    /// The largest untagged frame `send` accepts: 14 + mtu (an 802.1Q-tagged frame, EtherType
    /// 0x8100 at offset 12, may be 4 bytes longer).
    public var maxFrameSize: Int { Ethernet.headerSize + mtu }
    /// Bytes per receive and per transmit buffer (12-byte header + largest frame, tagged),
    /// fixed at start-up: 12 + 18 + max(mtu, 1500), at most 65535.
    public let bufferSize: Int
    /// Receive buffers, one per receive descriptor (`rxQueue.size` × `bufferSize`).
    public let rxBuffers: UnsafeMutableRawPointer
    /// Transmit buffers, one per transmit descriptor.
    public let txBuffers: UnsafeMutableRawPointer

    /// Frames handed to the device / returned by `receive`.
    public private(set) var framesSent: UInt64 = 0
    public private(set) var framesReceived: UInt64 = 0
    /// Receive buffers posted again since the last receive doorbell. The doorbell is rung when
    /// `receive` finds nothing more to take (so a device waiting for buffers always hears of
    /// them before the driver goes idle) or once `rxNotifyBatch` buffers have piled up.
    public private(set) var rxUnnotified = 0
    /// See `rxUnnotified` (default: a quarter of the receive queue; 1 = after every frame).
    public var rxNotifyBatch: Int
    /// Frames published with `send(_:notify: false)` since the last transmit doorbell.
    public private(set) var txUnnotified = 0
    /// Receive chains the device returned with less than a header (used length < 12: it could
    /// not use the buffer); they are posted again and skipped.
    public private(set) var rxEmpty: UInt64 = 0

    /// Initialises the network device behind `entry`: negotiates `features` (∩ offered, plus
    /// VERSION_1), sets up the receive queue with `rxQueueSize` descriptors and the transmit
    /// queue with `txQueueSize` (each rounded down to a power of two and QueueNumMax), reads
    /// the configuration, posts a buffer on every receive descriptor and sets DRIVER_OK.
    public init(_ entry: VirtioDeviceEntry, rxQueueSize: UInt16 = 64, txQueueSize: UInt16 = 64,
                features: UInt64 = VirtioNet.defaultFeatures) throws(VirtioError) {
        var transport = try VirtioMMIO(entry, expecting: .network)
        let accepted = try transport.negotiate(wanted: features & VirtioNet.defaultFeatures)
        // The buffer size depends on the MTU, so read it before allocating.
        var mtu = 1500
        if accepted & Feature.mtu != 0 {
            mtu = Int(transport.config16(Config.mtu))
            if mtu < 68 { mtu = 68 }  // the device MUST offer at least 68 (§5.1.4.1)
        }
        let overhead = VirtioNet.headerSize + Ethernet.headerSize + Ethernet.vlanTagSize
        let bufferSize = min(overhead + max(mtu, 1500), 65535)
        if mtu > bufferSize - overhead { mtu = bufferSize - overhead }
        let rx = try transport.setupQueue(VirtioNet.receiveQueueIndex, maxSize: rxQueueSize)
        let tx = try transport.setupQueue(VirtioNet.transmitQueueIndex, maxSize: txQueueSize)
        guard let rxMemory = Heap.allocate(byteCount: Int(rx.size) * bufferSize, alignment: 4096),
              let txMemory = Heap.allocate(byteCount: Int(tx.size) * bufferSize, alignment: 4096) else {
            transport.fail()
            throw .outOfMemory
        }
        self.transport = transport
        self.rxQueue = rx
        self.txQueue = tx
        self.wantedFeatures = features
        self.bufferSize = bufferSize
        self.rxNotifyBatch = max(1, Int(rx.size) / 4)
        self.rxBuffers = rxMemory
        self.txBuffers = txMemory
        self.mtu = mtu
        try start()
    }

    /// The first network device in the boot-info device list.
    public init(bootInfo: BootInfo, rxQueueSize: UInt16 = 64, txQueueSize: UInt16 = 64,
                features: UInt64 = VirtioNet.defaultFeatures) throws(VirtioError) {
        guard let entry = bootInfo.firstDevice(.network) else { throw .noDevice }
        try self.init(entry, rxQueueSize: rxQueueSize, txQueueSize: txQueueSize, features: features)
    }

    /// Reset and initialise again on the same memory (after DEVICE_NEEDS_RESET). Frames in
    /// flight either way are lost.
    public mutating func reinitialize() throws(VirtioError) {
        try transport.negotiate(wanted: wantedFeatures & VirtioNet.defaultFeatures)
        try transport.setupQueue(reusing: &rxQueue)
        try transport.setupQueue(reusing: &txQueue)
        try start()
    }

    /// Reads the configuration, posts every receive buffer, DRIVER_OK, then rings the receive
    /// doorbell (a device may ignore doorbells before DRIVER_OK).
    mutating func start() throws(VirtioError) {
        readConfig()
        var d: UInt16 = 0
        while d < rxQueue.size {
            try postReceiveBuffer()
            d += 1
        }
        try transport.driverOK()
        rxQueue.notify()
        rxUnnotified = 0
        txUnnotified = 0
    }

    mutating func readConfig() {
        let features = transport.features
        if features & Feature.mac != 0 {
            var tries = 0
            while true {
                let before = transport.read32(VirtioMMIO.Register.configGeneration)
                var v: UInt64 = 0
                var i = 0
                while i < 6 {
                    v |= UInt64(transport.config8(Config.mac + i)) << UInt64(8 * i)
                    i += 1
                }
                let after = transport.read32(VirtioMMIO.Register.configGeneration)
                tries += 1
                if before == after || tries >= 100 {
                    mac = MACAddress(value: v)
                    break
                }
            }
            macFromDevice = true
        } else if !macFromDevice && mac.value == 0 {
            mac = MACAddress.randomLocal()
        }
    }

    /// True unless VIRTIO_NET_F_STATUS was negotiated and the link-up bit is clear (read afresh).
    public var linkUp: Bool {
        guard transport.features & Feature.status != 0 else { return true }
        return transport.config16(Config.status) & VirtioNet.linkUpBit != 0
    }

    /// The receive buffer of receive descriptor `head`.
    @inline(__always)
    public func rxBuffer(_ head: UInt16) -> UnsafeMutableRawPointer {
        rxBuffers + Int(head & (rxQueue.size - 1)) * bufferSize
    }

    /// The transmit buffer of transmit descriptor `head`.
    @inline(__always)
    public func txBuffer(_ head: UInt16) -> UnsafeMutableRawPointer {
        txBuffers + Int(head & (txQueue.size - 1)) * bufferSize
    }

    /// Makes the queue's next free receive descriptor available as a one-descriptor chain
    /// holding that descriptor's own buffer (every free descriptor's buffer is idle). Does not
    /// ring the doorbell.
    mutating func postReceiveBuffer() throws(VirtioError) {
        let head = rxQueue.nextHead
        rxUnnotified += 1
        var buffer = VirtqBuffer(address: address(of: rxBuffer(head)), length: UInt32(bufferSize), deviceWritable: true)
        let added = try withUnsafePointer(to: &buffer) { (p: UnsafePointer<VirtqBuffer>) throws(VirtioError) -> UInt16 in
            try rxQueue.add(UnsafeBufferPointer(start: p, count: 1))
        }
        rxQueue.publish(added)
    }

    // MARK: transmit

    /// Reclaims every transmit chain the device has returned. Returns how many.
    @discardableResult
    public mutating func reclaimTransmitted() throws(VirtioError) -> Int {
        var n = 0
        while let element = try txQueue.nextUsed() {
            guard element.known else { throw .badUsedID(element.id) }
            n += 1
        }
        return n
    }

    /// Sends one Ethernet frame (destination, source, EtherType, payload; no FCS) of
    /// 14 ... `maxFrameSize` bytes (+ 4 if 802.1Q-tagged): copies the zero header and the frame into a transmit
    /// buffer, publishes it and rings the doorbell (with `notify: false` the doorbell waits for
    /// `kickTransmit`, a full ring, `flush`, or a later `send`: the device may not look at the
    /// queue before then). If every transmit descriptor is in flight, waits (up to `timeout`,
    /// default `txQueue.timeout`) for the device to return one. Returns once the frame is
    /// queued, not sent: `flush` waits for the device.
    public mutating func send(_ frame: UnsafeRawBufferPointer, notify: Bool = true,
                              timeout: UInt64? = nil) throws(VirtioError) {
        guard isSendable(frame) else { throw .badArgument }
        try transmit(frame, notify: notify, timeout: timeout)
    }

    /// Rings the transmit doorbell if frames were published without one.
    public mutating func kickTransmit() {
        if txUnnotified > 0 {
            txQueue.notify()
            txUnnotified = 0
        }
    }

    /// Rings the receive doorbell if buffers were posted again without one.
    public mutating func kickReceive() {
        if rxUnnotified > 0 {
            rxQueue.notify()
            rxUnnotified = 0
        }
    }

    /// True if `send` accepts `frame`: 14 ... `maxFrameSize` bytes, or 4 more with an 802.1Q tag.
    public func isSendable(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard frame.count >= Ethernet.headerSize, let base = frame.baseAddress else { return false }
        if frame.count <= maxFrameSize { return true }
        return frame.count <= maxFrameSize + Ethernet.vlanTagSize
            && Ethernet.etherType(base) == Ethernet.vlanEtherType
    }

    /// `send` without the length checks (up to `bufferSize - 12` bytes, any length ≥ 0): for
    /// tests of what the device does with runt or oversized frames.
    public mutating func transmit(_ frame: UnsafeRawBufferPointer, notify: Bool = true,
                                  timeout: UInt64? = nil) throws(VirtioError) {
        guard frame.count <= bufferSize - VirtioNet.headerSize else { throw .badArgument }
        try reclaimTransmitted()
        if txQueue.freeCount == 0 { kickTransmit() }
        while txQueue.freeCount == 0 {
            let element = try txQueue.waitUsed(timeout: timeout)
            guard element.known else { throw .badUsedID(element.id) }
        }
        let head = txQueue.nextHead
        let slot = txBuffer(head)
        slot.initializeMemory(as: UInt8.self, repeating: 0, count: VirtioNet.headerSize)
        if let source = frame.baseAddress, frame.count > 0 {
            (slot + VirtioNet.headerSize).copyMemory(from: source, byteCount: frame.count)
        }
        var buffer = VirtqBuffer(address: address(of: slot), length: UInt32(VirtioNet.headerSize + frame.count),
                                 deviceWritable: false)
        let added = try withUnsafePointer(to: &buffer) { (p: UnsafePointer<VirtqBuffer>) throws(VirtioError) -> UInt16 in
            try txQueue.add(UnsafeBufferPointer(start: p, count: 1))
        }
        txQueue.publish(added)
        txUnnotified += 1
        if notify { kickTransmit() }
        framesSent &+= 1
    }

    /// Waits until the device has returned every transmit chain (every queued frame has left
    /// the guest). Throws `timeout` after `timeout` ns (default `txQueue.timeout`) without one.
    public mutating func flush(timeout: UInt64? = nil) throws(VirtioError) {
        kickTransmit()
        try reclaimTransmitted()
        while txQueue.inFlight > 0 {
            let element = try txQueue.waitUsed(timeout: timeout)
            guard element.known else { throw .badUsedID(element.id) }
        }
    }

    // MARK: receive

    /// Takes the next received frame, if the device has returned one: copies it (without the
    /// virtio header) into `buffer` and posts the receive buffer again. Returns the frame's
    /// length — if that is more than `buffer.count`, only the first `buffer.count` bytes were
    /// copied — or nil if nothing has arrived. Chains returned with less than a header are
    /// posted again and skipped (`rxEmpty`).
    public mutating func receive(into buffer: UnsafeMutableRawBufferPointer) throws(VirtioError) -> Int? {
        var result: Int? = nil
        try receive { frame in
            if let destination = buffer.baseAddress, let source = frame.baseAddress {
                destination.copyMemory(from: source, byteCount: min(frame.count, buffer.count))
            }
            result = frame.count
        }
        return result
    }

    /// Like `receive(into:)`, but hands `body` the frame in place (valid only during the call;
    /// the buffer is posted again afterwards). Returns false if nothing has arrived.
    @discardableResult
    public mutating func receive(_ body: (UnsafeRawBufferPointer) -> Void) throws(VirtioError) -> Bool {
        var took = false
        defer {
            // Idle (nothing more to take, or an error) or a batch's worth: tell the device.
            if !took || rxUnnotified >= rxNotifyBatch { kickReceive() }
        }
        while let element = try rxQueue.nextUsed() {
            guard element.known else { throw .badUsedID(element.id) }
            let head = UInt16(truncatingIfNeeded: element.id)
            guard element.length <= UInt32(bufferSize) else {
                try postReceiveBuffer()
                throw .badUsedLength(element.length)
            }
            let length = Int(element.length)
            if length <= VirtioNet.headerSize {
                rxEmpty &+= 1
                try postReceiveBuffer()
                continue
            }
            body(UnsafeRawBufferPointer(start: rxBuffer(head) + VirtioNet.headerSize,
                                        count: length - VirtioNet.headerSize))
            try postReceiveBuffer()
            framesReceived &+= 1
            took = true
            return true
        }
        return false
    }

    /// Waits up to `timeout` ns for a frame and takes it as `receive(into:)` does. Spins
    /// (`pause`) first, then backs off with `wait` (yield, then 10 µs doubling to 1 ms),
    /// checking Status for DEVICE_NEEDS_RESET. Returns nil on timeout.
    public mutating func waitReceive(into buffer: UnsafeMutableRawBufferPointer,
                                     timeout: UInt64 = 5_000_000_000) throws(VirtioError) -> Int? {
        var spins = 0
        while spins < VirtQueue.spinIterations {
            if let n = try receive(into: buffer) { return n }
            cpuRelax()
            spins += 1
        }
        let start = time()
        var nap: UInt64 = 0
        while true {
            if let n = try receive(into: buffer) { return n }
            if transport.needsReset {
                if let n = try receive(into: buffer) { return n }
                throw .deviceNeedsReset
            }
            if time() &- start >= timeout { return nil }
            wait(nap)
            nap = nap == 0 ? 10_000 : min(nap * 2, 1_000_000)
        }
    }
}
