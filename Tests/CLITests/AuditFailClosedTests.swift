import AuditLog
import AuditStore
import Foundation
import HostOS
import Testing

/// The appender fails closed: when its log cannot be written (here: a file-size limit, so the
/// kernel refuses the write with EFBIG), the append that hit it and every one after it fail with
/// that reason — none hangs, none is acknowledged without being durable — and the log reopens,
/// cut back and recorded, with every acknowledged record in it.
@Suite struct AuditFailClosedTests {
    @Test func anUnwritableLogFailsEveryAppendFromThenOnAndReopens() throws {
        let dir = NSTemporaryDirectory() + "bh-failclosed-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let writer = String(binary.dropLast("bulkhead".count)) + "bulkhead-audit-writer"
        let r = try bulkhead([dir, "--writers", "4", "--records", "200", "--file-size-limit", "40000"], executable: writer)
        #expect(r.status == 3, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n")
        let acked = lines.filter { $0.hasPrefix("ack ") }.compactMap { UInt64($0.dropFirst(4)) }
        let errors = lines.filter { $0.hasPrefix("error ") }
        #expect(acked.count + errors.count == 800, "\(acked.count) acknowledged, \(errors.count) refused")
        #expect(!acked.isEmpty && !errors.isEmpty)
        #expect(errors.allSatisfy { $0.contains("cannot write the audit log") && $0.contains("nothing more is appended until it is reopened") },
                "\(errors.first ?? "")")
        // Reopened without the limit: a torn write is cut back (and recorded), every acknowledged
        // record is there, and the log verifies.
        #expect(try bulkhead([dir, "--records", "1"], executable: writer).status == 0)
        let report = try AuditDirectory.verify(dir, key: try AuditDirectory.verifierKey(at: dir + "/log.pub"))
        #expect(report.isClean, "\(report.problems)")
        #expect(acked.allSatisfy { $0 < report.records }, "an acknowledged record is missing")
    }
}
