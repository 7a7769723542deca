import GuestABI
import Virtio

/// `struct virtio_vsock_hdr` (virtio 1.2 §5.10.6): 44 bytes, little-endian.
public struct VsockHeader: Equatable, Sendable {
    public var srcCID: UInt64
    public var dstCID: UInt64
    public var srcPort: UInt32
    public var dstPort: UInt32
    public var len: UInt32
    public var type: UInt16
    public var op: UInt16
    public var flags: UInt32
    public var bufAlloc: UInt32
    public var fwdCnt: UInt32

    public static let size = VsockABI.headerSize

    public init(srcCID: UInt64, dstCID: UInt64, srcPort: UInt32, dstPort: UInt32, len: UInt32 = 0,
                type: UInt16 = VirtioVsock.typeStream, op: UInt16, flags: UInt32 = 0,
                bufAlloc: UInt32 = 0, fwdCnt: UInt32 = 0) {
        self.srcCID = srcCID; self.dstCID = dstCID; self.srcPort = srcPort; self.dstPort = dstPort
        self.len = len; self.type = type; self.op = op; self.flags = flags
        self.bufAlloc = bufAlloc; self.fwdCnt = fwdCnt
    }

    /// Decodes the first 44 bytes of `b` (nil when shorter).
    public init?(_ b: [UInt8]) {
        guard b.count >= Self.size else { return nil }
        func u(_ o: Int, _ n: Int) -> UInt64 { (0..<n).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
        srcCID = u(0, 8); dstCID = u(8, 8)
        srcPort = UInt32(u(16, 4)); dstPort = UInt32(u(20, 4)); len = UInt32(u(24, 4))
        type = UInt16(u(28, 2)); op = UInt16(u(30, 2))
        flags = UInt32(u(32, 4)); bufAlloc = UInt32(u(36, 4)); fwdCnt = UInt32(u(40, 4))
    }

    public var bytes: [UInt8] {
        return le(srcCID, 8) + le(dstCID, 8) + le(UInt64(srcPort), 4) + le(UInt64(dstPort), 4) + le(UInt64(len), 4)
            + le(UInt64(type), 2) + le(UInt64(op), 2) + le(UInt64(flags), 4) + le(UInt64(bufAlloc), 4) + le(UInt64(fwdCnt), 4)
    }
}
