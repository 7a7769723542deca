import Virtio

/// What virtio-blk needs of a disk: whole-sector reads and writes, a durable flush, and the two
/// "free this range" operations. Sectors are always 512 bytes (virtio 1.2 §5.2.4).
///
/// The device checks every range against `sectorCount` before it calls the back end; back ends
/// check again (defence in depth) and refuse a range outside the disk by failing.
/// Guest memory that a back end can read a file into directly (one copy instead of two).
public protocol DirectFileTarget: AnyObject {
    /// Reads `count` bytes of `fd` at `fileOffset` into guest memory at `address`, which must be
    /// memory the device may write. False on any failure.
    func readFile(_ fd: Int32, fileOffset: UInt64, into address: UInt64, count: Int) -> Bool
    /// Reads consecutive bytes of `fd` from `fileOffset` into each range in turn (all of which
    /// must be memory the device may write), in as few system calls as it can.
    func readFile(_ fd: Int32, fileOffset: UInt64, into ranges: [(address: UInt64, count: Int)]) -> Bool
    /// Writes each range in turn (all of which must be memory the device may read) to `fd` from
    /// `fileOffset`, in as few system calls as it can. False on any failure.
    func writeFile(_ fd: Int32, fileOffset: UInt64, from ranges: [(address: UInt64, count: Int)]) -> Bool
}

extension DirectFileTarget {
    public func readFile(_ fd: Int32, fileOffset: UInt64, into ranges: [(address: UInt64, count: Int)]) -> Bool {
        var done: UInt64 = 0
        for r in ranges {
            guard readFile(fd, fileOffset: fileOffset + done, into: r.address, count: r.count) else { return false }
            done += UInt64(r.count)
        }
        return true
    }
}

public protocol BlockBackend: AnyObject {
    /// The disk's size in 512-byte sectors. Must not change while a device uses the back end.
    var sectorCount: UInt64 { get }
    /// Reads `count` bytes (a multiple of 512) starting at `sector`; nil on failure.
    func read(sector: UInt64, count: Int) -> [UInt8]?
    /// Writes `bytes` (a multiple of 512 long) starting at `sector`; false on failure.
    func write(sector: UInt64, bytes: [UInt8]) -> Bool
    /// Makes every completed write durable (on stable storage) before returning true.
    func flush() -> Bool
    /// The guest no longer needs `sectors` sectors at `sector`; their contents become undefined.
    func discard(sector: UInt64, sectors: UInt64) -> Bool
    /// Sets `sectors` sectors at `sector` to zero.
    func writeZeroes(sector: UInt64, sectors: UInt64) -> Bool
    /// Reads `count` bytes at `sector` straight into the chain's writable buffers, in order.
    /// nil: this back end or this memory cannot (the caller copies through a buffer instead).
    func readDirect(sector: UInt64, count: Int, into chain: DescriptorChain, ram: GuestRAM) -> Bool?
    /// Writes `count` bytes at `sector` straight from the chain's readable buffers, after the
    /// first `skipping` bytes (the request header). nil: cannot (the caller copies instead).
    func writeDirect(sector: UInt64, count: Int, from chain: DescriptorChain, skipping: UInt64, ram: GuestRAM) -> Bool?
}

extension BlockBackend {
    public func readDirect(sector: UInt64, count: Int, into chain: DescriptorChain, ram: GuestRAM) -> Bool? { nil }
    public func writeDirect(sector: UInt64, count: Int, from chain: DescriptorChain, skipping: UInt64, ram: GuestRAM) -> Bool? { nil }
}

/// The operations of a `BlockBackend`.
public enum BlockOperation: String, Hashable, Sendable, CaseIterable {
    case read, write, flush, discard, writeZeroes
}

/// An in-memory disk for tests and fuzzers, with failure injection and an observer that sees
/// every operation before it is carried out.
public final class MemoryBlockBackend: BlockBackend {
    public typealias Operation = BlockOperation

