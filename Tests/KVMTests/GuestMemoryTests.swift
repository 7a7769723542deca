import Testing
#if canImport(Glibc)
import Glibc
#endif
import HostOS
@testable import KVM

@Suite struct GuestMemoryTests {
    @Test func freshMemoryReadsAsZero() throws {
        let m = try GuestMemory(base: 0x1000, size: 4 << 20)
        #expect(try m.nonZeroByteCount(at: 0x1000, count: 4 << 20) == 0)
    }

    @Test func copiesInAndOut() throws {
        let m = try GuestMemory(base: 0, size: 1 << 20)
        try m.write([1, 2, 3], at: 0xfffd)
        #expect(try m.read(at: 0xfffc, count: 5) == [0, 1, 2, 3, 0])
        try m.store(UInt64(0x1122_3344_5566_7788), at: 0x101)
        #expect(try m.load(UInt32.self, at: 0x101) == 0x5566_7788)
        #expect(try m.read(at: 0x101, count: 1) == [0x88])
        try m.zero(at: 0x100, count: 16)
        #expect(try m.load(UInt64.self, at: 0x101) == 0)
        #expect(try m.fillRandom(at: 0x2000, count: 64))
        #expect(try m.nonZeroByteCount(at: 0x2000, count: 64) > 0)
    }

    @Test func everyOutOfRangeAccessCarriesItsAddress() throws {
        let m = try GuestMemory(base: 0x10_0000, size: 1 << 20)
        let end: UInt64 = 0x20_0000
        #expect(throws: GuestMemoryError.outOfRange(address: 0xf_ffff, length: 2)) { try m.read(at: 0xf_ffff, count: 2) }
        #expect(throws: GuestMemoryError.outOfRange(address: end - 1, length: 2)) { try m.write([1, 2], at: end - 1) }
        #expect(throws: GuestMemoryError.outOfRange(address: end, length: 8)) { try m.load(UInt64.self, at: end) }
        #expect(throws: GuestMemoryError.overflow(address: UInt64.max, length: 8)) { try m.store(UInt64(1), at: UInt64.max) }
        #expect(throws: GuestMemoryError.outOfRange(address: 0x10_0000, length: 0)) { try m.read(at: 0x10_0000, count: -1) }
        #expect(throws: GuestMemoryError.self) { try m.zero(at: end - 4, count: 8) }
        #expect(throws: GuestMemoryError.self) { _ = try m.fillRandom(at: end - 4, count: 8) }
        #expect(try m.read(at: end, count: 0) == [])
        #expect(m.contains(0x10_0000, length: 1 << 20))
        #expect(!m.contains(0x10_0000, length: (1 << 20) + 1))
        #expect("\(GuestMemoryError.outOfRange(address: 0x20_0000, length: 8))".contains("0x200000"))
    }

    @Test func refusesBadRegions() {
        #expect(throws: KVMError.self) { _ = try GuestMemory(base: 0, size: 0) }
        #expect(throws: KVMError.self) { _ = try GuestMemory(base: 0, size: 100) }
        #expect(throws: KVMError.self) { _ = try GuestMemory(base: 0x123, size: 4096) }
        #expect(throws: KVMError.self) { _ = try GuestMemory(base: UInt64.max - 4095, size: 8192) }
    }

    @Test func missingDeviceIsAClearError() {
        do { _ = try KVMSystem(path: "/nonexistent/kvm"); Issue.record("opened") } catch {
            #expect(error == .deviceUnavailable(path: "/nonexistent/kvm", errno: 2))
            #expect(error.description.contains("KVM is not available"))
        }
    }

    @Test func eventFDWaitsAndSignals() throws {
        let e = try EventFD()
        #expect(!e.wait(nanoseconds: 1_000_000))
        e.signal(); e.signal()
        #expect(e.wait(nanoseconds: 1_000_000))
        #expect(e.drain() == 0)
    }
}

