import TestSupport
import Testing
import Virtio
@testable import Devices

/// Drives a VirtioMMIODevice the way a guest driver does, over an ArrayRAM.
struct Driver {
    let device: VirtioMMIODevice
    var queue = DriverQueue(ram: ArrayRAM(base: 0, size: 0x2_0000), size: 8, descriptorTable: 0x1000, availRing: 0x2000, usedRing: 0x3000)
    var ram: ArrayRAM { queue.ram }
    var size: UInt16 { queue.size }

    init(_ model: VirtioDeviceModel, rateLimit: RateLimiter? = nil) {
        device = VirtioMMIODevice(model: model, rateLimit: rateLimit)
    }

    @discardableResult
    func w(_ r: MMIOTransport.Register, _ v: UInt32) -> Bool {
        device.write(offset: r.rawValue, size: 4, value: UInt64(v), ram: ram)
    }
    func r(_ r: MMIOTransport.Register) -> UInt32 { UInt32(device.read(offset: r.rawValue, size: 4)) }

    func initialise(features: UInt64 = Virtio.Feature.version1) {
        w(.status, 0); w(.status, 1); w(.status, 3)
        w(.driverFeaturesSel, 0); w(.driverFeatures, UInt32(truncatingIfNeeded: features))
        w(.driverFeaturesSel, 1); w(.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        w(.status, 11)
        w(.queueSel, 0); w(.queueNum, UInt32(size))
        w(.queueDescLow, 0x1000); w(.queueDriverLow, 0x2000); w(.queueDeviceLow, 0x3000)
        w(.queueReady, 1)
        w(.status, 15)
    }

    func descriptor(_ i: UInt16, _ address: UInt64, _ length: UInt32, _ flags: UInt16, next: UInt16 = 0) {
        queue.setDescriptor(i, address: address, length: length, flags: flags, next: next)
    }

    mutating func publish(_ head: UInt16) { queue.publish(head) }

    var usedIdx: UInt16 { queue.usedIndex }
    func usedLength(_ slot: Int) -> UInt32 { queue.usedElement(UInt16(truncatingIfNeeded: slot)).length }
}

@Suite struct VirtioRNGTests {
    @Test func fillsWritableBuffers() {
        var d = Driver(VirtioRNG(source: { n in [UInt8](repeating: 0xa5, count: n) }))
        d.initialise()
        #expect(d.r(.deviceID) == 4)
        #expect(d.r(.status) == 15)
        d.descriptor(0, 0x8000, 100, Virtio.DescriptorFlag.write)
        d.publish(0)
        #expect(d.device.notify(queue: 0, ram: d.ram))  // interrupt wanted
        #expect(d.usedIdx == 1 && d.usedLength(0) == 100)
        #expect(d.ram.bytes[0x8000..<0x8064].allSatisfy { $0 == 0xa5 })
        #expect(d.ram.bytes[0x8064] == 0)
        #expect(d.r(.interruptStatus) == 1)
    }

    @Test func capsRequestsAndSurvivesAFailingSource() {
        var calls: [Int] = []
        var d = Driver(VirtioRNG(source: { n in calls.append(n); return nil }))
        d.initialise()
        d.descriptor(0, 0x8000, 0x1_0000, Virtio.DescriptorFlag.write)
        d.publish(0)
        _ = d.device.notify(queue: 0, ram: d.ram)
        #expect(d.usedIdx == 1 && d.usedLength(0) == 0) // returned, nothing written
        #expect(calls == [VirtioRNG.maxRequest])
    }

