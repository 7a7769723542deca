// blk: drives the virtio block device (virtio 1.2 §5.2).
//
// Always: finds the first block device, prints its capacity, read-only flag, flush support
// and GET_ID string, and reads the first sectors. Then, by command-line word:
//   write           writes a pattern (below) with requests of 1, 8 and 64 sectors (the
//                   64-sector ones as 3-buffer chains), FLUSHes, reads it all back with
//                   differently sized requests (64-sector reads as 2-buffer chains) and
//                   verifies it: `blk: verified N sectors`
//   verify          only reads and verifies the pattern (e.g. in a second VM after the
//                   first was killed): `blk: verified N sectors`
//   readonly-check  reads sector 0 and writes the same bytes back: exits 0 if the device
//                   refuses (IOERR, UNSUPP or no status), 1 if the write succeeded
//   hold            with `write`: after the FLUSH print `blk: flushed` and park for ever
//                   (a test kills the VMM, then verifies the image with a second VM)
//
// The pattern covers sectors [0, min(capacity, 2048)) plus runs of 1 or 8 sectors at every
// capacity/64-th sector and the last sector. Byte j of sector i is a function of (i, j):
// bytes 0–7 hold i ^ 0xb10cda7a00000000 (so a misplaced sector says where it came from),
// the other 8-byte words are a splitmix64 hash of (i, word index), little-endian.
//
// Exit status: 0 ok, 1 failure (reason printed), 2 no block device.

let sectorSize = VirtioBlock.sectorSize
let wordsPerSector = sectorSize / 8
let patternTag: UInt64 = 0xb10c_da7a_0000_0000
let maxChunk = 64  // sectors per request, at most

@inline(__always)
func mix(_ value: UInt64) -> UInt64 {
    var z = value &+ 0x9e37_79b9_7f4a_7c15
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
}

@inline(__always)
func patternWord(sector: UInt64, word: Int) -> UInt64 {
    word == 0 ? sector ^ patternTag : mix(sector &* 0x100 &+ UInt64(word))
}

func fillPattern(_ p: UnsafeMutableRawPointer, sector: UInt64, count: Int) {
    for s in 0..<count {
        for w in 0..<wordsPerSector {
            p.storeBytes(of: patternWord(sector: sector + UInt64(s), word: w).littleEndian,
                         toByteOffset: s * sectorSize + 8 * w, as: UInt64.self)
        }
    }
}

/// Checks `count` sectors at `p` against the pattern; prints the first mismatch.
func checkPattern(_ p: UnsafeRawPointer, sector: UInt64, count: Int) -> Bool {
    for s in 0..<count {
        let i = sector + UInt64(s)
        for w in 0..<wordsPerSector {
            let got = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: s * sectorSize + 8 * w, as: UInt64.self))
            let expected = patternWord(sector: i, word: w)
            if got != expected {
                Console.line { out in
                    out.append("blk: FAIL sector ")
                    out.append(decimal: i)
                    out.append(" byte ")
                    out.append(decimal: 8 * w)
                    out.append(": expected ")
                    out.append(hex: expected, minDigits: 16)
                    out.append(", read ")
                    out.append(hex: got, minDigits: 16)
                    let first = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: s * sectorSize, as: UInt64.self))
                    if first & 0xffff_ffff_0000_0000 == patternTag && first != i ^ patternTag {
                        out.append(" (the sector holds sector ")
                        out.append(decimal: first ^ patternTag)
                        out.append("'s data)")
                    }
                }
                return false
            }
        }
    }
    return true
}

struct Run {
    var start: UInt64
    var count: UInt64
}

/// The sectors the pattern covers, as disjoint runs in increasing order.
func patternRuns(capacity: UInt64) -> [Run] {
    var runs: [Run] = []
    let head = min(capacity, 2048)
    if head > 0 { runs.append(Run(start: 0, count: head)) }
    guard capacity > head else { return runs }
    let step = capacity / 64
    var lastEnd = head
    for k in 0..<64 {
        let start = max(UInt64(k) * step, lastEnd)
        let end = min(UInt64(k) * step + (k % 2 == 0 ? 1 : 8), capacity)
        if end > start {
            runs.append(Run(start: start, count: end - start))
            lastEnd = end
        }
    }
    if capacity - 1 >= lastEnd { runs.append(Run(start: capacity - 1, count: 1)) }
    return runs
}

