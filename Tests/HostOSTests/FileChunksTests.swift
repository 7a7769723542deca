import Foundation
import Testing
@testable import HostOS

/// `readChunks`, which verified exec hashes the worker binary through.
struct FileChunksTests {
    func file(_ bytes: [UInt8]) throws -> (String, FileDescriptor) {
        let path = NSTemporaryDirectory() + "bh-chunks-\(getpid())-\(bytes.count)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return (path, try FileDescriptor.open(readOnly: path))
    }

    @Test func chunksAreTheFileInOrder() throws {
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let (path, fd) = try file(bytes)
        defer { unlink(path) }
        for chunkSize in [1, 7, 256, 999, 1000, 4096] {
            var seen: [UInt8] = []
            var chunks = 0
            try fd.readChunks(size: UInt64(bytes.count), chunkSize: chunkSize) { seen += $0; chunks += 1 }
            #expect(seen == bytes, "chunk size \(chunkSize)")
            #expect(chunks == (bytes.count + chunkSize - 1) / chunkSize)
        }
        // A prefix only, when asked for less.
        var prefix: [UInt8] = []
        try fd.readChunks(size: 10, chunkSize: 4) { prefix += $0 }
        #expect(prefix == Array(bytes.prefix(10)))
    }

    @Test func aFileShorterThanSaidIsAnError() throws {
        let (path, fd) = try file([1, 2, 3])
        defer { unlink(path) }
        var seen: [UInt8] = []
        #expect(throws: SystemError.self) { try fd.readChunks(size: 10, chunkSize: 2) { seen += $0 } }
        #expect(seen == [1, 2, 3])
        #expect(throws: SystemError.self) { try fd.readChunks(size: 3, chunkSize: 0) { _ in } }
    }
}
