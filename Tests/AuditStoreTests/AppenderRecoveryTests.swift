import AuditLog
import AuditStore
import HostOS
import TestSupport
import Testing

/// Segments, what a crash leaves and how the next open recovers it, and tampering, which it must
/// refuse without touching the evidence.
extension AppenderTests {
    @Test func segmentsRollAndEachEndsWithItsCheckpoint() throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        var small = AuditAppender.Options()
        small.segmentBytes = 4096
        let log = try AuditAppender.open(path, options: small)
        for i in 0..<300 { try log.append(Files.entry("vm/roll-\(i)")) }
        try log.close()

        let numbers = try AuditDirectory.segments(in: path)
        #expect(numbers.count >= 3 && numbers == Array(0..<numbers.count), "\(numbers)")
        let names = try listDirectory(path).filter { $0.hasSuffix(".seg") }.sorted()
        #expect(names == numbers.map(AuditDirectory.segmentName) && names.first == "0000000000.seg")
        for n in numbers {
            let bytes = try AuditDirectory.readSegment(path, n)
            let (frames, stop) = Files.frames(bytes)
            #expect(stop == .end, "segment \(n) does not end with a whole frame")
            #expect(frames.last.map { AuditVerifier.isCheckpoint($0.payload) } == true, "segment \(n) does not end with a checkpoint")
            #expect(frames.first.map { !AuditVerifier.isCheckpoint($0.payload) } == true, "segment \(n) does not start with a record")
            // A segment is closed once, and as soon as, it holds the roll size: after the group
            // that reached it (the group before that ended below it).
            if n != numbers.last {
                #expect(bytes.count >= 4096, "segment \(n) was closed at \(bytes.count) bytes")
                let checkpointEnds = frames.enumerated().filter { AuditVerifier.isCheckpoint($0.element.payload) }
                    .map { $0.offset + 1 < frames.count ? frames[$0.offset + 1].offset : bytes.count }
                #expect(checkpointEnds.dropLast().allSatisfy { $0 < 4096 }, "segment \(n) went on after \(checkpointEnds.dropLast().last ?? 0) bytes")
            }
        }
        let report = try Files.verify(path)
        #expect(report.isClean && report.records == 302 && report.latestCheckpoint?.size == 302, "\(report.problems)")

        // Reopened with room in its last segment, the log continues in it: no new file, and the
        // new log.start is in the old last segment.
        let last = try Files.lastSegment(path)
        let lastSize = try pathInfo(Files.segmentPath(path, last)).size
        let again = try AuditAppender.open(path)
        #expect(!again.opening.created && again.opening.records == 302 && again.opening.cutBytes == 0)
        // Ten more groups: enough to take the last segment past 4096 bytes for the next open.
        for i in 0..<10 { try again.append(Files.entry("vm/after-reopen-\(i)")) }
        try again.close()
        #expect(try AuditDirectory.segments(in: path) == numbers)
        #expect(try pathInfo(Files.segmentPath(path, last)).size > lastSize)
        var inLast: [AuditRecord] = []
        try AuditDirectory.frames(path, from: last) { _, payload in
            if !AuditVerifier.isCheckpoint(payload), let r = try? AuditRecord.parse(payload) { inLast.append(r) }
            return true
        }
        #expect(inLast.contains { $0.sequence == 302 && $0.action == "log.start" })
        #expect(inLast.contains { $0.sequence == 303 && $0.target == "vm/after-reopen-0" })

