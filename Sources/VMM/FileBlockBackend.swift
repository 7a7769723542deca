import Devices
import HostOS
import KVM
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// Why a disk image was refused.
public enum FileBlockBackendError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Only regular files are disk images here (a block device's fstat size is 0).
    case notRegularFile
    /// The image is not a whole number of 512-byte sectors.
    case sizeNotSectorMultiple(UInt64)
    case system(SystemError)

    public var description: String {
        switch self {
        case .notRegularFile:
            return "the disk image is not a regular file"
        case .sizeNotSectorMultiple(let n):
            return "the disk image is \(n) bytes, not a multiple of 512: resize it to a whole number of sectors (for example `truncate -s \((n + 511) / 512 * 512)`)"
        case .system(let e):
            return "disk image: \(e)"
        }
    }
}

/// A disk image on an already-open file descriptor: the worker opens no paths; whoever starts
/// it opens the image (read-write, or read-only for a read-only disk) and passes the descriptor.
///
/// Reads and writes are positioned (pread/pwrite, full length, EINTR retried), so the file
/// offset is never used. `flush` is fdatasync: once it returns true, every completed write is
/// on stable storage. Discard punches a hole (the file keeps its size); where the file system
/// cannot, discard succeeds without doing anything — the spec lets a device ignore it — and
/// `punchHoleUnsupported` says so. Write zeroes uses FALLOC_FL_ZERO_RANGE, falling back to
/// writing zeros in 1 MiB chunks where the file system lacks it.
///
/// Every range is checked against the size the image had when it was opened; a request past
/// it fails, so the image never grows. Not thread-safe: the device serialises its calls.
public final class FileBlockBackend: BlockBackend {
    public let fd: FileDescriptor
    public let sectorCount: UInt64
    /// The file system refused FALLOC_FL_PUNCH_HOLE; discards are now no-ops.
    public private(set) var punchHoleUnsupported = false
    /// The file system refused FALLOC_FL_ZERO_RANGE; write zeroes now writes zeros.
    public private(set) var zeroRangeUnsupported = false
    /// The last failure, for diagnostics (the guest only sees IOERR).
    public private(set) var lastError: SystemError?

    static let sectorSize = UInt64(VirtioBlock.sectorSize)
    static let zeroChunk = 1 << 20

    public init(fd: FileDescriptor) throws(FileBlockBackendError) {
        let st: FileStatus
        do { st = try fd.status() } catch { throw .system(error) }
        guard st.isRegularFile else { throw .notRegularFile }
        guard st.size % Self.sectorSize == 0 else { throw .sizeNotSectorMultiple(st.size) }
        self.fd = fd
        sectorCount = st.size / Self.sectorSize
    }

    /// The byte range of `sectors` sectors at `sector`, or nil when it is not inside the image.
    private func byteRange(_ sector: UInt64, _ sectors: UInt64) -> (offset: UInt64, length: UInt64)? {
        let (end, o) = sector.addingReportingOverflow(sectors)
        guard !o, end <= sectorCount else { return nil }
        // end <= sectorCount = size / 512, so these products fit.
        return (sector * Self.sectorSize, sectors * Self.sectorSize)
    }

    private func attempt(_ body: () throws(SystemError) -> Void) -> Bool {
        do { try body(); return true } catch { lastError = error; return false }
    }

    public func read(sector: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, UInt64(count) % Self.sectorSize == 0,
              let r = byteRange(sector, UInt64(count) / Self.sectorSize) else { return nil }
        do { return try fd.read(at: r.offset, count: count) } catch { lastError = error; return nil }
    }

    public func write(sector: UInt64, bytes: [UInt8]) -> Bool {
        guard UInt64(bytes.count) % Self.sectorSize == 0,
              let r = byteRange(sector, UInt64(bytes.count) / Self.sectorSize) else { return false }
        return attempt { () throws(SystemError) in try fd.write(bytes, at: r.offset) }
    }

    public func flush() -> Bool {
        attempt { () throws(SystemError) in try fd.syncData() }
    }

