// Bulkhead guest SDK — virtio block device driver (virtio 1.2 §5.2) over `VirtioMMIO`
// and one `VirtQueue` (requestq, queue 0).
//
// A request is a descriptor chain: a 16-byte device-readable header {type u32, reserved
// u32, sector u64}, the data buffers (device-readable for writes, device-writable for reads
// and GET_ID), and a 1-byte device-writable status. Header and status live in driver
// arrays indexed by the chain's head descriptor, so several requests can be in flight.
// The status byte is preset to 0xff: a chain that comes back with it unchanged was refused
// by the device as malformed (`VirtioError.requestRejected`).

public struct VirtioBlock {
    // The numbers the device uses too: GuestABI's BlockABI.
    public static let sectorSize = BlockABI.sectorSize
    /// Length of the GET_ID answer (§5.2.6: 20 bytes, NUL-padded if shorter).
    public static let idLength = BlockABI.idLength

    /// Request types (§5.2.6).
    public typealias RequestType = BlockABI.RequestType

    /// Status byte values (§5.2.6).
    public enum Status {
        public static let ok = BlockABI.Status.ok
        public static let ioError = BlockABI.Status.ioError
        public static let unsupported = BlockABI.Status.unsupported
        /// What the driver presets: the device did not write a status.
        public static let notWritten: UInt8 = 0xff
    }

    /// Feature bits (§5.2.3).
    public enum Feature {
        public static let sizeMax: UInt64 = 1 << 1
        public static let segMax: UInt64 = 1 << 2
        public static let geometry: UInt64 = 1 << 4
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
        public static let topology: UInt64 = 1 << 10
        public static let configWCE: UInt64 = 1 << 11
        public static let discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }

    /// What `init` asks for by default (only the ones the device offers are accepted).
    public static let defaultFeatures: UInt64 =
        Feature.sizeMax | Feature.segMax | Feature.readOnly | Feature.blockSize | Feature.flush

    /// Config space offsets (§5.2.4).
    public enum Config {
        public static let capacity = 0
        public static let sizeMax = 8
        public static let segMax = 12
        public static let blockSize = 20
    }

    /// One finished request.
    public struct Completion {
        /// The chain's head descriptor (what `start` returned).
        public var head: UInt16
        /// The status byte (`Status.notWritten` if the device did not write one).
        public var status: UInt8
        /// The used element's length: bytes the device says it wrote (data + status).
        public var usedLength: UInt32

        /// nil for OK, else the error the status means.
        public var error: VirtioError? {
            switch status {
            case Status.ok: return nil
            case Status.ioError: return .ioError
            case Status.unsupported: return .unsupported
            case Status.notWritten: return .requestRejected
            default: return .badStatus(status)
            }
        }
    }

    public var transport: VirtioMMIO
    public var queue: VirtQueue
    /// Capacity in 512-byte sectors (config offset 0).
    public private(set) var capacity: UInt64 = 0
    /// The device offers VIRTIO_BLK_F_RO: writes fail.
    public private(set) var readOnly = false
    /// VIRTIO_BLK_F_FLUSH was negotiated.
    public private(set) var canFlush = false
    /// Largest single data buffer the device takes (0 = no limit given).
    public private(set) var sizeMax: UInt32 = 0
    /// Most data buffers per request the device takes (0 = no limit given).
    public private(set) var segMax: UInt32 = 0
    /// The device's logical block size (512 unless VIRTIO_BLK_F_BLK_SIZE says otherwise).
    public private(set) var blockSize: UInt32 = 512
    /// The data-buffer size `read`/`write` split large buffers into (default 256 KiB,
    /// at most `sizeMax`; a multiple of 512).
    public var segmentBytes = 256 * 1024
    let wantedFeatures: UInt64
    let headers: UnsafeMutableRawPointer   // 16 bytes per descriptor index
    let statuses: UnsafeMutableRawPointer  // 1 byte per descriptor index