    /// The disk as the guest sees it.
    public private(set) var bytes: [UInt8]
    /// The disk as of the last successful flush: what would survive a host crash.
    public private(set) var durable: [UInt8]
    /// Operations that fail (nil / false, nothing changed) while they are in this set.
    public var failing: Set<Operation> = []
    /// Called with each operation and its sector range before it runs (flush: 0, 0).
    public var observer: ((Operation, UInt64, UInt64) -> Void)?
    /// How many times each operation was called (failed calls included).
    public private(set) var calls: [Operation: Int] = [:]
    /// Calls that named a range outside the disk, or a length not a multiple of 512. A correct
    /// device never makes one.
    public private(set) var refusedCalls = 0

    public var sectorCount: UInt64 { UInt64(bytes.count / VirtioBlock.sectorSize) }

    /// A disk of `sectors` sectors, every byte `fill`.
    public init(sectors: Int, fill: UInt8 = 0) {
        bytes = [UInt8](repeating: fill, count: max(0, sectors) * VirtioBlock.sectorSize)
        durable = bytes
    }

    /// A disk holding `contents`, cut to a whole number of sectors.
    public init(contents: [UInt8]) {
        bytes = Array(contents.prefix(contents.count - contents.count % VirtioBlock.sectorSize))
        durable = bytes
    }

    private func begin(_ op: Operation, _ sector: UInt64, _ sectors: UInt64) -> Range<Int>? {
        calls[op, default: 0] += 1
        observer?(op, sector, sectors)
        guard !failing.contains(op) else { return nil }
        let (end, o) = sector.addingReportingOverflow(sectors)
        guard !o, end <= sectorCount else { refusedCalls += 1; return nil }
        let size = UInt64(VirtioBlock.sectorSize)
        return Int(sector * size)..<Int(end * size)
    }

    public func read(sector: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, count % VirtioBlock.sectorSize == 0 else { refusedCalls += 1; return nil }
        guard let r = begin(.read, sector, UInt64(count / VirtioBlock.sectorSize)) else { return nil }
        return Array(bytes[r])
    }

    public func write(sector: UInt64, bytes data: [UInt8]) -> Bool {
        guard data.count % VirtioBlock.sectorSize == 0 else { refusedCalls += 1; return false }
        guard let r = begin(.write, sector, UInt64(data.count / VirtioBlock.sectorSize)) else { return false }
        bytes.replaceSubrange(r, with: data)
        return true
    }

    public func flush() -> Bool {
        calls[.flush, default: 0] += 1
        observer?(.flush, 0, 0)
        guard !failing.contains(.flush) else { return false }
        durable = bytes
        return true
    }

    public func discard(sector: UInt64, sectors: UInt64) -> Bool {
        guard let r = begin(.discard, sector, sectors) else { return false }
        // Contents are undefined after a discard; like a punched hole, they read as zero here.
        bytes.replaceSubrange(r, with: repeatElement(0, count: r.count))
        return true
    }

    public func writeZeroes(sector: UInt64, sectors: UInt64) -> Bool {
        guard let r = begin(.writeZeroes, sector, sectors) else { return false }
        bytes.replaceSubrange(r, with: repeatElement(0, count: r.count))
        return true
    }
}

/// The status byte of a request (virtio 1.2 §5.2.6).
public enum BlockStatus: UInt8, Equatable, Sendable {
    case ok = 0           // VIRTIO_BLK_S_OK
    case ioError = 1      // VIRTIO_BLK_S_IOERR
    case unsupported = 2  // VIRTIO_BLK_S_UNSUPP
}

/// One segment of a discard or write-zeroes request (`struct virtio_blk_discard_write_zeroes`).
public struct BlockSegment: Equatable, Sendable {
    public var sector: UInt64
    public var sectors: UInt32
    public var flags: UInt32
    public init(sector: UInt64, sectors: UInt32, flags: UInt32 = 0) {
        self.sector = sector; self.sectors = sectors; self.flags = flags
    }
    /// The wire form: 16 little-endian bytes.
    public var bytes: [UInt8] { le(sector, 8) + le(UInt64(sectors), 4) + le(UInt64(flags), 4) }
}

