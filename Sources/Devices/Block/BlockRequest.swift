import GuestABI
import Virtio

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

extension VirtioBlock {
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
}
