import AuditLog
import AuditStore
import HostOS
import Testing

/// The appender on real files (no root, no KVM): what it creates, and that what it wrote verifies.
@Suite struct AppenderTests {
    /// A fresh directory under /tmp for one test (removed by the caller's `defer`).
    static func scratch() throws -> String {
        let path = "/tmp/bulkhead-audit-test-" + ((randomBytes(8) ?? []).map { String($0, radix: 16) }.joined())
        try makeDirectory(path, mode: 0o700)
        return path
    }

    /// Removes `path` and everything under it (never following a link out of it).
    static func remove(_ path: String) {
        for name in (try? listDirectory(path)) ?? [] {
            let p = path + "/" + name
            if (try? pathInfo(p))?.isDirectory == true { remove(p) } else { try? removeFile(p) }
        }
        try? removeDirectory(path)
    }

    @Test func aNewLogHasItsKeyOwnerOnlyAndVerifies() throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let log = try AuditAppender.open(dir + "/log")
        #expect(log.opening.created && log.opening.records == 0)
        let seq = try log.append(.event("vm.test", result: "ok"))
        #expect(seq == 1)   // record 0 is log.start
        try log.close()
        #expect(try pathInfo(dir + "/log").permissions == 0o700)
        #expect(try pathInfo(dir + "/log/log.key").permissions == 0o600)
        let key = try AuditDirectory.verifierKey(at: dir + "/log/log.pub")
        #expect(key == log.verifierKey)
        let report = try AuditDirectory.verify(dir + "/log", key: key)
        #expect(report.isClean && report.records == 3 && report.latestCheckpoint?.size == 3, "\(report.problems)")
    }
}