/// A request parsed from a descriptor chain: every field validated, every range inside the disk.
public enum BlockRequest: Equatable, Sendable {
    /// VIRTIO_BLK_T_IN: read `bytes` bytes (a multiple of 512) at `sector` into the chain.
    case read(sector: UInt64, bytes: Int)
    /// VIRTIO_BLK_T_OUT: write `data` (copied out of the guest once) at `sector`.
    /// `bytes` bytes from the chain's readable buffers after the 16-byte header (copied, or
    /// written straight from guest memory, when the request is carried out).
    case write(sector: UInt64, bytes: Int)
    /// VIRTIO_BLK_T_FLUSH.
    case flush
    /// VIRTIO_BLK_T_GET_ID.
    case getID
    /// VIRTIO_BLK_T_DISCARD.
    case discard([BlockSegment])
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    case writeZeroes([BlockSegment])
}

/// Why a request failed. Each case maps to the status byte the driver gets.
public enum BlockRequestError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The chain has no device-writable byte, so no status can be reported: it is returned
    /// with nothing written.
    case noStatusByte
    /// Fewer than 16 device-readable bytes: no complete request header.
    case shortHeader(readable: UInt64)
    /// A request type this device does not implement (or does not implement any more).
    case unsupportedType(UInt32)
    /// A write, discard or write-zeroes request to a read-only disk.
    case readOnly(type: UInt32)
    /// A data length that is not a multiple of 512 bytes.
    case unalignedLength(UInt64)
    /// A data length above `VirtioBlock.maxRequestBytes`.
    case tooLarge(UInt64)
    /// A sector range that does not lie within the disk (or whose end overflows 64 bits).
    case outOfRange(sector: UInt64, sectors: UInt64)
    /// Discard / write-zeroes data that is empty or not a whole number of 16-byte segments.
    case badSegmentData(length: UInt64)
    /// More segments than the configuration space allows.
    case tooManySegments(Int)
    /// A segment longer than the configuration space allows.
    case segmentTooLarge(sectors: UInt32)
    /// Reserved segment flags, or UNMAP on a discard.
    case unsupportedFlags(UInt32)
    /// A GET_ID data buffer smaller than the 20-byte ID.
    case idBufferTooSmall(UInt64)
    /// The back end failed the operation.
    case backend(BlockOperation)
    /// Copying to or from the chain's buffers failed.
    case memory(VirtqueueError)
    /// The chain itself was refused by the virtqueue (loop, bad index, not guest RAM...).
    case brokenChain(VirtqueueError)

    /// Error kinds, for counters.
    public enum Kind: String, Hashable, Sendable, CaseIterable {
        case noStatusByte, shortHeader, unsupportedType, readOnly, unalignedLength, tooLarge
        case outOfRange, badSegmentData, tooManySegments, segmentTooLarge, unsupportedFlags
        case idBufferTooSmall, backend, memory, brokenChain
    }

    public var kind: Kind {
        switch self {
        case .noStatusByte: return .noStatusByte
        case .shortHeader: return .shortHeader
        case .unsupportedType: return .unsupportedType
        case .readOnly: return .readOnly
        case .unalignedLength: return .unalignedLength
        case .tooLarge: return .tooLarge
        case .outOfRange: return .outOfRange
        case .badSegmentData: return .badSegmentData
        case .tooManySegments: return .tooManySegments
        case .segmentTooLarge: return .segmentTooLarge
        case .unsupportedFlags: return .unsupportedFlags
        case .idBufferTooSmall: return .idBufferTooSmall
        case .backend: return .backend
        case .memory: return .memory
        case .brokenChain: return .brokenChain
        }
    }

    /// The status the driver gets (§5.2.6.2: UNSUPP for unknown types and flags, IOERR otherwise).
    public var status: BlockStatus {
        switch self {
        case .unsupportedType, .unsupportedFlags: return .unsupported
        default: return .ioError
        }
    }

    public var description: String {
        switch self {
        case .noStatusByte: return "no device-writable byte for the status (§5.2.6)"
        case .shortHeader(let n): return "request header needs 16 device-readable bytes, chain has \(n)"
        case .unsupportedType(let t): return "request type \(t) is not supported"
        case .readOnly(let t): return "request type \(t) on a read-only disk (§5.2.6.2)"
        case .unalignedLength(let n): return "data length \(n) is not a multiple of 512"
        case .tooLarge(let n): return "data length \(n) exceeds the \(VirtioBlock.maxRequestBytes)-byte request limit"
        case .outOfRange(let s, let n): return "sectors \(s)+\(n) are not within the disk"
        case .badSegmentData(let n): return "discard/write-zeroes data of \(n) bytes is not a whole number of 16-byte segments"
        case .tooManySegments(let n): return "\(n) segments exceed the configured maximum"
        case .segmentTooLarge(let n): return "segment of \(n) sectors exceeds the configured maximum"
        case .unsupportedFlags(let f): return "segment flags 0x\(String(f, radix: 16)) are not supported (§5.2.6.2)"
        case .idBufferTooSmall(let n): return "GET_ID data buffer of \(n) bytes is smaller than 20"
        case .backend(let op): return "the disk back end failed a \(op)"
        case .memory(let e): return "copying request data: \(e)"
        case .brokenChain(let e): return "broken descriptor chain: \(e)"
        }
    }
}

