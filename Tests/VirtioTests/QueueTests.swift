import TestSupport
import Testing
@testable import Virtio

/// A driver (TestSupport's `DriverQueue`) and the device's view of the same rings.
struct MockDriver {
    var driver: DriverQueue
    var queue: SplitQueue
    var ram: ArrayRAM { driver.ram }
    var availIdx: UInt16 { driver.availIndex }
    let dataBase: UInt64 = 0x8000

    init(size: UInt16 = 8, indirect: Bool = false, eventIndex: Bool = false) {
        driver = DriverQueue(ram: ArrayRAM(base: 0, size: 0x2_0000), size: size, descriptorTable: 0x1000, availRing: 0x2000, usedRing: 0x3000)
        queue = driver.splitQueue(indirect: indirect, eventIndex: eventIndex)
    }

    func setDescriptor(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0, table: UInt64? = nil) {
        driver.setDescriptor(i, address: address, length: length, flags: flags, next: next, table: table)
    }

    mutating func publish(_ head: UInt16) { driver.publish(head) }

    func u16(_ a: UInt64) -> UInt16 { ram.u16(at: a) ?? 0xdead }
    func u32(_ a: UInt64) -> UInt32 { UInt32(u16(a)) | UInt32(u16(a + 2)) << 16 }
}

func chain(_ d: inout MockDriver) throws -> DescriptorChain? {
    guard let a = try d.queue.pop(from: d.ram) else { return nil }
    return try a.result.get()
}

func failure(_ d: inout MockDriver) throws -> VirtqueueError? {
    guard let a = try d.queue.pop(from: d.ram) else { return nil }
    if case .failure(let e) = a.result { return e }
    return nil
}

@Suite struct QueueTests {
    @Test func emptyQueuePopsNothing() throws {
        var d = MockDriver()
        #expect(try d.queue.pop(from: d.ram) == nil)
    }

    @Test func readableThenWritableChain() throws {
        var d = MockDriver()
        _ = d.ram.copyIn(Array("request!".utf8), at: 0x8000)
        d.setDescriptor(0, address: 0x8000, length: 8, flags: Virtio.DescriptorFlag.next, next: 3)
        d.setDescriptor(3, address: 0x9000, length: 16, flags: Virtio.DescriptorFlag.write | Virtio.DescriptorFlag.next, next: 5)
        d.setDescriptor(5, address: 0xa000, length: 4, flags: Virtio.DescriptorFlag.write)
        d.publish(0)
        let c = try #require(try chain(&d))
        #expect(c.head == 0)
        #expect(c.readable == [GuestBuffer(address: 0x8000, length: 8)])
        #expect(c.writable.count == 2 && c.writableLength == 20)
        #expect(try c.gather(from: d.ram) == Array("request!".utf8))
        #expect(try c.gather(from: d.ram, limit: 3) == Array("req".utf8))
        #expect(try c.scatter([UInt8](repeating: 0xab, count: 18), to: d.ram) == 18)
        #expect(d.ram.copyOut(at: 0xa000, count: 3) == [0xab, 0xab, 0])
        #expect(try c.scatter([1, 2], to: d.ram, skipping: 16) == 2)
        #expect(d.ram.copyOut(at: 0xa000, count: 2) == [1, 2])
        try d.queue.push(head: 0, written: 20, to: d.ram)
        #expect(d.u16(0x3002) == 1)       // used.idx
        #expect(d.u32(0x3004) == 0)       // used.ring[0].id
        #expect(d.u32(0x3008) == 20)      // used.ring[0].len
        #expect(try d.queue.pop(from: d.ram) == nil)
    }

    @Test func loopingChainEndsByItsTimeToLive() throws {
        var d = MockDriver()
        d.setDescriptor(0, address: 0x8000, length: 1, flags: Virtio.DescriptorFlag.next, next: 1)
        d.setDescriptor(1, address: 0x8000, length: 1, flags: Virtio.DescriptorFlag.next, next: 0)
        d.publish(0)
        #expect(try failure(&d) == .chainTooLong(limit: 8))
        // A self-loop too.
        d.setDescriptor(2, address: 0x8000, length: 1, flags: Virtio.DescriptorFlag.next, next: 2)
        d.publish(2)
        #expect(try failure(&d) == .chainTooLong(limit: 8))
    }

    @Test func indicesOutOfRange() throws {
        var d = MockDriver()
        d.publish(8)
        #expect(try failure(&d) == .headOutOfRange(8))
        d.setDescriptor(0, address: 0x8000, length: 1, flags: Virtio.DescriptorFlag.next, next: 9)
        d.publish(0)
        #expect(try failure(&d) == .nextOutOfRange(9))
        // The queue goes on after broken chains.
        d.setDescriptor(1, address: 0x8000, length: 1, flags: 0)
        d.publish(1)
        #expect(try chain(&d)?.head == 1)
    }

