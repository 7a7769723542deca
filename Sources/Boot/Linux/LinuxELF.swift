/// Validation of a `vmlinux` ELF file and its PVH entry note.
///
/// `ELFImage.parse` does not fit a kernel: a vmlinux is linked at high virtual addresses
/// (0xffffffff81000000), is loaded by physical address (`p_paddr`), has a per-CPU segment at
/// virtual 0 and a writable, executable init segment. So this is a separate, smaller validation
/// that shares the byte reader and the ELF error type.
extension LinuxKernel {
    static let maxProgramHeaders = 64
    /// Note areas scanned for the PVH note; a kernel's `.notes` is a few hundred bytes.
    static let maxNoteArea: UInt64 = 64 * 1024
    static let maxNoteSections = 64
    /// XEN_ELFNOTE_PHYS32_ENTRY, owner "Xen" (xen/include/public/elfnote.h).
    static let pvhNoteType: UInt32 = 18

    static func parseVmlinux(_ bytes: [UInt8]) throws(LinuxBootError) -> LinuxKernel {
        let r = ByteReader(bytes)
        let fileSize = UInt64(bytes.count)
        guard bytes.count >= 64 else { throw .elf(.truncated(what: "the ELF header", needed: 64, available: fileSize)) }
        guard bytes[4] == 2 else { throw .elf(.unsupported("not a 64-bit ELF file (class \(bytes[4])); 32-bit kernels are not supported")) }
        guard bytes[5] == 1 else { throw .elf(.unsupported("not little-endian (data encoding \(bytes[5]))")) }
        guard bytes[6] == 1 else { throw .elf(.badHeader("identification version \(bytes[6]) is not 1")) }
        let type = r.u16(16), machine = r.u16(18), version = r.u32(20)
        guard type == 2 else { throw .elf(.unsupported("ELF type \(type) is not an executable (ET_EXEC)")) }
        guard machine == 62 else { throw .elf(.unsupported("machine \(machine) is not x86-64 (62)")) }
        guard version == 1 else { throw .elf(.badHeader("version \(version) is not 1")) }
        let entry = r.u64(24), phoff = r.u64(32)
        let ehsize = r.u16(52), phentsize = r.u16(54), phnum = Int(r.u16(56))
        guard ehsize == 64 else { throw .elf(.badHeader("header size \(ehsize) is not 64")) }
        guard phnum > 0 else { throw .elf(.noLoadableSegments) }
        guard phentsize == 56 else { throw .elf(.badHeader("program header size \(phentsize) is not 56")) }
        guard phnum <= maxProgramHeaders else { throw .elf(.badHeader("\(phnum) program headers (at most \(maxProgramHeaders))")) }
        let (tableEnd, o1) = phoff.addingReportingOverflow(UInt64(phnum) * 56)
        guard !o1, tableEnd <= fileSize else {
            throw .elf(.truncated(what: "the program header table", needed: o1 ? UInt64.max : tableEnd, available: fileSize))
        }

        // Segment index in the file, and the segment, for error messages.
        var loads: [(index: Int, segment: Segment, virtualAddress: UInt64)] = []
        var pvhEntry: UInt32? = nil
        for i in 0..<phnum {
            let h = Int(phoff) + i * 56
            let pType = r.u32(h), flags = r.u32(h + 4)
            let offset = r.u64(h + 8), vaddr = r.u64(h + 16), paddr = r.u64(h + 24)
            let filesz = r.u64(h + 32), memsz = r.u64(h + 40), align = r.u64(h + 48)
            switch pType {
            case 1: // PT_LOAD
                guard memsz > 0 else { continue }
                guard filesz <= memsz else { throw .elf(.badSegment(index: i, reason: "file size \(filesz) exceeds memory size \(memsz)")) }
                let (fileEnd, o2) = offset.addingReportingOverflow(filesz)
                guard !o2, fileEnd <= fileSize else {
                    throw .elf(.badSegment(index: i, reason: "file bytes \(offset)+\(filesz) run past the end of the \(fileSize)-byte file"))
                }
                let (end, o3) = paddr.addingReportingOverflow(memsz)
                let (_, o4) = vaddr.addingReportingOverflow(memsz)
                guard !o3, !o4 else { throw .elf(.badSegment(index: i, reason: "address + size overflows")) }
                guard align <= 1 || align.nonzeroBitCount == 1 else {
                    throw .elf(.badSegment(index: i, reason: "alignment \(align) is not a power of two"))
                }
                guard paddr >= LinuxBootLayout.highMemory, end <= LinuxBootLayout.mmioHole else {
                    throw .elf(.outOfRange(index: i, address: paddr, end: end, allowedStart: LinuxBootLayout.highMemory,
                                           allowedEnd: LinuxBootLayout.mmioHole))
                }
                let s = Segment(physicalAddress: paddr, fileOffset: offset, fileSize: filesz, memorySize: memsz,
                                executable: flags & 0x1 != 0)
                loads.append((i, s, vaddr))
            case 2: throw .elf(.unsupported("dynamic linking (PT_DYNAMIC) in a kernel"))
            case 3: throw .elf(.unsupported("an interpreter (PT_INTERP) in a kernel"))
            case 4: // PT_NOTE
                if let e = try pvhNote(bytes, offset: offset, size: filesz, align: align, what: "note segment \(i)") {
                    if let previous = pvhEntry, previous != e { throw .badNote("two PVH entry notes disagree (0x\(String(previous, radix: 16)), 0x\(String(e, radix: 16)))") }
                    pvhEntry = e
                }
            default: continue // GNU_STACK, GNU_PROPERTY, ...: no effect on loading
            }
        }
        guard !loads.isEmpty else { throw .elf(.noLoadableSegments) }
        loads.sort { $0.segment.physicalAddress < $1.segment.physicalAddress }
        for k in 1..<loads.count where loads[k].segment.physicalAddress < loads[k - 1].segment.end {
            throw .elf(.overlappingSegments(loads[k - 1].index, loads[k].index))
        }
        if pvhEntry == nil {
            pvhEntry = try pvhNoteInSections(bytes)
        }

        let segments = loads.map(\.segment)
        func inCode(_ address: UInt64) -> Bool {
            segments.contains { $0.executable && address >= $0.physicalAddress && address - $0.physicalAddress < $0.fileSize }
        }
        let footprint = (segments.map(\.physicalAddress).min() ?? 0)..<(segments.map(\.end).max() ?? 0)
        let kind: Kind
        if let e = pvhEntry {
            guard inCode(UInt64(e)) else { throw .entryOutsideImage(UInt64(e)) }
            kind = .pvh(entry32: e)
        } else {
            // A vmlinux's e_entry is phys_startup_64 (physical) on current kernels; translate a
            // virtual one through the executable segment that contains it.
            var physical = entry
            if let l = loads.first(where: { $0.segment.executable && entry >= $0.virtualAddress && entry - $0.virtualAddress < $0.segment.memorySize }) {
                physical = l.segment.physicalAddress + (entry - l.virtualAddress)
            }
            guard inCode(physical) else { throw .entryOutsideImage(entry) }
            kind = .elf64(entry: physical)
        }
        return LinuxKernel(kind: kind, segments: segments, footprint: footprint,
                           commandLineMaximum: LinuxBootLayout.elfCommandLineMaximum,
                           initrdAddressMax: UInt64(UInt32.max), setupHeader: nil, image: bytes)
    }