    /// Initialises the block device behind `entry`: negotiation (`features` ∩ offered, plus
    /// VERSION_1), queue 0 with up to `queueSize` entries, DRIVER_OK, then reads the config.
    public init(_ entry: VirtioDeviceEntry, queueSize: UInt16 = 128,
                features: UInt64 = VirtioBlock.defaultFeatures) throws(VirtioError) {
        var transport = try VirtioMMIO(entry, expecting: .block)
        try transport.negotiate(wanted: features)
        let queue = try transport.setupQueue(0, maxSize: queueSize)
        let n = Int(queue.size)
        guard let headers = Heap.allocate(byteCount: 16 * n, alignment: 16),
              let statuses = Heap.allocate(byteCount: n, alignment: 16) else {
            transport.fail()
            throw .outOfMemory
        }
        self.transport = transport
        self.queue = queue
        self.wantedFeatures = features
        self.headers = headers
        self.statuses = statuses
        try transport.driverOK()
        readConfig()
    }

    /// The first block device in the boot-info device list.
    public init(bootInfo: BootInfo, queueSize: UInt16 = 128,
                features: UInt64 = VirtioBlock.defaultFeatures) throws(VirtioError) {
        guard let entry = bootInfo.firstDevice(.block) else { throw .noDevice }
        try self.init(entry, queueSize: queueSize, features: features)
    }

    /// Reset and initialise again on the same memory (after DEVICE_NEEDS_RESET). Requests in
    /// flight are forgotten.
    public mutating func reinitialize() throws(VirtioError) {
        try transport.negotiate(wanted: wantedFeatures)
        try transport.setupQueue(reusing: &queue)
        try transport.driverOK()
        readConfig()
    }

    mutating func readConfig() {
        let features = transport.features
        capacity = transport.config64(Config.capacity)
        readOnly = transport.offeredFeatures & Feature.readOnly != 0
        canFlush = features & Feature.flush != 0
        sizeMax = features & Feature.sizeMax != 0 ? transport.config32(Config.sizeMax) : 0
        segMax = features & Feature.segMax != 0 ? transport.config32(Config.segMax) : 0
        blockSize = features & Feature.blockSize != 0 ? transport.config32(Config.blockSize) : 512
        if sizeMax > 0 {
            segmentBytes = max(VirtioBlock.sectorSize, min(segmentBytes, Int(sizeMax) & ~(VirtioBlock.sectorSize - 1)))
        }
    }

    /// Most data buffers one request may carry (queue size − 2, and `segMax`).
    public var maxDataSegments: Int {
        var n = Int(queue.size) - 2
        if segMax > 0 { n = min(n, Int(segMax)) }
        return max(n, 1)
    }

    /// Most bytes one request of `read`/`write`/`start(write:...)` carries.
    public var maxRequestBytes: Int { maxDataSegments * segmentBytes }

    // MARK: low level (any request, no checks: hostile tests use these)

    /// The header slot of the next request (the chain's head is the queue's next free
    /// descriptor), for tests that build chains by hand.
    public func headerSlot(for head: UInt16) -> UnsafeMutableRawPointer { headers + 16 * Int(head) }
    /// The status slot of the request whose chain starts at `head`.
    public func statusSlot(for head: UInt16) -> UnsafeMutableRawPointer { statuses + Int(head) }

    /// Writes the request header for `head` and presets its status byte to 0xff.
    public func prepare(head: UInt16, type: UInt32, sector: UInt64) {
        let h = headerSlot(for: head)
        volatileStore32(type, to: h)
        volatileStore32(0, to: h + 4)
        volatileStore(sector, to: h + 8)
        volatileStoreByte(Status.notWritten, to: statusSlot(for: head))
    }

