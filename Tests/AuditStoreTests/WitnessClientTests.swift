import AuditLog
import AuditStore
import Foundation
import HostOS
import Synchronization
import Testing

/// The appender's side of the witness, against witnesses played in process: one that cosigns
/// (WitnessCore), one that cannot be reached, and one that answers garbage. A witness never stops
/// the log; each change of its state is recorded once.
@Suite struct WitnessClientTests {
    /// A witness on a Unix socket in a thread of the test: `answer` decides every request.
    final class FakeWitness: @unchecked Sendable {
        let socket: String
        let listener: FileDescriptor
        let requests = Mutex(0)
        private var thread: OSThread?
        private let stop = Mutex(false)

        init(socket: String, answer: @escaping @Sendable ([UInt8]) -> [UInt8]) throws {
            self.socket = socket
            listener = try UnixSeqpacket.listening(at: socket, mode: 0o600)
            thread = try OSThread.spawn { [self] in
                var connections: [FileDescriptor] = []
                while !stop.withLock({ $0 }) {
                    if let c = try? UnixSeqpacket.accept(listener, timeoutMilliseconds: 20) { connections.append(c) }
                    for c in connections {
                        guard case .message(let m)? = try? c.receiveMessage(maxBytes: 1 << 17, maxDescriptors: 0, timeoutMilliseconds: 0) else { continue }
                        requests.withLock { $0 += 1 }
                        _ = try? c.sendDatagram(answer(m.bytes))
                    }
                }
            }
        }

        func shutDown() { stop.withLock { $0 = true }; thread?.join() }
    }

    static func cosigner(_ log: NoteVerifierKey, _ witness: CosignatureSigner) -> @Sendable ([UInt8]) -> [UInt8] {
        let core = WitnessCore(signer: witness, logs: [log])
        let held = Mutex<WitnessedLog?>(nil)
        return { bytes in
            let prefix = Array("add-checkpoint\n".utf8)
            guard bytes.starts(with: prefix), let r = try? AddCheckpoint.parse(Array(bytes.dropFirst(prefix.count))) else {
                return WitnessAnswer.badRequest("?").encoded
            }
            let current = held.withLock { $0 }
            let d = core.decide(r, current: { _ in current }, now: 1_800_000_000)
            if let a = d.accepted { held.withLock { $0 = a } }
            return d.answer.encoded
        }
    }

    func actions(_ dir: String) throws -> [(String, String)] {
        try AuditTestFiles.records(dir).map { ($0.action, $0.result ?? "") }
    }

    @Test func aCosigningWitnessSeesEveryCheckpointAndTheCopyIsKept() throws {
        let dir = try AppenderTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try AuditAppender.open(dir + "/log")
        try first.close()
        let witness = try CosignatureSigner(name: "bulkhead.test/witness", privateKey: .init())
        let fake = try FakeWitness(socket: dir + "/w.sock", answer: Self.cosigner(first.verifierKey, witness))
        defer { fake.shutDown() }
        var options = AuditAppender.Options()
        options.witness = WitnessEndpoint(socketPath: fake.socket, key: witness.verifierKey)
        let log = try AuditAppender.open(dir + "/log", options: options)
        for i in 0..<20 { try log.append(AuditTestFiles.entry("vm/\(i)")) }
        try log.close()
        #expect(try actions(dir + "/log").allSatisfy { !$0.0.hasPrefix("log.witness") })
        let report = try AuditDirectory.verify(dir + "/log", key: log.verifierKey,
                                               witness: (witness.verifierKey, [try AuditDirectory.read(dir + "/log/witness.cosigned", what: "w", limit: 1 << 16)]))
        #expect(report.isClean && report.records == 24, "\(report.problems)")
        // The copy covers the whole log: the last checkpoint (after log.stop) was cosigned before close returned.
        let cosigned = try SignedNote.parse(try AuditDirectory.read(dir + "/log/witness.cosigned", what: "w", limit: 1 << 16))
        #expect(try Checkpoint.parse(cosigned.text).size == report.records)
        #expect(fake.requests.withLock { $0 } >= 2)
    }

    @Test func anUnreachableWitnessIsRecordedOnceAndTheLogGoesOn() throws {
        let dir = try AppenderTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let witness = try CosignatureSigner(name: "bulkhead.test/witness", privateKey: .init())
        var options = AuditAppender.Options()
        options.witness = WitnessEndpoint(socketPath: dir + "/nobody.sock", key: witness.verifierKey)
        let log = try AuditAppender.open(dir + "/log", options: options)
        for i in 0..<30 { try log.append(AuditTestFiles.entry("vm/\(i)")) }
        try log.close()
        let unreachable = try actions(dir + "/log").filter { $0.0 == "log.witness-unreachable" }
        #expect(unreachable.count == 1 && unreachable.first?.1.contains("nobody.sock") == true, "\(unreachable)")
        #expect(try AuditTestFiles.verify(dir + "/log").isClean)
        #expect(!pathExists(dir + "/log/witness.cosigned"))
    }

    @Test func garbageAndForgedAnswersAreRefusedAndRecordedOnce() throws {
        let dir = try AppenderTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let witness = try CosignatureSigner(name: "bulkhead.test/witness", privateKey: .init())
        let impostor = try CosignatureSigner(name: "bulkhead.test/witness", privateKey: .init())
        let answers: [(String, @Sendable ([UInt8]) -> [UInt8])] = [
            ("garbage", { @Sendable (_: [UInt8]) in Array("nonsense".utf8) }),
            ("forged", { @Sendable (bytes: [UInt8]) in
                let note = (try? AddCheckpoint.parse(Array(bytes.dropFirst(15))))?.note ?? []
                let text = (try? SignedNote.parse(note))?.text ?? ""
                return WitnessAnswer.cosigned((try? impostor.cosign(text, timestamp: 5)) ?? "").encoded
            }),
            ("huge", { @Sendable (_: [UInt8]) in [UInt8](repeating: 0x32, count: 100_000) }),
        ]
        for (name, answer) in answers {
            let fake = try FakeWitness(socket: dir + "/\(name).sock", answer: answer)
            var options = AuditAppender.Options()
            options.witness = WitnessEndpoint(socketPath: fake.socket, key: witness.verifierKey)
            options.witness?.timeoutMilliseconds = 500
            let log = try AuditAppender.open(dir + "/\(name)", options: options)
            for i in 0..<10 { try log.append(AuditTestFiles.entry("vm/\(i)")) }
            try log.close()
            fake.shutDown()
            let events = try actions(dir + "/\(name)").filter { $0.0.hasPrefix("log.witness") }
            #expect(events.count == 1, "\(name): \(events)")
            #expect(!pathExists(dir + "/\(name)/witness.cosigned"), "\(name): a cosignature was kept")
            #expect(try AuditTestFiles.verify(dir + "/\(name)").isClean, "\(name)")
        }
    }
}
