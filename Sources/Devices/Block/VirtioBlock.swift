import GuestABI
import Virtio

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
    public static let sectorSize = BlockABI.sectorSize
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
    public static let idLength = BlockABI.idLength
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

    /// Request types (§5.2.6): GuestABI's, which the guest SDK compiles too.
    public enum RequestType {
        public static let `in` = BlockABI.RequestType.read
        public static let out = BlockABI.RequestType.write
        public static let flush = BlockABI.RequestType.flush
        public static let getID = BlockABI.RequestType.getID
        public static let discard = BlockABI.RequestType.discard
        public static let writeZeroes = BlockABI.RequestType.writeZeroes
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

    public func process(queue index: Int, _ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter?) throws(VirtqueueError) -> Bool {
        guard index == 0 else { return false }
        return try queue.serveAll(ram: ram, limit: limit, onBroken: { self.counters.requests += 1; self.record(.brokenChain($0)) }) { chain in
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
