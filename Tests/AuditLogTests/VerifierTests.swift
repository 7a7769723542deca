import AuditLog
import TestSupport
import Testing

/// The verifier against every tampering the issue lists, one case each, and against valid logs
/// (no false alarms).
@Suite struct VerifierTests {
    struct Log {
        var signer: NoteSigner
        var payloads: [[UInt8]]
        var segments: [[UInt8]]
        var checkpoints: [[UInt8]]
    }

    static func record(_ i: Int, action: String = "vm.start") -> [UInt8] {
        AuditRecord(sequence: UInt64(i), timeNanoseconds: 1_764_990_000_000_000_000 + Int64(i), bootID: "boot-1",
                    actor: i % 2 == 0 ? .system : .local(uid: 0, gid: 0, pid: 100 + Int32(i)), action: action,
                    target: "vm/\(i % 3)", allowed: true, reason: "host admin", stage: i % 2 == 0 ? .intent : .outcome,
                    operation: "op-\(i / 2)", result: i % 2 == 0 ? nil : "ok").payload
    }

    /// `count` records in segments cut after every `perSegment`, checkpoints at `sizes`.
    static func log(count: Int = 20, perSegment: Int = 7, sizes: [Int] = [5, 12, 20]) throws -> Log {
        let signer = try NoteSigner(name: "bulkhead.test/log", privateKey: .init())
        let payloads = (0..<count).map { record($0) }
        var segments: [[UInt8]] = []
        for start in stride(from: 0, to: count, by: perSegment) {
            segments.append(payloads[start..<min(start + perSegment, count)].flatMap(Frame.encode))
        }
        let leaves = payloads.map(Merkle.leafHash)
        let checkpoints = try sizes.map { n in
            Array(try signer.sign(Checkpoint(origin: signer.verifierKey.name, size: UInt64(n), rootHash: Merkle.root(leaves[0..<n])).text).utf8)
        }
        return Log(signer: signer, payloads: payloads, segments: segments, checkpoints: checkpoints)
    }

    func verify(_ l: Log) -> AuditVerifier.Report {
        AuditVerifier.verify(segments: l.segments, checkpoints: l.checkpoints, key: l.signer.verifierKey)
    }

    /// Frames of segment `s` with its records replaced by `payloads`.
    func reframe(_ l: inout Log, segment s: Int, _ payloads: [[UInt8]]) { l.segments[s] = payloads.flatMap(Frame.encode) }

    @Test func aValidLogVerifiesClean() throws {
        let r = verify(try Self.log())
        #expect(r.isClean && r.records == 20 && r.latestCheckpoint?.size == 20 && !r.tornTail, "\(r.problems)")
    }

    @Test func aModifiedPayloadByteOrCRCIsADamagedFrame() throws {
        var l = try Self.log()
        l.segments[1][8 + 20] ^= 0x01          // a payload byte of record 7
        #expect(verify(l).problems.first.map { if case .damagedFrame(1, 0, 7, _) = $0 { true } else { false } } == true)
        l = try Self.log()
        l.segments[0][4] ^= 0x80               // the CRC of record 0
        #expect(verify(l).problems.first.map { if case .damagedFrame(0, 0, 0, _) = $0 { true } else { false } } == true)
    }

    /// A record rewritten with a correct CRC passes the frame check; the tree does not.
    @Test func aRewrittenRecordWithItsCRCFixedBreaksTheRoot() throws {
        var l = try Self.log()
        var seg1 = Array(l.payloads[7..<14])
        seg1[2] = Self.record(9, action: "vm.delete")
        reframe(&l, segment: 1, seg1)
        let p = verify(l).problems
        #expect(p == [.rootMismatch(checkpoint: 1, size: 12), .rootMismatch(checkpoint: 2, size: 20)], "\(p)")
    }

