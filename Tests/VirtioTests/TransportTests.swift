import Testing
@testable import Virtio

typealias R = MMIOTransport.Register

extension MMIOTransport {
    mutating func w(_ r: R, _ v: UInt32) -> [Action] { write(offset: r.rawValue, size: 4, value: UInt64(v)) }
    func r(_ r: R) -> UInt32 { UInt32(read(offset: r.rawValue, size: 4)) }

    /// Drives the transport through initialisation as a Linux driver does (§3.1.1).
    mutating func negotiate(_ features: UInt64 = Virtio.Feature.version1) -> [Action] {
        _ = w(.status, 0)
        _ = w(.status, Virtio.Status.acknowledge.rawValue)
        _ = w(.status, Virtio.Status([.acknowledge, .driver]).rawValue)
        _ = w(.driverFeaturesSel, 0); _ = w(.driverFeatures, UInt32(truncatingIfNeeded: features))
        _ = w(.driverFeaturesSel, 1); _ = w(.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        return w(.status, Virtio.Status([.acknowledge, .driver, .featuresOK]).rawValue)
    }

    mutating func setupQueue(_ i: UInt32, size: UInt32 = 8) -> [Action] {
        _ = w(.queueSel, i); _ = w(.queueNum, size)
        _ = w(.queueDescLow, 0x1000); _ = w(.queueDescHigh, 0)
        _ = w(.queueDriverLow, 0x2000); _ = w(.queueDriverHigh, 0)
        _ = w(.queueDeviceLow, 0x3000); _ = w(.queueDeviceHigh, 0)
        return w(.queueReady, 1)
    }
}

func blockTransport() -> MMIOTransport {
    MMIOTransport(deviceID: Virtio.DeviceType.block.rawValue,
                  features: Virtio.Feature.eventIndex | Virtio.Feature.indirectDescriptors | (1 << 5),
                  queueSizes: [256, 64], config: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
}

@Suite struct TransportTests {
    @Test func identification() {
        let t = blockTransport()
        #expect(t.r(.magic) == 0x7472_6976)
        #expect(t.r(.version) == 2)
        #expect(t.r(.deviceID) == 2)
        #expect(t.r(.vendorID) == MMIOTransport.vendor)
        #expect(t.r(.shmLenLow) == 0xffff_ffff)
    }

    @Test func onlyAlignedWordAccessesToRegisters() {
        var t = blockTransport()
        #expect(t.read(offset: 0, size: 2) == 0)
        #expect(t.read(offset: 2, size: 4) == 0)
        #expect(t.read(offset: 0x0e8, size: 4) == 0) // unassigned
        #expect(t.write(offset: 0x070, size: 1, value: 1).isEmpty)
        #expect(t.write(offset: 0x000, size: 4, value: 5).isEmpty) // read-only
        #expect(t.status == [])
        #expect(t.rejectedAccesses == 2)
    }

    @Test func featureNegotiation() {
        var t = blockTransport()
        _ = t.w(.deviceFeaturesSel, 0)
        #expect(t.r(.deviceFeatures) == UInt32(truncatingIfNeeded: t.deviceFeatures))
        _ = t.w(.deviceFeaturesSel, 1)
        #expect(t.r(.deviceFeatures) == 1) // VERSION_1 is bit 32
        _ = t.w(.deviceFeaturesSel, 7)
        #expect(t.r(.deviceFeatures) == 0)
        let wanted = Virtio.Feature.version1 | Virtio.Feature.eventIndex
        #expect(t.negotiate(wanted) == [.featuresAccepted(wanted)])
        #expect(t.r(.status) & Virtio.Status.featuresOK.rawValue != 0)
        // Features are frozen once FEATURES_OK is set.
        _ = t.w(.driverFeaturesSel, 0)
        #expect(t.w(.driverFeatures, 0xffff_ffff).isEmpty)
        #expect(t.driverFeatures == wanted)
    }

    @Test func refusesFeaturesNotOfferedAndLegacyDrivers() {
        var t = blockTransport()
        #expect(t.negotiate(Virtio.Feature.version1 | (1 << 9)) == [])
        #expect(t.r(.status) & Virtio.Status.featuresOK.rawValue == 0) // the driver reads back failure
        var legacy = blockTransport()
        #expect(legacy.negotiate(Virtio.Feature.eventIndex) == [])
        #expect(!legacy.negotiated)
    }

    @Test func statusCannotGoBackwardsOrSkipSteps() {
        var t = blockTransport()
        #expect(t.w(.status, Virtio.Status.driver.rawValue).isEmpty) // DRIVER without ACKNOWLEDGE
        #expect(t.status == [])
        _ = t.w(.status, Virtio.Status.acknowledge.rawValue)
        _ = t.w(.status, Virtio.Status([.acknowledge, .driver]).rawValue)
        #expect(t.w(.status, Virtio.Status.acknowledge.rawValue).isEmpty) // clearing DRIVER
        #expect(t.status == [.acknowledge, .driver])
        // DRIVER_OK before FEATURES_OK is refused.
        #expect(t.w(.status, Virtio.Status([.acknowledge, .driver, .driverOK]).rawValue).isEmpty)
        #expect(!t.status.contains(.driverOK))
    }

    @Test func queueSetupAndReady() {
        var t = blockTransport()
        _ = t.negotiate()
        _ = t.w(.queueSel, 0)
        #expect(t.r(.queueNumMax) == 256)
        #expect(t.w(.queueNum, 100).isEmpty) // not a power of two
        #expect(t.w(.queueNum, 512).isEmpty) // above the maximum
        #expect(t.w(.queueNum, 0).isEmpty)
        let actions = t.setupQueue(0)
        guard case .queueReady(0, let q)? = actions.first else { Issue.record("\(actions)"); return }
        #expect(q.size == 8 && q.descriptorTable == 0x1000 && q.availRing == 0x2000 && q.usedRing == 0x3000)
        #expect(!q.indirectAllowed && !q.eventIndex)
        #expect(t.r(.queueReady) == 1)
        // Once ready, its configuration is frozen.
        #expect(t.w(.queueDescLow, 0x9000).isEmpty)
        #expect(t.r(.queueDescLow) == 0x1000)
        // A queue that does not exist.
        _ = t.w(.queueSel, 5)
        #expect(t.r(.queueNumMax) == 0)
        #expect(t.w(.queueReady, 1).isEmpty)
    }

    @Test func notifyOnlyWhenRunning() {
        var t = blockTransport()
        _ = t.negotiate()
        _ = t.setupQueue(0)
        #expect(t.w(.queueNotify, 0).isEmpty) // before DRIVER_OK
        #expect(t.w(.status, Virtio.Status([.acknowledge, .driver, .featuresOK, .driverOK]).rawValue) == [.driverOK])
        #expect(t.w(.queueNotify, 0) == [.notify(0)])
        #expect(t.w(.queueNotify, 1).isEmpty)      // not ready
        #expect(t.w(.queueNotify, 0xffff).isEmpty) // no such queue
        #expect(t.w(.queueNotify, 0x1_0000) == [.notify(0)]) // upper half ignored
        t.needsReset()
        #expect(t.w(.queueNotify, 0).isEmpty)
        #expect(t.r(.status) & Virtio.Status.deviceNeedsReset.rawValue != 0)
        #expect(t.r(.interruptStatus) & MMIOTransport.interruptConfigChange != 0)
    }

    @Test func resetClearsEverything() {
        var t = blockTransport()
        _ = t.negotiate(Virtio.Feature.version1 | Virtio.Feature.indirectDescriptors)
        _ = t.setupQueue(1)
        t.signalUsedBuffers()
        #expect(t.w(.status, 0) == [.reset])
        #expect(t.status == [] && t.driverFeatures == 0 && t.interruptStatus == 0)
        #expect(t.queues.allSatisfy { !$0.ready && $0.desc == 0 && $0.size == $0.maxSize })
    }

    @Test func interruptsAndConfigSpace() {
        var t = blockTransport()
        t.signalUsedBuffers()
        t.configChanged([9, 9, 9, 9])
        #expect(t.r(.interruptStatus) == 3)
        _ = t.w(.interruptAck, 1)
        #expect(t.r(.interruptStatus) == 2)
        #expect(t.r(.configGeneration) == 1)
        #expect(t.read(offset: 0x100, size: 4) == 0x0909_0909)
        #expect(t.read(offset: 0x102, size: 2) == 0x0909)
        #expect(t.read(offset: 0x103, size: 2) == 0)   // crosses the end
        #expect(t.read(offset: 0x100, size: 16) == 0)
        #expect(t.write(offset: 0x101, size: 2, value: 0xbeef) == [.configWrite(offset: 1, bytes: [0xef, 0xbe])])
        #expect(t.write(offset: 0x1ff, size: 4, value: 1).isEmpty)
    }

    /// A hostile driver writing random registers with random values: the state stays valid.
    @Test func hostileRegisterWrites() {
        var t = blockTransport()
        var x: UInt64 = 0x9e37_79b9_7f4a_7c15
        for _ in 0..<50_000 {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            let offset = (x >> 8) % 0x140
            let size = [1, 2, 4, 8][Int(x >> 40) % 4]
            let offsetAligned = x & 1 == 0 ? offset & ~3 : offset
            if x & 2 == 0 {
                _ = t.write(offset: offsetAligned, size: size, value: x >> 20)
            } else {
                _ = t.read(offset: offsetAligned, size: size)
            }
            for q in t.queues {
                #expect(q.size >= 1 && q.size <= q.maxSize && q.size.nonzeroBitCount == 1)
            }
            if t.status.contains(.featuresOK) {
                #expect(t.driverFeatures & ~t.deviceFeatures == 0)
                #expect(t.status.contains(.driver) && t.status.contains(.acknowledge))
            }
            if t.status.contains(.driverOK) { #expect(t.status.contains(.featuresOK)) }
        }
        #expect(t.rejectedAccesses > 0)
    }
}