    @Test func buffersMustBeGuestRAM() throws {
        var d = MockDriver()
        d.setDescriptor(0, address: 0x1_fff0, length: 0x20, flags: 0)
        d.publish(0)
        #expect(try failure(&d) == .memory(address: 0x1_fff0, length: 0x20))
        d.setDescriptor(1, address: UInt64.max - 4, length: 16, flags: 0)
        d.publish(1)
        #expect(try failure(&d) == .memory(address: UInt64.max - 4, length: 16))
    }

    @Test func readableAfterWritableIsRefused() throws {
        var d = MockDriver()
        d.setDescriptor(0, address: 0x8000, length: 4, flags: Virtio.DescriptorFlag.write | Virtio.DescriptorFlag.next, next: 1)
        d.setDescriptor(1, address: 0x9000, length: 4, flags: 0)
        d.publish(0)
        #expect(try failure(&d) == .readableAfterWritable)
    }

    @Test func indirectTables() throws {
        var d = MockDriver(indirect: true)
        let table: UInt64 = 0x6000
        d.setDescriptor(0, address: 0x8000, length: 4, flags: Virtio.DescriptorFlag.next, next: 1, table: table)
        d.setDescriptor(1, address: 0x9000, length: 8, flags: Virtio.DescriptorFlag.write, table: table)
        // A direct descriptor, then one naming the indirect table (WRITE on it is ignored).
        d.setDescriptor(2, address: 0x7000, length: 2, flags: Virtio.DescriptorFlag.next, next: 3)
        d.setDescriptor(3, address: table, length: 32, flags: Virtio.DescriptorFlag.indirect | Virtio.DescriptorFlag.write)
        d.publish(2)
        let c = try #require(try chain(&d))
        #expect(c.readable.map(\.address) == [0x7000, 0x8000])
        #expect(c.writable.map(\.address) == [0x9000])

        var plain = MockDriver(indirect: false)
        plain.setDescriptor(0, address: table, length: 32, flags: Virtio.DescriptorFlag.indirect)
        plain.publish(0)
        #expect(try failure(&plain) == .indirectNotNegotiated)
    }

    @Test func hostileIndirectTables() throws {
        var d = MockDriver(indirect: true)
        let table: UInt64 = 0x6000
        d.setDescriptor(0, address: table, length: 32, flags: Virtio.DescriptorFlag.indirect | Virtio.DescriptorFlag.next, next: 1)
        d.publish(0)
        #expect(try failure(&d) == .indirectWithNext)
        for bad: UInt32 in [0, 24, 16 * 40_000] {
            d.setDescriptor(1, address: table, length: bad, flags: Virtio.DescriptorFlag.indirect)
            d.publish(1)
            #expect(try failure(&d) == .badIndirectTable(length: bad))
        }
        d.setDescriptor(2, address: 0x1_ff00, length: 0x200, flags: Virtio.DescriptorFlag.indirect)
        d.publish(2)
        #expect(try failure(&d) == .memory(address: 0x1_ff00, length: 0x200))
        // An indirect descriptor inside the table.
        d.setDescriptor(0, address: table, length: 16, flags: Virtio.DescriptorFlag.indirect, table: table)
        d.setDescriptor(3, address: table, length: 16, flags: Virtio.DescriptorFlag.indirect)
        d.publish(3)
        #expect(try failure(&d) == .nestedIndirect)
        // A loop inside the table ends by the table's own time-to-live.
        d.setDescriptor(0, address: 0x8000, length: 1, flags: Virtio.DescriptorFlag.next, next: 1, table: table)
        d.setDescriptor(1, address: 0x8000, length: 1, flags: Virtio.DescriptorFlag.next, next: 0, table: table)
        d.setDescriptor(4, address: table, length: 32, flags: Virtio.DescriptorFlag.indirect)
        d.publish(4)
        #expect(try failure(&d) == .chainTooLong(limit: 2))
        // next beyond the table's entries.
        d.setDescriptor(1, address: 0x8000, length: 1, flags: Virtio.DescriptorFlag.next, next: 2, table: table)
        d.publish(4)
        #expect(try failure(&d) == .nextOutOfRange(2))
    }

    @Test func totalLengthOverflowIsCaught() throws {
        // RAM that claims every range exists, to reach the 2^32 total check.
        final class Everything: GuestRAM {
            let inner = ArrayRAM(base: 0, size: 0x1_0000)
            func copyOut(at a: UInt64, count: Int) -> [UInt8]? { inner.copyOut(at: a, count: count) }
            func copyIn(_ b: [UInt8], at a: UInt64) -> Bool { inner.copyIn(b, at: a) }
            func isRAM(_ a: UInt64, length: UInt64) -> Bool { true }
        }
        let ram = Everything()
        var d = MockDriver()
        d.setDescriptor(0, address: 0, length: UInt32.max, flags: Virtio.DescriptorFlag.next, next: 1)
        d.setDescriptor(1, address: 0, length: 1, flags: 0)
        _ = ram.inner.copyIn(d.ram.copyOut(at: 0x1000, count: 32) ?? [], at: 0x1000)
        #expect(throws: VirtqueueError.totalLengthOverflow) { try d.queue.parseChain(head: 0, in: ram) }
    }

