// device-reset: resets every virtio device while it has live state on the host side,
// re-initialises it, and rings a doorbell through an MMIO exit (issue 9, item 2).
//
// A driver that resets its device (Linux on unbind or kexec does) writes 0 to Status: that
// write is an MMIO exit, served by the VMM's exit handler. So is a QueueNotify write whose value
// is not the one the doorbell's ioeventfd matches (the VMM registers a 4-byte ioeventfd with
// datamatch = the queue index; the transport looks only at the low 16 bits, so `0x10000 | q`
// still notifies queue q, but through the exit handler). Whatever that handler makes the device
// do must be allowed where it runs: in a jailed worker a forbidden system call ends the VM
// (status 159).
//
// Command-line words:
//   vsock-port=P   host port the vsock checks connect to (default 5000; the VMM connects it to
//                  the Unix socket PATH_P of `--vsock PATH`, where the host must echo every byte)
//
// For every device of the boot information's device list, in window order:
//   live     initialise it with the SDK driver and create live state on the host side:
//            block: a read (and, on a writable disk, a write of sector 1) served, then one more
//                   read published in the available ring with no doorbell (in flight at reset);
//            net:   no receive buffers posted while the peer (a host program on the link, see
//                   below) sends 8 frames, so the device holds one; then buffers are posted and
//                   one frame must arrive; more stay held in the device;
//            rng:   64 bytes read, then a second request published with no doorbell;
//            vsock: a connection to the host port, 1000 bytes echoed, 3000 more sent whose echo
//                   is not read: the connection stays open.
//   reset    Status = 0 while that state is live; Status must read back 0.
//   reinit   initialise again on the same memory and check the device works:
//            block: sector 0 reads as it did (sector 1 holds the pattern written); net: a PING
//            frame is answered; rng: 64 non-zero bytes; vsock: a new connection echoes 2000 bytes.
//   notify   publish a request with no doorbell, then write `0x10000 | q` to QueueNotify (an
//            MMIO exit) and check the request is served: block: a read of sector 0; net: a
//            PING frame on the transmit queue (answered); rng: 64 bytes; vsock: 1500 bytes on
//            the transmit queue (echoed).
//   notify-rx  (net only) reset and initialise with no receive buffers, ask the peer for 2
//            frames (the device holds one), post the buffers with no doorbell, ring the receive
//            queue through an MMIO exit: a frame must arrive.
// Before each request published for an MMIO-exit doorbell the program waits 2 ms (the device
// thread watches a queue for a moment after each doorbell), and 1 ms after it: if the request
// was served before the doorbell anyway, the ok line says "served before the doorbell".
//
// Network peer protocol (frames of 60 bytes, EtherType 0x88b5, sent to broadcast from the
// device's MAC): payload offset 14 magic "BHDR" (u32 LE), 18 kind, 19 count, 20 sequence (u32
// LE). Kinds: 'H' (hello: send me `count` 'D' frames), 'P' (ping: answer with 'R' and the same
// sequence). The peer sends its frames to the guest's MAC.
//
// Output: one line per step, `device-reset: ok <device> <step>[ (<note>)]` or
// `device-reset: FAIL <device> <step>: <why>[: <error>]` (the device's remaining steps are then
// skipped), then `device-reset: N devices, all ok` (exit 0) or `device-reset: N devices, K
// failed` (exit 1). Exit 2: no virtio device, or a bad command line. Every wait is bounded (5 s
// per request), so a broken VMM gives a FAIL line, not a hang.

import Synchronization

let stepTimeout: UInt64 = 5_000_000_000
let etherType: UInt16 = 0x88b5
let frameMagic: UInt32 = 0x5244_4842  // "BHDR" little-endian
let frameLength = 60
let kindHello = UInt8(ascii: "H")
let kindData = UInt8(ascii: "D")
let kindPing = UInt8(ascii: "P")
let kindReply = UInt8(ascii: "R")

// MARK: - Steps and their reports

struct StepFailure: Error {
    var why: StaticString
    var virtio: VirtioError?
    var vsock: VsockError?

    init(_ why: StaticString, virtio: VirtioError? = nil, vsock: VsockError? = nil) {
        self.why = why
        self.virtio = virtio
        self.vsock = vsock
    }
}

func require(_ condition: Bool, _ why: StaticString) throws(StepFailure) {
    if !condition { throw StepFailure(why) }
}

