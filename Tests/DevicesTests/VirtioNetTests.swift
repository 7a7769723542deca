import TestSupport
import Testing
import Virtio
@testable import Devices

/// The driver side of a virtio-net device (two TestSupport `DriverQueue`s): brings the device up
/// through its MMIO registers with both queues, builds transmit chains from readable parts and
/// receive chains from writable sizes, and reads back the used rings.
private struct NetDriver {
    struct Layout {
        var desc: UInt64, avail: UInt64, used: UInt64
    }

    static let size: UInt16 = 16
    static let layouts = [Layout(desc: 0x1000, avail: 0x2000, used: 0x3000),   // 0: receiveq
                          Layout(desc: 0x4000, avail: 0x5000, used: 0x6000)]   // 1: transmitq
    static let sentinel = DriverQueue.sentinel
    static let dataBase: UInt64 = 0x8000

    let ram = ArrayRAM(base: 0, size: 0x4_0000)
    let device: VirtioMMIODevice
    var queues: [DriverQueue]
    var arena = BufferArena(start: NetDriver.dataBase, end: 0x4_0000)

    init(_ net: VirtioNet, rateLimit: RateLimiter? = nil) {
        device = VirtioMMIODevice(model: net, rateLimit: rateLimit)
        let memory = ram
        queues = Self.layouts.map { DriverQueue(ram: memory, size: Self.size, descriptorTable: $0.desc, availRing: $0.avail, usedRing: $0.used) }
    }

    @discardableResult
    func w(_ r: MMIOTransport.Register, _ v: UInt32) -> Bool {
        device.write(offset: r.rawValue, size: 4, value: UInt64(v), ram: ram)
    }
    func r(_ r: MMIOTransport.Register) -> UInt32 { UInt32(device.read(offset: r.rawValue, size: 4)) }

    static let defaultFeatures = Virtio.Feature.version1 | VirtioNet.Feature.mac | VirtioNet.Feature.status | VirtioNet.Feature.mtu

    func initialise(features: UInt64 = NetDriver.defaultFeatures, queues: [Int] = [0, 1]) {
        w(.status, 0); w(.status, 1); w(.status, 3)
        w(.driverFeaturesSel, 0); w(.driverFeatures, UInt32(truncatingIfNeeded: features))
        w(.driverFeaturesSel, 1); w(.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        w(.status, 11)
        for q in queues {
            let l = Self.layouts[q]
            w(.queueSel, UInt32(q)); w(.queueNum, UInt32(Self.size))
            w(.queueDescLow, UInt32(l.desc)); w(.queueDriverLow, UInt32(l.avail)); w(.queueDeviceLow, UInt32(l.used))
            w(.queueReady, 1)
        }
        w(.status, 15)
    }

    func setDescriptor(_ q: Int, _ i: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) {
        queues[q].setDescriptor(i, address: address, length: length, flags: flags, next: next)
    }

    mutating func publish(_ q: Int, _ head: UInt16) { queues[q].publish(head) }

    mutating func allocate(_ length: Int) -> UInt64 { arena.allocate(length) }

    /// Lays out a chain on queue `q` (readable parts, then writable ones) and publishes it.
    @discardableResult
    mutating func submit(_ q: Int, readable: [[UInt8]] = [], writable: [Int] = []) -> (head: UInt16, writable: [GuestBuffer]) {
        let parts = readable.map { DriverQueue.Part.readable($0) } + writable.map { DriverQueue.Part.writable($0) }
        let (head, buffers) = queues[q].submit(parts, arena: &arena)
        return (head, buffers.filter(\.writable).map(\.buffer))
    }

    /// A transmit chain: the header and the frame, cut into `splits` readable buffers.
    @discardableResult
    mutating func transmit(_ frame: [UInt8], header: [UInt8] = netHeader(), splits: [Int] = []) -> UInt16 {
        let bytes = header + frame
        var parts: [[UInt8]] = []
        var at = 0
        for s in splits where at + s < bytes.count { parts.append(Array(bytes[at..<at + s])); at += s }
        parts.append(Array(bytes[at...]))
        return submit(1, readable: parts).head
    }

    func usedIndex(_ q: Int) -> UInt16 { queues[q].usedIndex }

    /// The used elements the device added to queue `q` since the last call.
    mutating func takeUsed(_ q: Int) -> [(id: UInt32, length: UInt32)] { queues[q].takeUsed() }

    /// The bytes of a receive chain's buffers, in order.
    func contents(_ buffers: [GuestBuffer]) -> [UInt8] { queues[0].contents(buffers) }

    func notify(_ q: Int) -> Bool { device.notify(queue: q, ram: ram) }
    func input() -> (interrupt: Bool, needsBuffers: Bool) { device.backendInput(ram: ram) }
}

private let deviceMAC: [UInt8] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]
private let peerMAC: [UInt8] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x03]
private let broadcast: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]

