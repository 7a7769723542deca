import Devices
import FuzzSupport
import Virtio

// FuzzVsock: a hostile driver's virtio-vsock queues and a host that sends data and hangs up. The
// input is the guest RAM the device sees (both queues' rings and buffer space) and a sequence of
// events. Each input runs twice on its own copy of RAM:
//
// Per chain: the target pops TX chains itself and hands each to `VirtioVsock.transmit(_:ram:)`
// through a RAM that records writes, checking
//   - a TX chain writes nothing into guest memory;
//   - an independent parse of the same bytes: a packet whose src_cid is not the guest's changes
//     nothing (no host connection, no reply queued); the host never holds more bytes than the
//     accepted RW packets carried (len ≤ payload present, ≤ 64 KiB, src/dst/type valid).
// Whole device: `process(queue:)` (TX and RX doorbells), `receive(queues:)`, host data, host
// hang-ups, host back pressure and resets in the input's order, checking
//   - the connection table never exceeds `maxConnections`, control packets never exceed
//     `maxControl` + 1, guest data buffered for the host never exceeds the credit advertised
//     (`bufferSize` per connection), and the table matches the host's open connections one to one;
//   - a TX doorbell writes only the TX used ring (and avail_event); it takes at most a queue's
//     worth of chains;
//   - an RX pass writes, outside the used rings, at most the packets it counts (44-byte headers
//     and payload), at most one per chain; the guest never gets more data than the host gave;
//   - the host never receives more bytes than the device copied out of guest memory (what the
//     guest's chains could carry); RAM keeps its size
//     (ArrayRAM refuses writes outside RAM).
//
// Input: u8 config (bits 0-2: log2 RX queue size, 3-5: log2 TX queue size, 6: indirect, 7: event
//        index), u8 host (bits 0-2: host ports 1000+i that listen; bits 3-5: bytes the host
//        accepts per connection / 16, 7 = unlimited; bits 6-7: buffer size 64/256/4096/65536),
//        u8 event count (mod 33), then one byte per event (bits 0-2: TX doorbell, RX doorbell,
//        receive, host data (bits 3-7: length * 8) on connection (event >> 3) mod n, host hang-up,
//        more host capacity, reset, nothing), then up to 16 KiB of guest RAM at 0x100000.
//        Layout: RX descriptors +0x0, available +0x800, used +0xc00; TX descriptors +0x1400,
//        available +0x1c00, used +0x2000; all of it is also buffer space.

let ramBase = TwoQueueImage.base
let ramSize = TwoQueueImage.size
let guestCID: UInt64 = 3
let bufferSizes: [UInt32] = [64, 256, 4096, 65536]

final class RecordingRAM: GuestRAM {
    let inner: ArrayRAM
    var writes: [(address: UInt64, bytes: [UInt8])] = []
    /// Bytes the device copied out of guest memory: all it could possibly forward.
    var readBytes: UInt64 = 0
    init(_ inner: ArrayRAM) { self.inner = inner }
    func copyOut(at address: UInt64, count: Int) -> [UInt8]? {
        let out = inner.copyOut(at: address, count: count)
        readBytes += UInt64(out?.count ?? 0)
        return out
    }
    func copyIn(_ bytes: [UInt8], at address: UInt64) -> Bool {
        let ok = inner.copyIn(bytes, at: address)
        if ok { writes.append((address, bytes)) }
        return ok
    }
    func isRAM(_ address: UInt64, length: UInt64) -> Bool { inner.isRAM(address, length: length) }
}

struct Setup {
    var rxSize: UInt16, txSize: UInt16, indirect: Bool, eventIndex: Bool
    var ports: Set<UInt32>, capacity: Int?, bufferSize: UInt32
    var events: [UInt8]
    var image: [UInt8]

    func queues() -> (rx: SplitQueue, tx: SplitQueue) {
        TwoQueueImage.queues(rxSize: rxSize, txSize: txSize, indirect: indirect, eventIndex: eventIndex)
    }

    func ram() -> ArrayRAM { TwoQueueImage.ram(image) }

