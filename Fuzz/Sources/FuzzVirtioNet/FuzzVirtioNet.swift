import Devices
import FuzzSupport
import Virtio

// FuzzVirtioNet: a hostile driver's virtio-net queues and a hostile link. The input is the guest
// RAM the device sees (both queues' descriptor tables and rings, and buffer space), the link's
// frames, and a sequence of events (doorbells, link input, resets). Each input runs twice on its
// own copy of RAM:
//
// Per chain (exact): the target pops chains itself and hands each to `VirtioNet.transmit(_:ram:)`
// or `deliver(_:into:ram:)` through a RAM that records every write, checking
//   - a transmit chain writes nothing into guest memory, and its outcome is the one an
//     independent model predicts from the gathered bytes (offload flags, sizes, source MAC);
//     the back end receives exactly the predicted frame;
//   - a receive chain: the used length is 12 + frame when the chain's writable bytes can hold
//     them, else 0; it never exceeds the writable bytes; every byte written lies inside the
//     chain's device-writable buffers, and what was written is exactly the header (all zero but
//     num_buffers = 1) followed by the frame.
// Whole device (loops): `process(queue:)` and `receive(queues:)` in the input's order, checking
//   - every frame the back end got is 14...mtu+14 bytes (mtu+18 with an 802.1Q tag) and carries
//     the device's source MAC;
//   - transmit: used entries = chains popped; chains = frames sent + transmit drops; at most a
//     queue's worth per doorbell; the back end was called once per accepted frame, once more when
//     it would block, and a blocked transmit leaves the chain available;
//   - receive: every frame taken from the link is delivered, dropped with a reason, or held (at
//     most one, and only while the guest has no buffer); used entries = frames delivered + chains
//     that took a dropped frame; at most `maxFramesPerPass` link frames per call.
// Writes outside RAM are impossible by construction (ArrayRAM refuses them); RAM keeps its size.
//
// Input: u8 config (bits 0-2: log2 receive queue size, 3-5: log2 transmit queue size, 6: indirect,
//        7: event index), u8 link (bits 0-1: MTU 68/576/1500/9000; bits 2-4: frames the back end
//        takes before it would block, 7 = unlimited; bit 5: sends fail),
//        u8 frame count (mod 9), then per frame u16 length (mod MTU + 26) and u8 seed (bit 0: an
//        802.1Q ethertype; bit 1: the device's MAC as source), u8 event count (mod 25), then one
//        byte per event (bits 0-1: transmit doorbell, link input, receive doorbell, reset; bits
//        2-3: nothing, one more back-end slot, unlimited back end, the frames again), then up to
//        16 KiB of guest RAM at 0x100000.
//        Layout: receiveq descriptors +0x0, available +0x800, used +0xc00; transmitq descriptors
//        +0x1400, available +0x1c00, used +0x2000; all of it is also buffer space.

let ramBase = TwoQueueImage.base
let ramSize = TwoQueueImage.size
let deviceMAC: [UInt8] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]
let mtus: [UInt16] = [68, 576, 1500, 9000]
let receivedHeader: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]

/// A byte array posing as guest RAM that records every write.
final class RecordingRAM: GuestRAM {
    let inner: ArrayRAM
    var writes: [(address: UInt64, bytes: [UInt8])] = []
    init(_ inner: ArrayRAM) { self.inner = inner }
    func copyOut(at address: UInt64, count: Int) -> [UInt8]? { inner.copyOut(at: address, count: count) }
    func copyIn(_ bytes: [UInt8], at address: UInt64) -> Bool {
        let ok = inner.copyIn(bytes, at: address)
        if ok { writes.append((address, bytes)) }
        return ok
    }
    func isRAM(_ address: UInt64, length: UInt64) -> Bool { inner.isRAM(address, length: length) }
}