    /// Scans the SHT_NOTE sections (only consulted when no PT_NOTE segment had the PVH note).
    /// A missing section header table is fine; a malformed one is refused.
    static func pvhNoteInSections(_ bytes: [UInt8]) throws(LinuxBootError) -> UInt32? {
        let r = ByteReader(bytes)
        let fileSize = UInt64(bytes.count)
        let shoff = r.u64(40), shentsize = r.u16(58), shnum = Int(r.u16(60))
        guard shoff != 0, shnum != 0 else { return nil }
        guard shentsize == 64 else { throw .elf(.badHeader("section header size \(shentsize) is not 64")) }
        let (tableEnd, o) = shoff.addingReportingOverflow(UInt64(shnum) * 64)
        guard !o, tableEnd <= fileSize else {
            throw .elf(.truncated(what: "the section header table", needed: o ? UInt64.max : tableEnd, available: fileSize))
        }
        var found: UInt32? = nil
        var scanned = 0
        for i in 0..<shnum {
            let h = Int(shoff) + i * 64
            guard r.u32(h + 4) == 7 else { continue } // SHT_NOTE
            scanned += 1
            guard scanned <= maxNoteSections else { throw .badNote("more than \(maxNoteSections) note sections") }
            let offset = r.u64(h + 24), size = r.u64(h + 32), align = r.u64(h + 48)
            if let e = try pvhNote(bytes, offset: offset, size: size, align: align, what: "note section \(i)") {
                if let previous = found, previous != e { throw .badNote("two PVH entry notes disagree (0x\(String(previous, radix: 16)), 0x\(String(e, radix: 16)))") }
                found = e
            }
        }
        return found
    }