/// A 12-byte virtio_net_hdr.
private func netHeader(flags: UInt8 = 0, gsoType: UInt8 = 0, hdrLen: UInt16 = 0, gsoSize: UInt16 = 0,
                       csumStart: UInt16 = 0, csumOffset: UInt16 = 0, numBuffers: UInt16 = 0) -> [UInt8] {
    func le(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
    return [flags, gsoType] + le(hdrLen) + le(gsoSize) + le(csumStart) + le(csumOffset) + le(numBuffers)
}

/// An Ethernet frame of `length` bytes in all (header included).
private func frame(_ length: Int, src: [UInt8] = deviceMAC, dst: [UInt8] = peerMAC, ethertype: UInt16 = 0x0800,
                   seed: Int = 1) -> [UInt8] {
    var f = dst + src + [UInt8(ethertype >> 8), UInt8(ethertype & 0xff)]
    f += (0..<max(0, length - 14)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &* 7) }
    return Array(f.prefix(length))
}

private func device(mtu: UInt16 = 1500) throws -> (VirtioNet, MemoryFrameBackend) {
    let backend = MemoryFrameBackend()
    return (try VirtioNet(backend: backend, mac: deviceMAC, mtu: mtu), backend)
}

private let receivedHeader = netHeader(numBuffers: 1)

@Suite struct VirtioNetTests {
    // MARK: configuration

    @Test func configurationSpace() throws {
        let (net, _) = try device(mtu: 1500)
        let c = net.config
        #expect(c.count == 12)
        #expect(Array(c[0..<6]) == deviceMAC)
        #expect(c[6] == 1 && c[7] == 0)          // status: LINK_UP
        #expect(c[8] == 1 && c[9] == 0)          // max_virtqueue_pairs
        #expect(c[10] == 0xdc && c[11] == 0x05)  // mtu 1500
        #expect(net.queueSizes == [256, 256])
        #expect(net.deviceType == .network)
        let F = VirtioNet.Feature.self
        #expect(net.features == F.mac | F.status | F.mtu)
        #expect(net.features & (F.csum | F.mergeRxBuffers) == 0)

        // Through the transport: device ID, offered bits, config reads of any width.
        let d = NetDriver(net)
        #expect(d.r(.deviceID) == 1)
        d.w(.deviceFeaturesSel, 0)
        #expect(UInt64(d.r(.deviceFeatures)) & (F.mac | F.status | F.mtu) == F.mac | F.status | F.mtu)
        #expect(UInt64(d.r(.deviceFeatures)) & (F.csum | F.mergeRxBuffers) == 0)
        #expect(d.device.read(offset: 0x100, size: 4) == 0x11ac_4202)
        #expect(d.device.read(offset: 0x104, size: 2) == 0x0200)
        #expect(d.device.read(offset: 0x106, size: 2) == 1)
        #expect(d.device.read(offset: 0x10a, size: 2) == 1500)
        // The driver must not write configuration (§5.1.4.2); a write changes nothing.
        _ = d.device.write(offset: 0x100, size: 4, value: 0xffff_ffff, ram: d.ram)
        #expect(d.device.read(offset: 0x100, size: 4) == 0x11ac_4202)

        let (jumbo, _) = try device(mtu: 9000)
        #expect(jumbo.config[10] == 0x28 && jumbo.config[11] == 0x23)
        #expect(jumbo.maxFrameSize == 9018)
    }