func fail(_ why: StaticString, _ error: VirtioError? = nil, sector: UInt64? = nil) -> Never {
    Console.line { out in
        out.append("blk: FAIL ")
        out.append(why)
        if let sector {
            out.append(" at sector ")
            out.append(decimal: sector)
        }
        if let error {
            out.append(": ")
            out.append(error.name)
        }
    }
    exit(1)
}

/// Writes [start, start + count) with the pattern; 64-sector requests use a 3-buffer chain.
func writeRun(_ disk: inout VirtioBlock, _ buffer: UnsafeMutableRawPointer, start: UInt64, count: Int) {
    fillPattern(buffer, sector: start, count: count)
    do throws(VirtioError) {
        if count == 64 {
            // 4 KiB + 8 KiB + 20 KiB = 64 sectors.
            var segments = (UnsafeMutableRawBufferPointer(start: buffer, count: 4096),
                            UnsafeMutableRawBufferPointer(start: buffer + 4096, count: 8192),
                            UnsafeMutableRawBufferPointer(start: buffer + 12288, count: 20480))
            try withUnsafePointer(to: &segments) { p throws(VirtioError) in
                try p.withMemoryRebound(to: UnsafeMutableRawBufferPointer.self, capacity: 3) { q throws(VirtioError) in
                    try disk.write(sector: start, from: UnsafeBufferPointer(start: q, count: 3))
                }
            }
        } else {
            try disk.write(sector: start, from: UnsafeRawBufferPointer(start: buffer, count: count * sectorSize))
        }
    } catch {
        fail("write", error, sector: start)
    }
}

/// Reads [start, start + count) and checks the pattern; 64-sector requests use a 2-buffer chain.
func verifyRun(_ disk: inout VirtioBlock, _ buffer: UnsafeMutableRawPointer, start: UInt64, count: Int) {
    buffer.initializeMemory(as: UInt8.self, repeating: 0xee, count: count * sectorSize)
    do throws(VirtioError) {
        if count == 64 {
            // 12 KiB + 20 KiB = 64 sectors.
            var segments = (UnsafeMutableRawBufferPointer(start: buffer, count: 12288),
                            UnsafeMutableRawBufferPointer(start: buffer + 12288, count: 20480))
            try withUnsafePointer(to: &segments) { p throws(VirtioError) in
                try p.withMemoryRebound(to: UnsafeMutableRawBufferPointer.self, capacity: 2) { q throws(VirtioError) in
                    try disk.read(sector: start, into: UnsafeBufferPointer(start: q, count: 2))
                }
            }
        } else {
            try disk.read(sector: start, into: UnsafeMutableRawBufferPointer(start: buffer, count: count * sectorSize))
        }
    } catch {
        fail("read", error, sector: start)
    }
    if !checkPattern(buffer, sector: start, count: count) { exit(1) }
}

