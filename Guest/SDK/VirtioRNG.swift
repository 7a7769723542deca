// Bulkhead guest SDK — virtio entropy device driver (virtio 1.2 §5.4): one queue
// (requestq, queue 0) of device-writable buffers the device fills with random bytes.
// The device may return fewer bytes than asked for (the used length says how many).

public struct VirtioRNG {
    public var transport: VirtioMMIO
    public var queue: VirtQueue
    /// Largest buffer handed to the device in one request.
    public var chunkBytes = 4096

    /// Initialises the entropy device behind `entry` (no device features; queue 0).
    public init(_ entry: VirtioDeviceEntry, queueSize: UInt16 = 16) throws(VirtioError) {
        var transport = try VirtioMMIO(entry, expecting: .entropy)
        try transport.negotiate(wanted: 0)
        let queue = try transport.setupQueue(0, maxSize: queueSize)
        self.transport = transport
        self.queue = queue
        try transport.driverOK()
    }

    /// The first entropy device in the boot-info device list.
    public init(bootInfo: BootInfo, queueSize: UInt16 = 16) throws(VirtioError) {
        guard let entry = bootInfo.firstDevice(.entropy) else { throw .noDevice }
        try self.init(entry, queueSize: queueSize)
    }

    /// Reset and initialise again on the same memory (after DEVICE_NEEDS_RESET).
    public mutating func reinitialize() throws(VirtioError) {
        try transport.negotiate(wanted: 0)
        try transport.setupQueue(reusing: &queue)
        try transport.driverOK()
    }

    /// Fills all of `buffer` with bytes from the device (one request per `chunkBytes`, more
    /// if the device returns short reads). Throws `badUsedLength` if the device claims to
    /// have written more than it was given, `noProgress` after 16 empty answers in a row.
    public mutating func read(into buffer: UnsafeMutableRawBufferPointer, timeout: UInt64? = nil) throws(VirtioError) {
        guard let base = buffer.baseAddress else { return }
        var done = 0
        var empty = 0
        while done < buffer.count {
            let length = min(chunkBytes, buffer.count - done)
            var segment = VirtqBuffer(address: address(of: base + done), length: UInt32(length), deviceWritable: true)
            let head = try withUnsafeMutablePointer(to: &segment) { p throws(VirtioError) -> UInt16 in
                try queue.submit(UnsafeBufferPointer(start: p, count: 1))
            }
            let used = try queue.waitFor(head, timeout: timeout)
            guard used.length <= UInt32(length) else { throw .badUsedLength(used.length) }
            if used.length == 0 {
                empty += 1
                if empty >= 16 { throw .noProgress }
            } else {
                empty = 0
            }
            done += Int(used.length)
        }
    }
}
