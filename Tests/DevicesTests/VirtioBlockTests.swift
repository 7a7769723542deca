import TestSupport
import GuestABI
import Testing
import Virtio
@testable import Devices

/// The driver side of virtio-blk's request queue (TestSupport's `DriverQueue`): builds chains
/// from readable and writable parts, and reads back what the device wrote.
private struct BlockDriver {
    typealias Part = DriverQueue.Part

    /// What came back for one request.
    struct Outcome {
        var head: UInt16
        var usedLength: UInt32
        /// Every device-writable byte of the chain, in order, after the device ran.
        var writable: [UInt8]
        var status: UInt8? { usedLength > 0 ? writable.last : nil }
        var data: [UInt8] { Array(writable.dropLast()) }
    }

    static let sentinel = DriverQueue.sentinel
    var driver: DriverQueue
    var queue: SplitQueue
    var arena: BufferArena
    var ram: ArrayRAM { driver.ram }
    var usedSeen: UInt16 {
        get { driver.usedSeen }
        set { driver.usedSeen = newValue }
    }

    init(ramSize: Int = 0x10_0000, size: UInt16 = VirtioBlock.queueSize) {
        precondition(size <= 256, "the rings below are laid out for at most 256 entries")
        driver = DriverQueue(ram: ArrayRAM(base: 0, size: ramSize), size: size, descriptorTable: 0x1000, availRing: 0x2000, usedRing: 0x3000)
        queue = driver.splitQueue()
        arena = BufferArena(start: 0x4000, end: UInt64(ramSize))
    }

    func setDescriptor(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) {
        driver.setDescriptor(i, address: address, length: length, flags: flags, next: next)
    }

    mutating func publish(_ head: UInt16) { driver.publish(head) }

    mutating func allocate(_ length: Int) -> UInt64 { arena.allocate(length) }

    /// Lays out a chain and publishes it. Returns its head and buffers.
    mutating func submit(_ parts: [Part]) -> (head: UInt16, buffers: [(buffer: GuestBuffer, writable: Bool)]) {
        driver.submit(parts, arena: &arena)
    }

    var usedIndex: UInt16 { driver.usedIndex }

    func usedElement(_ i: UInt16) -> (id: UInt32, length: UInt32) { driver.usedElement(i) }

    /// Submits one chain, lets the device serve the queue, and returns what came back.
    mutating func send(_ device: VirtioBlock, _ parts: [Part]) throws -> Outcome {
        let (head, buffers) = submit(parts)
        _ = try device.process(queue: 0, &queue, ram: ram)
        #expect(usedIndex == usedSeen &+ 1, "the device used exactly one chain")
        let used = usedElement(usedSeen)
        usedSeen &+= 1
        #expect(used.id == UInt32(head))
        var writable: [UInt8] = []
        for (b, w) in buffers where w { writable += ram.copyOut(at: b.address, count: Int(b.length)) ?? [] }
        #expect(used.length <= UInt32(writable.count), "used length within the writable bytes")
        return Outcome(head: head, usedLength: used.length, writable: writable)
    }

    /// The usual request shape: header (+ data) in one readable buffer, a data buffer of
    /// `inBytes` writable bytes if any, and a separate status byte.
    mutating func request(_ device: VirtioBlock, type: UInt32, sector: UInt64 = 0, out: [UInt8] = [],
                          inBytes: Int = 0) throws -> Outcome {
        var parts: [Part] = [.readable(blockHeader(type, sector) + out)]
        if inBytes > 0 { parts.append(.writable(inBytes)) }
        parts.append(.writable(1))
        return try send(device, parts)
    }
}

private func blockHeader(_ type: UInt32, _ sector: UInt64, reserved: UInt32 = 0) -> [UInt8] {
    func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    return le(UInt64(type), 4) + le(UInt64(reserved), 4) + le(sector, 8)
}

private func pattern(_ count: Int, seed: UInt8 = 1) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed) &* 13 &+ ($0 >> 9)) }
}

private typealias T = VirtioBlock.RequestType
private let OK: UInt8 = 0, IOERR: UInt8 = 1, UNSUPP: UInt8 = 2