/// Runs a driver call; its error becomes the step's failure, with `why`.
func virtio<T>(_ why: StaticString, _ body: () throws(VirtioError) -> T) throws(StepFailure) -> T {
    do {
        return try body()
    } catch {
        throw StepFailure(why, virtio: error)
    }
}

func vsockCall<T>(_ why: StaticString, _ body: () throws(VsockError) -> T) throws(StepFailure) -> T {
    do {
        return try body()
    } catch {
        throw StepFailure(why, vsock: error)
    }
}

func reportFailure(_ device: StaticString, _ step: StaticString, _ failure: StepFailure) {
    Console.line { out in
        out.append("device-reset: FAIL ")
        out.append(device)
        out.append(" ")
        out.append(step)
        out.append(": ")
        out.append(failure.why)
        if let e = failure.virtio {
            out.append(": ")
            out.append(e.name)
            if case .deviceFailed(let status) = e {
                out.append(" (Status ")
                out.append(hex: status)
                out.append(")")
            }
        }
        if let e = failure.vsock {
            out.append(": ")
            out.append(vsockError: e)
        }
    }
}

/// Runs one step and prints its line. `body` returns an optional note for the ok line.
func step(_ device: StaticString, _ name: StaticString, _ body: () throws(StepFailure) -> StaticString?) -> Bool {
    do {
        let note = try body()
        Console.line { out in
            out.append("device-reset: ok ")
            out.append(device)
            out.append(" ")
            out.append(name)
            if let note {
                out.append(" (")
                out.append(note)
                out.append(")")
            }
        }
        return true
    } catch {
        reportFailure(device, name, error)
        return false
    }
}

// MARK: - Helpers

/// Sleeps `nanoseconds` (the `wait` hypercall may return early).
func pause(_ nanoseconds: UInt64) {
    let start = time()
    while true {
        let elapsed = time() &- start
        if elapsed >= nanoseconds { return }
        _ = wait(nanoseconds - elapsed)
    }
}

/// Rings queue `queue`'s doorbell with a value the ioeventfd does not match: an MMIO exit that
/// the VMM's exit handler serves (the transport takes the low 16 bits as the queue index).
func ringThroughExit(_ transport: VirtioMMIO, queue: UInt32) {
    atomicMemoryFence(ordering: .releasing)
    transport.write32(VirtioMMIO.Register.queueNotify, 0x1_0000 | queue)
}

/// True when the device has returned a chain the driver has not consumed yet.
func hasUnconsumedUsed(_ queue: VirtQueue) -> Bool {
    volatileLoad16(queue.usedRing + 2) != queue.usedIndex
}

/// Zeroed heap memory (never freed).
func allocate(_ count: Int) -> UnsafeMutableRawBufferPointer? {
    guard let p = Heap.allocate(byteCount: count, alignment: 4096) else { return nil }
    return UnsafeMutableRawBufferPointer(start: p, count: count)
}

func fillPattern(_ buffer: UnsafeMutableRawBufferPointer, seed: UInt8) {
    var i = 0
    while i < buffer.count {
        buffer[i] = UInt8(truncatingIfNeeded: i &* 31) ^ seed &+ UInt8(truncatingIfNeeded: i >> 8)
        i += 1
    }
}

func equal(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    var i = 0
    while i < count {
        if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
        i += 1
    }
    return true
}

func allZero(_ buffer: UnsafeRawBufferPointer) -> Bool {
    for b in buffer where b != 0 { return false }
    return true
}

// MARK: - Driver additions (requests published without a doorbell)

