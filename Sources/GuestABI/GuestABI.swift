// Bulkhead's guest ABI in numbers: the one copy of them. The host package compiles this file as
// the module GuestABI (GuestInterface, Virtio and Devices build on it); Guest/build.sh compiles
// the same file into every Embedded Swift guest, next to the guest SDK. So it imports nothing and
// holds nothing but constants, in a form both compilers take as it is. What the numbers mean:
// docs/guest-abi.md and the virtio 1.2 specification.

/// Where the VMM's pages sit in every guest program's address space (ABI version 1).
public enum GuestABI {
    /// Reads of 8 bytes at offset 0 perform a hypercall (rax = number, rdi/rsi/rdx/rcx = arguments).
    public static let hypercallPage: UInt64 = 0xc000_0000
    /// Written by the VMM's own fault stubs (supervisor-only).
    public static let faultReportPage: UInt64 = 0xc000_1000
}

/// Hypercall numbers of interface version 1.
public enum Hypercall: UInt64, CaseIterable, Sendable {
    case version = 0
    case consoleWrite = 1
    case exit = 2
    case wait = 3
    case time = 4
    case random = 5
}

extension Hypercall {
    /// What `version` returns.
    public static let interfaceVersion: UInt64 = 1
    /// Longest `console_write` in one call, in bytes.
    public static let maxConsoleWrite: UInt64 = 4096
    /// Longest `random` in one call, in bytes.
    public static let maxRandom: UInt64 = 256
    /// Longest `wait`, in nanoseconds (10 s).
    public static let maxWaitNanoseconds: UInt64 = 10_000_000_000
}

/// Errors a hypercall returns, as `-rawValue` in rax.
public enum HypercallError: UInt64, CaseIterable, Sendable {
    case unknownCall = 1
    case badAddress = 2
    case badLength = 3
    case badArgument = 4
}

/// virtio device types (virtio 1.2 §5), as the boot-information device list gives them.
public enum VirtioDeviceType: UInt32, Sendable {
    case network = 1
    case block = 2
    case console = 3
    case entropy = 4
    case vsock = 19
}

/// Feature bits every device type shares (virtio 1.2 §6).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28   // VIRTIO_F_INDIRECT_DESC
    public static let eventIndex: UInt64 = 1 << 29            // VIRTIO_F_EVENT_IDX
    public static let version1: UInt64 = 1 << 32              // VIRTIO_F_VERSION_1
    public static let accessPlatform: UInt64 = 1 << 33
    public static let ringPacked: UInt64 = 1 << 34
}

/// Device status bits (virtio 1.2 §2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt32 = 1
    public static let driver: UInt32 = 2
    public static let driverOK: UInt32 = 4
    public static let featuresOK: UInt32 = 8
    public static let deviceNeedsReset: UInt32 = 64
    public static let failed: UInt32 = 128
}

/// The virtio-mmio version 2 register window (virtio 1.2 §4.2.2): offsets, and the magic value.
public enum VirtioMMIORegister {
    public static let magicValue = 0x000
    public static let version = 0x004
    public static let deviceID = 0x008
    public static let vendorID = 0x00c
    public static let deviceFeatures = 0x010
    public static let deviceFeaturesSel = 0x014
    public static let driverFeatures = 0x020
    public static let driverFeaturesSel = 0x024
    public static let queueSel = 0x030
    public static let queueNumMax = 0x034
    public static let queueNum = 0x038
    public static let queueReady = 0x044
    public static let queueNotify = 0x050
    public static let interruptStatus = 0x060
    public static let interruptACK = 0x064
    public static let status = 0x070
    public static let queueDescLow = 0x080
    public static let queueDescHigh = 0x084
    public static let queueDriverLow = 0x090
    public static let queueDriverHigh = 0x094
    public static let queueDeviceLow = 0x0a0
    public static let queueDeviceHigh = 0x0a4
    public static let queueReset = 0x0c0
    public static let configGeneration = 0x0fc
    public static let config = 0x100
    /// What MagicValue reads: "virt" in little-endian.
    public static let magic: UInt32 = 0x7472_6976
    /// The size of one device's window.
    public static let windowSize = 0x1000
}

/// Split-queue descriptor flags (virtio 1.2 §2.7.5).
public enum VirtioDescriptorFlag {
    public static let next: UInt16 = 1
    public static let write: UInt16 = 2
    public static let indirect: UInt16 = 4
}

/// virtio-vsock (virtio 1.2 §5.10) as Bulkhead's device implements it.
public enum VsockABI {
    public static let hostCID: UInt64 = 2
    /// VIRTIO_VSOCK_TYPE_STREAM, the only type.
    public static let typeStream: UInt16 = 1
    /// Packet operations.
    public enum Op {
        public static let request: UInt16 = 1
        public static let response: UInt16 = 2
        public static let rst: UInt16 = 3
        public static let shutdown: UInt16 = 4
        public static let rw: UInt16 = 5
        public static let creditUpdate: UInt16 = 6
        public static let creditRequest: UInt16 = 7
    }
    /// SHUTDOWN flags: the sender will receive no more / send no more.
    public static let shutdownReceive: UInt32 = 1
    public static let shutdownSend: UInt32 = 2
    /// `struct virtio_vsock_hdr`, in bytes.
    public static let headerSize = 44
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    public static let eventQueue = 2
    /// The largest payload one packet may carry.
    public static let maxPayload = 64 * 1024
}

/// virtio-blk (virtio 1.2 §5.2) as Bulkhead's device implements it.
public enum BlockABI {
    public static let sectorSize = 512
    /// Length of the GET_ID answer (NUL-padded when shorter).
    public static let idLength = 20
    /// Request types.
    public enum RequestType {
        public static let read: UInt32 = 0          // VIRTIO_BLK_T_IN
        public static let write: UInt32 = 1         // VIRTIO_BLK_T_OUT
        public static let flush: UInt32 = 4
        public static let getID: UInt32 = 8
        public static let discard: UInt32 = 11
        public static let writeZeroes: UInt32 = 13
    }
    /// The status byte.
    public enum Status {
        public static let ok: UInt8 = 0
        public static let ioError: UInt8 = 1
        public static let unsupported: UInt8 = 2
    }
}
