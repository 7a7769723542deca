/// A validated 64-bit x86 ELF executable, ready to be placed in guest memory.
///
/// `ELFImage.parse` reads the file once, checks every header field and program header it relies
/// on with checked arithmetic, and refuses anything it does not fully understand. Nothing of the
/// input is trusted: a guest image can come from a tenant.
public struct ELFImage: Equatable, Sendable {
    public struct Segment: Equatable, Sendable {
        public var address: UInt64
        public var memorySize: UInt64
        public var fileOffset: UInt64
        public var fileSize: UInt64
        public var readable: Bool
        public var writable: Bool
        public var executable: Bool

        public var end: UInt64 { address + memorySize }
    }

    public var entry: UInt64
    public var segments: [Segment]

    /// The lowest and highest (exclusive) addresses the segments occupy.
    public var lowestAddress: UInt64 { segments.map(\.address).min() ?? 0 }
    public var highestAddress: UInt64 { segments.map(\.end).max() ?? 0 }
}

/// Why an ELF image was refused.
public enum ELFError: Error, Equatable, CustomStringConvertible, Sendable {
    case truncated(what: String, needed: UInt64, available: UInt64)
    case notELF
    case unsupported(String)
    case badHeader(String)
    case badSegment(index: Int, reason: String)
    case overlappingSegments(Int, Int)
    case entryNotExecutable(UInt64)
    case noLoadableSegments
    case outOfRange(index: Int, address: UInt64, end: UInt64, allowedStart: UInt64, allowedEnd: UInt64)

    public var description: String {
        func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .truncated(let what, let needed, let available):
            return "truncated ELF file: \(what) needs \(needed) bytes, the file has \(available)"
        case .notELF: return "not an ELF file (bad magic)"
        case .unsupported(let why): return "unsupported ELF file: \(why)"
        case .badHeader(let why): return "malformed ELF header: \(why)"
        case .badSegment(let i, let why): return "malformed program header \(i): \(why)"
        case .overlappingSegments(let a, let b): return "loadable segments \(a) and \(b) overlap (at page granularity)"
        case .entryNotExecutable(let e): return "entry point \(hex(e)) is not inside a loaded executable segment"
        case .noLoadableSegments: return "the ELF file has no loadable (PT_LOAD) segment"
        case .outOfRange(let i, let a, let e, let lo, let hi):
            return "segment \(i) at \(hex(a))–\(hex(e)) lies outside the program area \(hex(lo))–\(hex(hi)) of this guest's memory"
        }
    }
}

extension ELFImage {
    static let pageSize: UInt64 = 4096
    static let maxProgramHeaders = 64