extension VirtioBlock {
    /// A read or write of `buffer` at `sector`, published in the available ring without a
    /// doorbell. Returns the chain's head (collect it with `finish`).
    mutating func publishOnly(write: Bool, sector: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(VirtioError) -> UInt16 {
        guard queue.freeCount >= 3 else { throw .noDescriptors }
        let head = queue.nextHead
        prepare(head: head, type: write ? RequestType.write : RequestType.read, sector: sector)
        let result: Result<UInt16, VirtioError> = withUnsafeTemporaryAllocation(of: VirtqBuffer.self, capacity: 3) { chain in
            chain[0] = VirtqBuffer(address: address(of: headerSlot(for: head)), length: 16, deviceWritable: false)
            chain[1] = VirtqBuffer(buffer, deviceWritable: !write)
            chain[2] = VirtqBuffer(address: address(of: statusSlot(for: head)), length: 1, deviceWritable: true)
            do throws(VirtioError) {
                let added = try queue.add(UnsafeBufferPointer(chain))
                queue.publish(added)
                return .success(added)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}

extension VirtioRNG {
    /// A request for `buffer.count` bytes, published without a doorbell.
    mutating func publishOnly(_ buffer: UnsafeMutableRawBufferPointer) throws(VirtioError) -> UInt16 {
        var segment = VirtqBuffer(buffer, deviceWritable: true)
        let head = try withUnsafePointer(to: &segment) { (p: UnsafePointer<VirtqBuffer>) throws(VirtioError) -> UInt16 in
            try queue.add(UnsafeBufferPointer(start: p, count: 1))
        }
        queue.publish(head)
        return head
    }
}

extension VirtioNet {
    /// Reset and initialise on the same memory with no receive buffer posted: frames the link
    /// brings are held by the device until buffers come.
    mutating func restartWithoutReceiveBuffers() throws(VirtioError) {
        try transport.negotiate(wanted: wantedFeatures & VirtioNet.defaultFeatures)
        try transport.setupQueue(reusing: &rxQueue)
        try transport.setupQueue(reusing: &txQueue)
        readConfig()
        try transport.driverOK()
    }

    /// Posts a buffer on every free receive descriptor, without a doorbell.
    mutating func postAllReceiveBuffers() throws(VirtioError) {
        while rxQueue.freeCount > 0 { try postReceiveBuffer() }
    }

    /// Copies `frame` behind a zero header into a transmit buffer and publishes it, without a
    /// doorbell. Returns the chain's head.
    mutating func publishFrame(_ frame: UnsafeRawBufferPointer) throws(VirtioError) -> UInt16 {
        try reclaimTransmitted()
        guard txQueue.freeCount > 0, let source = frame.baseAddress else { throw .noDescriptors }
        let head = txQueue.nextHead
        let slot = txBuffer(head)
        slot.initializeMemory(as: UInt8.self, repeating: 0, count: VirtioNet.headerSize)
        (slot + VirtioNet.headerSize).copyMemory(from: source, byteCount: frame.count)
        var buffer = VirtqBuffer(address: address(of: slot), length: UInt32(VirtioNet.headerSize + frame.count),
                                 deviceWritable: false)
        let added = try withUnsafePointer(to: &buffer) { (p: UnsafePointer<VirtqBuffer>) throws(VirtioError) -> UInt16 in
            try txQueue.add(UnsafeBufferPointer(start: p, count: 1))
        }
        txQueue.publish(added)
        return added
    }
}

// MARK: - Block

func checkBlock(_ entry: VirtioDeviceEntry) -> Bool {
    let name: StaticString = "block"
    guard let reference = allocate(512), let scratch = allocate(512), let pattern = allocate(512),
          let parked = allocate(512), let late = allocate(512) else {
        reportFailure(name, "live", StepFailure("out of memory"))
        return false
    }
    var disk: VirtioBlock
    do throws(VirtioError) {
        disk = try VirtioBlock(entry)
    } catch {
        reportFailure(name, "live", StepFailure("initialise", virtio: error))
        return false
    }
    var wrote = false

    guard step(name, "live", { () throws(StepFailure) -> StaticString? in
        try virtio("read sector 0") { () throws(VirtioError) in try disk.read(sector: 0, into: reference) }
        if !disk.readOnly && disk.capacity >= 2 {
            fillPattern(pattern, seed: 0x5a)
            try virtio("write sector 1") { () throws(VirtioError) in
                try disk.write(sector: 1, from: UnsafeRawBufferPointer(pattern))
            }
            wrote = true
        }
        try virtio("read sector 0 again") { () throws(VirtioError) in try disk.read(sector: 0, into: scratch) }
        try require(equal(scratch.baseAddress!, reference.baseAddress!, 512), "sector 0 read twice differs")
        // The device thread watches a queue briefly after a doorbell: let that pass, so the next
        // request stays in the available ring, unserved, until the reset.
        pause(2_000_000)
        _ = try virtio("publish a read without a doorbell") { () throws(VirtioError) -> UInt16 in
            try disk.publishOnly(write: false, sector: 0, buffer: parked)
        }
        pause(1_000_000)
        if hasUnconsumedUsed(disk.queue) { return "the parked read was served without a doorbell" }
        return wrote ? "read and write served, a read in flight" : "reads served, a read in flight"
    }) else { return false }

    guard step(name, "reset", { () throws(StepFailure) -> StaticString? in
        try require(disk.transport.reset(), "Status did not read 0 after writing 0")
        return nil
    }) else { return false }

    guard step(name, "reinit", { () throws(StepFailure) -> StaticString? in
        try virtio("re-initialise") { () throws(VirtioError) in try disk.reinitialize() }
        scratch.initializeMemory(as: UInt8.self, repeating: 0)
        try virtio("read sector 0") { () throws(VirtioError) in try disk.read(sector: 0, into: scratch) }
        try require(equal(scratch.baseAddress!, reference.baseAddress!, 512), "sector 0 differs from before the reset")
        if wrote {
            try virtio("read sector 1") { () throws(VirtioError) in try disk.read(sector: 1, into: scratch) }
            try require(equal(scratch.baseAddress!, pattern.baseAddress!, 512), "sector 1 lost the pattern written before the reset")
        }
        return nil
    }) else { return false }

    return step(name, "notify", { () throws(StepFailure) -> StaticString? in
        pause(2_000_000)
        let head = try virtio("publish a read without a doorbell") { () throws(VirtioError) -> UInt16 in
            try disk.publishOnly(write: false, sector: 0, buffer: late)
        }
        pause(1_000_000)
        let early = hasUnconsumedUsed(disk.queue)
        ringThroughExit(disk.transport, queue: 0)
        let done = try virtio("the read rung through an MMIO exit") { () throws(VirtioError) -> VirtioBlock.Completion in
            try disk.finish(head, timeout: stepTimeout)
        }
        if let e = done.error { throw StepFailure("the read rung through an MMIO exit failed", virtio: e) }
        try require(equal(late.baseAddress!, reference.baseAddress!, 512), "the read rung through an MMIO exit returned other data")
        return early ? "served before the doorbell" : nil
    })
}

// MARK: - Entropy

func checkRNG(_ entry: VirtioDeviceEntry) -> Bool {
    let name: StaticString = "rng"
    guard let first = allocate(64), let parked = allocate(64), let second = allocate(64), let late = allocate(64) else {
        reportFailure(name, "live", StepFailure("out of memory"))
        return false
    }
    var rng: VirtioRNG
    do throws(VirtioError) {
        rng = try VirtioRNG(entry)
    } catch {
        reportFailure(name, "live", StepFailure("initialise", virtio: error))
        return false
    }

    guard step(name, "live", { () throws(StepFailure) -> StaticString? in
        try virtio("read 64 bytes") { () throws(VirtioError) in try rng.read(into: first, timeout: stepTimeout) }
        try require(!allZero(UnsafeRawBufferPointer(first)), "64 zero bytes")
        pause(2_000_000)
        _ = try virtio("publish a request without a doorbell") { () throws(VirtioError) -> UInt16 in
            try rng.publishOnly(parked)
        }
        pause(1_000_000)
        return hasUnconsumedUsed(rng.queue) ? "the parked request was served without a doorbell" : "a request in flight"
    }) else { return false }

    guard step(name, "reset", { () throws(StepFailure) -> StaticString? in
        try require(rng.transport.reset(), "Status did not read 0 after writing 0")
        return nil
    }) else { return false }

    guard step(name, "reinit", { () throws(StepFailure) -> StaticString? in
        try virtio("re-initialise") { () throws(VirtioError) in try rng.reinitialize() }
        try virtio("read 64 bytes") { () throws(VirtioError) in try rng.read(into: second, timeout: stepTimeout) }
        try require(!allZero(UnsafeRawBufferPointer(second)), "64 zero bytes")
        try require(!equal(first.baseAddress!, second.baseAddress!, 64), "the same 64 bytes as before the reset")
        return nil
    }) else { return false }

    return step(name, "notify", { () throws(StepFailure) -> StaticString? in
        pause(2_000_000)
        let head = try virtio("publish a request without a doorbell") { () throws(VirtioError) -> UInt16 in
            try rng.publishOnly(late)
        }
        pause(1_000_000)
        let early = hasUnconsumedUsed(rng.queue)
        ringThroughExit(rng.transport, queue: 0)
        let used = try virtio("the request rung through an MMIO exit") { () throws(VirtioError) -> VirtqUsedElement in
            try rng.queue.waitFor(head, timeout: stepTimeout)
        }
        try require(used.length >= 1 && used.length <= 64, "the device wrote no bytes, or more than asked")
        try require(!allZero(UnsafeRawBufferPointer(start: late.baseAddress, count: Int(used.length))) || used.length < 8,
                    "the bytes are all zero")
        return early ? "served before the doorbell" : nil
    })
}

// MARK: - Network

/// Writes a protocol frame (60 bytes) from `source` to broadcast.
func buildFrame(_ frame: UnsafeMutableRawBufferPointer, source: MACAddress, kind: UInt8, count: UInt8, sequence: UInt32) {
    frame.initializeMemory(as: UInt8.self, repeating: 0)
    let p = frame.baseAddress!
    Ethernet.writeHeader(p, destination: .broadcast, source: source, etherType: etherType)
    p.storeBytes(of: frameMagic.littleEndian, toByteOffset: 14, as: UInt32.self)
    p.storeBytes(of: kind, toByteOffset: 18, as: UInt8.self)
    p.storeBytes(of: count, toByteOffset: 19, as: UInt8.self)
    p.storeBytes(of: sequence.littleEndian, toByteOffset: 20, as: UInt32.self)
}

/// Whether the `length` bytes at `p` are a protocol frame of `kind` (and `sequence`, if given).
func isFrame(_ p: UnsafeRawPointer, length: Int, kind: UInt8, sequence: UInt32? = nil) -> Bool {
    guard length >= 24, Ethernet.etherType(p) == etherType,
          UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt32.self)) == frameMagic,
          p.load(fromByteOffset: 18, as: UInt8.self) == kind else { return false }
    if let sequence {
        return UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self)) == sequence
    }
    return true
}