    @Test func refusesBadConfiguration() {
        let b = MemoryFrameBackend()
        #expect(throws: VirtioNetConfigError.macLength(5)) { try VirtioNet(backend: b, mac: [2, 0, 0, 0, 1]) }
        #expect(throws: VirtioNetConfigError.macLength(7)) { try VirtioNet(backend: b, mac: [2, 0, 0, 0, 0, 1, 2]) }
        #expect(throws: VirtioNetConfigError.multicastMAC([1, 0, 0x5e, 0, 0, 1])) { try VirtioNet(backend: b, mac: [1, 0, 0x5e, 0, 0, 1]) }
        #expect(throws: VirtioNetConfigError.multicastMAC(broadcast)) { try VirtioNet(backend: b, mac: broadcast) }
        #expect(throws: VirtioNetConfigError.zeroMAC) { try VirtioNet(backend: b, mac: [0, 0, 0, 0, 0, 0]) }
        #expect(throws: VirtioNetConfigError.mtuOutOfRange(67)) { try VirtioNet(backend: b, mac: deviceMAC, mtu: 67) }
        #expect(throws: VirtioNetConfigError.mtuOutOfRange(9217)) { try VirtioNet(backend: b, mac: deviceMAC, mtu: 9217) }
        #expect(VirtioNetConfigError.multicastMAC([1, 0, 0x5e, 0, 0, 1]).description.contains("01:00:5e:00:00:01"))
        #expect(VirtioNetConfigError.macLength(5).description.contains("6 bytes"))
        #expect(VirtioNet.format(mac: deviceMAC) == "02:42:ac:11:00:02")
        #expect((try? VirtioNet(backend: b, mac: deviceMAC, mtu: 68)) != nil)
        #expect((try? VirtioNet(backend: b, mac: deviceMAC, mtu: 9216)) != nil)
    }

    // MARK: transmit