    func device() -> (VirtioVsock, MemoryVsockHost) {
        let host = MemoryVsockHost(listening: ports)
        host.defaultSendCapacity = capacity
        guard let v = try? VirtioVsock(guestCID: guestCID, host: host, bufferSize: bufferSize) else {
            check(false, "a valid configuration was refused")
            fatalError()
        }
        return (v, host)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVsock(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let config = input.u8()
    let hostBits = input.u8()
    let events = input.take(Int(input.u8() % 33))
    let capacityBits = Int((hostBits >> 3) & 7)
    let ports = Set((0..<3).filter { hostBits & (1 << $0) != 0 }.map { UInt32(1000 + $0) })
    let setup = Setup(rxSize: UInt16(1) << UInt16(config & 7), txSize: UInt16(1) << UInt16((config >> 3) & 7),
                      indirect: config & 64 != 0, eventIndex: config & 128 != 0, ports: ports,
                      capacity: capacityBits == 7 ? nil : capacityBits * 16, bufferSize: bufferSizes[Int(hostBits >> 6)],
                      events: events, image: input.take(ramSize))
    trace("rx \(setup.rxSize) tx \(setup.txSize) ports \(ports.sorted()) capacity \(String(describing: setup.capacity)) buffer \(setup.bufferSize) events \(events)")
    perChain(setup)
    wholeDevice(setup)
    return 0
}

func le(_ b: [UInt8], _ o: Int, _ n: Int) -> UInt64 { (0..<n).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }

/// Payload bytes an RW packet in `bytes` (one chain's readable bytes) may carry to the host:
/// decided here from the raw bytes, independently of the device's parser.
func carried(_ bytes: [UInt8]) -> (spoofed: Bool, rwBytes: UInt64) {
    guard bytes.count >= 44 else { return (false, 0) }
    let src = le(bytes, 0, 8), dst = le(bytes, 8, 8), len = le(bytes, 24, 4)
    let type = le(bytes, 28, 2), op = le(bytes, 30, 2)
    guard src == guestCID else { return (true, 0) }
    guard dst == 2, type == 1, op == 5, len <= 65536, len <= UInt64(bytes.count - 44) else { return (false, 0) }
    return (false, len)
}

// MARK: per chain

func perChain(_ s: Setup) {
    let ram = s.ram()
    let recording = RecordingRAM(ram)
    var tx = s.queues().tx
    let (vsock, host) = s.device()
    var allowed: UInt64 = 0
    for _ in 0..<Int(tx.size) {
        guard let next = try? tx.pop(from: ram) else { break }
        guard case .success(let chain) = next.result else { continue }
        let bytes = (try? chain.gather(from: ram, limit: 44 + 65536)) ?? []
        let (spoofed, n) = carried(bytes)
        allowed += n
        let connectionsBefore = host.connections.count, openBefore = host.openCount
        let controlBefore = vsock.pendingControlCount, tableBefore = vsock.connectionCount
        recording.writes = []
        vsock.transmit(chain, ram: recording)
        check(recording.writes.isEmpty, "a TX chain wrote \(recording.writes.count) times into guest memory")
        if spoofed {
            check(host.connections.count == connectionsBefore && host.openCount == openBefore, "a spoofed packet reached the host")
            check(vsock.pendingControlCount == controlBefore && vsock.connectionCount == tableBefore, "a spoofed packet was answered")
        }
        check(UInt64(host.totalReceived) <= allowed, "host received \(host.totalReceived) bytes, guest RW packets carried \(allowed)")
        check(vsock.connectionCount <= VirtioVsock.maxConnections, "connection table \(vsock.connectionCount)")
        check(vsock.connectionCount == host.openCount, "table \(vsock.connectionCount) but host has \(host.openCount) open")
    }
    check(ram.bytes.count == ramSize, "RAM changed size")
}

// MARK: whole device

/// Every write lies in `[start, end)`.
func inside(_ writes: [(address: UInt64, bytes: [UInt8])], _ start: UInt64, _ end: UInt64) -> Bool {
    writes.allSatisfy { $0.address >= start && $0.address + UInt64($0.bytes.count) <= end }
}

func usedRingEnd(_ q: SplitQueue) -> UInt64 { q.usedRing + 6 + 8 * UInt64(q.size) }

func wholeDevice(_ s: Setup) {
    let ram = s.ram()
    let recording = RecordingRAM(ram)
    var (rx, tx) = s.queues()
    let (vsock, host) = s.device()
    var rxBroken = false, txBroken = false
    var allowed: UInt64 = 0       // RW payload bytes the guest's TX chains may have carried (upper bound)
    var hostGave: UInt64 = 0      // bytes the host queued for the guest

    for event in s.events {
        recording.writes = []
        recording.readBytes = 0
        let toGuestBefore = vsock.counters.bytesToGuest, packetsBefore = vsock.counters.packetsToGuest
        defer { allowed += recording.readBytes }
        switch event & 7 {
        case 0 where !txBroken:
            let availBefore = tx.nextAvail
            do { _ = try vsock.process(queue: VirtioVsock.transmitQueue, &tx, ram: recording) } catch { txBroken = true; continue }
            check(UInt16(tx.nextAvail &- availBefore) <= tx.size, "TX took more than a queue's worth")
            check(inside(recording.writes, tx.usedRing, usedRingEnd(tx) + 2), "a TX doorbell wrote outside the TX used ring")
        case 1 where !rxBroken, 2 where !rxBroken:
            let usedBefore = rx.nextUsed
            if event & 7 == 1 {
                do { _ = try vsock.process(queue: VirtioVsock.receiveQueue, &rx, ram: recording) } catch { rxBroken = true; continue }
            } else {
                var qs: [SplitQueue?] = [rx, txBroken ? nil : tx, nil]
                do { _ = try vsock.receive(queues: &qs, ram: recording) } catch { rxBroken = true; continue }
                rx = qs[0] ?? rx
                if let t = qs[1] { tx = t }
            }
            // Writes outside the used rings are packets: at most what the device says it delivered.
            // (receive may also have served TX; those writes land in the TX used ring.)
            let payloadWrites = recording.writes.filter {
                !inside([$0], rx.usedRing, usedRingEnd(rx) + 2) && !inside([$0], tx.usedRing, usedRingEnd(tx) + 2)
            }
            let written = payloadWrites.reduce(UInt64(0)) { $0 + UInt64($1.bytes.count) }
            let packets = vsock.counters.packetsToGuest - packetsBefore
            let chains = UInt64(rx.nextUsed &- usedBefore)
            check(packets <= chains, "\(packets) packets in \(chains) chains")
            check(written <= 44 * packets + vsock.counters.bytesToGuest - toGuestBefore,
                  "RX wrote \(written) bytes for \(packets) packets")
        case 3:
            guard !host.connections.isEmpty else { break }
            let ids = host.connections.keys.sorted()
            let id = ids[Int(event >> 3) % ids.count]
            let n = Int(event >> 3) * 8 + 1
            host.deliver((0..<n).map { UInt8(truncatingIfNeeded: $0) }, to: id)
            if !(host.connections[id]?.closed ?? true) { hostGave += UInt64(n) }
        case 4:
            // The host program ends its stream, goes away (sends then fail), or resets.
            let ids = host.connections.keys.sorted()
            if !ids.isEmpty {
                let id = ids[Int(event >> 5) % ids.count]
                switch (event >> 3) & 3 {
                case 0: host.hangUp(id)
                case 1: host.breakConnection(id)
                default: host.resetConnection(id)
                }
            }
        case 5:
            for id in host.connections.keys.sorted() { host.setSendCapacity(nil, for: id) }
        case 6:
            vsock.reset()
            let fresh = s.queues()
            rx = fresh.rx; tx = fresh.tx
            rxBroken = false; txBroken = false
            check(vsock.connectionCount == 0 && host.openCount == 0 && vsock.pendingControlCount == 0, "reset kept state")
        default:
            break
        }
        check(vsock.connectionCount <= VirtioVsock.maxConnections, "connection table \(vsock.connectionCount)")
        check(vsock.pendingControlCount <= VirtioVsock.maxControl + 1, "control queue \(vsock.pendingControlCount)")
        check(vsock.bufferedToHost <= vsock.connectionCount * Int(vsock.bufferSize), "\(vsock.bufferedToHost) bytes buffered beyond the advertised credit")
        check(vsock.connectionCount == host.openCount, "table \(vsock.connectionCount) but host has \(host.openCount) open")
        check(UInt64(host.totalReceived) <= allowed + recording.readBytes, "host received \(host.totalReceived), guest carried at most \(allowed)")
        check(vsock.counters.bytesToGuest - toGuestBefore <= hostGave, "guest got more than the host gave")
        check(vsock.counters.bytesToGuest <= hostGave, "guest got \(vsock.counters.bytesToGuest) of \(hostGave) host bytes")
    }
    check(ram.bytes.count == ramSize, "RAM changed size")
}