/// What the device has done, for metrics. Counters only grow.
public struct BlockCounters: Equatable, Sendable {
    /// Chains taken from the queue (broken ones included).
    public var requests: UInt64 = 0
    public var reads: UInt64 = 0
    public var writes: UInt64 = 0
    public var flushes: UInt64 = 0
    public var getIDs: UInt64 = 0
    public var discards: UInt64 = 0
    public var writeZeroes: UInt64 = 0
    /// Bytes read from the disk into the guest / written from the guest to the disk.
    public var bytesRead: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    public var sectorsDiscarded: UInt64 = 0
    public var sectorsZeroed: UInt64 = 0
    /// Failed requests by kind.
    public var errors: [BlockRequestError.Kind: UInt64] = [:]
    /// The most recent failure, for diagnostics.
    public var lastError: BlockRequestError?

    public var totalErrors: UInt64 { errors.values.reduce(0, +) }
}

/// virtio-blk (virtio 1.2 §5.2) as a pure state machine: one request queue, every request
/// parsed into a typed `BlockRequest` and carried out through a `BlockBackend`, synchronously.
///
/// Request layout (§5.2.6): a 16-byte header {type u32, reserved u32, sector u64} in the first
/// device-readable bytes (it may span buffers), then the data (device-readable for OUT and the
/// segment requests, device-writable for IN and GET_ID), then one status byte: the last
/// device-writable byte of the chain.
///
/// Threats (every field of every request comes from a hostile driver):
/// - Header: any type and sector. Unknown types get UNSUPP; `sector + length / 512` is computed
///   with overflow checks and must not pass `capacity`, else IOERR — a request never reaches the
///   back end with a range outside the disk. The reserved field is ignored.
/// - Data length: the driver picks buffer sizes up to 4 GiB. IN/OUT data must be a multiple of
///   512 and at most `maxRequestBytes` (4 MiB), checked from the chain's lengths before anything
///   is allocated, copied or read from disk; larger requests get IOERR.
/// - Status byte: a chain with no device-writable byte cannot be answered; it is returned with 0
///   bytes written and counted. Every other refusal writes IOERR or UNSUPP there.
/// - Read-only disk (VIRTIO_BLK_F_RO offered): OUT, DISCARD and WRITE_ZEROES get IOERR before any
///   data is copied, and the back end's write paths are never called (§5.2.6.2).
/// - Discard / write zeroes: at most `maxDiscardSegments` / `maxWriteZeroesSegments` segments
///   (counted from the lengths before copying), each at most `maxDiscardSectors` /
///   `maxWriteZeroesSectors` long and inside the disk; reserved flags, or UNMAP on a discard, get
///   UNSUPP (§5.2.6.2). The whole request is validated before any segment is carried out, so a
///   bad segment anywhere changes nothing.
/// - GET_ID: writes exactly 20 bytes and the status; a smaller buffer gets IOERR.
/// - Double fetch: the header and the data are copied out of guest memory exactly once; lengths
///   come from the chain the queue already parsed. Writes into the guest only go to the chain's
///   device-writable buffers (checked to be guest RAM when the chain was parsed), and the used
///   length never exceeds their total.
/// - Durability: a FLUSH completes only after `backend.flush()` returned true; a write completes
///   only after the back end accepted it. The used ring is updated after both.
/// - Work per notification: at most one queue's worth of chains (`serveAll`), each at most 4 MiB
///   of I/O, or 32 discard segments, or 8 write-zeroes segments of 8 MiB.
/// - Broken chains (loops, bad indices, buffers outside RAM) are returned with 0 written.
public final class VirtioBlock: VirtioDeviceModel {
    public static let sectorSize = 512
    /// The largest IN/OUT data transfer. A conforming driver never exceeds it: `segMax` ×
    /// `sizeMax` (4032 KiB) is below it. A larger request gets IOERR.
    public static let maxRequestBytes = 4 << 20
    public static let queueSize: UInt16 = 256
    /// Data segments per request: the queue size minus the header and status descriptors.
    public static let segMax: UInt32 = 126
    /// Bytes per data segment.
    public static let sizeMax: UInt32 = 32 * 1024
    public static let maxDiscardSectors: UInt32 = 1 << 22         // 2 GiB per segment
    public static let maxDiscardSegments: UInt32 = 32
    /// A hint (4 KiB): Linux uses it as the discard granularity. Not enforced: the spec makes it
    /// advice for splitting, and discarded contents are undefined anyway.
    public static let discardSectorAlignment: UInt32 = 8
    public static let maxWriteZeroesSectors: UInt32 = 1 << 14     // 8 MiB per segment
    public static let maxWriteZeroesSegments: UInt32 = 8
    /// The length of the GET_ID string (VIRTIO_BLK_ID_BYTES).
    public static let idLength = 20
    /// Size of the configuration space: `struct virtio_blk_config` through `zoned` (§5.2.4).
    public static let configSize = 96