    @Test func brokenChainsAreReturnedAndCounted() {
        let rng = VirtioRNG(source: { [UInt8](repeating: 1, count: $0) })
        var d = Driver(rng)
        d.initialise()
        d.descriptor(0, 0x8000, 8, Virtio.DescriptorFlag.write | Virtio.DescriptorFlag.next, next: 0) // self-loop
        d.publish(0)
        d.descriptor(1, 0x1_fffc, 8, Virtio.DescriptorFlag.write) // past the end of RAM
        d.publish(1)
        d.descriptor(2, 0x9000, 4, Virtio.DescriptorFlag.write)
        d.publish(2)
        _ = d.device.notify(queue: 0, ram: d.ram)
        #expect(d.usedIdx == 3)
        #expect(d.usedLength(0) == 0 && d.usedLength(1) == 0 && d.usedLength(2) == 4)
        #expect(rng.brokenChains == 2)
        #expect(d.r(.status) & Virtio.Status.deviceNeedsReset.rawValue == 0)
    }

    @Test func ringCorruptionNeedsAReset() {
        var d = Driver(VirtioRNG(source: { [UInt8](repeating: 1, count: $0) }))
        d.initialise()
        _ = d.ram.copyIn([0x40, 0], at: 0x2002) // avail idx jumps by 64 > queue size 8
        #expect(d.device.notify(queue: 0, ram: d.ram))
        #expect(d.r(.status) & Virtio.Status.deviceNeedsReset.rawValue != 0)
        #expect(d.device.ringErrors == 1)
        // Reset and re-initialise: the device works again.
        _ = d.ram.copyIn([0, 0], at: 0x2002)
        d.queue.restart()
        d.initialise()
        #expect(d.r(.status) == 15)
        d.descriptor(0, 0x8000, 4, Virtio.DescriptorFlag.write)
        d.publish(0)
        _ = d.device.notify(queue: 0, ram: d.ram)
        #expect(d.usedLength(0) == 4)
    }

    @Test func queueOutsideRAMIsRefusedAtReady() {
        let d = Driver(VirtioRNG(source: { [UInt8](repeating: 1, count: $0) }))
        d.w(.status, 0); d.w(.status, 1); d.w(.status, 3)
        d.w(.driverFeaturesSel, 1); d.w(.driverFeatures, 1)
        d.w(.status, 11)
        d.w(.queueSel, 0); d.w(.queueNum, 8)
        d.w(.queueDescLow, 0x1_ffa0); d.w(.queueDriverLow, 0x2000); d.w(.queueDeviceLow, 0x3000)
        d.w(.queueReady, 1)
        #expect(d.r(.queueReady) == 0)
        #expect(d.device.ringErrors == 1)
        #expect(!d.device.notify(queue: 0, ram: d.ram))
    }
}

@Suite struct RateLimitedDeviceTests {
    /// A limited queue defers what its buckets cannot cover, tells the VMM when to come back, and
    /// serves the rest then: slowed, never failed.
    @Test func deferredChainsAreServedLater() {
        let second: UInt64 = 1_000_000_000
        let limit = RateLimiter(bytes: TokenBucket(capacity: 100, ratePerSecond: 100, now: 0))
        var d = Driver(VirtioRNG(source: { [UInt8](repeating: 7, count: $0) }))
        d = Driver(d.device.model, rateLimit: limit)
        d.initialise()
        for i: UInt16 in 0..<3 {
            d.descriptor(i, 0x8000 + 0x100 * UInt64(i), 64, Virtio.DescriptorFlag.write)
            d.publish(i)
        }
        _ = d.device.notify(queue: 0, ram: d.ram, now: 0)
        #expect(d.usedIdx == 1)                                   // 64 of 100 bytes
        let wait = d.device.deferral(queue: 0)
        #expect(wait == 28 * second / 100)                        // 28 more bytes at 100/s
        _ = d.device.notify(queue: 0, ram: d.ram, now: second / 10)
        #expect(d.usedIdx == 1)                                   // still too early
        _ = d.device.notify(queue: 0, ram: d.ram, now: second)
        #expect(d.usedIdx == 2)
        _ = d.device.notify(queue: 0, ram: d.ram, now: 2 * second)
        #expect(d.usedIdx == 3)
        #expect(d.device.deferral(queue: 0) == nil)
        #expect((0..<3).allSatisfy { d.usedLength($0) == 64 })
    }
}
