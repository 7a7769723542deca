import AuditLog
import AuditStore
import HostOS
import TestSupport
import Testing

/// Many writers at once: every append gets its own sequence number, the numbers leave no gap, the
/// records say what their writers gave, and concurrent writers share checkpoints (group commit).
extension AppenderTests {
    typealias Files = AuditTestFiles

    @Test func eightThreadsOfBlockingAppendsGetDistinctContiguousNumbers() throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        let log = try AuditAppender.open(path)
        let (acks, errors) = try Files.appendFromThreads(log, threads: 8, each: 50, tag: "w")
        #expect(errors.isEmpty, "\(errors.prefix(3))")
        #expect(acks.count == 400)
        let seqs = acks.map(\.seq).sorted()
        #expect(Set(seqs).count == acks.count, "a sequence number was given twice")
        #expect(seqs == Array(1...400), "not the contiguous range after log.start: \(seqs.prefix(5))...\(seqs.suffix(5))")
        #expect(log.recordCount == 401)
        try log.close()

        let report = try Files.verify(path)
        #expect(report.isClean && !report.tornTail, "\(report.problems)")
        #expect(report.records == 402 && report.latestCheckpoint?.size == 402)   // log.start, 400, log.stop
        let records = try Files.records(path)
        #expect(records.count == 402)
        #expect(records.enumerated().allSatisfy { UInt64($0.offset) == $0.element.sequence })
        #expect(records.first?.action == "log.start" && records.last?.action == "log.stop")
        let wrong = acks.filter { ack in
            guard Int(ack.seq) < records.count else { return true }
            let r = records[Int(ack.seq)]
            return r.target != ack.target || r.action != "vm.start" || r.operation != "op-" + ack.target
                || r.actor != .local(uid: 1000, gid: 1000, pid: 4242) || r.tenant != "acme" || r.result != "ok"
        }
        #expect(wrong.isEmpty, "records that do not hold what their writer appended: \(wrong.prefix(3))")
    }

    @Test func concurrentAsyncAppendsGetDistinctContiguousNumbers() async throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        let log = try AuditAppender.open(path)
        let acks = try await withThrowingTaskGroup(of: (UInt64, String).self) { group in
            for i in 0..<64 {
                group.addTask {
                    let target = "vm/async-\(i)"
                    return (try await log.append(Files.entry(target)), target)
                }
            }
            var out: [(UInt64, String)] = []
            for try await ack in group { out.append(ack) }
            return out
        }
        #expect(acks.map(\.0).sorted() == Array(1...64))
        try log.close()
        let report = try Files.verify(path)
        #expect(report.isClean && report.records == 66, "\(report.problems)")
        let records = try Files.records(path)
        #expect(acks.allSatisfy { Int($0.0) < records.count && records[Int($0.0)].target == $0.1 })
    }

    /// Group commit: with eight writers blocked in appends at once, a checkpoint covers the
    /// appends that queued while the previous group was being written and synced, so the log has
    /// fewer checkpoints than records. This is structural, not a matter of speed: the writers
    /// start together (a barrier), so when the committer takes its first group the others are
    /// already queued or arriving, and every later group is taken while up to seven writers wait;
    /// for every group to hold one record, each writer would have to queue its append only after
    /// the committer took the previous one, 400 times in a row. (Both counts include the
    /// appender's own log.start and log.stop, each with its own checkpoint.)
    @Test func groupCommitPutsConcurrentAppendsUnderOneCheckpoint() throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        let log = try AuditAppender.open(path)
        let (acks, errors) = try Files.appendFromThreads(log, threads: 8, each: 50, tag: "g")
        #expect(errors.isEmpty && acks.count == 400)
        try log.close()
        let report = try Files.verify(path)
        #expect(report.isClean && report.records == 402, "\(report.problems)")
        #expect(report.checkpoints < Int(report.records), "\(report.checkpoints) checkpoints for \(report.records) records: no group held two")
        // The same, read directly: the most records any checkpoint added.
        var largest = 0, since = 0
        try AuditDirectory.frames(path) { _, payload in
            if AuditVerifier.isCheckpoint(payload) { largest = max(largest, since); since = 0 } else { since += 1 }
            return true
        }
        #expect(largest > 1)
    }

    /// An idle log writes heartbeat records (with their checkpoints), so that silence shows.
    @Test func anIdleLogWritesHeartbeats() throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        var options = AuditAppender.Options()
        options.heartbeatSeconds = 0.05
        let log = try AuditAppender.open(path, options: options)
        sleepNanoseconds(400_000_000)
        try log.close()
        let report = try Files.verify(path)
        #expect(report.isClean, "\(report.problems)")
        let records = try Files.records(path)
        let beats = records.filter { $0.action == "log.heartbeat" }
        #expect(beats.count >= 1)
        #expect(beats.allSatisfy { $0.actor == .system && $0.result == "idle" && $0.operation == "seq-\($0.sequence)" })
        #expect(records.first?.action == "log.start" && records.last?.action == "log.stop")
        // Each heartbeat is covered by a checkpoint of its own (one per idle period).
        #expect(report.checkpoints == records.count)
    }
}
