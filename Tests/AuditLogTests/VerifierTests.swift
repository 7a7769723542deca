import AuditLog
import TestSupport
import Testing

/// The verifier against every tampering the issue lists, one case each, and against valid logs
/// (no false alarms). Logs are built as the appender writes them: records, then after each group
/// the checkpoint that covers them; segments end after a checkpoint.
@Suite struct VerifierTests {
    struct Log {
        var signer: NoteSigner
        var payloads: [[UInt8]]
        /// Each segment's frames: a record's payload, or a checkpoint's note.
        var frames: [[[UInt8]]]
        var segments: [[UInt8]] { frames.map { $0.flatMap(Frame.encode) } }
        /// The signed checkpoint at `size` (as an auditor would have saved it).
        func checkpoint(_ size: Int) throws -> [UInt8] {
            Array(try signer.sign(Checkpoint(origin: signer.verifierKey.name, size: UInt64(size),
                                             rootHash: Merkle.root(payloads[0..<size].map(Merkle.leafHash))).text).utf8)
        }
    }

    static func record(_ i: Int, action: String = "vm.start") -> [UInt8] {
        AuditRecord(sequence: UInt64(i), timeNanoseconds: 1_764_990_000_000_000_000 + Int64(i), bootID: "boot-1",
                    actor: i % 2 == 0 ? .system : .local(uid: 0, gid: 0, pid: 100 + Int32(i)), action: action,
                    target: "vm/\(i % 3)", allowed: true, reason: "host admin", stage: i % 2 == 0 ? .intent : .outcome,
                    operation: "op-\(i / 2)", result: i % 2 == 0 ? nil : "ok").payload
    }

    /// `count` records with a checkpoint after each size in `sizes` (and at `count`), a segment
    /// ending after every `perSegment`-th checkpoint.
    static func log(count: Int = 20, sizes: [Int] = [5, 12], perSegment: Int = 1) throws -> Log {
        let signer = try NoteSigner(name: "bulkhead.test/log", privateKey: .init())
        var l = Log(signer: signer, payloads: (0..<count).map { record($0) }, frames: [[]])
        var done = 0, inSegment = 0
        for size in Set(sizes + [count]).sorted() {
            l.frames[l.frames.count - 1] += l.payloads[done..<size]
            l.frames[l.frames.count - 1].append(try l.checkpoint(size))
            done = size
            inSegment += 1
            if inSegment == perSegment && size < count { l.frames.append([]); inSegment = 0 }
        }
        return l
    }

    func verify(_ l: Log, saved: [[UInt8]] = []) -> AuditVerifier.Report {
        AuditVerifier.verify(segments: l.segments, key: l.signer.verifierKey, savedCheckpoints: saved)
    }

    func at(_ s: Int, _ o: Int) -> AuditVerifier.Location { .init(segment: s, offset: o) }
    /// The byte offset of frame `f` in segment `s`.
    func offset(_ l: Log, _ s: Int, _ f: Int) -> Int { l.frames[s][0..<f].reduce(0) { $0 + 8 + $1.count } }

    @Test func aValidLogVerifiesClean() throws {
        let l = try Self.log()
        let r = verify(l, saved: [try l.checkpoint(0), try l.checkpoint(20), try l.checkpoint(7)])
        #expect(r.isClean && r.records == 20 && r.checkpoints == 3 && r.latestCheckpoint?.size == 20 && !r.tornTail, "\(r.problems)")
        #expect(r.latestNote == (try l.checkpoint(20)) && r.end == at(2, l.segments[2].count) && r.stoppedAt == nil)
    }

    @Test func aModifiedPayloadByteOrCRCIsADamagedFrame() throws {
        let l = try Self.log()
        var segments = l.segments
        segments[1][8 + 20] ^= 0x01                  // a payload byte of record 5
        var p = AuditVerifier.verify(segments: segments, key: l.signer.verifierKey).problems
        #expect(p.count == 1 && p.first.map { if case .damagedFrame(at(1, 0), 5, _) = $0 { true } else { false } } == true, "\(p)")
        segments = l.segments
        segments[0][4] ^= 0x80                       // the CRC of record 0
        p = AuditVerifier.verify(segments: segments, key: l.signer.verifierKey).problems
        #expect(p.count == 1 && p.first.map { if case .damagedFrame(at(0, 0), 0, _) = $0 { true } else { false } } == true, "\(p)")
    }

    /// A record rewritten with a correct CRC passes the frame check; the tree does not.
    @Test func aRewrittenRecordWithItsCRCFixedBreaksTheRoot() throws {
        var l = try Self.log()
        l.frames[1][2] = Self.record(7, action: "vm.delete")
        #expect(verify(l).problems == [.rootMismatch(at(1, offset(l, 1, 7)), size: 12)])
    }