private func disk(_ sectors: Int = 64, fill: UInt8 = 0x11, readOnly: Bool = false, id: String = "bulkhead-test")
    -> (VirtioBlock, MemoryBlockBackend) {
    let backend = MemoryBlockBackend(sectors: sectors, fill: fill)
    return (VirtioBlock(backend: backend, readOnly: readOnly, id: id), backend)
}

@Suite struct VirtioBlockTests {
    // MARK: configuration

    @Test func configurationLayout() {
        let (blk, _) = disk(1000)
        let c = blk.config
        func le(_ o: Int, _ n: Int) -> UInt64 { (0..<n).reduce(0) { $0 | UInt64(c[o + $1]) << (8 * UInt64($1)) } }
        #expect(c.count == 96)
        #expect(le(0, 8) == 1000)                     // capacity
        #expect(le(8, 4) == 32 * 1024)                // size_max
        #expect(le(12, 4) == 126)                     // seg_max
        #expect(le(16, 4) == 0)                       // geometry
        #expect(le(20, 4) == 512)                     // blk_size
        #expect(le(24, 8) == 0)                       // topology
        #expect(c[32] == 0 && c[33] == 0 && le(34, 2) == 0) // writeback, unused0, num_queues
        #expect(le(36, 4) == 1 << 22)                 // max_discard_sectors
        #expect(le(40, 4) == 32)                      // max_discard_seg
        #expect(le(44, 4) == 8)                       // discard_sector_alignment
        #expect(le(48, 4) == 1 << 14)                 // max_write_zeroes_sectors
        #expect(le(52, 4) == 8)                       // max_write_zeroes_seg
        #expect(c[56] == 0)                           // write_zeroes_may_unmap
        #expect(c[57...].allSatisfy { $0 == 0 })      // unused1, secure erase, zoned
        // The budget a conforming driver can use fits the request cap.
        #expect(Int(VirtioBlock.segMax) * Int(VirtioBlock.sizeMax) <= VirtioBlock.maxRequestBytes)
        #expect(Int(VirtioBlock.segMax) + 2 <= Int(VirtioBlock.queueSize))
        #expect(blk.queueSizes == [256])
        #expect(blk.deviceType == .block)
    }

    @Test func features() {
        let F = VirtioBlock.Feature.self
        let (rw, _) = disk()
        #expect(rw.features == F.sizeMax | F.segMax | F.blockSize | F.flush | F.discard | F.writeZeroes)
        let (ro, _) = disk(readOnly: true)
        #expect(ro.features == F.sizeMax | F.segMax | F.blockSize | F.flush | F.readOnly)
        // Through the transport: the device ID and the offered bits.
        let dev = VirtioMMIODevice(model: ro)
        #expect(dev.read(offset: 0x008, size: 4) == 2)
        #expect(dev.read(offset: 0x010, size: 4) & UInt64(F.readOnly) != 0)
        #expect(dev.read(offset: 0x100, size: 8) == 64)
    }

    // MARK: reads and writes

    @Test func writeThenRead() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        let data = pattern(1024)
        // Header and data in separate readable buffers, data itself split unevenly.
        let w = try d.send(blk, [.readable(blockHeader(T.out, 3)), .readable(Array(data[0..<100])),
                                 .readable(Array(data[100...])), .writable(1)])
        #expect(w.status == OK && w.usedLength == 1)
        #expect(Array(backend.bytes[1536..<2560]) == data)
        #expect(backend.bytes[1535] == 0x11 && backend.bytes[2560] == 0x11)

        // Data buffer and status buffer apart.
        let r = try d.request(blk, type: T.in, sector: 3, inBytes: 1024)
        #expect(r.status == OK && r.usedLength == 1025 && r.data == data)