/// Receives frames until one of `kind` (and `sequence`) comes; others are skipped. 5 s in all.
func waitFrame(_ net: inout VirtioNet, _ buffer: UnsafeMutableRawBufferPointer, kind: UInt8,
               sequence: UInt32? = nil) throws(StepFailure) -> Bool {
    let start = time()
    while true {
        let elapsed = time() &- start
        if elapsed >= stepTimeout { return false }
        let n = try virtio("receive") { () throws(VirtioError) -> Int? in
            try net.waitReceive(into: buffer, timeout: stepTimeout - elapsed)
        }
        guard let n else { return false }
        if isFrame(buffer.baseAddress!, length: min(n, buffer.count), kind: kind, sequence: sequence) { return true }
    }
}

func checkNet(_ entry: VirtioDeviceEntry) -> Bool {
    let name: StaticString = "net"
    guard let out = allocate(frameLength), let frame = allocate(2048) else {
        reportFailure(name, "live", StepFailure("out of memory"))
        return false
    }
    var net: VirtioNet
    do throws(VirtioError) {
        net = try VirtioNet(entry, rxQueueSize: 4, txQueueSize: 4)
    } catch {
        reportFailure(name, "live", StepFailure("initialise", virtio: error))
        return false
    }

    /// Sends a protocol frame the normal way (ioeventfd doorbell) and waits until it left.
    func send(_ net: inout VirtioNet, kind: UInt8, count: UInt8, sequence: UInt32) throws(StepFailure) {
        buildFrame(out, source: net.mac, kind: kind, count: count, sequence: sequence)
        try virtio("send a frame") { () throws(VirtioError) in
            try net.send(UnsafeRawBufferPointer(out))
            try net.flush(timeout: stepTimeout)
        }
    }

    guard step(name, "live", { () throws(StepFailure) -> StaticString? in
        try virtio("initialise without receive buffers") { () throws(VirtioError) in try net.restartWithoutReceiveBuffers() }
        try send(&net, kind: kindHello, count: 8, sequence: 0)
        // The peer sends 8 frames; with no receive buffer the device holds one (the rest wait in
        // the socket).
        pause(300_000_000)
        try virtio("post receive buffers") { () throws(VirtioError) in try net.postAllReceiveBuffers() }
        net.kickReceive()
        try require(try waitFrame(&net, frame, kind: kindData), "no frame from the peer after receive buffers were posted")
        // The device fills the buffers again and holds the next frame: live at the reset.
        pause(50_000_000)
        return "a held frame received, more held"
    }) else { return false }

    guard step(name, "reset", { () throws(StepFailure) -> StaticString? in
        try require(net.transport.reset(), "Status did not read 0 after writing 0")
        return nil
    }) else { return false }

    guard step(name, "reinit", { () throws(StepFailure) -> StaticString? in
        try virtio("re-initialise") { () throws(VirtioError) in try net.reinitialize() }
        try send(&net, kind: kindPing, count: 0, sequence: 1)
        try require(try waitFrame(&net, frame, kind: kindReply, sequence: 1), "no answer to a PING in 5 s")
        return nil
    }) else { return false }

    guard step(name, "notify", { () throws(StepFailure) -> StaticString? in
        pause(2_000_000)
        buildFrame(out, source: net.mac, kind: kindPing, count: 0, sequence: 2)
        let head = try virtio("publish a frame without a doorbell") { () throws(VirtioError) -> UInt16 in
            try net.publishFrame(UnsafeRawBufferPointer(out))
        }
        pause(1_000_000)
        let early = hasUnconsumedUsed(net.txQueue)
        ringThroughExit(net.transport, queue: VirtioNet.transmitQueueIndex)
        let used = try virtio("the frame rung through an MMIO exit") { () throws(VirtioError) -> VirtqUsedElement in
            try net.txQueue.waitUsed(timeout: stepTimeout)
        }
        try require(used.id == UInt32(head), "the device returned another transmit chain")
        try require(try waitFrame(&net, frame, kind: kindReply, sequence: 2),
                    "no answer to the PING rung through an MMIO exit")
        return early ? "served before the doorbell" : nil
    }) else { return false }

    return step(name, "notify-rx", { () throws(StepFailure) -> StaticString? in
        try virtio("initialise without receive buffers") { () throws(VirtioError) in try net.restartWithoutReceiveBuffers() }
        try send(&net, kind: kindHello, count: 2, sequence: 0)
        pause(300_000_000)
        // Buffers posted, no doorbell: the device (holding a frame) has not heard of them.
        try virtio("post receive buffers") { () throws(VirtioError) in try net.postAllReceiveBuffers() }
        pause(1_000_000)
        let early = hasUnconsumedUsed(net.rxQueue)
        ringThroughExit(net.transport, queue: VirtioNet.receiveQueueIndex)
        let used = try virtio("no frame after the receive doorbell rung through an MMIO exit") { () throws(VirtioError) -> VirtqUsedElement in
            try net.rxQueue.waitUsed(timeout: stepTimeout)
        }
        try require(used.known, "the device returned an unknown receive chain")
        try require(used.length > UInt32(VirtioNet.headerSize) && used.length <= UInt32(net.bufferSize),
                    "bad used length for a received frame")
        let p = net.rxBuffer(UInt16(truncatingIfNeeded: used.id)) + VirtioNet.headerSize
        try require(isFrame(p, length: Int(used.length) - VirtioNet.headerSize, kind: kindData),
                    "the received frame is not the peer's")
        return early ? "served before the doorbell" : nil
    })
}