    public func discard(sector: UInt64, sectors: UInt64) -> Bool {
        guard let r = byteRange(sector, sectors) else { return false }
        if punchHoleUnsupported || r.length == 0 { return true }
        do {
            try fd.punchHole(offset: r.offset, length: r.length)
            return true
        } catch where error.errno == EOPNOTSUPP {
            // Discard is advice (§5.2.6.2: the device MAY deallocate): nothing lost by ignoring it.
            punchHoleUnsupported = true
            return true
        } catch {
            lastError = error
            return false
        }
    }

    public func writeZeroes(sector: UInt64, sectors: UInt64) -> Bool {
        guard let r = byteRange(sector, sectors) else { return false }
        if r.length == 0 { return true }
        if !zeroRangeUnsupported {
            do {
                try fd.zeroRange(offset: r.offset, length: r.length)
                return true
            } catch where error.errno == EOPNOTSUPP || error.errno == EINVAL {
                // Not every file system has ZERO_RANGE (tmpfs, older NFS): write the zeros.
                zeroRangeUnsupported = true
            } catch {
                lastError = error
                return false
            }
        }
        return writeZeroBytes(offset: r.offset, length: r.length)
    }

    private func writeZeroBytes(offset: UInt64, length: UInt64) -> Bool {
        let chunk = [UInt8](repeating: 0, count: Self.zeroChunk)
        var done: UInt64 = 0
        while done < length {
            let n = min(UInt64(Self.zeroChunk), length - done)
            let bytes = n == UInt64(Self.zeroChunk) ? chunk : Array(chunk[0..<Int(n)])
            guard attempt({ () throws(SystemError) in try fd.write(bytes, at: offset + done) }) else { return false }
            done += n
        }
        return true
    }

    /// Test hook: behave as if the file system lacked FALLOC_FL_ZERO_RANGE.
    func forceZeroRangeFallback() { zeroRangeUnsupported = true }
}

extension FileBlockBackend {
    /// Reads straight into guest memory, all of the chain's buffers in one vectored read.
    public func readDirect(sector: UInt64, count: Int, into chain: DescriptorChain, ram: GuestRAM) -> Bool? {
        guard let target = ram as? DirectFileTarget else { return nil }
        guard count >= 0, let r = byteRange(sector, UInt64(count) / Self.sectorSize), r.length == UInt64(count) else { return false }
        var ranges: [(address: UInt64, count: Int)] = []
        var left = count
        for b in chain.writable where left > 0 {
            let n = min(Int(b.length), left)
            ranges.append((b.address, n))
            left -= n
        }
        return left == 0 && target.readFile(fd.rawValue, fileOffset: r.offset, into: ranges)
    }
}

extension FileBlockBackend {
    /// Writes straight from guest memory, all of the chain's data buffers in one vectored write.
    public func writeDirect(sector: UInt64, count: Int, from chain: DescriptorChain, skipping: UInt64, ram: GuestRAM) -> Bool? {
        guard let target = ram as? DirectFileTarget else { return nil }
        guard count >= 0, let r = byteRange(sector, UInt64(count) / Self.sectorSize), r.length == UInt64(count),
              let ranges = chain.readableRanges(skipping: skipping, count: count) else { return false }
        return target.writeFile(fd.rawValue, fileOffset: r.offset, from: ranges)
    }
}

extension GuestMemory: DirectFileTarget {
    public func readFile(_ fd: Int32, fileOffset: UInt64, into address: UInt64, count: Int) -> Bool {
        (try? copyFromFile(fd, fileOffset: fileOffset, into: address, count: count)) ?? false
    }

    public func readFile(_ fd: Int32, fileOffset: UInt64, into ranges: [(address: UInt64, count: Int)]) -> Bool {
        (try? copyFromFile(fd, fileOffset: fileOffset, into: ranges)) ?? false
    }

    public func writeFile(_ fd: Int32, fileOffset: UInt64, from ranges: [(address: UInt64, count: Int)]) -> Bool {
        (try? copyToFile(fd, fileOffset: fileOffset, from: ranges)) ?? false
    }
}