    /// Walks one note area and returns the PVH entry if it holds one. Each note is a 12-byte
    /// header (namesz, descsz, type), the name, then the value at the next multiple of the
    /// area's alignment (4 bytes, or 8 when the area is 8-byte aligned) from the note's start,
    /// and the next note at the next multiple after the value.
    static func pvhNote(_ bytes: [UInt8], offset: UInt64, size: UInt64, align: UInt64, what: String) throws(LinuxBootError) -> UInt32? {
        let r = ByteReader(bytes)
        let fileSize = UInt64(bytes.count)
        guard size > 0 else { return nil }
        guard size <= maxNoteArea else { throw .badNote("\(what) is \(size) bytes (at most \(maxNoteArea))") }
        let (end, o) = offset.addingReportingOverflow(size)
        guard !o, end <= fileSize else {
            throw .badNote("\(what) at \(offset)+\(size) runs past the end of the \(fileSize)-byte file")
        }
        let pad: UInt64 = align == 8 ? 8 : 4
        guard offset % pad == 0 else { throw .badNote("\(what) at file offset \(offset) is not \(pad)-byte aligned") }
        func padded(_ n: UInt64) -> UInt64 { (n + pad - 1) / pad * pad } // n < 2^32 + 12: no overflow
        var found: UInt32? = nil
        var p = offset
        while p < end {
            guard end - p >= 12 else { throw .badNote("\(what): a note header at \(p) is cut off by the end of the area") }
            let namesz = UInt64(r.u32(Int(p))), descsz = UInt64(r.u32(Int(p) + 4)), type = r.u32(Int(p) + 8)
            let nameStart = p + 12
            let descStart = p + padded(12 + namesz)
            guard descStart <= end, descStart + descsz <= end else {
                throw .badNote("\(what): a note of type \(type) at \(p) (name \(namesz) bytes, value \(descsz) bytes) runs past the end of the area")
            }
            let n = Int(nameStart)
            if type == pvhNoteType, namesz == 4, bytes[n..<n + 4] == [0x58, 0x65, 0x6e, 0x00] { // "Xen\0"
                let d = Int(descStart)
                let value: UInt64
                switch descsz {
                case 4: value = UInt64(r.u32(d))
                case 8: value = r.u64(d)
                default: throw .badNote("the PVH entry note has a \(descsz)-byte value (need 4 or 8)")
                }
                guard value <= UInt64(UInt32.max) else {
                    throw .badNote("the PVH entry 0x\(String(value, radix: 16)) is above 4 GiB")
                }
                if let previous = found, previous != UInt32(value) {
                    throw .badNote("two PVH entry notes disagree (0x\(String(previous, radix: 16)), 0x\(String(value, radix: 16)))")
                }
                found = UInt32(value)
            }
            p = descStart + padded(descsz)
        }
        return found
    }
}