// MARK: - vsock

/// Receives exactly `count` bytes into `buffer`.
func receiveExactly(_ vsock: VirtioVsock, _ c: VsockConnection, into buffer: UnsafeMutableRawBufferPointer,
                    count: Int) throws(StepFailure) {
    var got = 0
    while got < count {
        let r = try vsockCall("receive the echo") { () throws(VsockError) -> VsockReceiveResult in
            try vsock.waitReceive(c, into: UnsafeMutableRawBufferPointer(start: buffer.baseAddress! + got, count: count - got),
                                  timeout: stepTimeout)
        }
        switch r {
        case .data(let n): got += n
        case .wouldBlock: throw StepFailure("no echo from the host in 5 s")
        case .closed: throw StepFailure("the host closed the connection before echoing")
        }
    }
}

/// Sends `count` pattern bytes and checks that the host echoes them.
func roundTrip(_ vsock: VirtioVsock, _ c: VsockConnection, out: UnsafeMutableRawBufferPointer,
               back: UnsafeMutableRawBufferPointer, count: Int, seed: UInt8) throws(StepFailure) {
    let message = UnsafeMutableRawBufferPointer(start: out.baseAddress, count: count)
    fillPattern(message, seed: seed)
    try vsockCall("send") { () throws(VsockError) in try vsock.send(c, UnsafeRawBufferPointer(message), timeout: stepTimeout) }
    try receiveExactly(vsock, c, into: back, count: count)
    try require(equal(out.baseAddress!, back.baseAddress!, count), "the echo differs from what was sent")
}