    @Test func availIndexJumpIsARingError() throws {
        var d = MockDriver()
        _ = d.ram.store(UInt16(9), at: 0x2002)
        do { _ = try d.queue.pop(from: d.ram); Issue.record("accepted") } catch {
            #expect(error == .availIndexJump(from: 0, to: 9))
        }
        // Wrap-around within the queue size is fine.
        _ = d.ram.store(UInt16(0), at: 0x2002)
        #expect(try d.queue.pop(from: d.ram) == nil)
    }

    @Test func interruptSuppression() throws {
        var d = MockDriver()
        d.setDescriptor(0, address: 0x8000, length: 1, flags: 0)
        d.publish(0)
        _ = try chain(&d)
        try d.queue.push(head: 0, written: 0, to: d.ram)
        do { let n = d.queue.shouldNotify(d.ram); #expect(n) }
        _ = d.ram.store(Virtio.availFlagNoInterrupt, at: 0x2000)
        do { let n = d.queue.shouldNotify(d.ram); #expect(!n) }
        d.queue.setNotificationsEnabled(false, in: d.ram)
        #expect(d.u16(0x3000) == Virtio.usedFlagNoNotify)
    }

    @Test func eventIndex() throws {
        var d = MockDriver(eventIndex: true)
        let usedEvent = d.queue.availRing + 4 + 2 * 8
        for i: UInt16 in 0..<4 {
            d.setDescriptor(i, address: 0x8000, length: 1, flags: 0)
            d.publish(i)
        }
        _ = try chain(&d)
        #expect(d.u16(d.queue.usedRing + 4 + 8 * 8) == 1) // avail_event published
        _ = ram(d).store(UInt16(2), at: usedEvent)          // driver wants an interrupt after used idx passes 2
        try d.queue.push(head: 0, written: 0, to: d.ram)     // used idx 1
        do { let n = d.queue.shouldNotify(d.ram); #expect(!n) }
        _ = try chain(&d); _ = try chain(&d)
        try d.queue.push(head: 1, written: 0, to: d.ram)     // used idx 2
        try d.queue.push(head: 2, written: 0, to: d.ram)     // used idx 3: crosses used_event
        do { let n = d.queue.shouldNotify(d.ram); #expect(n) }
        do { let n = d.queue.shouldNotify(d.ram); #expect(!n) }                // nothing new since
    }

    func ram(_ d: MockDriver) -> ArrayRAM { d.ram }

    @Test func layoutValidation() {
        let ram = ArrayRAM(base: 0, size: 0x1_0000)
        #expect(throws: Never.self) { try SplitQueue(size: 256, descriptorTable: 0x1000, availRing: 0x2000, usedRing: 0x3000).validate(in: ram) }
        for q in [SplitQueue(size: 3, descriptorTable: 0x1000, availRing: 0x2000, usedRing: 0x3000),
                  SplitQueue(size: 0, descriptorTable: 0x1000, availRing: 0x2000, usedRing: 0x3000),
                  SplitQueue(size: 8, descriptorTable: 0x1008, availRing: 0x2000, usedRing: 0x3000),
                  SplitQueue(size: 8, descriptorTable: 0x1000, availRing: 0x2001, usedRing: 0x3000),
                  SplitQueue(size: 8, descriptorTable: 0x1000, availRing: 0x2000, usedRing: 0x3002),
                  SplitQueue(size: 8, descriptorTable: 0xffa0, availRing: 0x2000, usedRing: 0x3000),
                  SplitQueue(size: 8, descriptorTable: 0x1000, availRing: 0x2000, usedRing: UInt64.max - 3)] {
            #expect(throws: VirtqueueError.self) { try q.validate(in: ram) }
        }
    }
}

@Suite struct WritableUsedRingTests {
    /// RAM whose first 8 KiB the device may read but not write (like a program's read-only pages).
    final class PartlyReadOnly: GuestRAM {
        let inner = ArrayRAM(base: 0, size: 0x1_0000)
        func copyOut(at a: UInt64, count: Int) -> [UInt8]? { inner.copyOut(at: a, count: count) }
        func copyIn(_ b: [UInt8], at a: UInt64) -> Bool { a >= 0x2000 && inner.copyIn(b, at: a) }
        func isRAM(_ a: UInt64, length: UInt64) -> Bool { inner.isRAM(a, length: length) }
        func isWritable(_ a: UInt64, length: UInt64) -> Bool { a >= 0x2000 && inner.isRAM(a, length: length) }
    }

    @Test func usedRingMustBeWritable() {
        let ram = PartlyReadOnly()
        #expect(throws: VirtqueueError.self) {
            try SplitQueue(size: 8, descriptorTable: 0x3000, availRing: 0x4000, usedRing: 0x1000).validate(in: ram)
        }
        // Descriptors and the available ring are only read: read-only memory is fine for them.
        #expect(throws: Never.self) {
            try SplitQueue(size: 8, descriptorTable: 0x0, availRing: 0x1000, usedRing: 0x4000).validate(in: ram)
        }
    }
}
