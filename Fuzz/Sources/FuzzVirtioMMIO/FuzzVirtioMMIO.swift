import FuzzSupport
import Virtio

// FuzzVirtioMMIO: a hostile driver's register accesses to a virtio-mmio (version 2) window.
// After every access the transport's state must be one the spec allows (virtio 1.2 §2.1, §3.1.1,
// §4.2.2): queue sizes powers of two within their maximum; FEATURES_OK only with a subset of the
// offered features including VERSION_1 and after ACKNOWLEDGE and DRIVER; DRIVER_OK only after
// FEATURES_OK; notifications only for ready queues of a running device; a reset returns to the
// initial state. Queues that become ready are validated against a small guest RAM.
//
// Input: a stream of accesses, 1 byte `op` then operands:
//   op bits 0-1: width 1, 2, 4 or 8; bit 2: write; bit 3: misalign by 1..3 (from the offset byte)
//   then u16 offset (masked to the 4 KiB window), then (writes) u64 value.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtioMMIO(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let ram = ArrayRAM(base: 0, size: 0x4000)
    var t = MMIOTransport(deviceID: Virtio.DeviceType.block.rawValue,
                          features: Virtio.Feature.eventIndex | Virtio.Feature.indirectDescriptors | (1 << 6),
                          queueSizes: [256, 16, 1], config: Array(0..<24))
    let offered = t.deviceFeatures
    var steps = 0
    while !input.isEmpty && steps < 4096 {
        steps += 1
        let op = input.u8()
        let width = [1, 2, 4, 8][Int(op & 3)]
        var offset = UInt64(input.u16()) % MMIOTransport.windowSize
        if op & 8 == 0 { offset &= ~3 }
        if op & 4 != 0 {
            let value = input.u64()
            let before = t
            let actions = t.write(offset: offset, size: width, value: value)
            trace("write \(hex(offset))/\(width) = \(hex(value)) -> \(actions)")
            for a in actions {
                switch a {
                case .reset:
                    check(t.status == [] && t.driverFeatures == 0 && t.queues.allSatisfy { !$0.ready }, "reset left state")
                case .featuresAccepted(let f):
                    check(f & ~offered == 0 && f & Virtio.Feature.version1 != 0, "accepted \(hex(f))")
                case .queueReady(let i, let q):
                    check(before.queues[i].ready == false && t.queues[i].ready, "queue \(i) ready twice")
                    check(q.size == t.queues[i].size, "queue size mismatch")
                    if (try? q.validate(in: ram)) == nil { t.disableQueue(i) }
                case .driverOK:
                    check(t.status.contains(.featuresOK), "DRIVER_OK without FEATURES_OK")
                case .notify(let i):
                    check(t.running && t.queues[i].ready, "notify of queue \(i) while not running/ready")
                case .configWrite(let o, let bytes):
                    check(o >= 0 && o + bytes.count <= t.config.count, "config write out of range")
                }
            }
        } else {
            let v = t.read(offset: offset, size: width)
            check(width == 8 || v >> (8 * UInt64(width)) == 0, "read wider than the access")
        }
        for q in t.queues {
            check(q.size >= 1 && q.size <= q.maxSize && q.size.nonzeroBitCount == 1, "queue size \(q.size)")
        }
        if t.status.contains(.featuresOK) {
            check(t.driverFeatures & ~offered == 0, "features beyond the offer")
            check(t.status.isSuperset(of: [.acknowledge, .driver]), "FEATURES_OK without ACKNOWLEDGE|DRIVER")
        }
        if t.status.contains(.driverOK) { check(t.status.contains(.featuresOK), "DRIVER_OK without FEATURES_OK") }
    }
    return 0
}