func checkVsock(_ entry: VirtioDeviceEntry, port: UInt32) -> Bool {
    let name: StaticString = "vsock"
    guard let out = allocate(4096), let back = allocate(4096) else {
        reportFailure(name, "live", StepFailure("out of memory"))
        return false
    }
    let vsock: VirtioVsock
    do throws(VsockError) {
        vsock = try VirtioVsock(entry)
    } catch {
        reportFailure(name, "live", StepFailure("initialise", vsock: error))
        return false
    }
    vsock.timeout = stepTimeout

    guard step(name, "live", { () throws(StepFailure) -> StaticString? in
        let c = try vsockCall("connect to the host port") { () throws(VsockError) -> VsockConnection in
            try vsock.connect(port: port)
        }
        try roundTrip(vsock, c, out: out, back: back, count: 1000, seed: 1)
        // More bytes whose echo is never read: the connection is open, with data both ways.
        let more = UnsafeMutableRawBufferPointer(start: out.baseAddress, count: 3000)
        fillPattern(more, seed: 2)
        try vsockCall("send") { () throws(VsockError) in try vsock.send(c, UnsafeRawBufferPointer(more), timeout: stepTimeout) }
        pause(50_000_000)
        return "a connection open, 1000 bytes echoed, 3000 more sent"
    }) else { return false }

    guard step(name, "reset", { () throws(StepFailure) -> StaticString? in
        try require(vsock.transport.reset(), "Status did not read 0 after writing 0")
        return nil
    }) else { return false }

    var connection: VsockConnection? = nil
    guard step(name, "reinit", { () throws(StepFailure) -> StaticString? in
        try vsockCall("re-initialise") { () throws(VsockError) in try vsock.reinitialize() }
        let c = try vsockCall("connect again") { () throws(VsockError) -> VsockConnection in
            try vsock.connect(port: port)
        }
        connection = c
        try roundTrip(vsock, c, out: out, back: back, count: 2000, seed: 3)
        return nil
    }) else { return false }

    let passed = step(name, "notify", { () throws(StepFailure) -> StaticString? in
        guard let c = connection else { throw StepFailure("no connection") }
        pause(2_000_000)
        let count = 1500
        let message = UnsafeMutableRawBufferPointer(start: out.baseAddress, count: count)
        fillPattern(message, seed: 4)
        let i = c.slot
        let queued = try vsockCall("publish data without a doorbell") { () throws(VsockError) -> Bool in
            try vsock.emit(slot: i, op: VirtioVsock.Op.rw, payload: UnsafeRawBufferPointer(message), notify: false)
        }
        try require(queued, "no free transmit descriptor")
        vsock.slots[i].txCnt &+= UInt32(count)
        pause(1_000_000)
        let early = hasUnconsumedUsed(vsock.txQueue)
        ringThroughExit(vsock.transport, queue: VirtioVsock.transmitQueueIndex)
        try receiveExactly(vsock, c, into: back, count: count)
        try require(equal(out.baseAddress!, back.baseAddress!, count), "the echo differs from what was sent")
        return early ? "served before the doorbell" : nil
    })
    if let c = connection { _ = try? vsock.close(c, timeout: 1_000_000_000) }
    return passed
}

