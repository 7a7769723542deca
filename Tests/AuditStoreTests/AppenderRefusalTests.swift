import AuditLog
import AuditStore
import HostOS
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Paths and files the appender must refuse, each with a clear error and nothing created or
/// changed; entries it must refuse without failing the log; and what closing does.
extension AppenderTests {
    enum Hostile: String, CaseIterable, Sendable {
        case logIsARegularFile, logIsASymlinkToADirectory, logIsAFIFO, logIsWorldWritable, logIsGroupWritable
        case keyReadableByOthers, keyIsASymlink, publicKeyIsAnotherLogs, segmentsWithoutAKey, segmentIsASymlink, segmentIsAFIFO
        case lockIsASymlink
    }

    /// Sets `hostile` up under `dir`; returns the log's path and what the error must say.
    static func prepare(_ hostile: Hostile, in dir: String) throws -> (path: String, says: String) {
        let path = dir + "/log"
        switch hostile {
        case .logIsARegularFile:
            try Files.writeFile(path, Array("not a log\n".utf8))
            return (path, "is a regular file, not a directory")
        case .logIsASymlinkToADirectory:
            try makeDirectory(dir + "/real", mode: 0o700)
            #expect(symlink(dir + "/real", path) == 0)
            return (path, "is a symbolic link, not a directory")
        case .logIsAFIFO:
            #expect(mkfifo(path, 0o600) == 0)
            return (path, "is a FIFO, not a directory")
        case .logIsWorldWritable:
            try makeDirectory(path, mode: 0o777)
            return (path, "may be written by others (mode 777)")
        case .logIsGroupWritable:
            try makeDirectory(path, mode: 0o770)
            return (path, "may be written by others (mode 770)")
        case .keyReadableByOthers:
            try closedLog(path, appends: 1)
            #expect(chmod(path + "/" + AuditDirectory.keyFile, 0o644) == 0)
            return (path, "readable only by it")
        case .keyIsASymlink:
            try closedLog(path, appends: 1)
            try renameFile(path + "/" + AuditDirectory.keyFile, dir + "/elsewhere.key")
            #expect(symlink(dir + "/elsewhere.key", path + "/" + AuditDirectory.keyFile) == 0)
            return (path, "it is a symbolic link")
        case .publicKeyIsAnotherLogs:
            try closedLog(path, appends: 1)
            try closedLog(dir + "/other", appends: 0)
            let other = try FileDescriptor.open(readOnly: dir + "/other/" + AuditDirectory.publicKeyFile).readAll(limit: 4096)
            try removeFile(path + "/" + AuditDirectory.publicKeyFile)
            try Files.writeFile(path + "/" + AuditDirectory.publicKeyFile, other, mode: 0o644)
            return (path, "is not the public key of")
        case .segmentsWithoutAKey:
            try closedLog(path, appends: 1)
            try removeFile(path + "/" + AuditDirectory.keyFile)
            return (path, "has segments but no key")
        case .segmentIsASymlink:
            try closedLog(path, appends: 1)
            try renameFile(Files.segmentPath(path, 0), dir + "/elsewhere.seg")
            #expect(symlink(dir + "/elsewhere.seg", Files.segmentPath(path, 0)) == 0)
            return (path, "is a symbolic link")
        case .segmentIsAFIFO:
            try closedLog(path, appends: 1)
            #expect(mkfifo(Files.segmentPath(path, 1), 0o600) == 0)
            return (path, "is a FIFO, not a regular file")
        case .lockIsASymlink:
            try closedLog(path, appends: 1)
            #expect(symlink(dir + "/planted", path + "/" + AuditDirectory.lockFile) == 0)
            return (path, "cannot lock the audit log")
        }
    }

