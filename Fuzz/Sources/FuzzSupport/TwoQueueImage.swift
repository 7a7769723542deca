import Virtio

/// The guest RAM layout the two-queue device fuzzers (virtio-net, vsock) share: 16 KiB of RAM at
/// 1 MiB; queue 0 rings at +0x0/+0x800/+0xc00, queue 1 at +0x1400/+0x1c00/+0x2000; the rest is
/// buffer space. The fuzzer's bytes are the RAM image.
public enum TwoQueueImage {
    public static let base: UInt64 = 0x10_0000
    public static let size = 0x4000

    public static func queues(rxSize: UInt16, txSize: UInt16, indirect: Bool, eventIndex: Bool) -> (rx: SplitQueue, tx: SplitQueue) {
        (SplitQueue(size: rxSize, descriptorTable: base, availRing: base + 0x800, usedRing: base + 0xc00,
                    indirectAllowed: indirect, eventIndex: eventIndex),
         SplitQueue(size: txSize, descriptorTable: base + 0x1400, availRing: base + 0x1c00, usedRing: base + 0x2000,
                    indirectAllowed: indirect, eventIndex: eventIndex))
    }

    public static func ram(_ image: [UInt8]) -> ArrayRAM {
        let ram = ArrayRAM(base: base, size: size)
        _ = ram.copyIn(image, at: base)
        return ram
    }
}