/// A link that records what it was given and hands out a list of frames.
final class FuzzLink: FrameBackend {
    let waitHandle: WaitHandle? = nil
    var inbound: [[UInt8]] = []
    var sent: [[UInt8]] = []
    var capacity: Int?
    var failing = false
    var sendCalls = 0
    var handedOut = 0
    func send(_ frame: [UInt8]) -> FrameSendResult {
        sendCalls += 1
        if failing { return .failed }
        if let c = capacity {
            guard c > 0 else { return .wouldBlock }
            capacity = c - 1
        }
        sent.append(frame)
        return .sent
    }
    func receive() -> [UInt8]? {
        guard !inbound.isEmpty else { return nil }
        handedOut += 1
        return inbound.removeFirst()
    }
}

struct Setup {
    var rxSize: UInt16, txSize: UInt16, indirect: Bool, eventIndex: Bool
    var mtu: UInt16, capacity: Int?, failing: Bool
    var frames: [[UInt8]]
    var events: [UInt8]
    var image: [UInt8]

    func queues() -> (rx: SplitQueue, tx: SplitQueue) {
        TwoQueueImage.queues(rxSize: rxSize, txSize: txSize, indirect: indirect, eventIndex: eventIndex)
    }

    func ram() -> ArrayRAM { TwoQueueImage.ram(image) }