    @Test(arguments: Hostile.allCases)
    func aHostilePathOrFileIsRefusedAndNothingIsTouched(_ hostile: Hostile) throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let (path, says) = try Self.prepare(hostile, in: dir)
        let before = try Files.snapshot(dir)
        let error = Files.openingError(path)
        #expect(error?.kind == .unusable, "\(hostile): \(error?.description ?? "opened")")
        #expect(error?.description.contains(says) == true, "\(hostile): \(error?.description ?? "opened")")
        #expect(error?.description.contains(path) == true, "the error does not name the path: \(error?.description ?? "")")
        let after = try Files.snapshot(dir)
        #expect(after == before, "\(hostile): changed \(Set(after.keys).symmetricDifference(before.keys).sorted()) \(before.filter { after[$0.key] != $0.value }.keys.sorted())")
    }

    @Test func anInvalidEntryIsRefusedAloneAndTheLogGoesOn() async throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        let log = try AuditAppender.open(path)
        #expect(try Files.appendBlocking(log, Files.entry("vm/first")) == 1)
        var emptyAction = Files.entry("vm/a"); emptyAction.action = ""
        var longTarget = Files.entry("vm/b"); longTarget.target = "vm/" + String(repeating: "x", count: 1997)
        var intentWithResult = Files.entry("vm/c"); intentWithResult.stage = .intent
        #expect(longTarget.target?.utf8.count == 2000 && intentWithResult.result != nil)
        var expected: UInt64 = 2
        for bad in [emptyAction, longTarget, intentWithResult] {
            let count = log.recordCount
            #expect(count == expected)
            do {
                let seq = try Files.appendBlocking(log, bad)
                Issue.record("an invalid entry was appended as record \(seq)")
            } catch {
                #expect(error.kind == .invalidEntry, "\(error.description)")
            }
            do {
                let seq = try await log.append(bad)
                Issue.record("an invalid entry was appended (async) as record \(seq)")
            } catch {
                #expect(error.kind == .invalidEntry, "\(error.description)")
            }
            #expect(log.recordCount == count)
            // A group with one invalid entry is refused whole: its writer asked for them together.
            do {
                let seqs = try Files.appendBlocking(log, [Files.entry("vm/with-a-bad-one"), bad])
                Issue.record("a group with an invalid entry was appended as \(seqs)")
            } catch {
                #expect(error.kind == .invalidEntry, "\(error.description)")
            }
            #expect(log.recordCount == count)
            // The log did not fail closed: the next valid append is the next record.
            #expect(try Files.appendBlocking(log, Files.entry("vm/next")) == count)
            expected += 1
        }
        try log.close()
        let report = try Files.verify(path)
        #expect(report.isClean && report.records == expected + 1, "\(report.problems)")
        let records = try Files.records(path)
        #expect(records.map(\.target) == [nil, "vm/first", "vm/next", "vm/next", "vm/next", nil])
    }

    @Test func afterCloseAppendsFailAndTheLogEndsWithLogStop() async throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        let log = try AuditAppender.open(path)
        try Files.appendBlocking(log, Files.entry("vm/before-close"))
        try log.close()
        #expect(!pathExists(path + "/" + AuditDirectory.lockFile))
        do {
            let seq = try Files.appendBlocking(log, Files.entry("vm/after-close"))
            Issue.record("appended after close as record \(seq)")
        } catch {
            #expect(error.kind == .closed, "\(error.description)")
        }
        do {
            let seq = try await log.append(Files.entry("vm/after-close-async"))
            Issue.record("appended after close as record \(seq)")
        } catch {
            #expect(error.kind == .closed, "\(error.description)")
        }
        let report = try Files.verify(path)
        #expect(report.isClean && report.records == 3 && report.latestCheckpoint?.size == 3, "\(report.problems)")
        let records = try Files.records(path)
        #expect(records.map(\.action) == ["log.start", "vm.start", "log.stop"])
        #expect(records.last?.actor == .system && records.last?.result == "closed" && records.last?.operation == "seq-2")
    }

    /// Closing twice must not release the lock a second time: by then it may be another
    /// appender's (the same path, or the same descriptor number).
    @Test func closingTwiceLeavesTheNextAppendersLockAlone() throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        let first = try AuditAppender.open(path)
        try first.close()
        let second = try AuditAppender.open(path)
        try? first.close()
        let error = Files.openingError(path)
        #expect(error?.kind == .locked, "a third appender opened the log while the second held it: \(error?.description ?? "opened")")
        try second.append(Files.entry("vm/second"))
        try second.close()
        let report = try Files.verify(path)
        #expect(report.isClean, "\(report.problems)")
    }
}