    /// Feature bits (§5.2.3).
    public enum Feature {
        public static let sizeMax: UInt64 = 1 << 1
        public static let segMax: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
        public static let discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }

    /// Request types (§5.2.6).
    public enum RequestType {
        public static let `in`: UInt32 = 0
        public static let out: UInt32 = 1
        public static let flush: UInt32 = 4
        public static let getID: UInt32 = 8
        public static let discard: UInt32 = 11
        public static let writeZeroes: UInt32 = 13
    }

    /// The UNMAP bit of a segment's flags; every other bit is reserved.
    public static let segmentFlagUnmap: UInt32 = 1

    public let deviceType = Virtio.DeviceType.block
    public let features: UInt64
    public let queueSizes: [UInt16] = [VirtioBlock.queueSize]
    public let config: [UInt8]
    public let backend: BlockBackend
    public let readOnly: Bool
    /// The disk size in sectors, read from the back end once.
    public let capacity: UInt64
    /// The GET_ID answer: the ID's first 20 ASCII bytes, NUL padded.
    public let idBytes: [UInt8]
    public private(set) var counters = BlockCounters()

    /// `id` is the serial number the guest sees (for /dev/disk/by-id): its first 20 bytes, with
    /// anything not printable ASCII replaced by "_".
    public init(backend: BlockBackend, readOnly: Bool, id: String) {
        self.backend = backend
        self.readOnly = readOnly
        capacity = backend.sectorCount
        var idb = Array(id.utf8.prefix(Self.idLength)).map { (0x20...0x7e).contains($0) ? $0 : UInt8(ascii: "_") }
        idb += [UInt8](repeating: 0, count: Self.idLength - idb.count)
        idBytes = idb
        var f = Feature.sizeMax | Feature.segMax | Feature.blockSize | Feature.flush
        f |= readOnly ? Feature.readOnly : Feature.discard | Feature.writeZeroes
        features = f
        config = Self.makeConfig(capacity: capacity)
    }