    /// Parses and validates `bytes` as a static ELF64 x86-64 executable whose loadable segments
    /// must lie inside `[allowedStart, allowedEnd)`.
    public static func parse(_ bytes: [UInt8], allowedStart: UInt64, allowedEnd: UInt64) throws(ELFError) -> ELFImage {
        let r = ByteReader(bytes)
        let fileSize = UInt64(bytes.count)
        guard bytes.count >= 64 else {
            if bytes.count >= 4, bytes[0..<4] == [0x7f, 0x45, 0x4c, 0x46] {
                throw .truncated(what: "the ELF header", needed: 64, available: fileSize)
            }
            throw .notELF
        }
        guard bytes[0..<4] == [0x7f, 0x45, 0x4c, 0x46] else { throw .notELF }
        guard bytes[4] == 2 else { throw .unsupported("not a 64-bit ELF file (class \(bytes[4]))") }
        guard bytes[5] == 1 else { throw .unsupported("not little-endian (data encoding \(bytes[5]))") }
        guard bytes[6] == 1 else { throw .badHeader("identification version \(bytes[6]) is not 1") }
        guard bytes[7] == 0 || bytes[7] == 3 else { throw .unsupported("OS ABI \(bytes[7]) (need System V or GNU)") }
        let type = r.u16(16), machine = r.u16(18), version = r.u32(20)
        guard type == 2 else {
            throw .unsupported(type == 3 ? "position-independent executables (ET_DYN) are not supported; link statically at a fixed address" : "ELF type \(type) is not an executable (ET_EXEC)")
        }
        guard machine == 62 else { throw .unsupported("machine \(machine) is not x86-64 (62)") }
        guard version == 1 else { throw .badHeader("version \(version) is not 1") }
        let entry = r.u64(24), phoff = r.u64(32)
        let ehsize = r.u16(52), phentsize = r.u16(54), phnum = Int(r.u16(56))
        guard ehsize == 64 else { throw .badHeader("header size \(ehsize) is not 64") }
        guard phnum > 0 else { throw .noLoadableSegments }
        guard phentsize == 56 else { throw .badHeader("program header size \(phentsize) is not 56") }
        guard phnum <= maxProgramHeaders else { throw .badHeader("\(phnum) program headers (at most \(maxProgramHeaders))") }
        let (tableEnd, o1) = phoff.addingReportingOverflow(UInt64(phnum) * 56)
        guard !o1, tableEnd <= fileSize else {
            throw .truncated(what: "the program header table", needed: o1 ? UInt64.max : tableEnd, available: fileSize)
        }

        var segments: [Segment] = []
        for i in 0..<phnum {
            let h = Int(phoff) + i * 56
            let pType = r.u32(h), flags = r.u32(h + 4)
            let offset = r.u64(h + 8), vaddr = r.u64(h + 16)
            let filesz = r.u64(h + 32), memsz = r.u64(h + 40), align = r.u64(h + 48)
            switch pType {
            case 1: break // PT_LOAD
            case 2: throw .unsupported("dynamic linking (PT_DYNAMIC) is not supported")
            case 3: throw .unsupported("an interpreter (PT_INTERP) is not supported")
            case 7: throw .unsupported("thread-local storage (PT_TLS) is not supported")
            default: continue // notes, GNU_STACK, GNU_RELRO, ...: no effect on loading
            }
            guard memsz > 0 else { continue }
            guard filesz <= memsz else { throw .badSegment(index: i, reason: "file size \(filesz) exceeds memory size \(memsz)") }
            let (fileEnd, o2) = offset.addingReportingOverflow(filesz)
            guard !o2, fileEnd <= fileSize else {
                throw .badSegment(index: i, reason: "file bytes \(offset)+\(filesz) run past the end of the \(fileSize)-byte file")
            }
            let (end, o3) = vaddr.addingReportingOverflow(memsz)
            guard !o3 else { throw .badSegment(index: i, reason: "address + size overflows") }
            guard align == 0 || align == 1 || align.nonzeroBitCount == 1 else {
                throw .badSegment(index: i, reason: "alignment \(align) is not a power of two")
            }
            guard vaddr % pageSize == offset % pageSize else {
                throw .badSegment(index: i, reason: "address and file offset are not congruent modulo the 4 KiB page size")
            }
            guard flags & 0x4 != 0 || flags & 0x1 != 0 || flags & 0x2 != 0 else {
                throw .badSegment(index: i, reason: "segment has no access permissions")
            }
            if flags & 0x2 != 0 && flags & 0x1 != 0 {
                throw .badSegment(index: i, reason: "segment is both writable and executable (W^X is enforced)")
            }
            guard vaddr >= allowedStart, end <= allowedEnd else {
                throw .outOfRange(index: i, address: vaddr, end: end, allowedStart: allowedStart, allowedEnd: allowedEnd)
            }
            segments.append(Segment(address: vaddr, memorySize: memsz, fileOffset: offset, fileSize: filesz,
                                    readable: flags & 0x4 != 0, writable: flags & 0x2 != 0, executable: flags & 0x1 != 0))
        }
        guard !segments.isEmpty else { throw .noLoadableSegments }

        // Page-granular overlap: each page gets exactly one set of permissions.
        let pages = segments.map { (s: Segment) -> (UInt64, UInt64) in
            (s.address / pageSize, (s.end + pageSize - 1) / pageSize)
        }
        for a in 0..<pages.count {
            for b in (a + 1)..<pages.count where pages[a].0 < pages[b].1 && pages[b].0 < pages[a].1 {
                throw .overlappingSegments(a, b)
            }
        }
        guard segments.contains(where: { $0.executable && entry >= $0.address && entry < $0.end }) else {
            throw .entryNotExecutable(entry)
        }
        return ELFImage(entry: entry, segments: segments)
    }
}

/// Little-endian reads from a byte array at offsets the caller has bounds-checked.
struct ByteReader {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func u8(_ o: Int) -> UInt8 { o >= 0 && o < bytes.count ? bytes[o] : 0 }
    func u16(_ o: Int) -> UInt16 { UInt16(u8(o)) | UInt16(u8(o + 1)) << 8 }
    func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) | UInt32(u16(o + 2)) << 16 }
    func u64(_ o: Int) -> UInt64 { UInt64(u32(o)) | UInt64(u32(o + 4)) << 32 }
}

/// Little-endian writes into a growable byte buffer.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]
    public init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }

    public mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        var v = value.littleEndian
        for i in 0..<MemoryLayout<T>.size where offset + i < bytes.count {
            bytes[offset + i] = UInt8(truncatingIfNeeded: v)
            v >>= 8
        }
    }

    public mutating func put(_ data: [UInt8], at offset: Int) {
        for (i, b) in data.enumerated() where offset + i < bytes.count { bytes[offset + i] = b }
    }
}
