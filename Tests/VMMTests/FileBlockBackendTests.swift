import Testing
import Devices
import HostOS
import KVM
@testable import VMM
#if canImport(Glibc)
import Glibc
#endif

/// A file under the temporary directory, removed when the value goes away.
private final class TemporaryImage {
    let path: String

    init(_ contents: [UInt8]) throws {
        let dir = environment("TMPDIR") ?? "/tmp"
        path = "\(dir)/bulkhead-disk-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileDescriptor.open(writing: path).writeAll(contents)
    }

    func open(readOnly: Bool = false) throws -> FileDescriptor {
        readOnly ? try FileDescriptor.open(readOnly: path) : try FileDescriptor.open(readWrite: path)
    }

    func contents() throws -> [UInt8] { try readFile(path, limit: 1 << 26) }

    deinit { unlink(path) }
}

private func pattern(_ count: Int, seed: Int = 3) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &+ ($0 >> 8)) }
}

@Suite struct FileBlockBackendTests {
    @Test func refusesImagesThatAreNotWholeSectors() throws {
        let image = try TemporaryImage(pattern(1000))
        #expect(throws: FileBlockBackendError.sizeNotSectorMultiple(1000)) { try FileBlockBackend(fd: image.open()) }
        let e = FileBlockBackendError.sizeNotSectorMultiple(1000)
        #expect(e.description.contains("not a multiple of 512") && e.description.contains("truncate -s 1024"))
        let odd = try TemporaryImage(pattern(513))
        #expect(throws: FileBlockBackendError.sizeNotSectorMultiple(513)) { try FileBlockBackend(fd: odd.open()) }
    }

    @Test func refusesWhatIsNotARegularFile() throws {
        #expect(throws: FileBlockBackendError.notRegularFile) { try FileBlockBackend(fd: FileDescriptor.open(readOnly: "/dev/null")) }
        #expect(throws: FileBlockBackendError.notRegularFile) { try FileBlockBackend(fd: FileDescriptor.open(readOnly: "/")) }
    }

    @Test func sizeComesFromTheFile() throws {
        let image = try TemporaryImage(pattern(64 * 512))
        let b = try FileBlockBackend(fd: image.open())
        #expect(b.sectorCount == 64)
        #expect(try FileBlockBackend(fd: TemporaryImage([]).open()).sectorCount == 0)
        // The device advertises it.
        let blk = VirtioBlock(backend: b, readOnly: false, id: "file")
        #expect(blk.capacity == 64 && blk.config[0] == 64)
    }

    @Test func readAndWrite() throws {
        let original = pattern(16 * 512)
        let image = try TemporaryImage(original)
        let b = try FileBlockBackend(fd: image.open())
        #expect(b.read(sector: 2, count: 1024) == Array(original[1024..<2048]))
        #expect(b.read(sector: 0, count: 0) == [])
        let data = pattern(1536, seed: 99)
        #expect(b.write(sector: 5, bytes: data))
        #expect(b.read(sector: 5, count: 1536) == data)
        var expected = original
        expected.replaceSubrange(2560..<4096, with: data)
        #expect(try image.contents() == expected)
        // Outside the image, or not whole sectors: refused before any system call.
        #expect(b.read(sector: 15, count: 1024) == nil)
        #expect(b.read(sector: .max, count: 512) == nil)
        #expect(b.read(sector: 0, count: 100) == nil)
        #expect(!b.write(sector: 16, bytes: pattern(512)))
        #expect(!b.write(sector: .max, bytes: pattern(512)))
        #expect(!b.write(sector: 0, bytes: pattern(10)))
        #expect(b.lastError == nil)
        #expect(try image.contents() == expected, "the image never grows")
        #expect(b.flush())
    }

    @Test func largeTransfers() throws {
        let image = try TemporaryImage([UInt8](repeating: 0, count: 8 << 20))
        let b = try FileBlockBackend(fd: image.open())
        let data = pattern(VirtioBlock.maxRequestBytes, seed: 5)
        #expect(b.write(sector: 1, bytes: data))
        #expect(b.read(sector: 1, count: data.count) == data)
        #expect(b.flush())
    }

    @Test func readOnlyDescriptor() throws {
        let image = try TemporaryImage(pattern(8 * 512))
        let b = try FileBlockBackend(fd: image.open(readOnly: true))
        #expect(b.read(sector: 0, count: 512) == Array(pattern(8 * 512)[0..<512]))
        #expect(!b.write(sector: 0, bytes: pattern(512, seed: 1)))
        #expect(b.lastError?.errno == EBADF)
        #expect(try image.contents() == pattern(8 * 512))
    }

    @Test func shrunkImageIsAnErrorNotGarbage() throws {
        let image = try TemporaryImage(pattern(8 * 512))
        let b = try FileBlockBackend(fd: image.open())
        _ = try FileDescriptor.open(writing: image.path) // truncates to 0 behind the back end's back
        #expect(b.read(sector: 0, count: 512) == nil)
        #expect(b.lastError?.errno == EIO)
    }

    @Test func discardPunchesAHole() throws {
        let size = 64 * 4096
        let image = try TemporaryImage(pattern(size))
        let fd = try image.open()
        try fd.syncData()
        let b = try FileBlockBackend(fd: fd)
        let allocated = try fd.status().allocatedBytes
        #expect(b.discard(sector: 8, sectors: 64))          // bytes 4096..<36864
        #expect(b.discard(sector: 0, sectors: 0))
        #expect(!b.discard(sector: 500, sectors: 13))       // past the end
        #expect(!b.discard(sector: .max, sectors: 2))
        let after = try image.contents()
        #expect(after.count == size, "discard keeps the size")
        if !b.punchHoleUnsupported {
            #expect(after[4096..<36864].allSatisfy { $0 == 0 })
            #expect(try fd.status().allocatedBytes < allocated, "the hole frees space")
        }
        #expect(Array(after[0..<4096]) == Array(pattern(size)[0..<4096]))
        #expect(Array(after[36864...]) == Array(pattern(size)[36864...]))
    }

    @Test(arguments: [false, true]) func writeZeroes(fallback: Bool) throws {
        let size = 4 << 20
        let image = try TemporaryImage(pattern(size))
        let b = try FileBlockBackend(fd: image.open())
        if fallback { b.forceZeroRangeFallback() }
        // 2 MiB + 1 sector from sector 3: crosses the fallback's 1 MiB chunks.
        let sectors: UInt64 = (2 << 20) / 512 + 1
        #expect(b.writeZeroes(sector: 3, sectors: sectors))
        #expect(b.writeZeroes(sector: 0, sectors: 0))
        #expect(!b.writeZeroes(sector: UInt64(size / 512), sectors: 1))
        #expect(!b.writeZeroes(sector: .max, sectors: 1))
        let after = try image.contents()
        let start = 3 * 512, end = start + Int(sectors) * 512
        #expect(after.count == size)
        #expect(after[start..<end].allSatisfy { $0 == 0 })
        #expect(Array(after[0..<start]) == Array(pattern(size)[0..<start]))
        #expect(Array(after[end...]) == Array(pattern(size)[end...]))
        if fallback { #expect(b.zeroRangeUnsupported) }
        #expect(b.flush())
    }
}