    @Test func deletedInsertedAndSwappedRecordsAreOutOfSequence() throws {
        var l = try Self.log()
        reframe(&l, segment: 1, Array(l.payloads[7..<14]).enumerated().filter { $0.offset != 3 }.map(\.element))   // record 10 deleted
        #expect(verify(l).problems.first == .outOfSequence(record: 10, sequence: 11))
        l = try Self.log()
        reframe(&l, segment: 0, Array(l.payloads[0..<3]) + [Self.record(3, action: "vm.forged")] + Array(l.payloads[3..<7]))
        #expect(verify(l).problems.contains(.outOfSequence(record: 4, sequence: 3)))
        l = try Self.log()
        var swapped = Array(l.payloads[14..<20])
        swapped.swapAt(1, 2)
        reframe(&l, segment: 2, swapped)
        #expect(verify(l).problems.first == .outOfSequence(record: 15, sequence: 16))
    }

    @Test func deletingTheLastRecordsOrASegmentIsSeen() throws {
        var l = try Self.log()
        reframe(&l, segment: 2, Array(l.payloads[14..<19]))               // the last record
        #expect(verify(l).problems == [.truncated(checkpoint: 2, size: 20, records: 19)])
        l = try Self.log()
        l.segments[2] = []; reframe(&l, segment: 1, Array(l.payloads[7..<10]))   // the last ten
        #expect(verify(l).problems == [.truncated(checkpoint: 1, size: 12, records: 10), .truncated(checkpoint: 2, size: 20, records: 10)])
        l = try Self.log()
        l.segments.remove(at: 1)                                           // a whole segment
        #expect(verify(l).problems.first == .outOfSequence(record: 7, sequence: 14))
    }

    @Test func badForeignAndRolledBackCheckpointsAreNamed() throws {
        var l = try Self.log()
        var bad = l.checkpoints[1]
        bad[bad.count - 10] = bad[bad.count - 10] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        l.checkpoints[1] = bad
        #expect(verify(l).problems.map { if case .badCheckpoint(1, _) = $0 { true } else { false } } == [true])
        l = try Self.log()
        let other = try NoteSigner(name: "bulkhead.test/log", privateKey: .init())
        l.checkpoints[2] = Array(try other.sign(Checkpoint(origin: "bulkhead.test/log", size: 20, rootHash: Merkle.emptyRoot).text).utf8)
        #expect(verify(l).problems == [.badCheckpoint(index: 2, why: "it is not signed by bulkhead.test/log")])
        l = try Self.log()
        l.checkpoints.append(l.checkpoints[0])                             // size 5 after size 20
        #expect(verify(l).problems == [.checkpointsOutOfOrder(checkpoint: 3, size: 5, previous: 20)])
    }

    /// A frame cut at the end of the last segment, above every checkpoint, is a crash's torn tail.
    @Test func aTornTailAboveTheCheckpointsIsACrashNotTampering() throws {
        var l = try Self.log(sizes: [5, 12])
        let next = Frame.encode(Self.record(20))
        l.segments[2] += next[0..<(next.count / 2)]
        let r = verify(l)
        #expect(r.isClean && r.tornTail && r.records == 20, "\(r.problems)")
        l.segments[0] = Array(l.segments[0].dropLast(3))                   // a torn frame mid-log is damage
        #expect(verify(l).problems.first == .tornFrame(segment: 0, offset: l.payloads[0..<6].reduce(0) { $0 + 8 + $1.count }, record: 6))
    }

    /// Random valid logs (any size, any segmenting, any checkpoints) verify clean.
    @Test func randomValidLogsVerifyClean() throws {
        var rng = SplitMix64(seed: 12)
        for _ in 0..<30 {
            let count = Int(rng.next() % 60) + 1
            let sizes = (0..<Int(rng.next() % 4)).map { _ in Int(rng.next() % UInt64(count + 1)) }.sorted()
            let r = verify(try Self.log(count: count, perSegment: Int(rng.next() % 9) + 1, sizes: sizes))
            #expect(r.isClean && r.records == UInt64(count), "\(count) \(sizes): \(r.problems)")
        }
    }
}
