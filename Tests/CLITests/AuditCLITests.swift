import AuditLog
import AuditStore
import Foundation
import HostOS
import HostTestSupport
import Testing

// Issue 12, the tamper-evident audit log, from the command line: `bulkhead audit verify`,
// `checkpoint`, `tail` and `prove` over real logs (made by bulkhead-audit-writer, then tampered
// with the way an attacker with write access to the files would), and `bulkhead run --audit-log`.

/// `bulkhead-audit-writer`, built next to `bulkhead`: makes a real log quickly.
private let auditWriter = String(binary.dropLast("bulkhead".count)) + "bulkhead-audit-writer"

/// A new, empty directory of the test's own (mode 0700); the caller removes it.
private func auditScratch(_ name: String) throws -> String {
    let dir = NSTemporaryDirectory() + "bh-audit-\(name)-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    return dir
}

/// Appends `writers` × `records` records to the log in `dir` (created if absent) with the writer,
/// which also writes its `log.start` and `log.stop`; returns how many records it added.
@discardableResult
private func writeAuditLog(_ dir: String, writers: Int = 4, records: Int = 25, segmentBytes: Int = 4000,
                           sourceLocation: SourceLocation = #_sourceLocation) throws -> Int {
    let r = try bulkhead([dir, "--writers", "\(writers)", "--records", "\(records)", "--segment-bytes", "\(segmentBytes)"],
                         executable: auditWriter)
    try #require(r.status == 0, "bulkhead-audit-writer: \(r.stderr)", sourceLocation: sourceLocation)
    let lines = r.stdout.split(separator: "\n")
    #expect(lines.filter { $0.hasPrefix("ack ") }.count == writers * records, sourceLocation: sourceLocation)
    #expect(lines.last == "closed", sourceLocation: sourceLocation)
    return writers * records + 2
}

