import GuestABI
import Testing
import Virtio

/// The register decoder's enum needs literal raw values, so its offsets are written in the
/// transport; every offset a guest driver uses comes from GuestABI (which the guest SDK
/// compiles), and here the compiler holds both: each must decode to its register.
struct GuestABIAgreementTests {
    typealias R = MMIOTransport.Register
    typealias G = VirtioMMIORegister

    @Test func everyRegisterAGuestUsesDecodesToIt() {
        let pairs: [(Int, R)] = [
            (G.magicValue, .magic), (G.version, .version), (G.deviceID, .deviceID), (G.vendorID, .vendorID),
            (G.deviceFeatures, .deviceFeatures), (G.deviceFeaturesSel, .deviceFeaturesSel),
            (G.driverFeatures, .driverFeatures), (G.driverFeaturesSel, .driverFeaturesSel),
            (G.queueSel, .queueSel), (G.queueNumMax, .queueNumMax), (G.queueNum, .queueNum), (G.queueReady, .queueReady),
            (G.queueNotify, .queueNotify), (G.interruptStatus, .interruptStatus), (G.interruptACK, .interruptAck),
            (G.status, .status), (G.queueDescLow, .queueDescLow), (G.queueDescHigh, .queueDescHigh),
            (G.queueDriverLow, .queueDriverLow), (G.queueDriverHigh, .queueDriverHigh),
            (G.queueDeviceLow, .queueDeviceLow), (G.queueDeviceHigh, .queueDeviceHigh),
            (G.queueReset, .queueReset), (G.configGeneration, .configGeneration),
        ]
        for (offset, register) in pairs {
            #expect(R(rawValue: UInt64(offset)) == register, "offset \(offset)")
        }
        #expect(MMIOTransport.configOffset == UInt64(G.config))
        #expect(MMIOTransport.magicValue == G.magic)
    }

    /// A transport answers the magic value and the device type at the shared offsets.
    @Test func aTransportAnswersAtTheSharedOffsets() {
        let t = MMIOTransport(deviceID: VirtioDeviceType.vsock.rawValue, features: VirtioFeature.version1, queueSizes: [8], config: [])
        #expect(UInt32(t.read(offset: UInt64(G.magicValue), size: 4)) == G.magic)
        #expect(UInt32(t.read(offset: UInt64(G.deviceID), size: 4)) == VirtioDeviceType.vsock.rawValue)
        #expect(UInt32(t.read(offset: UInt64(G.version), size: 4)) == 2)
    }
}