    /// `struct virtio_blk_config` (§5.2.4), little-endian, every offset as the spec lays it out.
    static func makeConfig(capacity: UInt64) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: configSize)
        func put(_ v: UInt64, _ width: Int, at offset: Int) {
            c.replaceSubrange(offset..<offset + width, with: le(v, width))
        }
        put(capacity, 8, at: 0)                                    // capacity
        put(UInt64(sizeMax), 4, at: 8)                             // size_max
        put(UInt64(segMax), 4, at: 12)                             // seg_max
        // 16: geometry (not offered), stays 0
        put(UInt64(sectorSize), 4, at: 20)                         // blk_size
        // 24: topology (not offered); 32: writeback; 33: unused0; 34: num_queues (no MQ)
        put(UInt64(maxDiscardSectors), 4, at: 36)                  // max_discard_sectors
        put(UInt64(maxDiscardSegments), 4, at: 40)                 // max_discard_seg
        put(UInt64(discardSectorAlignment), 4, at: 44)             // discard_sector_alignment
        put(UInt64(maxWriteZeroesSectors), 4, at: 48)              // max_write_zeroes_sectors
        put(UInt64(maxWriteZeroesSegments), 4, at: 52)             // max_write_zeroes_seg
        // 56: write_zeroes_may_unmap = 0 (back ends zero, they do not promise to deallocate);
        // 57: unused1[3]; 60: secure erase and 72: zoned characteristics (not offered)
        return c
    }

    public func reset() {
        // Requests complete synchronously: nothing is in flight, nothing to drop.
    }

    public func process(queue index: Int, _ queue: inout SplitQueue, ram: GuestRAM) throws(VirtqueueError) -> Bool {
        guard index == 0 else { return false }
        return try queue.serveAll(ram: ram, onBroken: { self.counters.requests += 1; self.record(.brokenChain($0)) }) { chain in
            serve(chain, ram: ram)
        }
    }

    /// Serves one chain: parses it, carries it out, writes the status. Returns the number of
    /// bytes written into the chain (data and status byte) for the used ring.
    public func serve(_ chain: DescriptorChain, ram: GuestRAM) -> UInt32 {
        counters.requests += 1
        switch Self.parse(chain, ram: ram, capacity: capacity, readOnly: readOnly) {
        case .failure(let e):
            record(e)
            return e == .noStatusByte ? 0 : finish(chain, ram: ram, status: e.status, dataWritten: 0)
        case .success(let request):
            return execute(request, chain: chain, ram: ram)
        }
    }

    /// Parses a chain into a request (§5.2.6). Pure apart from copying the header and the
    /// device-readable data out of `ram`, each byte once.
    public static func parse(_ chain: DescriptorChain, ram: GuestRAM, capacity: UInt64,
                             readOnly: Bool) -> Result<BlockRequest, BlockRequestError> {
        // Lengths are sums of UInt32s over at most 32768 descriptors: they cannot overflow UInt64,
        // and the queue already refused chains longer than 2^32 bytes.
        let writable = chain.writableLength
        let readable = chain.readableLength
        guard writable >= 1 else { return .failure(.noStatusByte) }
        guard readable >= 16 else { return .failure(.shortHeader(readable: readable)) }
        let header: [UInt8]
        do { header = try chain.readableBytes(from: ram, skipping: 0, count: 16) } catch {
            return .failure(.memory(error))
        }
        let type = u32(header, 0)
        let sector = u64(header, 8)
        // Data bytes: device-writable ones minus the status byte, or device-readable ones after
        // the header.
        let inLength = writable - 1
        let outLength = readable - 16

        switch type {
        case RequestType.in:
            if let e = checkTransfer(sector: sector, length: inLength, capacity: capacity) { return .failure(e) }
            return .success(.read(sector: sector, bytes: Int(inLength)))
        case RequestType.out:
            guard !readOnly else { return .failure(.readOnly(type: type)) }
            if let e = checkTransfer(sector: sector, length: outLength, capacity: capacity) { return .failure(e) }
            return .success(.write(sector: sector, bytes: Int(outLength)))
        case RequestType.flush:
            return .success(.flush)
        case RequestType.getID:
            guard inLength >= UInt64(idLength) else { return .failure(.idBufferTooSmall(inLength)) }
            return .success(.getID)
        case RequestType.discard, RequestType.writeZeroes:
            guard !readOnly else { return .failure(.readOnly(type: type)) }
            let discard = type == RequestType.discard
            let maxSegments = discard ? maxDiscardSegments : maxWriteZeroesSegments
            let maxSectors = discard ? maxDiscardSectors : maxWriteZeroesSectors
            guard outLength > 0, outLength % 16 == 0 else { return .failure(.badSegmentData(length: outLength)) }
            // Count before copying: the driver chose the length.
            guard outLength / 16 <= UInt64(maxSegments) else { return .failure(.tooManySegments(Int(min(outLength / 16, UInt64(Int.max))))) }
            let raw: [UInt8]
            do { raw = try chain.readableBytes(from: ram, skipping: 16, count: Int(outLength)) } catch {
                return .failure(.memory(error))
            }
            let segments = stride(from: 0, to: raw.count, by: 16).map {
                BlockSegment(sector: u64(raw, $0), sectors: u32(raw, $0 + 8), flags: u32(raw, $0 + 12))
            }
            // §5.2.6.2: UNSUPP for reserved flags, and for UNMAP on a discard; it takes precedence
            // over range errors so the driver learns the request kind is not supported.
            let allowedFlags = discard ? 0 : segmentFlagUnmap
            if let bad = segments.first(where: { $0.flags & ~allowedFlags != 0 }) {
                return .failure(.unsupportedFlags(bad.flags))
            }
            for s in segments {
                guard s.sectors <= maxSectors else { return .failure(.segmentTooLarge(sectors: s.sectors)) }
                let (end, o) = s.sector.addingReportingOverflow(UInt64(s.sectors))
                guard !o, end <= capacity else { return .failure(.outOfRange(sector: s.sector, sectors: UInt64(s.sectors))) }
            }
            return .success(discard ? .discard(segments) : .writeZeroes(segments))
        default:
            return .failure(.unsupportedType(type))
        }
    }

    /// IN/OUT data: a whole number of sectors, at most `maxRequestBytes`, inside the disk.
    static func checkTransfer(sector: UInt64, length: UInt64, capacity: UInt64) -> BlockRequestError? {
        guard length % UInt64(sectorSize) == 0 else { return .unalignedLength(length) }
        guard length <= UInt64(maxRequestBytes) else { return .tooLarge(length) }
        let sectors = length / UInt64(sectorSize)
        let (end, o) = sector.addingReportingOverflow(sectors)
        guard !o, end <= capacity else { return .outOfRange(sector: sector, sectors: sectors) }
        return nil
    }

    private func execute(_ request: BlockRequest, chain: DescriptorChain, ram: GuestRAM) -> UInt32 {
        switch request {
        case .read(let sector, let n):
            if n > 0, let direct = backend.readDirect(sector: sector, count: n, into: chain, ram: ram) {
                guard direct else { return fail(.backend(.read), chain, ram) }
            } else {
                var data: [UInt8] = []
                if n > 0 {
                    guard let d = backend.read(sector: sector, count: n), d.count == n else { return fail(.backend(.read), chain, ram) }
                    data = d
                }
                do { try chain.scatter(data, to: ram) } catch { return fail(.memory(error), chain, ram) }
            }
            counters.reads += 1
            counters.bytesRead += UInt64(n)
            return finish(chain, ram: ram, status: .ok, dataWritten: n)
        case .write(let sector, let n):
            if n > 0, let direct = backend.writeDirect(sector: sector, count: n, from: chain, skipping: 16, ram: ram) {
                guard direct else { return fail(.backend(.write), chain, ram) }
            } else if n > 0 {
                let data: [UInt8]
                do { data = try chain.readableBytes(from: ram, skipping: 16, count: n) } catch { return fail(.memory(error), chain, ram) }
                guard backend.write(sector: sector, bytes: data) else { return fail(.backend(.write), chain, ram) }
            }
            counters.writes += 1
            counters.bytesWritten += UInt64(n)
            return finish(chain, ram: ram, status: .ok, dataWritten: 0)
        case .flush:
            // Durability: the flush is complete (and the used ring updated by the caller) only
            // after the back end has put every completed write on stable storage.
            guard backend.flush() else { return fail(.backend(.flush), chain, ram) }
            counters.flushes += 1
            return finish(chain, ram: ram, status: .ok, dataWritten: 0)
        case .getID:
            do { try chain.scatter(idBytes, to: ram) } catch { return fail(.memory(error), chain, ram) }
            counters.getIDs += 1
            return finish(chain, ram: ram, status: .ok, dataWritten: idBytes.count)
        case .discard(let segments):
            for s in segments where s.sectors > 0 {
                guard backend.discard(sector: s.sector, sectors: UInt64(s.sectors)) else { return fail(.backend(.discard), chain, ram) }
                counters.sectorsDiscarded += UInt64(s.sectors)
            }
            counters.discards += 1
            return finish(chain, ram: ram, status: .ok, dataWritten: 0)
        case .writeZeroes(let segments):
            // UNMAP allows deallocation; zeroing satisfies the request either way (§5.2.6.2).
            for s in segments where s.sectors > 0 {
                guard backend.writeZeroes(sector: s.sector, sectors: UInt64(s.sectors)) else { return fail(.backend(.writeZeroes), chain, ram) }
                counters.sectorsZeroed += UInt64(s.sectors)
            }
            counters.writeZeroes += 1
            return finish(chain, ram: ram, status: .ok, dataWritten: 0)
        }
    }

    private func record(_ e: BlockRequestError) {
        counters.errors[e.kind, default: 0] += 1
        counters.lastError = e
    }

    private func fail(_ e: BlockRequestError, _ chain: DescriptorChain, _ ram: GuestRAM) -> UInt32 {
        record(e)
        return finish(chain, ram: ram, status: e.status, dataWritten: 0)
    }

    /// Writes the status into the last device-writable byte. Returns the used length: the data
    /// bytes written plus the status byte, or 0 if even the status could not be written.
    private func finish(_ chain: DescriptorChain, ram: GuestRAM, status: BlockStatus, dataWritten: Int) -> UInt32 {
        do {
            guard try chain.scatter([status.rawValue], to: ram, skipping: Int(chain.writableLength - 1)) == 1 else { return 0 }
        } catch {
            record(.memory(error))
            return 0
        }
        return UInt32(dataWritten + 1)
    }
}