/// A clean log of 102 records over several segments, in a scratch directory of its own.
private func cleanLog(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> (scratch: String, log: String, records: Int) {
    let scratch = try auditScratch(name)
    let log = scratch + "/log"
    let records = try writeAuditLog(log, sourceLocation: sourceLocation)
    return (scratch, log, records)
}

/// One frame of a segment, found by the layout alone: u32 LE length, u32 LE CRC32C, payload.
private struct RawFrame {
    var offset: Int
    var payload: [UInt8]
    var end: Int { offset + 8 + payload.count }
    /// A payload that begins with "{" is a record; anything else a checkpoint note.
    var isRecord: Bool { payload.first == UInt8(ascii: "{") }
    var record: AuditRecord? { isRecord ? try? AuditRecord.parse(payload) : nil }
    var sequence: UInt64? { record?.sequence }
}

private func rawFrames(_ bytes: [UInt8]) -> [RawFrame] {
    var out: [RawFrame] = [], at = 0
    func u32(_ o: Int) -> Int { (0..<4).reduce(0) { $0 | Int(bytes[o + $1]) << (8 * $1) } }
    while at + 8 <= bytes.count {
        let length = u32(at)
        guard length > 0, at + 8 + length <= bytes.count else { break }
        out.append(RawFrame(offset: at, payload: Array(bytes[(at + 8)..<(at + 8 + length)])))
        at += 8 + length
    }
    return out
}

private func segmentPath(_ dir: String, _ n: Int) -> String { dir + "/" + AuditDirectory.segmentName(n) }
private func readBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
private func writeBytes(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

/// Every segment's frames, in order (segments numbered from 0 with no gap).
private func logFrames(_ dir: String) throws -> [[RawFrame]] {
    let count = try FileManager.default.contentsOfDirectory(atPath: dir).filter { AuditDirectory.segmentNumber($0) != nil }.count
    return try (0..<count).map { rawFrames(try readBytes(segmentPath(dir, $0))) }
}

private func int(_ value: Any?) -> Int? { (value as? NSNumber)?.intValue ?? value as? Int }

/// `bulkhead audit verify DIR --format json` and its one JSON object.
private struct JSONReport {
    var status: Int32
    var report: [String: Any]
    var problems: [[String: Any]]
}

private func verifyJSON(_ dir: String, _ extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws -> JSONReport {
    let r = try bulkhead(["audit", "verify", dir, "--format", "json"] + extra)
    let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
    try #require(lines.count == 2 && lines[1].isEmpty, "one JSON object a line: \(r.stdout) \(r.stderr)", sourceLocation: sourceLocation)
    let report = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any], sourceLocation: sourceLocation)
    #expect(Set(report.keys) == ["records", "checkpoints", "size", "torn_tail", "problems"], sourceLocation: sourceLocation)
    let problems = try #require(report["problems"] as? [[String: Any]], "\(report)", sourceLocation: sourceLocation)
    return JSONReport(status: r.status, report: report, problems: problems)
}

/// Verifies the log in both forms and expects exactly one problem: exit status 1, `kind` in the
/// JSON report, and a text report naming it with `words`. Returns the problem and the report.
@discardableResult
private func expectOneProblem(_ dir: String, _ extra: [String] = [], kind: String, words: [String],
                              sourceLocation: SourceLocation = #_sourceLocation) throws -> (problem: [String: Any], report: [String: Any]) {
    let v = try verifyJSON(dir, extra, sourceLocation: sourceLocation)
    #expect(v.status == 1, "\(v.report)", sourceLocation: sourceLocation)
    #expect(v.problems.map { $0["kind"] as? String } == [kind], "\(v.report)", sourceLocation: sourceLocation)
    let text = try bulkhead(["audit", "verify", dir] + extra)
    #expect(text.status == 1, "\(text.stdout)\(text.stderr)", sourceLocation: sourceLocation)
    let named = text.stdout.split(separator: "\n").filter { $0.hasPrefix("problem: ") }
    #expect(named.count == 1, "\(text.stdout)", sourceLocation: sourceLocation)
    for w in words { #expect(named.first?.contains(w) == true, "'\(w)' not in:\n\(text.stdout)", sourceLocation: sourceLocation) }
    #expect(text.stdout.hasSuffix("NOT clean: 1 problem\n"), "\(text.stdout)", sourceLocation: sourceLocation)
    return (v.problems.first ?? [:], v.report)
}

/// The log's own verifier key.
private func logKey(_ log: String) throws -> NoteVerifierKey { try AuditDirectory.verifierKey(at: log + "/" + AuditDirectory.publicKeyFile) }

/// A signed checkpoint note's checkpoint, checked against `key`.
private func checkedCheckpoint(_ note: [UInt8], key: NoteVerifierKey, sourceLocation: SourceLocation = #_sourceLocation) throws -> Checkpoint {
    switch AuditVerifier.checkpoint(note, key: key) {
    case .success(let c): return c
    case .failure(let why):
        Issue.record("the checkpoint does not verify: \(why)", sourceLocation: sourceLocation)
        throw why
    }
}

private func base64(_ value: Any?, sourceLocation: SourceLocation = #_sourceLocation) throws -> [UInt8] {
    let text = try #require(value as? String, sourceLocation: sourceLocation)
    return [UInt8](try #require(Data(base64Encoded: text), "not base64: \(text)", sourceLocation: sourceLocation))
}

/// What a directory holds, without opening anything that could block: each entry's kind, and a
/// regular file's bytes or a link's target.
private func snapshot(_ dir: String) throws -> [String: String] {
    var out: [String: String] = [:]
    for name in try FileManager.default.contentsOfDirectory(atPath: dir) {
        let path = dir + "/" + name
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        let type = attributes[.type] as? FileAttributeType
        var what = "\(type.map { $0.rawValue } ?? "?") \(attributes[.posixPermissions] ?? "?")"
        if type == .typeRegular { what += " " + (try Data(contentsOf: URL(fileURLWithPath: path))).base64EncodedString() }
        if type == .typeSymbolicLink { what += " -> " + (try FileManager.default.destinationOfSymbolicLink(atPath: path)) }
        if type == .typeDirectory { what += " " + (try snapshot(path)).sorted { $0.key < $1.key }.description }
        out[name] = what
    }
    return out
}

@Suite struct AuditCLITests {
    // MARK: verify

    @Test func cleanLogVerifiesCleanWithTheWritersCounts() throws {
        let (scratch, log, records) = try cleanLog("clean")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let segments = try logFrames(log)
        #expect(segments.count >= 3, "small segments: \(segments.count)")
        let all = segments.flatMap { $0 }
        #expect(all.filter(\.isRecord).count == records)
        #expect(all.compactMap(\.sequence) == (0..<UInt64(records)).map { $0 })
        let checkpoints = all.filter { !$0.isRecord }.count
        #expect(checkpoints >= segments.count, "every segment ends with a checkpoint")

        let text = try bulkhead(["audit", "verify", log])
        #expect(text.status == 0, "\(text.stdout)\(text.stderr)")
        #expect(text.stdout.contains("\(records) records, \(checkpoints) checkpoints; the latest covers \(records) records\n"), "\(text.stdout)")
        #expect(text.stdout.hasSuffix("verified clean\n"), "\(text.stdout)")
        #expect(!text.stdout.contains("problem"))

        let v = try verifyJSON(log)
        #expect(v.status == 0)
        #expect(int(v.report["records"]) == records)
        #expect(int(v.report["checkpoints"]) == checkpoints)
        #expect(int(v.report["size"]) == records)
        #expect(v.report["torn_tail"] as? Bool == false)
        #expect(v.problems.isEmpty)

        // An auditor's own copy of the key gives the same answer.
        let held = scratch + "/auditor.pub"
        try FileManager.default.copyItem(atPath: log + "/log.pub", toPath: held)
        let independent = try bulkhead(["audit", "verify", log, "--key", held])
        #expect(independent.status == 0 && independent.stdout.hasSuffix("verified clean\n"), "\(independent.stdout)\(independent.stderr)")
        #expect(independent.stdout.contains(held))
    }

    /// The tail of an append cut off by a crash is not tampering: the log verifies clean with
    /// `torn_tail`, and the next appender cuts it back and records that it did.
    @Test func tornTailIsReportedButClean() throws {
        let (scratch, log, records) = try cleanLog("torn")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let last = try logFrames(log).count - 1
        let path = segmentPath(log, last)
        let half = Array(Frame.encode(Array("{\"half\":1}".utf8)).prefix(11))
        try writeBytes(try readBytes(path) + half, path)
        let v = try verifyJSON(log)
        #expect(v.status == 0 && v.problems.isEmpty, "\(v.report)")
        #expect(v.report["torn_tail"] as? Bool == true)
        #expect(int(v.report["records"]) == records)
        let text = try bulkhead(["audit", "verify", log])
        #expect(text.status == 0 && text.stdout.contains("cut off by a crash") && text.stdout.hasSuffix("verified clean\n"), "\(text.stdout)")

        let more = try writeAuditLog(log, writers: 1, records: 1)
        let after = try verifyJSON(log)
        #expect(after.status == 0 && after.report["torn_tail"] as? Bool == false, "\(after.report)")
        // log.recovered-torn-tail, then the writer's log.start, its record and log.stop.
        #expect(int(after.report["records"]) == records + 1 + more)
        let recovered = try logFrames(log).flatMap { $0 }.compactMap(\.record).filter { $0.action == "log.recovered-torn-tail" }
        #expect(recovered.count == 1 && recovered.first?.sequence == UInt64(records), "\(recovered)")
        #expect(recovered.first?.result?.contains("cut 11 bytes") == true, "\(recovered)")
    }

    // MARK: tampering (each on a log of its own)

    @Test func flippedPayloadByteIsADamagedFrame() throws {
        let (scratch, log, _) = try cleanLog("flip")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = segmentPath(log, 1)
        var bytes = try readBytes(path)
        let frame = try #require(rawFrames(bytes).first { $0.isRecord })
        let seq = try #require(frame.sequence)
        bytes[frame.offset + 8 + frame.payload.count / 2] ^= 0x01
        try writeBytes(bytes, path)
        let (problem, report) = try expectOneProblem(log, kind: "damaged-frame",
                                                     words: ["segment 1, offset \(frame.offset) (record \(seq)): damaged frame", "CRC32C"])
        #expect(int(problem["segment"]) == 1 && int(problem["offset"]) == frame.offset && int(problem["record"]) == Int(seq), "\(problem)")
        #expect(int(report["records"]) == Int(seq))

        // Nothing hands out a checkpoint or a proof of a log that does not verify.
        for args in [["checkpoint", log], ["prove", log, "--index", "0"], ["prove", log, "--consistency-from", "1"]] {
            let r = try bulkhead(["audit"] + args)
            #expect(r.status == 1, "\(args): \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(args): \(r.stdout)")
            #expect(r.stderr.contains("problem: segment 1, offset \(frame.offset) (record \(seq)): damaged frame"), "\(args): \(r.stderr)")
        }
    }

    @Test func deletedRecordFrameIsOutOfSequence() throws {
        let (scratch, log, _) = try cleanLog("delete")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = segmentPath(log, 2)
        var bytes = try readBytes(path)
        let frames = rawFrames(bytes)
        // A record followed by another record in its segment; failing that (every group of one),
        // a record with the checkpoint after it, followed by a record.
        let single = frames.indices.first { $0 + 1 < frames.count && frames[$0].isRecord && frames[$0 + 1].isRecord }.map { ($0, $0 + 1) }
        let pair = frames.indices.first { $0 + 2 < frames.count && frames[$0].isRecord && !frames[$0 + 1].isRecord && frames[$0 + 2].isRecord }
            .map { ($0, $0 + 2) }
        let (k, next) = try #require(single ?? pair)
        let seq = try #require(frames[k].sequence)
        bytes.removeSubrange(frames[k].offset..<frames[next].offset)
        try writeBytes(bytes, path)
        let (problem, report) = try expectOneProblem(log, kind: "out-of-sequence",
                                                     words: ["segment 2, offset \(frames[k].offset): record \(seq) says it is record \(seq + 1)",
                                                             "deleted, inserted or reordered"])
        #expect(int(problem["segment"]) == 2 && int(problem["offset"]) == frames[k].offset && int(problem["record"]) == Int(seq), "\(problem)")
        #expect(int(report["records"]) == Int(seq))
    }

    @Test func corruptedCheckpointSignatureIsABadCheckpoint() throws {
        let (scratch, log, _) = try cleanLog("signature")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let segments = try logFrames(log)
        let path = segmentPath(log, 2)
        var bytes = try readBytes(path)
        let frames = rawFrames(bytes)
        let c = try #require(frames.firstIndex { !$0.isRecord })
        let before = segments[0..<2].joined().filter(\.isRecord).count + frames[..<c].filter(\.isRecord).count
        var note = frames[c].payload
        // The signature line is "— NAME BASE64\n": change a character inside the signature's base64.
        let space = try #require(note.lastIndex(of: UInt8(ascii: " ")))
        let at = space + 1 + 40
        note[at] = note[at] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        bytes.replaceSubrange(frames[c].offset..<frames[c].end, with: Frame.encode(note))
        try writeBytes(bytes, path)
        let (problem, report) = try expectOneProblem(log, kind: "bad-checkpoint",
                                                     words: ["segment 2, offset \(frames[c].offset): bad checkpoint", "does not verify"])
        #expect(int(problem["segment"]) == 2 && int(problem["offset"]) == frames[c].offset && problem["record"] == nil, "\(problem)")
        #expect(int(report["records"]) == before)
    }

    @Test func lastRecordDeletedWithItsCheckpointKeptIsACheckpointSizeProblem() throws {
        let (scratch, log, records) = try cleanLog("last-record")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let last = try logFrames(log).count - 1
        let path = segmentPath(log, last)
        var bytes = try readBytes(path)
        let frames = rawFrames(bytes)
        try #require(frames.count >= 2 && frames.last?.end == bytes.count)
        let stop = frames[frames.count - 2]
        #expect(stop.record?.action == "log.stop" && stop.sequence == UInt64(records - 1) && frames.last?.isRecord == false)
        bytes.removeSubrange(stop.offset..<stop.end)
        try writeBytes(bytes, path)
        let (problem, _) = try expectOneProblem(log, kind: "checkpoint-size",
                                                words: ["segment \(last), offset \(stop.offset): the checkpoint covers \(records) records but \(records - 1) precede it"])
        #expect(int(problem["segment"]) == last && int(problem["offset"]) == stop.offset, "\(problem)")
    }

    @Test func rewrittenRecordWithItsCRCIsARootMismatch() throws {
        let (scratch, log, _) = try cleanLog("rewrite")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = segmentPath(log, 1)
        var bytes = try readBytes(path)
        let frame = try #require(rawFrames(bytes).first { $0.isRecord })
        var record = try #require(frame.record)
        record.target = "vm/not-what-happened"
        bytes.replaceSubrange(frame.offset..<frame.end, with: Frame.encode(record.payload))
        try writeBytes(bytes, path)
        let checkpoint = try #require(rawFrames(bytes).first { $0.offset > frame.offset && !$0.isRecord })
        let size = try checkedCheckpoint(checkpoint.payload, key: try logKey(log)).size
        let (problem, _) = try expectOneProblem(log, kind: "root-mismatch",
                                                words: ["segment 1, offset \(checkpoint.offset): the \(size) records before this checkpoint do not hash to its root"])
        #expect(int(problem["segment"]) == 1 && int(problem["offset"]) == checkpoint.offset, "\(problem)")
    }

    @Test func nonCanonicalRecordIsABadRecord() throws {
        let (scratch, log, _) = try cleanLog("bad-record")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = segmentPath(log, 1)
        var bytes = try readBytes(path)
        let frame = try #require(rawFrames(bytes).first { $0.isRecord })
        let seq = try #require(frame.sequence)
        // Valid JSON with the same meaning, but not in the one encoding (a space), CRC recomputed.
        bytes.replaceSubrange(frame.offset..<frame.end, with: Frame.encode([UInt8(ascii: "{"), UInt8(ascii: " ")] + frame.payload.dropFirst()))
        try writeBytes(bytes, path)
        let (problem, _) = try expectOneProblem(log, kind: "bad-record",
                                                words: ["segment 1, offset \(frame.offset) (record \(seq)): not a version-1 record"])
        #expect(int(problem["record"]) == Int(seq), "\(problem)")
    }

    @Test func segmentCutShortInTheMiddleIsATornFrame() throws {
        let (scratch, log, _) = try cleanLog("cut")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let path = segmentPath(log, 2)
        let bytes = try readBytes(path)
        let lastFrame = try #require(rawFrames(bytes).last)
        try writeBytes(Array(bytes.dropLast(3)), path)
        let (problem, _) = try expectOneProblem(log, kind: "torn-frame",
                                                words: ["segment 2, offset \(lastFrame.offset)", "ends in the middle of a frame, and is not the last"])
        #expect(int(problem["segment"]) == 2 && int(problem["offset"]) == lastFrame.offset, "\(problem)")
    }

    @Test func deletedMiddleSegmentIsMissing() throws {
        let (scratch, log, _) = try cleanLog("missing")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let segments = try logFrames(log)
        try FileManager.default.removeItem(atPath: segmentPath(log, 3))
        let (problem, report) = try expectOneProblem(log, kind: "missing-segment", words: ["segment 3 is missing"])
        #expect(int(problem["segment"]) == 3 && problem["offset"] == nil, "\(problem)")
        #expect(int(report["records"]) == segments[0..<3].joined().filter(\.isRecord).count)
    }

    /// The last segment deleted: what remains is a shorter, valid log (the log alone cannot
    /// show it); a checkpoint saved earlier with `audit checkpoint` does.
    @Test func deletedLastSegmentShowsAgainstASavedCheckpoint() throws {
        let (scratch, log, records) = try cleanLog("truncated")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let saved = scratch + "/saved.checkpoint"
        let c = try bulkhead(["audit", "checkpoint", log])
        try #require(c.status == 0, "\(c.stderr)")
        try writeBytes(c.stdoutBytes, saved)
        let segments = try logFrames(log)
        let remaining = segments.dropLast().joined().filter(\.isRecord).count
        try #require(remaining < records)
        try FileManager.default.removeItem(atPath: segmentPath(log, segments.count - 1))

        let alone = try verifyJSON(log)
        #expect(alone.status == 0 && alone.problems.isEmpty && int(alone.report["records"]) == remaining, "\(alone.report)")
        let (problem, _) = try expectOneProblem(log, ["--checkpoint", saved], kind: "truncated",
                                                words: ["saved checkpoint 0 covers \(records) records and the log has \(remaining)",
                                                        "the last \(records - remaining) were deleted"])
        #expect(int(problem["saved"]) == 0, "\(problem)")
    }

    /// Whoever holds the log's private key (it is in the directory) can rewrite a record and sign
    /// every checkpoint after it again: the log then verifies clean alone, and only a checkpoint
    /// an auditor saved earlier shows the rewrite.
    @Test func logRewrittenWithItsOwnKeyShowsAgainstASavedCheckpoint() throws {
        let (scratch, log, records) = try cleanLog("resigned")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let saved = scratch + "/saved.checkpoint"
        let c = try bulkhead(["audit", "checkpoint", log])
        try #require(c.status == 0, "\(c.stderr)")
        try writeBytes(c.stdoutBytes, saved)

        var keyText = String(decoding: try readBytes(log + "/" + AuditDirectory.keyFile), as: UTF8.self)
        while keyText.hasSuffix("\n") { keyText.removeLast() }
        let signer = try NoteSigner(text: keyText)
        var tree = MerkleFrontier()
        for (n, frames) in try logFrames(log).enumerated() {
            var out: [UInt8] = []
            for f in frames {
                if var record = f.record {
                    if record.sequence == 5 { record.target = "vm/not-what-happened" }
                    tree.append(leafHash: Merkle.leafHash(record.payload))
                    out += Frame.encode(record.payload)
                } else {
                    let old = try checkedCheckpoint(f.payload, key: signer.verifierKey)
                    #expect(old.size == tree.size)
                    let checkpoint = Checkpoint(origin: old.origin, size: tree.size, rootHash: tree.root)
                    out += Frame.encode(Array(try signer.sign(checkpoint.text).utf8))
                }
            }
            try writeBytes(out, segmentPath(log, n))
        }
        let alone = try verifyJSON(log)
        #expect(alone.status == 0 && alone.problems.isEmpty && int(alone.report["records"]) == records, "\(alone.report)")
        let (problem, _) = try expectOneProblem(log, ["--checkpoint", saved], kind: "rewritten",
                                                words: ["saved checkpoint 0: the log's first \(records) records do not hash to its root"])
        #expect(int(problem["saved"]) == 0, "\(problem)")
    }

    /// An auditor's key for another log: the first checkpoint is not signed by it, and reading stops there.
    @Test func anotherLogsKeyRejectsTheFirstCheckpoint() throws {
        let (scratch, log, _) = try cleanLog("other-key")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let other = scratch + "/other"
        try writeAuditLog(other, writers: 1, records: 2)
        let otherKey = try logKey(other)
        #expect(otherKey != (try logKey(log)))
        let first = try #require(try logFrames(log)[0].first { !$0.isRecord })
        let (problem, report) = try expectOneProblem(log, ["--key", other + "/log.pub"], kind: "bad-checkpoint",
                                                     words: ["segment 0, offset \(first.offset): bad checkpoint", "not signed by \(otherKey.name)"])
        #expect(int(problem["segment"]) == 0 && int(problem["offset"]) == first.offset, "\(problem)")
        #expect(int(report["records"]) == 1 && int(report["checkpoints"]) == 0 && int(report["size"]) == 0, "\(report)")

        // And a checkpoint of the other log, saved for this one, is a bad saved checkpoint.
        let c = try bulkhead(["audit", "checkpoint", other])
        try #require(c.status == 0, "\(c.stderr)")
        try writeBytes(c.stdoutBytes, scratch + "/other.checkpoint")
        try expectOneProblem(log, ["--checkpoint", scratch + "/other.checkpoint"], kind: "bad-saved-checkpoint",
                             words: ["saved checkpoint 0", "not signed by"])
    }

    // MARK: checkpoint, prove, tail

    @Test func savedCheckpointIsAcceptedNowAndAfterMoreRecords() throws {
        let (scratch, log, records) = try cleanLog("checkpoint")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let key = try logKey(log)
        let c = try bulkhead(["audit", "checkpoint", log])
        try #require(c.status == 0, "\(c.stderr)")
        let saved = try checkedCheckpoint(c.stdoutBytes, key: key)
        #expect(saved.size == UInt64(records) && saved.origin == key.name)
        // It is the log's latest checkpoint, byte for byte.
        #expect(c.stdoutBytes == (try logFrames(log)).last?.last?.payload)
        let first = scratch + "/first.checkpoint"
        try writeBytes(c.stdoutBytes, first)
        let now = try bulkhead(["audit", "verify", log, "--checkpoint", first])
        #expect(now.status == 0 && now.stdout.hasSuffix("verified clean\n"), "\(now.stdout)\(now.stderr)")

        let more = try writeAuditLog(log, writers: 2, records: 10)
        let later = try verifyJSON(log, ["--checkpoint", first])
        #expect(later.status == 0 && later.problems.isEmpty, "\(later.report)")
        #expect(int(later.report["records"]) == records + more && int(later.report["size"]) == records + more)
        let c2 = try bulkhead(["audit", "checkpoint", log])
        try #require(c2.status == 0, "\(c2.stderr)")
        let newer = try checkedCheckpoint(c2.stdoutBytes, key: key)
        #expect(newer.size == UInt64(records + more))
        let second = scratch + "/second.checkpoint"
        try writeBytes(c2.stdoutBytes, second)
        let both = try bulkhead(["audit", "verify", log, "--checkpoint", second, "--checkpoint", first])
        #expect(both.status == 0 && both.stdout.hasSuffix("verified clean\n"), "\(both.stdout)\(both.stderr)")

        // The auditor's check that the log only grew: a consistency proof from the saved size to
        // the new checkpoint, verified with the saved root.
        let p = try bulkhead(["audit", "prove", log, "--consistency-from", "\(saved.size)", "--format", "json"])
        try #require(p.status == 0, "\(p.stderr)")
        let proof = try #require(try JSONSerialization.jsonObject(with: Data(p.stdout.utf8)) as? [String: Any])
        #expect(try base64(proof["old_root"]) == saved.rootHash)
        let path = try (#require(proof["proof"] as? [Any])).map { try base64($0) }
        #expect(Merkle.verifyConsistency(old: saved.size, new: newer.size, oldRoot: saved.rootHash, newRoot: newer.rootHash, proof: path))
    }

    @Test func proofsVerifyAgainstTheCheckpoint() throws {
        let (scratch, log, records) = try cleanLog("prove")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let key = try logKey(log)
        let payloads = try logFrames(log).flatMap { $0 }.filter(\.isRecord).map(\.payload)
        let leaves = payloads.map(Merkle.leafHash)
        for index in [0, 37, records - 1] {
            let r = try bulkhead(["audit", "prove", log, "--index", "\(index)", "--format", "json"])
            try #require(r.status == 0, "\(index): \(r.stderr)")
            #expect(r.stdout.split(separator: "\n").count == 1)
            let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            let note = Array(try #require(json["checkpoint"] as? String).utf8)
            let parsed = try SignedNote.parse(note)
            #expect(parsed.verify([key]) == .verified(names: [key.name]))
            let checkpoint = try Checkpoint.parse(parsed.text)
            #expect(checkpoint.size == UInt64(records) && int(json["size"]) == records && int(json["index"]) == index)
            let record = Array(try #require(json["record"] as? String).utf8)
            #expect(record == payloads[index], "the record is the log's own")
            #expect(try AuditRecord.parse(record).sequence == UInt64(index))
            let leaf = try base64(json["leaf_hash"])
            #expect(leaf == Merkle.leafHash(record))
            let proof = try (#require(json["proof"] as? [Any])).map { try base64($0) }
            #expect(Merkle.verifyInclusion(leafHash: leaf, index: UInt64(index), size: checkpoint.size, proof: proof, root: checkpoint.rootHash))
            // Not vacuous: another record, or another position, does not verify.
            let other = leaves[(index + 1) % records]
            #expect(!Merkle.verifyInclusion(leafHash: other, index: UInt64(index), size: checkpoint.size, proof: proof, root: checkpoint.rootHash))
            #expect(!Merkle.verifyInclusion(leafHash: leaf, index: UInt64((index + 1) % records), size: checkpoint.size, proof: proof, root: checkpoint.rootHash))
        }
        for index in [records, 1_000_000] {
            let beyond = try bulkhead(["audit", "prove", log, "--index", "\(index)", "--format", "json"])
            #expect(beyond.status == 1 && beyond.stdout.isEmpty, "\(beyond.stdout)")
            #expect(beyond.stderr.contains("record \(index) is not in a tree of \(records) records"), "\(beyond.stderr)")
        }

        for m in [1, 40, 64, records] {
            let r = try bulkhead(["audit", "prove", log, "--consistency-from", "\(m)", "--format", "json"])
            try #require(r.status == 0, "\(m): \(r.stderr)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            let checkpoint = try Checkpoint.parse(try SignedNote.parse(Array(try #require(json["checkpoint"] as? String).utf8)).text)
            let oldRoot = try base64(json["old_root"])
            #expect(int(json["old_size"]) == m && int(json["size"]) == records)
            #expect(oldRoot == Merkle.root(Array(leaves[0..<m])), "the old root is the root of the first \(m) records")
            let proof = try (#require(json["proof"] as? [Any])).map { try base64($0) }
            #expect(Merkle.verifyConsistency(old: UInt64(m), new: checkpoint.size, oldRoot: oldRoot, newRoot: checkpoint.rootHash, proof: proof))
            if m < records {
                #expect(!Merkle.verifyConsistency(old: UInt64(m), new: checkpoint.size, oldRoot: Merkle.root(Array(leaves[0..<(m + 1)])),
                                                  newRoot: checkpoint.rootHash, proof: proof))
            }
        }
        let rollback = try bulkhead(["audit", "prove", log, "--consistency-from", "\(records + 1)"])
        #expect(rollback.status == 1 && rollback.stderr.contains("a tree of \(records + 1) records cannot be a prefix of one of \(records)"), "\(rollback.stderr)")
        let neither = try bulkhead(["audit", "prove", log])
        #expect(neither.status == 64 && neither.stderr.contains("give --index or --consistency-from"), "\(neither.stderr)")
    }

    @Test func tailPrintsExactlyTheLastRecords() throws {
        let (scratch, log, records) = try cleanLog("tail")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let payloads = try logFrames(log).flatMap { $0 }.filter(\.isRecord).map(\.payload)
        let r = try bulkhead(["audit", "tail", log, "-n", "3"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdoutBytes == Array(payloads.suffix(3).joined(separator: [0x0a])) + [0x0a], "\(r.stdout)")
        let parsed = try r.stdout.split(separator: "\n").map { try AuditRecord.parse(Array($0.utf8)) }
        #expect(parsed.map(\.sequence) == [records - 3, records - 2, records - 1].map(UInt64.init))
        #expect(parsed.last?.action == "log.stop")

        let all = try bulkhead(["audit", "tail", log, "-n", "1000"])
        #expect(all.status == 0 && all.stdoutBytes == Array(payloads.joined(separator: [0x0a])) + [0x0a])
        let none = try bulkhead(["audit", "tail", log, "-n", "0"])
        #expect(none.status == 0 && none.stdout.isEmpty)
        for n in ["-1", "1000001", "many"] {
            let bad = try bulkhead(["audit", "tail", log, "-n", n])
            #expect(bad.status == 64 && bad.stdout.isEmpty, "-n \(n): \(bad.status) \(bad.stderr)")
            #expect(bad.stderr.contains("Error"), "-n \(n): \(bad.stderr)")
        }
    }

    // MARK: hostile inputs

    /// Each is a clear error (exit 2, or 64 for usage), never blocks, and changes nothing.
    @Test(.timeLimit(.minutes(2))) func hostileInputsAreClearErrorsAndChangeNothing() throws {
        let (scratch, log, _) = try cleanLog("hostile")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let fifo = scratch + "/fifo", file = scratch + "/file", missing = scratch + "/missing", dir = scratch + "/dir"
        #expect(mkfifo(fifo, 0o600) == 0)
        try writeBytes(Array("not a log\n".utf8), file)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        try writeBytes(Array("garbage+garbage\n".utf8), scratch + "/garbage.pub")
        // A copy of the log whose segment 3 is a symbolic link to the real file.
        let linked = scratch + "/linked"
        try FileManager.default.copyItem(atPath: log, toPath: linked)
        try FileManager.default.moveItem(atPath: segmentPath(linked, 3), toPath: scratch + "/segment3")
        try FileManager.default.createSymbolicLink(atPath: segmentPath(linked, 3), withDestinationPath: scratch + "/segment3")
        let before = try snapshot(scratch)

        let tools: [[String]] = [["verify"], ["checkpoint"], ["tail"], ["prove", "--index", "0"]]
        var cases: [(args: [String], words: [String])] = []
        for t in tools {
            let key = t[0] == "tail" ? [] : ["--key", log + "/log.pub"]
            cases.append(([t[0], fifo] + t.dropFirst(), [fifo]))
            cases.append(([t[0], fifo] + t.dropFirst() + key, [fifo, "Not a directory"]))
            cases.append(([t[0], file] + t.dropFirst() + key, [file, "Not a directory"]))
            cases.append(([t[0], missing] + t.dropFirst(), [missing, "No such file or directory"]))
            cases.append(([t[0], missing] + t.dropFirst() + key, [missing, "No such file or directory"]))
            cases.append(([t[0], linked] + t.dropFirst(), [segmentPath(linked, 3), "is a symbolic link"]))
            if t[0] != "tail" {
                cases.append(([t[0], log] + t.dropFirst() + ["--key", fifo], ["the verifier key \(fifo) is a FIFO"]))
                cases.append(([t[0], log] + t.dropFirst() + ["--key", dir], ["the verifier key \(dir) is a directory"]))
                cases.append(([t[0], log] + t.dropFirst() + ["--key", scratch + "/garbage.pub"], ["garbage.pub is not a verifier key"]))
                cases.append(([t[0], log] + t.dropFirst() + ["--key", missing], [missing, "No such file or directory"]))
            }
        }
        cases.append((["verify", log, "--checkpoint", dir], ["the saved checkpoint \(dir) is a directory"]))
        cases.append((["verify", log, "--checkpoint", fifo], ["the saved checkpoint \(fifo) is a FIFO"]))
        cases.append((["verify", log, "--checkpoint", missing], [missing, "No such file or directory"]))
        for (args, words) in cases {
            let r = try bulkhead(["audit"] + args)
            #expect(r.status == 2, "\(args): status \(r.status): \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(args): \(r.stdout)")
            for w in words { #expect(r.stderr.contains(w), "\(args): '\(w)' not in: \(r.stderr)") }
            #expect(r.stderr.split(separator: "\n").count == 1, "\(args): one line: \(r.stderr)")
        }
        for args in [["verify"], ["tail"], ["verify", log, "--format", "yaml"], ["prove", log, "--index", "-1"],
                     ["prove", log, "--index", "1", "--consistency-from", "1"], ["verify", log, "--checkpoint"], ["tail", log, "--follow", "-n"]] {
            let r = try bulkhead(["audit"] + args)
            #expect(r.status == 64 && r.stdout.isEmpty && r.stderr.contains("Error"), "\(args): status \(r.status): \(r.stderr)")
        }
        #expect(try snapshot(scratch) == before, "nothing may change")
        #expect(!FileManager.default.fileExists(atPath: missing))
    }
}

// MARK: bulkhead run --audit-log

extension AuditCLITests {
    /// `bulkhead run --audit-log DIR`: jailed as root (where the jail runs), `--no-jail` otherwise.
    @Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
    struct Runs {
        static let mode = TestHost.isRoot ? ["--worker-sha256", workerDigest] : ["--no-jail", "--worker-sha256", workerDigest]

        /// The log's records, as `bulkhead audit tail` prints them.
        func records(_ log: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [AuditRecord] {
            let r = try bulkhead(["audit", "tail", log, "-n", "1000"])
            try #require(r.status == 0, "\(r.stderr)", sourceLocation: sourceLocation)
            return try r.stdout.split(separator: "\n").map { try AuditRecord.parse(Array($0.utf8)) }
        }

        /// Checks that the log verifies clean, and returns each run's records in order: those of
        /// its operation, which must follow each other from its vm.run intent to its vm.run outcome.
        func runs(_ log: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [[AuditRecord]] {
            let v = try bulkhead(["audit", "verify", log])
            #expect(v.status == 0 && v.stdout.hasSuffix("verified clean\n"), "\(v.stdout)\(v.stderr)", sourceLocation: sourceLocation)
            let all = try records(log, sourceLocation: sourceLocation)
            #expect(all.map(\.sequence) == (0..<UInt64(all.count)).map { $0 }, sourceLocation: sourceLocation)
            var out: [[AuditRecord]] = []
            for (i, r) in all.enumerated() where r.action == "vm.run" && r.stage == .intent {
                let mine = all.filter { $0.operation == r.operation }
                #expect(Array(all[i..<min(all.count, i + mine.count)]) == mine, "one run's records follow each other", sourceLocation: sourceLocation)
                #expect(mine.last?.action == "vm.run" && mine.last?.stage == .outcome, "\(mine)", sourceLocation: sourceLocation)
                #expect(mine.allSatisfy { $0.actor == .local(uid: getuid(), gid: getgid(), pid: $0.actorPID) && $0.allowed && $0.tenant == nil },
                        sourceLocation: sourceLocation)
                #expect(Set(mine.map(\.actorPID)).count == 1 && Set(mine.map(\.target)).count == 1, sourceLocation: sourceLocation)
                #expect(mine.dropFirst().allSatisfy { $0.stage == .outcome && $0.result != nil }, sourceLocation: sourceLocation)
                out.append(mine)
            }
            #expect(all.filter { $0.actor != .system }.count == out.map(\.count).reduce(0, +), "every run record is under a run", sourceLocation: sourceLocation)
            return out
        }

        @Test func helloRunIsRecordedUnderOneOperation() throws {
            let scratch = try auditScratch("run-hello")
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let log = scratch + "/log"
            for _ in 0..<2 {
                let r = try bulkhead(["run", "--audit-log", log, guests + "/hello.elf"] + Self.mode)
                #expect(r.status == 0, "\(r.stderr)")
                #expect(r.stdout.contains("Hello from a Bulkhead guest"))
            }
            let all = try records(log)
            #expect(all.first?.action == "log.start" && all.first?.result?.hasPrefix("created ") == true)
            #expect(all.last?.action == "log.stop")
            let found = try runs(log)
            #expect(found.count == 2)
            #expect(Set(found.compactMap { $0.first?.operation }).count == 2, "each run has an operation of its own")
            for run in found {
                #expect(run.map(\.action) == ["vm.run", "vm.configured", "vm.started", "vm.ended", "vm.run"], "\(run.map(\.action))")
                #expect(run.map(\.stage) == [.intent, .outcome, .outcome, .outcome, .outcome])
                #expect(run.first?.result == nil && run.first?.target == "vm/hello.elf")
                #expect(run[1].result?.contains("hello.elf with 64 MiB, 1 vCPU") == true, "\(run[1])")
                #expect(run[1].result?.hasSuffix(TestHost.isRoot ? ", jailed" : ", not jailed") == true, "\(run[1])")
                #expect(run[2].result?.hasPrefix("worker pid ") == true, "\(run[2])")
                #expect(run[3].result == "exited with status 0")
                #expect(run.last?.result == "exit status 0")
            }
        }

        @Test func guestFaultIsASecurityEvent() throws {
            let scratch = try auditScratch("run-fault")
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let log = scratch + "/log"
            let r = try bulkhead(["run", "--audit-log", log, guests + "/fault-ud.elf"] + Self.mode)
            #expect(r.status == 134, "\(r.stderr)")
            let run = try #require(try runs(log).first)
            #expect(run.map(\.action) == ["vm.run", "vm.configured", "vm.started", "vm.guest-fault", "vm.run"], "\(run.map(\.action))")
            #expect(run[3].result?.contains("invalid opcode (#UD)") == true, "\(run[3])")
            #expect(run.last?.result == "exit status 134")
        }

        @Test func timeoutIsASecurityEvent() throws {
            let scratch = try auditScratch("run-timeout")
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let log = scratch + "/log"
            let r = try bulkhead(["run", "--audit-log", log, guests + "/loop.elf", "--timeout", "0.3"] + Self.mode)
            #expect(r.status == 124, "\(r.stderr)")
            let run = try #require(try runs(log).first)
            #expect(run.map(\.action) == ["vm.run", "vm.configured", "vm.started", "vm.timeout", "vm.run"], "\(run.map(\.action))")
            #expect(run[3].result?.contains("still running after 0.3 s") == true, "\(run[3])")
            #expect(run.last?.result == "exit status 124")
        }

        /// The worker's forbidden system call (made after its jail is complete, before the VM
        /// starts) is recorded by number and name.
        @Test(.requiresRoot) func seccompViolationIsASecurityEvent() throws {
            let scratch = try auditScratch("run-seccomp")
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let log = scratch + "/log"
            let r = try bulkhead(["run", "--audit-log", log, "--worker-sha256", workerDigest, "--jail-probe", "violation"])
            #expect(r.status == 159, "\(r.stderr)")
            #expect(!r.stdout.contains("Hello from a Bulkhead guest"))
            let run = try #require(try runs(log).first)
            #expect(run.map(\.action) == ["vm.run", "vm.configured", "vm.seccomp-violation", "vm.run"], "\(run.map(\.action))")
            #expect(run[2].result?.hasPrefix("system call 41 (socket): ") == true, "\(run[2])")
            #expect(run.last?.result == "exit status 159")
        }

        @Test func badImageIsRefusedAndRecorded() throws {
            let scratch = try auditScratch("run-refused")
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let log = scratch + "/log"
            let r = try bulkhead(["run", "--audit-log", log, scratch + "/no-such-guest.elf"] + Self.mode)
            #expect(r.status != 0)
            #expect(r.stderr.contains("cannot read guest image \(scratch)/no-such-guest.elf"), "\(r.stderr)")
            let run = try #require(try runs(log).first)
            #expect(run.map(\.action) == ["vm.run", "vm.refused", "vm.run"], "\(run.map(\.action))")
            #expect(run.first?.target == "vm/no-such-guest.elf")
            #expect(run.last?.result == "exit status \(r.status)")
        }

        /// Fail closed: a run whose intent cannot be recorded does not start.
        @Test func unusableAuditLogStopsTheRun() throws {
            let scratch = try auditScratch("run-unusable")
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let fifo = scratch + "/fifo", open = scratch + "/open", held = scratch + "/held", tampered = scratch + "/tampered"
            #expect(mkfifo(fifo, 0o600) == 0)
            try FileManager.default.createDirectory(atPath: open, withIntermediateDirectories: false)
            #expect(chmod(open, 0o777) == 0)
            // A log another appender holds, and a log whose bytes below a checkpoint were changed.
            try writeAuditLog(held, writers: 1, records: 1)
            let lock = try #require(try LockFile.acquire(held + "/" + AuditDirectory.lockFile))
            defer { lock.release() }
            // (small segments: the damage is in a segment before the last)
            try writeAuditLog(tampered, writers: 1, records: 3, segmentBytes: 500)
            try #require(try logFrames(tampered).count > 1)
            let segment = segmentPath(tampered, 0)
            var bytes = try readBytes(segment)
            let frame = try #require(rawFrames(bytes).first { $0.isRecord })
            bytes[frame.offset + 20] ^= 0x01
            try writeBytes(bytes, segment)
            let before = try snapshot(scratch)

            for (dir, why) in [(fifo, "is a FIFO, not a directory"), (open, "may be written by others (mode 777)"),
                               (held, "another process is appending"), (tampered, "was changed below its last checkpoint")] {
                let r = try bulkhead(["run", "--audit-log", dir, guests + "/hello.elf"] + Self.mode)
                #expect(r.status == 70, "\(dir): \(r.stderr)")
                #expect(r.stderr.contains("the VM was not started: its audit record could not be written"), "\(dir): \(r.stderr)")
                #expect(r.stderr.contains(why), "\(dir): \(r.stderr)")
                #expect(!r.stdout.contains("Hello from a Bulkhead guest"), "\(dir): the guest ran")
            }
            #expect(try snapshot(scratch) == before, "nothing may change")
        }

        /// A log whose last segment was changed below a checkpoint that follows the change is
        /// tampered too: acknowledged records are never cut back, and the run does not start.
        @Test
        func logTamperedInItsLastSegmentStopsTheRun() throws {
            let scratch = try auditScratch("run-tampered-last")
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let log = scratch + "/log"
            try writeAuditLog(log, writers: 1, records: 3)
            try #require(try logFrames(log).count == 1, "one segment")
            let segment = segmentPath(log, 0)
            var bytes = try readBytes(segment)
            let frame = try #require(rawFrames(bytes).first { $0.isRecord })
            bytes[frame.offset + 20] ^= 0x01
            try writeBytes(bytes, segment)
            let problem = try verifyJSON(log).problems.first
            #expect(problem?["kind"] as? String == "damaged-frame" && int(problem?["record"]) == 0, "\(String(describing: problem))")
            let before = try snapshot(scratch)

            let r = try bulkhead(["run", "--audit-log", log, guests + "/hello.elf"] + Self.mode)
            #expect(r.status == 70, "\(r.stderr)")
            #expect(r.stderr.contains("the VM was not started: its audit record could not be written"), "\(r.stderr)")
            #expect(r.stderr.contains("was changed below its last checkpoint"), "\(r.stderr)")
            #expect(!r.stdout.contains("Hello from a Bulkhead guest"), "the guest ran")
            #expect(try snapshot(scratch) == before, "the evidence must be kept")
        }
    }
}

private extension AuditRecord {
    var actorPID: Int32 {
        if case .local(_, _, let pid) = actor { return pid }
        return -1
    }
}