        // Reopened with the small roll size, its last segment is past it: the first group starts
        // the next segment, numbered on from the last.
        #expect(try pathInfo(Files.segmentPath(path, last)).size >= 4096)
        let third = try AuditAppender.open(path, options: small)
        try third.close()
        #expect(try AuditDirectory.segments(in: path) == Array(0...numbers.count))
        let final = try Files.verify(path)
        #expect(final.isClean && final.records == 316, "\(final.problems)")   // 302, start, 10, stop, start, stop
    }

    /// What a crash can leave after the last checkpoint of the last segment.
    enum CrashTail: String, CaseIterable, Sendable {
        /// Half of a record's frame (a write cut off).
        case tornFrame
        /// 64 zero bytes (blocks allocated but never written): an empty frame, i.e. damage.
        case zeros
        /// A whole, valid record that no checkpoint covers yet, then bytes that are no frame.
        case wholeRecordThenGarbage
    }

    @Test(arguments: CrashTail.allCases)
    func aCrashTailAboveTheLastCheckpointIsCutBackAndRecorded(_ tail: CrashTail) throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        let first = try AuditAppender.open(path)
        for i in 0..<5 { try first.append(Files.entry("vm/before-\(i)")) }
        try first.close()
        let count: UInt64 = 7   // log.start, five, log.stop
        let last = try Files.lastSegment(path)
        let sizeBefore = try pathInfo(Files.segmentPath(path, last)).size

        let frame = Files.recordFrame(seq: count, target: "vm/kept")
        let written: [UInt8], cut: Int, kept: UInt64
        switch tail {
        case .tornFrame:
            written = Array(frame.prefix(frame.count / 2)); cut = written.count; kept = 0
        case .zeros:
            written = [UInt8](repeating: 0, count: 64); cut = 64; kept = 0
        case .wholeRecordThenGarbage:
            written = frame + [UInt8](repeating: 0xff, count: 20); cut = 20; kept = 1
        }
        try Files.append(written, toSegment: last, in: path)
        let crashed = try Files.verify(path)
        #expect(crashed.stoppedAt != nil && crashed.stoppedAboveLastCheckpoint(lastSegment: last))
        #expect(crashed.records == count + kept && crashed.latestCheckpoint?.size == count)

        let log = try AuditAppender.open(path)
        #expect(log.opening.cutBytes == cut, "cut \(log.opening.cutBytes), expected \(cut)")
        #expect(log.opening.records == count + kept && !log.opening.created && log.opening.cutReason != nil)
        try log.close()
        // The cut was exactly the tail: the segment holds what was there, the kept record, then
        // the new groups.
        let segment = try AuditDirectory.readSegment(path, last)
        #expect(segment.count > Int(sizeBefore) && Array(segment[Int(sizeBefore)..<Int(sizeBefore) + written.count - cut]) == Array(written.prefix(written.count - cut)))

        let report = try Files.verify(path)
        #expect(report.isClean && !report.tornTail && report.stoppedAt == nil, "\(report.problems)")
        #expect(report.records == count + kept + 3)   // [kept], log.recovered-torn-tail, log.start, log.stop
        let records = try Files.records(path)
        #expect(records.count == Int(count + kept + 3))
        guard records.count == Int(count + kept + 3) else { return }
        if kept == 1 { #expect(records[Int(count)].target == "vm/kept" && records[Int(count)].action == "vm.crafted") }
        let recovered = records[Int(count + kept)]
        #expect(recovered.action == "log.recovered-torn-tail" && recovered.actor == .system)
        #expect(recovered.result?.hasPrefix("cut \(cut) bytes after record \(count + kept - 1)") == true, "\(recovered.result ?? "nil")")
        #expect(records[Int(count + kept + 1)].action == "log.start")
        #expect(records.filter { $0.action == "log.recovered-torn-tail" }.count == 1)
    }

    /// A closed log of `count` appends (plus log.start and log.stop), in `path`.
    static func closedLog(_ path: String, appends count: Int, options: AuditAppender.Options = AuditAppender.Options()) throws {
        let log = try AuditAppender.open(path, options: options)
        for i in 0..<count { try log.append(Files.entry("vm/t-\(i)")) }
        try log.close()
    }

    /// Where record `seq`'s frame starts in segment `n`, and its payload.
    static func recordFrame(_ seq: UInt64, inSegment n: Int, of path: String) throws -> (offset: Int, payload: [UInt8]) {
        let (frames, _) = Files.frames(try AuditDirectory.readSegment(path, n))
        for f in frames where !AuditVerifier.isCheckpoint(f.payload) {
            if (try? AuditRecord.parse(f.payload))?.sequence == seq { return f }
        }
        throw Files.Failure(description: "record \(seq) is not in segment \(n)")
    }

    /// A changed record below the last checkpoint: the appender refuses the log and leaves every
    /// byte of it as it was (the evidence), whether the change broke the frame's CRC or kept it
    /// valid (then only the Merkle root shows it). Here the log has several segments and the
    /// change is in the first.
    @Test(arguments: [false, true])
    func aChangedRecordInAnEarlierSegmentIsRefusedAndLeftAlone(_ recomputeCRC: Bool) throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        var small = AuditAppender.Options()
        small.segmentBytes = 4096
        try Self.closedLog(path, appends: 60, options: small)
        #expect(try AuditDirectory.segments(in: path).count >= 3)
        try Self.tamper(path, record: 1, segment: 0, recomputeCRC: recomputeCRC)
        try Self.expectRefusedUnchanged(path, options: small)
    }

    /// The same in a log of one segment (the default roll size): the change is in the last
    /// segment, but below its last checkpoint, so it is no crash's tail.
    @Test(arguments: [false, true])
    func aChangedRecordInTheLastSegmentIsRefusedAndLeftAlone(_ recomputeCRC: Bool) throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        try Self.closedLog(path, appends: 10)
        #expect(try AuditDirectory.segments(in: path) == [0])
        try Self.tamper(path, record: 2, segment: 0, recomputeCRC: recomputeCRC)
        try Self.expectRefusedUnchanged(path)
    }

    /// Changes one byte of record `record`'s target ("vm/t-N" becomes "vm/x-N"), with the frame's
    /// CRC recomputed or not.
    static func tamper(_ path: String, record: UInt64, segment: Int, recomputeCRC: Bool) throws {
        let (offset, payload) = try recordFrame(record, inSegment: segment, of: path)
        let needle = Array("\"vm/t-".utf8)
        guard let i = (0...(payload.count - needle.count)).first(where: { Array(payload[$0..<($0 + needle.count)]) == needle }) else {
            throw Files.Failure(description: "record \(record) has no target vm/t-")
        }
        var changed = payload
        changed[i + 4] = UInt8(ascii: "x")
        if recomputeCRC {
            try Files.overwrite(Frame.encode(changed), inSegment: segment, at: offset, in: path)
        } else {
            try Files.overwrite([changed[i + 4]], inSegment: segment, at: offset + Frame.headerSize + i + 4, in: path)
        }
        let report = try Files.verify(path)
        #expect(!report.isClean, "the change was not seen by the verifier")
    }

    /// Opening `path` is refused as tampering, and no file of it changed.
    static func expectRefusedUnchanged(_ path: String, options: AuditAppender.Options = AuditAppender.Options(),
                                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = try Files.snapshot(path)
        let error = Files.openingError(path, options: options)
        #expect(Files.isTampered(error?.kind), "opened, or refused otherwise: \(error?.description ?? "opened")", sourceLocation: sourceLocation)
        #expect(try Files.snapshot(path) == before, "the refused open changed the directory", sourceLocation: sourceLocation)
        // Refused again: nothing was repaired meanwhile.
        #expect(Files.isTampered(Files.openingError(path, options: options)?.kind), sourceLocation: sourceLocation)
    }

    @Test func aMissingMiddleSegmentIsRefused() throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        var small = AuditAppender.Options()
        small.segmentBytes = 4096
        try Self.closedLog(path, appends: 60, options: small)
        let numbers = try AuditDirectory.segments(in: path)
        #expect(numbers.count >= 4)
        try removeFile(Files.segmentPath(path, 2))
        let before = try Files.snapshot(path)
        let error = Files.openingError(path, options: small)
        guard case .tampered(let problems)? = error?.kind else {
            Issue.record("opened, or refused otherwise: \(error?.description ?? "opened")")
            return
        }
        #expect(problems == [.missingSegment(2)])
        #expect(try Files.snapshot(path) == before)
    }

    @Test func aSecondAppenderOnAnOpenLogIsRefused() throws {
        let dir = try Self.scratch()
        defer { Self.remove(dir) }
        let path = dir + "/log"
        let log = try AuditAppender.open(path)
        let error = Files.openingError(path)
        #expect(error?.kind == .locked, "\(error?.description ?? "opened")")
        // The refused open left the holder's lock alone: still held, the first appender still works.
        #expect(pathExists(path + "/" + AuditDirectory.lockFile))
        #expect(Files.openingError(path)?.kind == .locked)
        #expect(try log.append(Files.entry("vm/still-mine")) == 1)
        try log.close()
        #expect(Files.openingError(path) == nil)
        let report = try Files.verify(path)
        #expect(report.isClean && report.records == 5, "\(report.problems)")   // start, 1, stop; start, stop
    }
}