// MARK: - Main

func usage() -> Never {
    Console.writeLine("device-reset: usage: [vsock-port=P]")
    exit(2)
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else { usage() }
    var port: UInt32 = 5000
    if let value = info.commandLine.value(of: "vsock-port") {
        guard let p = value.parseDecimal(), p < 0xffff_ffff else { usage() }
        port = UInt32(p)
    }
    var checked = 0
    var failed = 0
    var index = 0
    while index < info.boundedDeviceCount {
        let entry = info.device(index)
        index += 1
        let passed: Bool
        switch entry.type {
        case .block: passed = checkBlock(entry)
        case .network: passed = checkNet(entry)
        case .entropy: passed = checkRNG(entry)
        case .vsock: passed = checkVsock(entry, port: port)
        default:
            Console.line { out in
                out.append("device-reset: skipping device type ")
                out.append(decimal: entry.kind)
            }
            continue
        }
        checked += 1
        if !passed { failed += 1 }
    }
    if checked == 0 {
        Console.writeLine("device-reset: no virtio devices")
        exit(2)
    }
    Console.line { out in
        out.append("device-reset: ")
        out.append(decimal: checked)
        out.append(" devices, ")
        if failed == 0 {
            out.append("all ok")
        } else {
            out.append(decimal: failed)
            out.append(" failed")
        }
    }
    exit(failed == 0 ? 0 : 1)
}