    @Test func deletedInsertedAndSwappedRecordsAreOutOfSequence() throws {
        var l = try Self.log()
        l.frames[1].remove(at: 3)                                          // record 8 deleted
        #expect(verify(l).problems == [.outOfSequence(at(1, offset(l, 1, 3)), record: 8, sequence: 9)])
        l = try Self.log()
        l.frames[0].insert(Self.record(3, action: "vm.forged"), at: 3)     // a record inserted
        #expect(verify(l).problems == [.outOfSequence(at(0, offset(l, 0, 4)), record: 4, sequence: 3)])
        l = try Self.log()
        l.frames[2].swapAt(1, 2)                                           // records 13 and 14 swapped
        #expect(verify(l).problems == [.outOfSequence(at(2, offset(l, 2, 1)), record: 13, sequence: 14)])
    }

    /// Deleting records before a checkpoint is seen by the log alone; deleting the tail with its
    /// checkpoints leaves a shorter log that is valid in itself, and is seen against a checkpoint
    /// saved earlier (by an auditor or the witness).
    @Test func deletingTheLastRecordsOrASegmentIsSeen() throws {
        let base = try Self.log()
        var l = base
        l.frames[2].remove(at: 7)                                          // the last record, not its checkpoint
        #expect(verify(l).problems == [.checkpointSize(at(2, offset(l, 2, 7)), size: 20, records: 19)])
        l = base
        let saved = try l.checkpoint(20)
        l.frames[2].removeLast(2)                                          // the last record and its checkpoint
        #expect(verify(l).isClean && verify(l, saved: [saved]).problems == [.truncated(savedCheckpoint: 0, size: 20, records: 19)])
        l = base
        l.frames.removeLast(); l.frames[1].removeLast(3)                  // the last ten: 10...19
        #expect(verify(l, saved: [saved]).problems == [.truncated(savedCheckpoint: 0, size: 20, records: 10)])
        l = base
        l.frames.remove(at: 1)                                             // a whole segment in the middle
        #expect(verify(l).problems == [.outOfSequence(at(1, 0), record: 5, sequence: 12)])
        l = base
        l.frames.removeLast()                                              // the whole last segment
        #expect(verify(l).isClean && verify(l, saved: [saved]).problems == [.truncated(savedCheckpoint: 0, size: 20, records: 12)])
    }

    @Test func badAndForeignCheckpointsAreNamed() throws {
        var l = try Self.log()
        var bad = l.frames[1][7]
        bad[bad.count - 10] = bad[bad.count - 10] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        l.frames[1][7] = bad
        #expect(verify(l).problems == [.badCheckpoint(at(1, offset(l, 1, 7)), why: "its signature by bulkhead.test/log does not verify")])
        l = try Self.log()
        let other = try NoteSigner(name: "bulkhead.test/log", privateKey: .init())
        l.frames[2][8] = Array(try other.sign(Checkpoint(origin: "bulkhead.test/log", size: 20, rootHash: Merkle.emptyRoot).text).utf8)
        #expect(verify(l).problems == [.badCheckpoint(at(2, offset(l, 2, 8)), why: "it is not signed by bulkhead.test/log")])
        // A saved checkpoint of a log that was since rewritten (same key, other records).
        l = try Self.log()
        var rewritten = l
        rewritten.payloads[3] = Self.record(3, action: "vm.other")
        let r = verify(l, saved: [try rewritten.checkpoint(12), Array("not a note".utf8)])
        #expect(r.problems.count == 2 && r.problems.contains(.rewritten(savedCheckpoint: 0, size: 12)), "\(r.problems)")
    }

    /// A frame cut at the end of the last segment is a crash's torn tail; elsewhere it is damage.
    @Test func aTornTailIsACrashNotTampering() throws {
        let l = try Self.log()
        var segments = l.segments
        let next = Frame.encode(Self.record(20))
        segments[2] += next[0..<(next.count / 2)]
        let r = AuditVerifier.verify(segments: segments, key: l.signer.verifierKey)
        #expect(r.isClean && r.tornTail && r.records == 20 && r.end == at(2, l.segments[2].count), "\(r.problems)")
        #expect(r.stoppedAboveLastCheckpoint(lastSegment: 2))
        segments[0] = Array(segments[0].dropLast(3))
        let p = AuditVerifier.verify(segments: segments, key: l.signer.verifierKey)
        #expect(p.problems == [.tornFrame(at(0, offset(l, 0, 5)), record: 5)] && !p.stoppedAboveLastCheckpoint(lastSegment: 2))
    }

    /// Random valid logs (any size, any segmenting, any checkpoints) verify clean.
    @Test func randomValidLogsVerifyClean() throws {
        var rng = SplitMix64(seed: 12)
        for _ in 0..<30 {
            let count = Int(rng.next() % 60) + 1
            let sizes = (0..<Int(rng.next() % 6)).map { _ in Int(rng.next() % UInt64(count + 1)) }
            let l = try Self.log(count: count, sizes: sizes, perSegment: Int(rng.next() % 3) + 1)
            let r = verify(l, saved: [try l.checkpoint(Int(rng.next() % UInt64(count + 1)))])
            #expect(r.isClean && r.records == UInt64(count), "\(count) \(sizes): \(r.problems)")
        }
    }
}