    /// Starts a request: header, `data` (as given: the caller sets deviceWritable), status.
    /// Returns the chain's head. Nothing is checked against capacity or read-only.
    public mutating func start(type: UInt32, sector: UInt64,
                               data: UnsafeBufferPointer<VirtqBuffer>) throws(VirtioError) -> UInt16 {
        let count = data.count + 2
        guard count <= queue.freeCount else { throw .noDescriptors }
        let head = queue.nextHead
        prepare(head: head, type: type, sector: sector)
        let result: Result<UInt16, VirtioError> = withUnsafeTemporaryAllocation(of: VirtqBuffer.self, capacity: count) { chain in
            chain[0] = VirtqBuffer(address: address(of: headerSlot(for: head)), length: 16, deviceWritable: false)
            var i = 0
            while i < data.count {
                chain[i + 1] = data[i]
                i += 1
            }
            chain[count - 1] = VirtqBuffer(address: address(of: statusSlot(for: head)), length: 1, deviceWritable: true)
            do throws(VirtioError) {
                return .success(try queue.submit(UnsafeBufferPointer(chain)))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// The completion for a used element (the status is read after the used index).
    func completion(_ element: VirtqUsedElement) -> Completion {
        Completion(head: UInt16(truncatingIfNeeded: element.id),
                   status: volatileLoadByte(statusSlot(for: UInt16(truncatingIfNeeded: element.id))),
                   usedLength: element.length)
    }

    /// Waits for request `head` (other completions that arrive first are dropped).
    public mutating func finish(_ head: UInt16, timeout: UInt64? = nil) throws(VirtioError) -> Completion {
        completion(try queue.waitFor(head, timeout: timeout))
    }

    /// Waits for whichever request finishes next (for several requests in flight).
    public mutating func nextCompletion(timeout: UInt64? = nil) throws(VirtioError) -> Completion {
        let element = try queue.waitUsed(timeout: timeout)
        guard element.known else { throw .badUsedID(element.id) }
        return completion(element)
    }

    /// start + finish: returns the completion whatever its status.
    public mutating func request(type: UInt32, sector: UInt64, data: UnsafeBufferPointer<VirtqBuffer>,
                                 timeout: UInt64? = nil) throws(VirtioError) -> Completion {
        let head = try start(type: type, sector: sector, data: data)
        return try finish(head, timeout: timeout)
    }

    /// start + finish, throwing unless the status is OK.
    public mutating func perform(type: UInt32, sector: UInt64, data: UnsafeBufferPointer<VirtqBuffer>,
                                 timeout: UInt64? = nil) throws(VirtioError) {
        let done = try request(type: type, sector: sector, data: data, timeout: timeout)
        if let error = done.error { throw error }
    }

    // MARK: high level

    /// Checks that `bytes` is a whole number of sectors and [sector, sector + n) is on the disk.
    func checkRange(sector: UInt64, bytes: Int) throws(VirtioError) {
        guard bytes >= 0, bytes % VirtioBlock.sectorSize == 0 else { throw .badArgument }
        let (end, overflow) = sector.addingReportingOverflow(UInt64(bytes / VirtioBlock.sectorSize))
        guard !overflow, end <= capacity else { throw .badArgument }
    }

    /// Starts one read or write of `buffer` (at most `maxRequestBytes`, split into
    /// `segmentBytes` descriptors). Returns the head; collect it with `finish` or
    /// `nextCompletion`.
    public mutating func start(write: Bool, sector: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(VirtioError) -> UInt16 {
        try checkRange(sector: sector, bytes: buffer.count)
        guard buffer.count > 0, buffer.count <= maxRequestBytes, let base = buffer.baseAddress else { throw .badArgument }
        if write && readOnly { throw .badArgument }
        let segments = (buffer.count + segmentBytes - 1) / segmentBytes
        let result: Result<UInt16, VirtioError> = withUnsafeTemporaryAllocation(of: VirtqBuffer.self, capacity: segments) { data in
            var i = 0
            while i < segments {
                let offset = i * segmentBytes
                let length = min(segmentBytes, buffer.count - offset)
                data[i] = VirtqBuffer(address: address(of: base + offset), length: UInt32(length), deviceWritable: !write)
                i += 1
            }
            do throws(VirtioError) {
                return .success(try start(type: write ? RequestType.write : RequestType.read, sector: sector,
                                          data: UnsafeBufferPointer(data)))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Reads `buffer.count / 512` sectors starting at `sector` (several requests if needed).
    public mutating func read(sector: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VirtioError) {
        try transfer(write: false, sector: sector, buffer: buffer)
    }

    /// Writes `buffer.count / 512` sectors starting at `sector` (several requests if needed).
    public mutating func write(sector: UInt64, from buffer: UnsafeRawBufferPointer) throws(VirtioError) {
        try transfer(write: true, sector: sector, buffer: UnsafeMutableRawBufferPointer(mutating: buffer))
    }

    mutating func transfer(write: Bool, sector: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(VirtioError) {
        try checkRange(sector: sector, bytes: buffer.count)
        if write && readOnly { throw .badArgument }
        guard let base = buffer.baseAddress else { return }
        let chunk = maxRequestBytes
        var done = 0
        while done < buffer.count {
            let length = min(chunk, buffer.count - done)
            let head = try start(write: write, sector: sector + UInt64(done / VirtioBlock.sectorSize),
                                 buffer: UnsafeMutableRawBufferPointer(start: base + done, count: length))
            let result = try finish(head)
            if let error = result.error { throw error }
            done += length
        }
    }

    /// One read request whose data is the given buffers, one descriptor each (each at most
    /// `sizeMax`; each need not be a whole number of sectors, but their total must).
    public mutating func read(sector: UInt64, into segments: UnsafeBufferPointer<UnsafeMutableRawBufferPointer>) throws(VirtioError) {
        try vectored(write: false, sector: sector, segments: segments)
    }

    /// One write request whose data is the given buffers, one descriptor each.
    public mutating func write(sector: UInt64, from segments: UnsafeBufferPointer<UnsafeMutableRawBufferPointer>) throws(VirtioError) {
        try vectored(write: true, sector: sector, segments: segments)
    }

    mutating func vectored(write: Bool, sector: UInt64, segments: UnsafeBufferPointer<UnsafeMutableRawBufferPointer>) throws(VirtioError) {
        var total = 0
        for segment in segments {
            if sizeMax > 0 && segment.count > Int(sizeMax) { throw .badArgument }
            total += segment.count
        }
        try checkRange(sector: sector, bytes: total)
        guard segments.count > 0, segments.count <= maxDataSegments else { throw .badArgument }
        if write && readOnly { throw .badArgument }
        let result: Result<Void, VirtioError> = withUnsafeTemporaryAllocation(of: VirtqBuffer.self, capacity: segments.count) { data in
            var i = 0
            while i < segments.count {
                data[i] = VirtqBuffer(segments[i], deviceWritable: !write)
                i += 1
            }
            do throws(VirtioError) {
                try perform(type: write ? RequestType.write : RequestType.read, sector: sector, data: UnsafeBufferPointer(data))
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// VIRTIO_BLK_T_FLUSH (only sent if VIRTIO_BLK_F_FLUSH was negotiated; otherwise the
    /// device writes through and there is nothing to do).
    public mutating func flush() throws(VirtioError) {
        guard canFlush else { return }
        try perform(type: RequestType.flush, sector: 0, data: UnsafeBufferPointer(start: nil, count: 0))
    }

    /// VIRTIO_BLK_T_GET_ID into `buffer` (at least 20 bytes). Returns the id's length (up to
    /// the first NUL, at most 20).
    public mutating func identify(into buffer: UnsafeMutableRawBufferPointer) throws(VirtioError) -> Int {
        guard buffer.count >= VirtioBlock.idLength else { throw .badArgument }
        let id = UnsafeMutableRawBufferPointer(start: buffer.baseAddress, count: VirtioBlock.idLength)
        id.initializeMemory(as: UInt8.self, repeating: 0)
        var segment = VirtqBuffer(id, deviceWritable: true)
        try withUnsafePointer(to: &segment) { (p: UnsafePointer<VirtqBuffer>) throws(VirtioError) in
            try perform(type: RequestType.getID, sector: 0, data: UnsafeBufferPointer(start: p, count: 1))
        }
        var length = 0
        while length < VirtioBlock.idLength && id[length] != 0 { length += 1 }
        return length
    }
}