        // Data and status in one writable buffer, split across three.
        let r2 = try d.send(blk, [.readable(blockHeader(T.in, 2)), .writable(300), .writable(600), .writable(1024 + 512 - 900 + 1)])
        #expect(r2.status == OK && r2.usedLength == 1537)
        #expect(r2.data == [UInt8](repeating: 0x11, count: 512) + data)
        #expect(blk.counters.reads == 2 && blk.counters.writes == 1)
        #expect(blk.counters.bytesRead == 2560 && blk.counters.bytesWritten == 1024)
        #expect(blk.counters.totalErrors == 0)
    }

    @Test func headerMaySpanBuffers() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        let h = blockHeader(T.out, 5)
        let data = pattern(512, seed: 9)
        let o = try d.send(blk, [.readable(Array(h[0..<3])), .readable(Array(h[3..<11])),
                                 .readable(Array(h[11...]) + Array(data[0..<7])), .readable(Array(data[7...])), .writable(1)])
        #expect(o.status == OK)
        #expect(Array(backend.bytes[2560..<3072]) == data)
    }

    @Test func zeroLengthTransfersTouchNothing() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        #expect(try d.request(blk, type: T.out, sector: 64).status == OK)   // at the end: empty range
        #expect(try d.request(blk, type: T.in, sector: 64).status == OK)
        #expect(try d.request(blk, type: T.in, sector: 65).status == IOERR)
        #expect(backend.calls.isEmpty)
    }

    @Test func exactlyTheCapIsAccepted() throws {
        let sectors = VirtioBlock.maxRequestBytes / 512 + 8
        let (blk, backend) = disk(sectors)
        var d = BlockDriver(ramSize: 0x90_0000)
        let r = try d.request(blk, type: T.in, sector: 8, inBytes: VirtioBlock.maxRequestBytes)
        #expect(r.status == OK && r.usedLength == UInt32(VirtioBlock.maxRequestBytes + 1))
        let o = try d.request(blk, type: T.out, sector: 0, out: [UInt8](repeating: 7, count: VirtioBlock.maxRequestBytes))
        #expect(o.status == OK)
        #expect(backend.bytes[VirtioBlock.maxRequestBytes - 1] == 7 && backend.bytes[VirtioBlock.maxRequestBytes] == 0x11)
    }

    // MARK: refusals

    @Test func shortHeader() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        let o = try d.send(blk, [.readable(Array(blockHeader(T.in, 0)[0..<15])), .writable(513)])
        #expect(o.status == IOERR && o.usedLength == 1)
        #expect(o.data.allSatisfy { $0 == BlockDriver.sentinel }, "no data written")
        #expect(blk.counters.errors[.shortHeader] == 1)
        // No readable bytes at all.
        #expect(try d.send(blk, [.writable(1)]).status == IOERR)
        #expect(blk.counters.errors[.shortHeader] == 2)
        #expect(backend.calls.isEmpty)
    }

    @Test func noStatusByte() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        let o = try d.send(blk, [.readable(blockHeader(T.out, 0) + pattern(512))])
        #expect(o.usedLength == 0)
        #expect(try d.send(blk, [.readable(blockHeader(T.flush, 0))]).usedLength == 0)
        #expect(try d.send(blk, [.readable([1, 2])]).usedLength == 0)
        #expect(blk.counters.errors[.noStatusByte] == 3)
        #expect(backend.calls.isEmpty)
        #expect(backend.bytes.allSatisfy { $0 == 0x11 })
    }

    @Test func unalignedDataLength() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        #expect(try d.request(blk, type: T.out, sector: 0, out: pattern(513)).status == IOERR)
        #expect(try d.request(blk, type: T.out, sector: 0, out: pattern(100)).status == IOERR)
        let r = try d.request(blk, type: T.in, sector: 0, inBytes: 511)
        #expect(r.status == IOERR && r.usedLength == 1)
        #expect(r.data.allSatisfy { $0 == BlockDriver.sentinel })
        #expect(blk.counters.errors[.unalignedLength] == 3)
        #expect(backend.calls.isEmpty)
    }

    @Test func rangesPastTheEnd() throws {
        let (blk, backend) = disk(64)
        var d = BlockDriver()
        #expect(try d.request(blk, type: T.out, sector: 63, out: pattern(1024)).status == IOERR)
        #expect(try d.request(blk, type: T.in, sector: 63, inBytes: 1024).status == IOERR)
        #expect(try d.request(blk, type: T.in, sector: 64, inBytes: 512).status == IOERR)
        // sector + count overflows 64 bits: must not wrap around to the start of the disk.
        #expect(try d.request(blk, type: T.out, sector: UInt64.max, out: pattern(512)).status == IOERR)
        #expect(try d.request(blk, type: T.out, sector: UInt64.max - 1, out: pattern(1536)).status == IOERR)
        #expect(try d.request(blk, type: T.in, sector: UInt64.max, inBytes: 512).status == IOERR)
        #expect(blk.counters.errors[.outOfRange] == 6)
        // The last sector itself is fine.
        #expect(try d.request(blk, type: T.out, sector: 63, out: pattern(512)).status == OK)
        #expect(backend.calls[.read] == nil && backend.calls[.write] == 1)
        #expect(backend.refusedCalls == 0)
    }

    @Test func oversizeRequests() throws {
        let (blk, backend) = disk(VirtioBlock.maxRequestBytes / 512 + 64)
        var d = BlockDriver(ramSize: 0x90_0000)
        let r = try d.request(blk, type: T.in, sector: 0, inBytes: VirtioBlock.maxRequestBytes + 512)
        #expect(r.status == IOERR && r.usedLength == 1)
        let o = try d.request(blk, type: T.out, sector: 0, out: [UInt8](repeating: 1, count: VirtioBlock.maxRequestBytes + 512))
        #expect(o.status == IOERR)
        #expect(blk.counters.errors[.tooLarge] == 2)
        #expect(backend.calls.isEmpty)
    }

    @Test func readOnlyDisk() throws {
        let (blk, backend) = disk(readOnly: true)
        var d = BlockDriver()
        #expect(try d.request(blk, type: T.out, sector: 0, out: pattern(512)).status == IOERR)
        let seg = BlockSegment(sector: 0, sectors: 8).bytes
        #expect(try d.request(blk, type: T.discard, out: seg).status == IOERR)
        #expect(try d.request(blk, type: T.writeZeroes, out: seg).status == IOERR)
        #expect(blk.counters.errors[.readOnly] == 3)
        #expect(backend.calls[.write] == nil && backend.calls[.discard] == nil && backend.calls[.writeZeroes] == nil)
        #expect(backend.bytes.allSatisfy { $0 == 0x11 })
        // Reads, flushes and GET_ID still work.
        #expect(try d.request(blk, type: T.in, sector: 1, inBytes: 512).data == [UInt8](repeating: 0x11, count: 512))
        #expect(try d.request(blk, type: T.flush).status == OK)
        #expect(try d.request(blk, type: T.getID, inBytes: 20).status == OK)
    }

    @Test func unknownTypes() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        // SCSI (2, 3), legacy FLUSH_OUT (5), GET_LIFETIME (10), SECURE_ERASE (14), zone ops, BARRIER.
        for t: UInt32 in [2, 3, 5, 6, 7, 9, 10, 12, 14, 15, 16, 26, 0x8000_0000, 0x8000_0001, .max] {
            let o = try d.request(blk, type: t, sector: 0, out: pattern(512), inBytes: 512)
            #expect(o.status == UNSUPP && o.usedLength == 1, "type \(t)")
        }
        #expect(blk.counters.errors[.unsupportedType] == 15)
        #expect(backend.calls.isEmpty)
    }

    @Test func brokenChainsComeBackEmpty() throws {
        let (blk, _) = disk()
        var d = BlockDriver()
        d.setDescriptor(0, address: 0x4000, length: 16, flags: Virtio.DescriptorFlag.next, next: 0) // self-loop
        d.publish(0)
        _ = try blk.process(queue: 0, &d.queue, ram: d.ram)
        #expect(d.usedIndex == 1 && d.usedElement(0).id == 0 && d.usedElement(0).length == 0)
        #expect(blk.counters.errors[.brokenChain] == 1 && blk.counters.requests == 1)
        // Another queue index is not ours.
        #expect(try blk.process(queue: 1, &d.queue, ram: d.ram) == false)
    }

    @Test func backendFailuresAreIOErrors() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        backend.failing = Set(BlockOperation.allCases)
        let r = try d.request(blk, type: T.in, sector: 0, inBytes: 512)
        #expect(r.status == IOERR && r.usedLength == 1 && r.data.allSatisfy { $0 == BlockDriver.sentinel })
        #expect(try d.request(blk, type: T.out, sector: 0, out: pattern(512)).status == IOERR)
        #expect(try d.request(blk, type: T.flush).status == IOERR)
        #expect(try d.request(blk, type: T.discard, out: BlockSegment(sector: 0, sectors: 1).bytes).status == IOERR)
        #expect(try d.request(blk, type: T.writeZeroes, out: BlockSegment(sector: 0, sectors: 1).bytes).status == IOERR)
        #expect(blk.counters.errors[.backend] == 5)
        #expect(blk.counters.lastError == .backend(.writeZeroes))
        backend.failing = []
        #expect(try d.request(blk, type: T.in, sector: 0, inBytes: 512).status == OK)
    }

    // MARK: flush

    @Test func flushCompletesOnlyAfterTheBackendFlushed() throws {
        let (blk, backend) = disk()
        var d = BlockDriver()
        #expect(try d.request(blk, type: T.out, sector: 2, out: pattern(512)).status == OK)
        #expect(backend.durable != backend.bytes, "a completed write is not yet durable")

        // At the moment the back end flushes, the driver must not yet see the flush completed.
        var usedAtFlush: [UInt16] = []
        let ram = d.ram, usedRing = d.queue.usedRing
        backend.observer = { op, _, _ in
            if op == .flush { usedAtFlush.append(ram.u16(at: usedRing + 2) ?? 0xdead) }
        }
        let before = d.usedIndex
        let f = try d.request(blk, type: T.flush)
        #expect(f.status == OK && f.usedLength == 1)
        #expect(usedAtFlush == [before])
        #expect(d.usedIndex == before &+ 1)
        #expect(backend.durable == backend.bytes)
        #expect(blk.counters.flushes == 1)
    }

    @Test func flushOrderingInABatch() throws {
        // Write, flush, write published together: the flush sees the first write and completes
        // before the second is used.
        let (blk, backend) = disk()
        var d = BlockDriver()
        var log: [String] = []
        let ram = d.ram, usedRing = d.queue.usedRing
        backend.observer = { op, sector, _ in log.append("\(op)@\(sector) used=\(ram.u16(at: usedRing + 2) ?? 0)") }
        _ = d.submit([.readable(blockHeader(T.out, 1) + pattern(512)), .writable(1)])
        _ = d.submit([.readable(blockHeader(T.flush, 0)), .writable(1)])
        _ = d.submit([.readable(blockHeader(T.out, 2) + pattern(512)), .writable(1)])
        _ = try blk.process(queue: 0, &d.queue, ram: d.ram)
        #expect(log == ["write@1 used=0", "flush@0 used=1", "write@2 used=2"])
        #expect(d.usedIndex == 3)
        #expect(Array(backend.durable[512..<1024]) == pattern(512))
        #expect(backend.durable[1024] == 0x11, "the write after the flush is not yet durable")
    }

    // MARK: GET_ID

    @Test func getID() throws {
        var d = BlockDriver()
        let (blk, _) = disk(id: "bulkhead-disk-0")
        let o = try d.request(blk, type: T.getID, inBytes: 20)
        #expect(o.status == OK && o.usedLength == 21)
        #expect(o.data == Array("bulkhead-disk-0".utf8) + [0, 0, 0, 0, 0])

        // Exactly 20 bytes: no NUL. Longer: the first 20. Non-ASCII: replaced.
        let (b20, _) = disk(id: "ABCDEFGHIJKLMNOPQRST")
        #expect(try d.request(b20, type: T.getID, inBytes: 20).data == Array("ABCDEFGHIJKLMNOPQRST".utf8))
        let (long, _) = disk(id: "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        #expect(long.idBytes == Array("ABCDEFGHIJKLMNOPQRST".utf8))
        let (odd, _) = disk(id: "é\n")
        #expect(odd.idBytes == Array("___".utf8) + [UInt8](repeating: 0, count: 17))

        // A larger buffer: 20 bytes written, the rest untouched, status last.
        let big = try d.request(blk, type: T.getID, inBytes: 64)
        #expect(big.status == OK && big.usedLength == 21)
        #expect(Array(big.data[0..<20]) == blk.idBytes)
        #expect(big.data[20...].allSatisfy { $0 == BlockDriver.sentinel })

        // Too small a buffer: IOERR, nothing written but the status.
        let small = try d.request(blk, type: T.getID, inBytes: 19)
        #expect(small.status == IOERR && small.usedLength == 1)
        #expect(small.data.allSatisfy { $0 == BlockDriver.sentinel })
        #expect(try d.request(blk, type: T.getID).status == IOERR)
        #expect(blk.counters.errors[.idBufferTooSmall] == 2 && blk.counters.getIDs == 2)
    }

    // MARK: discard and write zeroes

    @Test func discardAndWriteZeroes() throws {
        let (blk, backend) = disk(64, fill: 0x55)
        var d = BlockDriver()
        let segs = BlockSegment(sector: 1, sectors: 2).bytes + BlockSegment(sector: 10, sectors: 1).bytes
        #expect(try d.request(blk, type: T.discard, out: segs).status == OK)
        #expect(backend.bytes[512..<1536].allSatisfy { $0 == 0 } && backend.bytes[5120..<5632].allSatisfy { $0 == 0 })
        #expect(backend.bytes[0..<512].allSatisfy { $0 == 0x55 } && backend.bytes[1536..<5120].allSatisfy { $0 == 0x55 })
        #expect(blk.counters.sectorsDiscarded == 3 && blk.counters.discards == 1)

        // Write zeroes with and without UNMAP; a zero-sector segment is a no-op.
        let wz = BlockSegment(sector: 20, sectors: 4, flags: VirtioBlock.segmentFlagUnmap).bytes
            + BlockSegment(sector: 30, sectors: 1).bytes + BlockSegment(sector: 63, sectors: 0).bytes
        // Header, then segments split across buffers.
        let o = try d.send(blk, [.readable(blockHeader(T.writeZeroes, 0) + Array(wz[0..<5])), .readable(Array(wz[5...])), .writable(1)])
        #expect(o.status == OK && o.usedLength == 1)
        #expect(backend.bytes[10240..<12288].allSatisfy { $0 == 0 } && backend.bytes[15360..<15872].allSatisfy { $0 == 0 })
        #expect(backend.bytes[12288..<15360].allSatisfy { $0 == 0x55 })
        #expect(backend.calls[.writeZeroes] == 2)
        #expect(blk.counters.sectorsZeroed == 5)
    }

    @Test func badSegments() throws {
        let (blk, backend) = disk(64, fill: 0x55)
        var d = BlockDriver()
        let good = BlockSegment(sector: 0, sectors: 1).bytes
        func status(_ type: UInt32, _ data: [UInt8]) throws -> UInt8? { try d.request(blk, type: type, out: data).status }
        for type in [T.discard, T.writeZeroes] {
            #expect(try status(type, []) == IOERR)                                       // no segment
            #expect(try status(type, good + [0]) == IOERR)                               // 17 bytes
            #expect(try status(type, Array(good[0..<8])) == IOERR)                       // half a segment
            #expect(try status(type, good + BlockSegment(sector: 60, sectors: 5).bytes) == IOERR)  // past the end
            #expect(try status(type, BlockSegment(sector: .max, sectors: 2).bytes) == IOERR)       // overflow
            #expect(try status(type, good + BlockSegment(sector: 0, sectors: 1, flags: 2).bytes) == UNSUPP)
            #expect(try status(type, BlockSegment(sector: 0, sectors: 1, flags: 0x8000_0000).bytes) == UNSUPP)
            // Reserved flags are UNSUPP even when another segment is also out of range.
            #expect(try status(type, BlockSegment(sector: 99, sectors: 1).bytes + BlockSegment(sector: 0, sectors: 1, flags: 4).bytes) == UNSUPP)
        }
        // UNMAP is for write zeroes only (§5.2.6.2).
        #expect(try status(T.discard, BlockSegment(sector: 0, sectors: 1, flags: 1).bytes) == UNSUPP)
        // Too many segments, too long a segment.
        let many = (0..<33).flatMap { BlockSegment(sector: UInt64($0), sectors: 1).bytes }
        #expect(try status(T.discard, many) == IOERR)
        #expect(try status(T.discard, Array(many[0..<(32 * 16)])) == OK)
        #expect(try status(T.writeZeroes, Array(many[0..<(9 * 16)])) == IOERR)
        let bigDisk = MemoryBlockBackend(sectors: Int(VirtioBlock.maxWriteZeroesSectors) + 8)
        let big = VirtioBlock(backend: bigDisk, readOnly: false, id: "")
        #expect(try d.request(big, type: T.writeZeroes, out: BlockSegment(sector: 0, sectors: VirtioBlock.maxWriteZeroesSectors + 1).bytes).status == IOERR)
        #expect(try d.request(big, type: T.writeZeroes, out: BlockSegment(sector: 0, sectors: VirtioBlock.maxWriteZeroesSectors).bytes).status == OK)
        #expect(big.counters.errors[.segmentTooLarge] == 1)
        // Only the one good 32-segment discard touched the disk (sectors 0..<32); every refused
        // request changed nothing, even where its first segment was valid.
        #expect(backend.calls[.discard] == 32 && backend.calls[.writeZeroes] == nil)
        #expect(backend.bytes[0..<(32 * 512)].allSatisfy { $0 == 0 })
        #expect(backend.bytes[(32 * 512)...].allSatisfy { $0 == 0x55 })
        #expect(blk.counters.errors[.unsupportedFlags] == 7)
        #expect(blk.counters.errors[.badSegmentData] == 6)
        #expect(blk.counters.errors[.tooManySegments] == 2)
        #expect(blk.counters.errors[.outOfRange] == 4)
    }

    // MARK: hostile drivers

    @Test(arguments: [false, true]) func randomHostileRequests(readOnly: Bool) throws {
        var rng = SplitMix64(seed: readOnly ? 7 : 42)
        let sectors = 128
        let backend = MemoryBlockBackend(sectors: sectors, fill: 0xa5)
        let blk = VirtioBlock(backend: backend, readOnly: readOnly, id: "fuzz")
        var d = BlockDriver(ramSize: 0x8_0000)
        var model = backend.bytes
        let capacity = UInt64(sectors)
        let types: [UInt32] = [T.in, T.in, T.out, T.out, T.out, T.flush, T.getID, T.discard, T.discard,
                               T.writeZeroes, T.writeZeroes, 2, 14, 0x8000_0000]

        func randomSector() -> UInt64 {
            switch rng.next() % 6 {
            case 0: return UInt64.max - rng.next() % 4
            case 1: return capacity - rng.next() % 4
            case 2: return rng.next()
            default: return rng.next() % capacity
            }
        }
        func randomLength() -> Int {
            switch rng.next() % 5 {
            case 0: return Int(rng.next() % 2000)                  // often unaligned
            case 1: return 0
            default: return 512 * Int(rng.next() % 9)
            }
        }
        /// Splits `bytes` into 1-3 buffers.
        func split(_ bytes: [UInt8]) -> [BlockDriver.Part] {
            guard bytes.count > 1, rng.next() % 2 == 0 else { return [.readable(bytes)] }
            let cut = Int(rng.next() % UInt64(bytes.count))
            return [.readable(Array(bytes[..<cut])), .readable(Array(bytes[cut...]))]
        }

        for _ in 0..<3000 {
            let type = types[Int(rng.next() % UInt64(types.count))]
            let sector = randomSector()
            var readable: [UInt8] = blockHeader(type, sector, reserved: UInt32(truncatingIfNeeded: rng.next()))
            var writeLength = 0
            var outData: [UInt8] = []
            var segments: [BlockSegment] = []
            switch type {
            case T.out:
                outData = pattern(randomLength(), seed: UInt8(truncatingIfNeeded: rng.next()))
                readable += outData
            case T.discard, T.writeZeroes:
                for _ in 0..<Int(rng.next() % 4) {
                    let s = BlockSegment(sector: randomSector(), sectors: UInt32(rng.next() % 40),
                                         flags: rng.next() % 4 == 0 ? UInt32(truncatingIfNeeded: rng.next()) & 3 : 0)
                    segments.append(s)
                    readable += s.bytes
                }
                if rng.next() % 10 == 0 { readable += [0] }
            default:
                writeLength = randomLength()
            }
            if rng.next() % 20 == 0 { readable = Array(readable.prefix(Int(rng.next() % 16))) }  // short header
            var parts = split(readable)
            if writeLength > 0 { parts.append(.writable(writeLength)) }
            let statusPart = rng.next() % 15 != 0                                                 // sometimes none
            if statusPart { parts.append(.writable(1)) }
            let hasStatus = writeLength > 0 || statusPart
            // The device's IN data: every writable byte but the last.
            let inLength = hasStatus ? writeLength + (statusPart ? 1 : 0) - 1 : 0

            let o = try d.send(blk, parts)
            if !hasStatus {
                #expect(o.usedLength == 0)
            } else {
                #expect(o.usedLength >= 1)
                #expect([OK, IOERR, UNSUPP].contains(o.status ?? 0xff))
            }

            // Independent oracle for the disk: only an OK write/discard/write-zeroes changes it,
            // and only inside its ranges.
            if o.status == OK && readable.count >= 16 {
                #expect(!readOnly || ![T.out, T.discard, T.writeZeroes].contains(type), "a read-only disk accepted type \(type)")
                switch type {
                case T.out:
                    #expect(outData.count % 512 == 0)
                    let start = Int(sector) * 512
                    #expect(sector <= capacity && start + outData.count <= model.count)
                    model.replaceSubrange(start..<start + outData.count, with: outData)
                case T.discard, T.writeZeroes:
                    for s in segments {
                        #expect(s.sector <= capacity && s.sector + UInt64(s.sectors) <= capacity)
                        let start = Int(s.sector) * 512
                        model.replaceSubrange(start..<start + Int(s.sectors) * 512, with: repeatElement(0, count: Int(s.sectors) * 512))
                    }
                case T.in:
                    let end = sector.addingReportingOverflow(UInt64(inLength / 512))
                    #expect(inLength % 512 == 0 && !end.overflow && end.partialValue <= capacity)
                    if inLength > 0 {
                        let start = Int(sector) * 512
                        #expect(o.data == Array(model[start..<start + inLength]))
                    }
                default:
                    #expect([T.flush, T.getID].contains(type))
                }
            }
            // IN/OUT status against an independent check of the rules.
            if hasStatus && readable.count >= 16 && (type == T.in || type == T.out) {
                let length = type == T.in ? inLength : outData.count
                let (end, overflow) = sector.addingReportingOverflow(UInt64(length / 512))
                let valid = length % 512 == 0 && !overflow && end <= capacity && !(readOnly && type == T.out)
                #expect((o.status == OK) == valid, "type \(type) sector \(sector) length \(length)")
            }
            #expect(backend.bytes == model, "the disk changed outside an accepted request's ranges")
        }
        #expect(backend.refusedCalls == 0, "the device never asked the back end for a range outside the disk")
        if readOnly {
            #expect(backend.calls[.write] == nil && backend.calls[.discard] == nil && backend.calls[.writeZeroes] == nil)
        }
        #expect(blk.counters.requests == 3000)
        // The loop reached the accepting paths, not only the refusals.
        #expect(blk.counters.reads > 100 && blk.counters.flushes > 50 && blk.counters.getIDs > 50)
        if !readOnly {
            #expect(blk.counters.writes > 100 && blk.counters.discards > 20 && blk.counters.writeZeroes > 20)
        }
    }
}


/// The status byte's enum needs literal raw values; the guest SDK's come from GuestABI.
@Test func blockStatusBytesAgreeWithTheGuestABI() {
    #expect(BlockStatus.ok.rawValue == BlockABI.Status.ok)
    #expect(BlockStatus.ioError.rawValue == BlockABI.Status.ioError)
    #expect(BlockStatus.unsupported.rawValue == BlockABI.Status.unsupported)
}