extension DescriptorChain {
    /// Copies `count` device-readable bytes starting `skip` bytes into the chain.
    /// The guest ranges holding `count` readable bytes after the first `skip`, in order; nil
    /// when the chain has fewer.
    public func readableRanges(skipping skip: UInt64, count: Int) -> [(address: UInt64, count: Int)]? {
        var out: [(address: UInt64, count: Int)] = []
        var left = count
        var toSkip = skip
        for b in readable where left > 0 {
            let len = UInt64(b.length)
            if toSkip >= len { toSkip -= len; continue }
            let n = min(Int(len - toSkip), left)
            out.append((b.address + toSkip, n))
            toSkip = 0
            left -= n
        }
        return left == 0 ? out : nil
    }

    func readableBytes(from ram: GuestRAM, skipping skip: UInt64, count: Int) throws(VirtqueueError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var toSkip = skip
        for b in readable where out.count < count {
            let len = UInt64(b.length)
            if toSkip >= len { toSkip -= len; continue }
            let n = min(Int(len - toSkip), count - out.count)
            let addr = b.address + toSkip   // inside a buffer already checked to be guest RAM
            toSkip = 0
            guard let bytes = ram.copyOut(at: addr, count: n) else { throw .memory(address: addr, length: UInt64(n)) }
            out += bytes
        }
        guard out.count == count else { throw .memory(address: 0, length: UInt64(count)) }
        return out
    }
}

// Little-endian helpers for the request and configuration layouts.
private func le(_ v: UInt64, _ width: Int) -> [UInt8] { (0..<width).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
private func u32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
private func u64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