/// Walks every run in requests whose sizes cycle through `sizes` (clipped to the run).
func forEachRequest(_ runs: [Run], sizes: (Int, Int, Int), _ body: (UInt64, Int) -> Void) {
    var k = 0
    for run in runs {
        var sector = run.start
        let end = run.start + run.count
        while sector < end {
            let size = k % 3 == 0 ? sizes.0 : k % 3 == 1 ? sizes.1 : sizes.2
            let count = Int(min(UInt64(size), end - sector))
            body(sector, count)
            sector += UInt64(count)
            k += 1
        }
    }
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else { fail("no valid boot-information block") }
    guard let entry = info.firstDevice(.block) else {
        Console.writeLine("blk: no block device")
        exit(2)
    }
    var disk: VirtioBlock
    do throws(VirtioError) {
        disk = try VirtioBlock(entry)
    } catch {
        fail("cannot initialise the block device", error)
    }
    guard let buffer = Heap.allocate(byteCount: 2 * maxChunk * sectorSize, alignment: 4096) else { fail("out of memory") }
    let spare = buffer + maxChunk * sectorSize

    // Identity and geometry.
    var idLength = -1
    var idError: VirtioError? = nil
    do throws(VirtioError) {
        idLength = try disk.identify(into: UnsafeMutableRawBufferPointer(start: spare, count: VirtioBlock.idLength))
    } catch {
        idError = error
    }
    Console.line { out in
        out.append("blk: capacity ")
        out.append(decimal: disk.capacity)
        out.append(" sectors (")
        out.append(decimal: disk.capacity &* 512)
        out.append(" bytes), read-only ")
        out.append(disk.readOnly ? "yes" : "no")
        out.append(", flush ")
        out.append(disk.canFlush ? "yes" : "no")
        out.append(", id ")
        if idLength >= 0 {
            out.append("\"")
            out.append(escaping: UnsafeRawBufferPointer(start: spare, count: idLength))
            out.append("\"")
        } else {
            out.append("unavailable (")
            out.append(idError?.name ?? "?")
            out.append(")")
        }
    }
    if let idError, idError == .timeout || idError == .deviceNeedsReset { fail("GET_ID", idError) }

    // A first read, whatever the mode.
    let probe = Int(min(disk.capacity, 8))
    if probe > 0 {
        do throws(VirtioError) {
            try disk.read(sector: 0, into: UnsafeMutableRawBufferPointer(start: buffer, count: probe * sectorSize))
        } catch {
            fail("read", error, sector: 0)
        }
    }

    let commandLine = info.commandLine
    let doWrite = commandLine.containsWord("write")
    let doVerify = commandLine.containsWord("verify")
    let doReadOnlyCheck = commandLine.containsWord("readonly-check")
    // `hold`: after the flush, say so and wait for ever (a test then kills the VMM).
    let doHold = commandLine.containsWord("hold")

    if doReadOnlyCheck {
        guard disk.capacity > 0 else { fail("readonly-check needs a non-empty disk") }
        // Write back what sector 0 holds (harmless if the device wrongly accepts it).
        var segment = VirtqBuffer(address: address(of: buffer), length: UInt32(sectorSize), deviceWritable: false)
        var result: VirtioBlock.Completion
        do throws(VirtioError) {
            result = try withUnsafePointer(to: &segment) { p throws(VirtioError) -> VirtioBlock.Completion in
                try disk.request(type: VirtioBlock.RequestType.write, sector: 0, data: UnsafeBufferPointer(start: p, count: 1))
            }
        } catch {
            fail("readonly-check: the write request did not complete", error)
        }
        if let error = result.error {
            Console.line { out in
                out.append("blk: readonly-check: write refused (")
                out.append(error.name)
                out.append(")")
            }
            if !doWrite && !doVerify { exit(0) }
        } else {
            Console.writeLine("blk: FAIL readonly-check: the write succeeded")
            exit(1)
        }
    }

    let runs = patternRuns(capacity: disk.capacity)
    var total: UInt64 = 0
    for run in runs { total += run.count }

    if doWrite {
        if disk.readOnly { fail("write: the disk is read-only") }
        forEachRequest(runs, sizes: (1, 8, 64)) { sector, count in
            writeRun(&disk, buffer, start: sector, count: count)
        }
        do throws(VirtioError) {
            try disk.flush()
        } catch {
            fail("flush", error)
        }
        if doHold {
            Console.writeLine("blk: flushed")
            parkForever()
        }
    }
    if doWrite || doVerify {
        forEachRequest(runs, sizes: (64, 1, 8)) { sector, count in
            verifyRun(&disk, buffer, start: sector, count: count)
        }
        Console.line { out in
            out.append("blk: verified ")
            out.append(decimal: total)
            out.append(" sectors")
        }
    }
    exit(0)
}