@Suite struct GuestMemoryFileTests {
    @Test func readsAFileStraightIntoGuestMemory() throws {
        let path = "/tmp/bulkhead-gm-\(UInt64.random(in: 0..<UInt64.max))"
        try FileDescriptor.open(writing: path).writeAll((0..<8192).map { UInt8(truncatingIfNeeded: $0 * 7) })
        defer { _ = path.withCString { unlink($0) } }
        let fd = try FileDescriptor.open(readOnly: path)
        let m = try GuestMemory(base: 0x1000, size: 1 << 20)
        #expect(try m.copyFromFile(fd.rawValue, fileOffset: 512, into: 0x2000, count: 4096))
        #expect(try m.read(at: 0x2000, count: 4) == [UInt8(truncatingIfNeeded: 512 * 7), UInt8(truncatingIfNeeded: 513 * 7),
                                                    UInt8(truncatingIfNeeded: 514 * 7), UInt8(truncatingIfNeeded: 515 * 7)])
        #expect(try m.copyFromFile(fd.rawValue, fileOffset: 8000, into: 0x2000, count: 512) == false) // file ends early
        #expect(throws: GuestMemoryError.self) { try m.copyFromFile(fd.rawValue, fileOffset: 0, into: 0x10_0000, count: 8192) }
        #expect(throws: GuestMemoryError.self) { try m.copyFromFile(fd.rawValue, fileOffset: 0, into: UInt64.max - 10, count: 64) }
    }

    /// The vectored read: scattered ranges, in order, more than one preadv's worth of them.
    @Test func readsAFileIntoScatteredRanges() throws {
        let size = 3 << 20
        let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
        let path = "/tmp/bulkhead-gmv-\(UInt64.random(in: 0..<UInt64.max))"
        try FileDescriptor.open(writing: path).writeAll(data)
        defer { _ = path.withCString { unlink($0) } }
        let fd = try FileDescriptor.open(readOnly: path)
        let m = try GuestMemory(base: 0, size: 8 << 20)
        // 1500 ranges of uneven sizes (one empty), placed back to front in memory.
        var ranges: [(address: UInt64, count: Int)] = []
        var total = 0
        for i in 0..<1500 {
            let n = i == 7 ? 0 : 512 + (i % 5) * 300
            ranges.append((UInt64(7 << 20) - UInt64(total + n) - UInt64(i * 16), n))
            total += n
        }
        #expect(try m.copyFromFile(fd.rawValue, fileOffset: 1000, into: ranges))
        var expected = 1000
        for r in ranges {
            #expect(try m.read(at: r.address, count: r.count) == Array(data[expected..<(expected + r.count)]))
            expected += r.count
        }
        // The file ends inside the last range; a range outside memory is refused before reading.
        #expect(try m.copyFromFile(fd.rawValue, fileOffset: UInt64(size - 600), into: [(0, 512), (4096, 512)]) == false)
        #expect(throws: GuestMemoryError.self) { try m.copyFromFile(fd.rawValue, fileOffset: 0, into: [(0, 512), (8 << 20, 512)]) }
    }

    /// The vectored write: scattered ranges go to the file in order, as one stream.
    @Test func writesScatteredRangesToAFile() throws {
        let path = "/tmp/bulkhead-gmw-\(UInt64.random(in: 0..<UInt64.max))"
        let file = try FileDescriptor.open(writing: path)
        defer { _ = path.withCString { unlink($0) } }
        let m = try GuestMemory(base: 0, size: 8 << 20)
        var ranges: [(address: UInt64, count: Int)] = []
        var expected: [UInt8] = []
        for i in 0..<1200 {
            let n = i == 3 ? 0 : 100 + (i % 7) * 211
            let address = UInt64(6 << 20) - UInt64(i) * 4096
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ i) }
            try m.write(bytes, at: address)
            ranges.append((address, n))
            expected += bytes
        }
        #expect(try m.copyToFile(file.rawValue, fileOffset: 512, from: ranges))
        let back = try readFile(path, limit: 8 << 20)
        #expect(back.count == 512 + expected.count)
        #expect(Array(back[512...]) == expected)
        #expect(throws: GuestMemoryError.self) { try m.copyToFile(file.rawValue, fileOffset: 0, from: [(0, 512), (8 << 20, 1)]) }
        #expect(try readFile(path, limit: 8 << 20).count == back.count)   // nothing written by the refused call
    }
}
