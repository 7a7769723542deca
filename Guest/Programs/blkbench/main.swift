// blkbench: virtio block throughput and latency.
//
// Command line: `<mode> <ops> [<queue depth>]`, mode one of
//   seq-read, seq-write    ops of 1 MiB at consecutive offsets (wrapping at the end of the
//                          disk), each one request whose data is a chain of 256 KiB buffers
//                          (split further if the device's size_max/seg_max demand it)
//   rand-read, rand-write  ops of 4 KiB at random 4 KiB-aligned offsets (fixed seed)
// Queue depth (default 1) is how many requests are kept in flight. Write modes end with a
// FLUSH (if the device offers it), inside the timed interval. Times with the `time`
// hypercall and prints exactly one line:
//   blkbench: <mode> <ops> ops <bytes> bytes <ns> ns
// Exit status: 0 ok, 1 I/O error (reason printed), 2 bad command line or no block device.

func usage() -> Never {
    Console.writeLine("blkbench: usage: seq-read|seq-write|rand-read|rand-write <ops> [<queue depth>]")
    exit(2)
}

func fail(_ why: StaticString, _ error: VirtioError) -> Never {
    Console.line { out in
        out.append("blkbench: FAIL ")
        out.append(why)
        out.append(": ")
        out.append(error.name)
    }
    exit(1)
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else { usage() }
    let commandLine = info.commandLine
    guard let modeWord = commandLine.word(0), let ops = commandLine.word(1)?.parseDecimal(), ops > 0 else { usage() }
    var depth: UInt64 = 1
    if let word = commandLine.word(2) {
        guard let value = word.parseDecimal(), value > 0 else { usage() }
        depth = value
    }
    let sequential: Bool
    let writing: Bool
    if modeWord.equals("seq-read") { sequential = true; writing = false }
    else if modeWord.equals("seq-write") { sequential = true; writing = true }
    else if modeWord.equals("rand-read") { sequential = false; writing = false }
    else if modeWord.equals("rand-write") { sequential = false; writing = true }
    else { usage() }

    guard let entry = info.firstDevice(.block) else {
        Console.writeLine("blkbench: no block device")
        exit(2)
    }
    var disk: VirtioBlock
    do throws(VirtioError) {
        disk = try VirtioBlock(entry, queueSize: 256)
    } catch {
        fail("cannot initialise the block device", error)
    }
    if writing && disk.readOnly {
        Console.writeLine("blkbench: FAIL the disk is read-only")
        exit(1)
    }

    let opBytes = sequential ? 1 << 20 : 4096
    let opSectors = UInt64(opBytes / VirtioBlock.sectorSize)
    let slots = disk.capacity / opSectors  // op-sized slots on the disk
    guard slots > 0 else {
        Console.writeLine("blkbench: FAIL the disk is smaller than one op")
        exit(1)
    }
    guard let buffer = Heap.allocate(byteCount: opBytes, alignment: 4096) else {
        Console.writeLine("blkbench: FAIL out of memory")
        exit(1)
    }
    if writing {
        var x: UInt64 = 0x243f_6a88_85a3_08d3
        for i in 0..<(opBytes / 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            buffer.storeBytes(of: x, toByteOffset: 8 * i, as: UInt64.self)
        }
    }

    // Each op is `piecesPerOp` requests of `pieceBytes`.
    let pieceBytes = min(opBytes, disk.maxRequestBytes & ~(VirtioBlock.sectorSize - 1))
    let piecesPerOp = (opBytes + pieceBytes - 1) / pieceBytes
    let descriptorsPerRequest = (pieceBytes + disk.segmentBytes - 1) / disk.segmentBytes + 2
    let maxDepth = max(1, Int(disk.queue.size) / descriptorsPerRequest)
    let inFlightLimit = Int(min(depth, UInt64(maxDepth)))
    let totalRequests = ops * UInt64(piecesPerOp)

    var random: UInt64 = 0x9e37_79b9_7f4a_7c15
    var opSector: UInt64 = 0
    var issued: UInt64 = 0
    var completed: UInt64 = 0
    var inFlight = 0

    let start = time()
    while completed < totalRequests {
        while issued < totalRequests && inFlight < inFlightLimit {
            let piece = Int(issued % UInt64(piecesPerOp))
            if piece == 0 {
                let op = issued / UInt64(piecesPerOp)
                if sequential {
                    opSector = (op % slots) * opSectors
                } else {
                    random ^= random << 13; random ^= random >> 7; random ^= random << 17
                    opSector = (random % slots) * opSectors
                }
            }
            let offset = piece * pieceBytes
            let length = min(pieceBytes, opBytes - offset)
            do throws(VirtioError) {
                _ = try disk.start(write: writing, sector: opSector + UInt64(offset / VirtioBlock.sectorSize),
                                   buffer: UnsafeMutableRawBufferPointer(start: buffer + offset, count: length))
            } catch {
                fail("submit", error)
            }
            issued += 1
            inFlight += 1
        }
        do throws(VirtioError) {
            let done = try disk.nextCompletion()
            if let error = done.error { fail(writing ? "write" : "read", error) }
        } catch {
            fail("wait", error)
        }
        completed += 1
        inFlight -= 1
    }
    if writing {
        do throws(VirtioError) { try disk.flush() } catch { fail("flush", error) }
    }
    let elapsed = time() &- start

    Console.line { out in
        out.append("blkbench: ")
        out.append(bytes: modeWord)
        out.append(" ")
        out.append(decimal: ops)
        out.append(" ops ")
        out.append(decimal: ops &* UInt64(opBytes))
        out.append(" bytes ")
        out.append(decimal: elapsed)
        out.append(" ns")
    }
    exit(0)
}