    func device() -> (VirtioNet, FuzzLink) {
        let link = FuzzLink()
        link.capacity = capacity
        link.failing = failing
        guard let net = try? VirtioNet(backend: link, mac: deviceMAC, mtu: mtu) else {
            check(false, "a valid configuration was refused")
            fatalError()
        }
        return (net, link)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtioNet(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let config = input.u8()
    let link = input.u8()
    let mtu = mtus[Int(link & 3)]
    let capacityBits = Int((link >> 2) & 7)
    var frames: [[UInt8]] = []
    for _ in 0..<Int(input.u8() % 9) {
        let length = Int(input.u16() % (mtu + 26))
        let seed = input.u8()
        frames.append(makeFrame(length: length, seed: seed))
    }
    let events = input.take(Int(input.u8() % 25))
    let setup = Setup(rxSize: UInt16(1) << UInt16(config & 7), txSize: UInt16(1) << UInt16((config >> 3) & 7),
                      indirect: config & 64 != 0, eventIndex: config & 128 != 0, mtu: mtu,
                      capacity: capacityBits == 7 ? nil : capacityBits, failing: link & 32 != 0,
                      frames: frames, events: events, image: input.take(ramSize))
    trace("rx \(setup.rxSize) tx \(setup.txSize) mtu \(mtu) capacity \(String(describing: setup.capacity)) failing \(setup.failing) frames \(frames.map(\.count)) events \(events)")
    perChain(setup)
    wholeDevice(setup)
    return 0
}

/// A frame of `length` bytes: destination, source (the device's, or another station's), an
/// ethertype (802.1Q or IPv4), a pattern.
func makeFrame(length: Int, seed: UInt8) -> [UInt8] {
    let src = seed & 2 != 0 ? deviceMAC : [0x02, 0x42, 0xac, 0x11, 0x00, seed]
    var f: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + src + (seed & 1 != 0 ? [0x81, 0x00] : [0x08, 0x00])
    f += (0..<max(0, length - 14)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
    return Array(f.prefix(length))
}

/// The model of the size rule, independent of the device's.
func sizeAllowed(_ f: [UInt8], mtu: UInt16) -> Bool {
    if f.count < 14 { return false }
    if f.count <= Int(mtu) + 14 { return true }
    return f.count <= Int(mtu) + 18 && f[12] == 0x81 && f[13] == 0x00
}

/// What the device must do with a transmit chain whose readable bytes are `bytes` (nil: the chain
/// has more readable bytes than any frame may have, so they are not even copied).
func predictTransmit(_ bytes: [UInt8]?, readable: UInt64, mtu: UInt16) -> VirtioNet.TransmitOutcome? {
    if readable < 12 { return .dropped(.txShortHeader) }
    guard let bytes else { return .dropped(.txTooLong) }
    if bytes[0] & 1 != 0 || bytes[1] != 0 { return .dropped(.txOffload) }
    let frame = Array(bytes[12...])
    if frame.count < 14 { return .dropped(.txTooShort) }
    if !sizeAllowed(frame, mtu: mtu) { return .dropped(.txTooLong) }
    if Array(frame[6..<12]) != deviceMAC { return .dropped(.txSpoofedSource) }
    return nil  // the back end decides
}

func checkSent(_ frame: [UInt8], mtu: UInt16) {
    check(frame.count >= 14 && frame.count <= Int(mtu) + 18, "sent a \(frame.count)-byte frame with MTU \(mtu)")
    check(sizeAllowed(frame, mtu: mtu), "sent an untagged \(frame.count)-byte frame with MTU \(mtu)")
    check(Array(frame[6..<12]) == deviceMAC, "sent a frame with source \(frame[6..<12].map { hex(UInt64($0)) })")
}

// MARK: per chain

func perChain(_ s: Setup) {
    let ram = s.ram()
    let recording = RecordingRAM(ram)
    var (rx, tx) = s.queues()
    let (net, link) = s.device()

    // Transmit: every available chain, until the back end would block.
    do {
        for _ in 0..<Int(tx.size) {
            guard let next = try tx.pop(from: ram) else { break }
            guard case .success(let chain) = next.result else {
                if next.head < tx.size { try tx.push(head: next.head, written: 0, to: ram) }
                continue
            }
            let readable = chain.readableLength
            let bytes = readable >= 12 && readable - 12 <= UInt64(mtuLimit(s.mtu)) ? try? chain.gather(from: ram) : nil
            let predicted = predictTransmit(bytes, readable: readable, mtu: s.mtu)
            let sentBefore = link.sent.count, callsBefore = link.sendCalls
            recording.writes.removeAll()
            let outcome = net.transmit(chain, ram: recording)
            trace("tx chain \(chain.head): r\(readable) -> \(outcome), predicted \(String(describing: predicted))")
            check(recording.writes.isEmpty, "a transmit chain wrote \(recording.writes.count) times into guest memory")
            if let predicted {
                check(outcome == predicted, "transmit outcome \(outcome), predicted \(predicted)")
                check(link.sendCalls == callsBefore, "a refused frame reached the back end")
            } else {
                check(link.sendCalls == callsBefore + 1, "an accepted frame was offered \(link.sendCalls - callsBefore) times")
                let frame = Array((bytes ?? [])[12...])
                switch outcome {
                case .sent:
                    check(link.sent.count == sentBefore + 1 && link.sent.last == frame, "the back end got another frame")
                    checkSent(frame, mtu: s.mtu)
                case .dropped(let d):
                    check(d == .txBackendFailed && s.failing, "accepted frame dropped: \(d)")
                case .wouldBlock:
                    check(s.capacity != nil && link.sent.count == sentBefore, "would block without a full back end")
                }
            }
            if outcome == .wouldBlock {
                tx.undoPop()
                break
            }
            try tx.push(head: next.head, written: 0, to: ram)
        }
    } catch {
        trace("tx ring error: \(error)")
    }

    // Receive: each frame of the right size into the next chain.
    do {
        for frame in s.frames where sizeAllowed(frame, mtu: s.mtu) {
            guard let next = try rx.pop(from: ram) else { break }
            guard case .success(let chain) = next.result else {
                if next.head < rx.size { try rx.push(head: next.head, written: 0, to: ram) }
                continue
            }
            recording.writes.removeAll()
            let used = net.deliver(frame, into: chain, ram: recording)
            trace("rx chain \(chain.head): w\(chain.writableLength) frame \(frame.count) -> used \(used)")
            let fits = chain.writableLength >= UInt64(12 + frame.count)
            check(UInt64(used) <= chain.writableLength, "used \(used) > writable \(chain.writableLength)")
            check(used == (fits ? UInt32(12 + frame.count) : 0), "used \(used) for a \(frame.count)-byte frame into \(chain.writableLength) writable bytes")
            for w in recording.writes {
                let end = w.address + UInt64(w.bytes.count)
                check(chain.writable.contains { w.address >= $0.address && end <= $0.address + UInt64($0.length) },
                      "wrote \(w.bytes.count) bytes at \(hex(w.address)), outside the chain's writable buffers")
            }
            let written = recording.writes.flatMap(\.bytes)
            check(written == (used > 0 ? receivedHeader + frame : []), "wrote \(written.count) bytes that are not header + frame")
            try rx.push(head: next.head, written: used, to: ram)
        }
    } catch {
        trace("rx ring error: \(error)")
    }
    check(ram.bytes.count == ramSize, "RAM changed size")
}

func mtuLimit(_ mtu: UInt16) -> Int { Int(mtu) + 18 }

// MARK: whole device

func wholeDevice(_ s: Setup) {
    let ram = s.ram()
    var (rxReady, tx): (SplitQueue?, SplitQueue) = s.queues()
    let (net, link) = s.device()
    link.inbound = s.frames
    var txBroken = false, rxBroken = false
    let rxDrops: [NetDrop] = [.rxTooShort, .rxTooLong, .rxChainTooSmall, .brokenChain, .memory, .rxReset]
    let txDrops: [NetDrop] = [.txShortHeader, .txOffload, .txTooShort, .txTooLong, .txSpoofedSource, .txBackendFailed, .brokenChain, .memory]
    func dropCount(_ reasons: [NetDrop]) -> UInt64 { reasons.reduce(0) { $0 + net.counters[$1] } }

    for event in s.events {
        let before = net.counters
        let handedBefore = link.handedOut, callsBefore = link.sendCalls, sentBefore = link.sent.count
        let pendingBefore = net.pendingFrame != nil
        // Events can give an unlimited link a capacity later: judge blocking by the link now.
        let linkLimited = link.capacity != nil
        switch event & 3 {
        case 0 where !txBroken:
            let usedBefore = tx.nextUsed, availBefore = tx.nextAvail
            do { _ = try net.process(queue: VirtioNet.transmitQueue, &tx, ram: ram) } catch { txBroken = true; trace("tx ring error: \(error)"); continue }
            let chains = UInt64(tx.nextUsed &- usedBefore)
            let popped = UInt64(tx.nextAvail &- availBefore)
            trace("tx doorbell: \(chains) used, \(popped) taken, \(link.sent.count - sentBefore) sent, blocked \(net.transmitBlocked)")
            // A chain whose head is outside the table cannot be returned; every other one is.
            check(chains <= popped, "transmit used \(chains) entries for \(popped) chains taken")
            check(popped <= UInt64(tx.size), "transmit served \(popped) chains from a queue of \(tx.size)")
            let sent = net.counters.framesSent - before.framesSent
            let dropped = dropCount(txDrops) - (before.drops.filter { txDrops.contains($0.key) }.values.reduce(0, +))
            check(popped == sent + dropped, "\(popped) chains but \(sent) sent and \(dropped) dropped")
            check(UInt64(link.sent.count - sentBefore) == sent, "sent counter \(sent) but the back end got \(link.sent.count - sentBefore)")
            let backendDrops = net.counters[.txBackendFailed] - before[.txBackendFailed]
            check(UInt64(link.sendCalls - callsBefore) == sent + backendDrops + (net.transmitBlocked ? 1 : 0),
                  "the back end was called \(link.sendCalls - callsBefore) times")
            check(!net.transmitBlocked || linkLimited, "blocked without a full back end")
        case 1 where !rxBroken:
            var queues: [SplitQueue?] = [rxReady, nil]
            let usedBefore = rxReady?.nextUsed ?? 0, availBefore = rxReady?.nextAvail ?? 0
            let result: ReceiveResult
            do { result = try net.receive(queues: &queues, ram: ram) } catch { rxBroken = true; trace("rx ring error: \(error)"); continue }
            rxReady = queues[0]
            trace("link input: \(result), \(link.handedOut - handedBefore) frames read, held \(net.pendingFrame?.count ?? -1)")
            checkReceive(net, link, rx: rxReady, usedBefore: usedBefore, availBefore: availBefore, before: before, handedBefore: handedBefore,
                         pendingBefore: pendingBefore, rxDrops: rxDrops)
            check(result.needsBuffers == (net.pendingFrame != nil), "needsBuffers \(result.needsBuffers) but held \(net.pendingFrame != nil)")
        case 2 where !rxBroken:
            guard var q = rxReady else { continue }
            let usedBefore = q.nextUsed, availBefore = q.nextAvail
            do { _ = try net.process(queue: VirtioNet.receiveQueue, &q, ram: ram) } catch { rxBroken = true; trace("rx ring error: \(error)"); continue }
            rxReady = q
            trace("rx doorbell: \(q.nextUsed &- usedBefore) chains")
            checkReceive(net, link, rx: q, usedBefore: usedBefore, availBefore: availBefore, before: before, handedBefore: handedBefore,
                         pendingBefore: pendingBefore, rxDrops: rxDrops)
        case 3:
            net.reset()
            let fresh = s.queues()
            tx = fresh.tx
            rxReady = event & 16 != 0 ? nil : fresh.rx   // sometimes the receive queue is not set up again
            txBroken = false
            rxBroken = false
            check(net.pendingFrame == nil && !net.transmitBlocked, "reset kept state")
            check(net.counters[.rxReset] == before[.rxReset] + (pendingBefore ? 1 : 0), "a held frame was dropped uncounted")
        default:
            break
        }
        switch (event >> 2) & 3 {
        case 1: link.capacity = (link.capacity ?? 0) + 1
        case 2: link.capacity = nil
        case 3: link.inbound += s.frames
        default: break
        }
    }
    for f in link.sent { checkSent(f, mtu: s.mtu) }
    check(net.counters.framesSent == UInt64(link.sent.count), "framesSent \(net.counters.framesSent) != \(link.sent.count)")
    check(ram.bytes.count == ramSize, "RAM changed size")
}

/// Conservation on the receive side after one `receive` or receive doorbell.
func checkReceive(_ net: VirtioNet, _ link: FuzzLink, rx: SplitQueue?, usedBefore: UInt16, availBefore: UInt16, before: NetCounters,
                  handedBefore: Int, pendingBefore: Bool, rxDrops: [NetDrop]) {
    let read = link.handedOut - handedBefore
    check(read <= VirtioNet.maxFramesPerPass, "read \(read) frames in one pass")
    let delivered = net.counters.framesReceived - before.framesReceived
    func delta(_ d: NetDrop) -> UInt64 { net.counters[d] - before[d] }
    let dropped = rxDrops.reduce(0) { $0 + delta($1) }
    let pendingNow = net.pendingFrame != nil
    // Frames in = frames out: read + held before = delivered + dropped + held now.
    check(UInt64(read) + (pendingBefore ? 1 : 0) == delivered + dropped + (pendingNow ? 1 : 0),
          "read \(read) (held \(pendingBefore)) but delivered \(delivered), dropped \(dropped), held \(pendingNow)")
    // One chain per frame that reached a chain; all of them returned but those whose head is
    // outside the table.
    let chains = UInt64((rx?.nextUsed ?? usedBefore) &- usedBefore)
    let popped = UInt64((rx?.nextAvail ?? availBefore) &- availBefore)
    let chainDrops = delta(.rxChainTooSmall) + delta(.brokenChain) + delta(.memory)
    check(popped == delivered + chainDrops, "\(popped) receive chains taken for \(delivered) frames and \(chainDrops) chain drops")
    check(chains <= popped, "\(chains) receive chains used, \(popped) taken")
    check(net.counters.bytesReceived - before.bytesReceived <= delivered * UInt64(net.maxFrameSize), "bytes received")
}