    @Test func transmitsFramesWithTheHeaderStripped() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        let a = frame(60), b = frame(1514, seed: 2), c = frame(100, dst: broadcast, seed: 3)
        d.transmit(a)
        d.transmit(b, splits: [4, 8, 1, 700])      // header split over two buffers, frame over three
        d.transmit(c, splits: [12])                 // header alone in the first buffer
        #expect(d.notify(1))
        #expect(backend.sent == [a, b, c])
        let used = d.takeUsed(1)
        #expect(used.map(\.id) == [0, 1, 6] && used.allSatisfy { $0.length == 0 })
        #expect(net.counters.framesSent == 3 && net.counters.bytesSent == 60 + 1514 + 100)
        #expect(net.counters.totalDrops == 0)
        #expect(d.r(.interruptStatus) == 1)
    }

    @Test func headerAskingForOffloadsIsRefused() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        d.transmit(frame(60), header: netHeader(flags: 1, csumStart: 34, csumOffset: 16)) // NEEDS_CSUM
        d.transmit(frame(60), header: netHeader(gsoType: 1, gsoSize: 1448))               // TCPV4
        d.transmit(frame(60), header: netHeader(gsoType: 4))                              // TCPV6
        d.transmit(frame(60), header: netHeader(gsoType: 5))                              // UDP_L4
        d.transmit(frame(60), header: netHeader(gsoType: 0x80))                           // ECN alone
        d.transmit(frame(60), header: netHeader(flags: 3, gsoType: 3))                    // everything
        _ = d.notify(1)
        #expect(backend.sent.isEmpty)
        #expect(net.counters[.txOffload] == 6)
        #expect(d.takeUsed(1).count == 6)
        // Bits the device must ignore (§5.1.6.2.2), and fields that mean nothing without
        // offloads, do not stop a frame.
        let ok = frame(70)
        d.transmit(ok, header: netHeader(flags: 2 | 4 | 0x80, hdrLen: 54, gsoSize: 9, csumStart: 1, csumOffset: 2, numBuffers: 7))
        _ = d.notify(1)
        #expect(backend.sent == [ok])
    }

    @Test func shortHeadersAndFrameSizes() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        d.submit(1, readable: [[0, 0, 0, 0, 0]])                  // 5 bytes: no header
        d.submit(1, readable: [])                                  // nothing readable at all
        d.submit(1, writable: [64])                                // only writable buffers
        d.transmit([])                                             // header only
        d.transmit(frame(13))                                      // one byte short of Ethernet
        _ = d.notify(1)
        #expect(backend.sent.isEmpty)
        #expect(net.counters[.txShortHeader] == 3)
        #expect(net.counters[.txTooShort] == 2)
        #expect(d.takeUsed(1).allSatisfy { $0.length == 0 })

        let sizes: [(frame: [UInt8], goes: Bool)] = [
            (frame(14), true),                                     // a bare Ethernet header
            (frame(1514), true),                                   // mtu + 14
            (frame(1515), false),                                  // one byte over
            (frame(1518), false),                                  // VLAN-sized but untagged
            (frame(1518, ethertype: 0x8100), true),                // 802.1Q tagged: mtu + 18
            (frame(1519, ethertype: 0x8100), false),               // tagged, one over
            (frame(9000), false),
        ]
        for s in sizes { d.transmit(s.frame) }
        _ = d.notify(1)
        #expect(backend.sent == sizes.filter(\.goes).map(\.frame))
        #expect(net.counters[.txTooLong] == 4)
        #expect(d.takeUsed(1).count == sizes.count)
    }

    @Test func hugeChainIsRefusedFromItsLength() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        // 192 KiB of readable buffers in one chain: refused before a byte is copied.
        d.submit(1, readable: [netHeader() + frame(1000), [UInt8](repeating: 0, count: 0x3_0000 - 0x2000)])
        _ = d.notify(1)
        #expect(backend.sent.isEmpty && net.counters[.txTooLong] == 1)
        #expect(d.takeUsed(1).map(\.length) == [0])
    }

    @Test func spoofedSourceIsDropped() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        let mine = frame(60)
        d.transmit(frame(60, src: peerMAC))                        // another station's address
        d.transmit(frame(60, src: broadcast))                      // a group address as source
        d.transmit(frame(60, src: [0x02, 0x42, 0xac, 0x11, 0x00, 0x12]))   // one bit off
        d.transmit(frame(60, src: [0, 0, 0, 0, 0, 0]))
        d.transmit(mine)
        d.transmit(frame(60, src: deviceMAC, dst: deviceMAC))      // to itself: allowed, the switch decides
        _ = d.notify(1)
        #expect(backend.sent == [mine, frame(60, src: deviceMAC, dst: deviceMAC)])
        #expect(net.counters[.txSpoofedSource] == 4)
        #expect(d.takeUsed(1).count == 6)
    }

    @Test func wouldBlockLeavesChainsForTheNextNotify() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        backend.sendCapacity = 1
        let frames = (0..<4).map { frame(60 + $0, seed: $0) }
        for f in frames { d.transmit(f) }
        #expect(d.notify(1))                                       // the first went: interrupt
        #expect(backend.sent == [frames[0]])
        #expect(d.takeUsed(1).map(\.id) == [0])
        #expect(net.transmitBlocked && net.counters.transmitBlocked == 1)
        #expect(net.blockedTransmitHandles.isEmpty)                 // memory back end: nothing to wait on
        #expect(backend.sendCalls == 2)                             // tried once, did not spin

        // Still blocked: the same chain is offered again, nothing is lost or reordered.
        #expect(!d.notify(1))
        #expect(backend.sent == [frames[0]] && d.takeUsed(1).isEmpty)
        #expect(backend.sendCalls == 3)

        backend.sendCapacity = nil
        #expect(d.notify(1))
        #expect(backend.sent == frames)
        #expect(d.takeUsed(1).map(\.id) == [1, 2, 3])
        #expect(!net.transmitBlocked)
        #expect(net.counters.framesSent == 4 && net.counters.totalDrops == 0)
    }

    @Test func backendFailureDropsTheFrame() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        backend.failSends = true
        d.transmit(frame(60))
        _ = d.notify(1)
        #expect(net.counters[.txBackendFailed] == 1 && !net.transmitBlocked)
        #expect(d.takeUsed(1).count == 1)
    }

    @Test func brokenTransmitChainsAreReturned() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        d.setDescriptor(1, 0, address: 0x8000, length: 64, flags: Virtio.DescriptorFlag.next, next: 0) // loop
        d.publish(1, 0)
        d.setDescriptor(1, 1, address: 0x3_fff0, length: 64, flags: 0)                              // past RAM
        d.publish(1, 1)
        d.queues[1].nextDescriptor = 2
        let ok = frame(60)
        d.transmit(ok)
        _ = d.notify(1)
        #expect(backend.sent == [ok])
        #expect(net.counters[.brokenChain] == 2)
        #expect(d.takeUsed(1).map(\.length) == [0, 0, 0])
        #expect(d.r(.status) & Virtio.Status.deviceNeedsReset.rawValue == 0)
    }

    @Test func rateLimitDefersTransmission() throws {
        let (net, backend) = try device()
        let second: UInt64 = 1_000_000_000
        var d = NetDriver(net, rateLimit: RateLimiter(operations: TokenBucket(capacity: 2, ratePerSecond: 2, now: 0)))
        d.initialise()
        for i in 0..<3 { d.transmit(frame(60, seed: i)) }
        _ = d.device.notify(queue: 1, ram: d.ram, now: 0)
        #expect(backend.sent.count == 2)
        #expect(d.device.deferral(queue: 1) == second / 2)
        _ = d.device.notify(queue: 1, ram: d.ram, now: second)
        #expect(backend.sent.count == 3)
        #expect(d.device.deferral(queue: 1) == nil)
    }

    /// Receive under a bytes limit: frames beyond it wait in the device with their chain still
    /// available, the link is not read further, and they go when the bucket refills; each frame
    /// is charged once however often it is retried.
    @Test func rateLimitDefersReception() throws {
        let (net, backend) = try device()
        let ms: UInt64 = 1_000_000
        // 1000 bytes per second, a bucket of 1000: five 200-byte frames now, one more 200 ms later.
        var d = NetDriver(net, rateLimit: RateLimiter(bytes: TokenBucket(capacity: 1000, ratePerSecond: 1000, now: 0)))
        d.initialise()
        for _ in 0..<8 { _ = d.submit(0, writable: [2048]) }
        let frames = (0..<7).map { frame(200, src: peerMAC, seed: $0) }
        for f in frames { backend.deliver(f) }
        _ = d.device.backendInput(ram: d.ram, now: 0)
        #expect(d.takeUsed(0).count == 5)       // 5 × 200 = the whole bucket
        #expect(net.pendingFrame == frames[5] && backend.inbound == [frames[6]])
        #expect(d.device.inputDeferral == 200 * ms)
        // Polled too early (a doorbell, say): still held, and not charged twice.
        _ = d.device.backendInput(ram: d.ram, now: 100 * ms)
        #expect(d.takeUsed(0).isEmpty && d.device.inputDeferral == 100 * ms)
        _ = d.device.backendInput(ram: d.ram, now: 200 * ms)
        #expect(d.takeUsed(0).count == 1 && net.pendingFrame == frames[6] && backend.inbound.isEmpty)
        _ = d.device.backendInput(ram: d.ram, now: 400 * ms)
        #expect(d.takeUsed(0).count == 1 && net.pendingFrame == nil && d.device.inputDeferral == nil)
        #expect(net.counters.framesReceived == 7)
    }

    // MARK: receive

    @Test func receivesIntoSplitBuffers() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        let f = frame(1514, src: peerMAC, dst: deviceMAC)
        let chain = d.submit(0, writable: [5, 7, 100, 1000, 500])  // 1612 bytes, header split
        backend.deliver(f)
        let r = d.input()
        #expect(r.interrupt && !r.needsBuffers)
        let used = d.takeUsed(0)
        #expect(used.count == 1 && used[0].id == UInt32(chain.head) && used[0].length == UInt32(12 + 1514))
        let got = d.contents(chain.writable)
        #expect(Array(got[0..<12]) == receivedHeader)
        #expect(Array(got[12..<1526]) == f)
        #expect(got[1526...].allSatisfy { $0 == NetDriver.sentinel })  // nothing past the frame
        #expect(net.counters.framesReceived == 1 && net.counters.bytesReceived == 1514)
        #expect(d.r(.interruptStatus) & 1 == 1)

        // An exact fit, and a chain with a readable part first (ignored).
        let g = frame(60, src: peerMAC, seed: 9)
        let exact = d.submit(0, writable: [72])
        let mixed = d.submit(0, readable: [[1, 2, 3]], writable: [200])
        backend.deliver(g)
        backend.deliver(g)
        _ = d.input()
        #expect(d.takeUsed(0).map(\.length) == [72, 72])
        #expect(d.contents(exact.writable) == receivedHeader + g)
        #expect(Array(d.contents(mixed.writable)[0..<72]) == receivedHeader + g)
    }

    /// Posted receive buffers are not pending work (the socket announces input); they would
    /// otherwise make the device thread poll an idle device every millisecond.
    @Test func postedReceiveBuffersAreNotPendingWork() throws {
        let (net, _) = try device()
        var d = NetDriver(net)
        d.initialise()
        for _ in 0..<4 { _ = d.submit(0, writable: [2048]) }
        #expect(!d.device.hasPending(queue: 0, ram: d.ram))
        d.transmit(frame(60, seed: 1))
        #expect(d.device.hasPending(queue: 1, ram: d.ram))
    }

    @Test func withoutBuffersOneFrameIsHeld() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        let f1 = frame(100, src: peerMAC, seed: 1), f2 = frame(200, src: peerMAC, seed: 2)
        backend.deliver(f1)
        backend.deliver(f2)
        let r = d.input()
        #expect(!r.interrupt && r.needsBuffers)
        #expect(net.pendingFrame == f1)
        #expect(backend.inbound == [f2])                            // only one frame held
        #expect(net.counters.receiveNoBuffers == 1)
        // Polled again without buffers: nothing more is read.
        #expect(d.input().needsBuffers && backend.inbound == [f2])

        // The guest posts a buffer and rings: the held frame goes in, then the link's next one
        // waits again.
        let a = d.submit(0, writable: [2048])
        #expect(d.notify(0))
        #expect(d.takeUsed(0).map(\.length) == [UInt32(12 + 100)])
        #expect(Array(d.contents(a.writable)[0..<112]) == receivedHeader + f1)
        #expect(net.pendingFrame == f2 && backend.inbound.isEmpty)
        let b = d.submit(0, writable: [2048])
        let r2 = d.input()
        #expect(r2.interrupt && !r2.needsBuffers)
        #expect(Array(d.contents(b.writable)[0..<212]) == receivedHeader + f2)
        #expect(net.pendingFrame == nil && net.counters.framesReceived == 2 && net.counters.totalDrops == 0)
    }

    @Test func chainTooSmallDropsTheFrame() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        let big = frame(1000, src: peerMAC), small = frame(60, src: peerMAC)
        let tooSmall = d.submit(0, writable: [500, 511])           // 1011 < 12 + 1000
        let next = d.submit(0, writable: [1500])
        backend.deliver(big)
        backend.deliver(small)
        _ = d.input()
        let used = d.takeUsed(0)
        #expect(used.map(\.id) == [UInt32(tooSmall.head), UInt32(next.head)])
        #expect(used.map(\.length) == [0, 72])                      // returned empty, never truncated
        #expect(d.contents(tooSmall.writable).allSatisfy { $0 == NetDriver.sentinel })
        #expect(Array(d.contents(next.writable)[0..<72]) == receivedHeader + small)
        #expect(net.counters[.rxChainTooSmall] == 1 && net.counters.framesReceived == 1)
    }

    @Test func linkFramesOfTheWrongSizeAreDropped() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        let good = frame(1518, src: peerMAC, ethertype: 0x8100)
        for f in [[], frame(13), frame(1515), frame(1519, ethertype: 0x8100), frame(65000), good] { backend.deliver(f) }
        let chain = d.submit(0, writable: [9000])
        _ = d.input()
        #expect(d.takeUsed(0).map(\.length) == [UInt32(12 + 1518)])
        #expect(Array(d.contents(chain.writable)[12..<1530]) == good)
        #expect(net.counters[.rxTooShort] == 2 && net.counters[.rxTooLong] == 3)
    }

    @Test func brokenReceiveChainTakesItsFrame() throws {
        let (net, backend) = try device()
        var d = NetDriver(net)
        d.initialise()
        d.setDescriptor(0, 0, address: 0x3_fff0, length: 2048, flags: Virtio.DescriptorFlag.write) // past RAM
        d.publish(0, 0)
        d.queues[0].nextDescriptor = 1
        let ok = d.submit(0, writable: [2048])
        backend.deliver(frame(60, src: peerMAC, seed: 1))
        backend.deliver(frame(61, src: peerMAC, seed: 2))
        _ = d.input()
        #expect(d.takeUsed(0).map(\.length) == [0, 73])
        #expect(Array(d.contents(ok.writable)[12..<73]) == frame(61, src: peerMAC, seed: 2))
        #expect(net.counters[.brokenChain] == 1)
    }

    @Test func receiveBeforeTheQueueIsReadyHoldsOneFrame() throws {
        let (net, backend) = try device()
        let d = NetDriver(net)
        d.initialise(queues: [1])                                   // receiveq never set up
        backend.deliver(frame(60, src: peerMAC))
        backend.deliver(frame(61, src: peerMAC))
        let r = d.input()
        #expect(r.needsBuffers && !r.interrupt)
        #expect(net.pendingFrame != nil && backend.inbound.count == 1)
        // A reset drops it, and counts it.
        d.w(.status, 0)
        #expect(net.pendingFrame == nil && net.counters[.rxReset] == 1)
        #expect(!net.transmitBlocked)
    }

    @Test func notRunningMeansNoInput() throws {
        let (net, backend) = try device()
        let d = NetDriver(net)
        backend.deliver(frame(60, src: peerMAC))
        let r = d.input()
        // Nowhere to put input yet: no interrupt, and the VMM stops polling until a doorbell.
        #expect(!r.interrupt && r.needsBuffers)
        #expect(backend.receiveCalls == 0)                          // the transport is not running
    }

    @Test func onePassReadsABoundedNumberOfFrames() throws {
        let (net, backend) = try device()
        let d = NetDriver(net)
        d.initialise()
        for _ in 0..<(VirtioNet.maxFramesPerPass + 44) { backend.deliver(frame(10)) }   // all runts
        _ = d.input()
        #expect(backend.receiveCalls == VirtioNet.maxFramesPerPass)
        #expect(net.counters[.rxTooShort] == UInt64(VirtioNet.maxFramesPerPass))
        _ = d.input()
        #expect(backend.inbound.isEmpty && net.counters[.rxTooShort] == UInt64(VirtioNet.maxFramesPerPass + 44))
    }

    @Test func inputHandles() throws {
        let (net, backend) = try device()
        #expect(net.inputHandles.isEmpty)                           // an in-memory link has none
        final class FDBackend: FrameBackend {
            var waitHandle: WaitHandle? { WaitHandle(hostDescriptor: 7) }
            var isClosed = false
            func send(_ frame: [UInt8]) -> FrameSendResult { .wouldBlock }
            func receive() -> [UInt8]? { nil }
        }
        let fdBackend = FDBackend()
        let net2 = try VirtioNet(backend: fdBackend, mac: deviceMAC)
        #expect(net2.inputHandles == [WaitHandle(hostDescriptor: 7)])
        fdBackend.isClosed = true
        #expect(net2.inputHandles.isEmpty)                          // a hung-up link is not polled
        var d = NetDriver(net2)
        d.initialise()
        d.transmit(frame(60))
        _ = d.notify(1)
        #expect(net2.blockedTransmitHandles == [WaitHandle(hostDescriptor: 7)])
        _ = backend
    }

    // MARK: a hostile driver

    /// Random descriptor tables, rings and link frames: nothing traps, every frame that leaves is a
    /// legal frame from the device's MAC, RAM keeps its size. (FuzzVirtioNet checks used lengths
    /// against each chain.)
    @Test func randomHostileDriver() throws {
        var rng = SplitMix64(seed: 0x5eed_0f_4e7)
        var totals = NetCounters()
        for round in 0..<300 {
            let (net, backend) = try device(mtu: [68, 576, 1500][round % 3])
            var d = NetDriver(net)
            d.initialise(features: round % 2 == 0 ? NetDriver.defaultFeatures
                : NetDriver.defaultFeatures | Virtio.Feature.eventIndex | Virtio.Feature.indirectDescriptors)
            backend.sendCapacity = round % 5 == 0 ? Int(rng.next() % 4) : nil
            for step in 0..<20 {
                switch rng.next() % 6 {
                case 0:
                    // Scribble over a descriptor table, an available ring, or buffer space.
                    let base: UInt64 = [0x1000, 0x4000, 0x2000, 0x5000, 0x8000][Int(rng.next() % 5)]
                    let n = Int(rng.next() % 64)
                    _ = d.ram.copyIn((0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: base + rng.next() % 256)
                case 1:
                    // A plausible transmit chain, sometimes with a forged source or header.
                    var f = frame(Int(rng.next() % 1600), seed: step)
                    if rng.next() % 3 == 0, f.count >= 12 { f[6 + Int(rng.next() % 6)] ^= 1 }
                    let h = rng.next() % 4 == 0 ? netHeader(flags: UInt8(truncatingIfNeeded: rng.next()), gsoType: UInt8(truncatingIfNeeded: rng.next())) : netHeader()
                    d.transmit(f, header: h, splits: [Int(rng.next() % 20), Int(rng.next() % 200)])
                case 2:
                    d.submit(0, writable: (0..<Int(1 + rng.next() % 3)).map { _ in Int(rng.next() % 1200) })
                case 3:
                    backend.deliver((0..<Int(rng.next() % 1700)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
                case 4:
                    // The available index jumps anywhere.
                    _ = d.ram.store(UInt16(truncatingIfNeeded: rng.next()), at: NetDriver.layouts[Int(rng.next() % 2)].avail + 2)
                default:
                    if rng.next() % 4 == 0 { backend.sendCapacity = nil }
                }
                _ = d.notify(Int(rng.next() % 2))
                _ = d.input()
                if rng.next() % 50 == 0 { d.w(.status, 0); d.initialise(); d.queues[0].restart(); d.queues[1].restart() }
            }
            for f in backend.sent {
                #expect(f.count >= 14 && f.count <= Int(net.mtu) + 18)
                #expect(Array(f[6..<12]) == deviceMAC)
                #expect(f.count <= Int(net.mtu) + 14 || (f[12] == 0x81 && f[13] == 0x00))
            }
            #expect(d.ram.bytes.count == 0x4_0000)
            #expect(net.counters.framesSent == UInt64(backend.sent.count))
            totals.framesSent += net.counters.framesSent
            totals.framesReceived += net.counters.framesReceived
            for (k, v) in net.counters.drops { totals.drops[k, default: 0] += v }
        }
        // The loop reached the interesting paths.
        #expect(totals.framesSent > 100 && totals.framesReceived > 100)
        for reason: NetDrop in [.txSpoofedSource, .txOffload, .txTooLong, .rxTooLong, .rxChainTooSmall, .brokenChain] {
            #expect(totals[reason] > 0, "no \(reason) drop in the hostile loop")
        }
    }
}

