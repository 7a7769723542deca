import AuditLog
import Foundation
import HostOS
import HostTestSupport
import Testing

/// `bulkhead-witness` as a process: it cosigns a growing log, refuses a rolled-back one and keeps
/// the evidence, answers hostile clients without stopping, and — as root — does all of it jailed
/// (its own uid, seccomp) so that every path a client can set off runs under its allowlist.
@Suite struct WitnessProcessTests {
    static let witnessBinary = String(binary.dropLast("bulkhead".count)) + "bulkhead-witness"
    static let writerBinary = String(binary.dropLast("bulkhead".count)) + "bulkhead-audit-writer"

    /// A running witness; stopped (SIGKILL, reaped) by `stop`.
    final class Witness {
        let process = Process()
        let stderr = Pipe()
        let state: String, socket: String
        init(state: String, socket: String, logKey: String, jailed: Bool) throws {
            self.state = state; self.socket = socket
            process.executableURL = URL(fileURLWithPath: WitnessProcessTests.witnessBinary)
            process.arguments = ["--state", state, "--socket", socket, "--log-key", logKey, "--name", "bulkhead.test/witness"]
                + (jailed ? [] : ["--no-jail"])
            process.standardError = stderr
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            var seen = ""
            while !seen.contains("ready\n") {
                let d = stderr.fileHandleForReading.availableData
                if d.isEmpty { break }
                seen += String(decoding: d, as: UTF8.self)
            }
            #expect(seen.contains("ready\n"), "the witness did not start: \(seen)")
        }
        func stop() { process.terminate(); kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        var key: String { state + "/witness.pub" }
        /// /proc/PID/status's value for `field` ("Uid", "Seccomp").
        func status(_ field: String) -> String? {
            guard let text = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8) else { return nil }
            return text.split(separator: "\n").first { $0.hasPrefix(field + ":") }.map { String($0.dropFirst(field.count + 1)).trimmingCharacters(in: .whitespaces) }
        }
    }

    static func scratch(_ name: String) throws -> String {
        let dir = NSTemporaryDirectory() + "bh-witness-\(name)-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        return dir
    }

    @discardableResult
    static func write(_ log: String, records: Int, witness: Witness? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: writerBinary)
        p.arguments = [log, "--writers", "2", "--records", "\(records)"] + (witness.map { ["--witness", $0.socket, "--witness-key", $0.key] } ?? [])
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "the writer failed")
        return text
    }

    /// One request on a fresh connection; nil when the witness gave no answer.
    static func ask(_ socket: String, _ request: [UInt8]) throws -> WitnessAnswer? {
        let c = try UnixSeqpacket.connect(socket, timeoutSeconds: 5)
        try c.sendMessage(request)
        guard case .message(let m) = try c.receiveMessage(maxBytes: 1 << 16, maxDescriptors: 0, timeoutMilliseconds: 5000) else { return nil }
        return WitnessAnswer.parse(m.bytes)
    }

    static func actions(_ log: String) throws -> [(String, String)] {
        let r = try bulkhead(["audit", "tail", log, "-n", "1000"])
        return r.stdout.split(separator: "\n").compactMap { line in
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return (o["action"] as? String ?? "", o["result"] as? String ?? "")
        }
    }

    static var modes: [Bool] { TestHost.isRoot ? [false, true] : [false] }

    @Test(arguments: modes)
    func aWitnessCosignsAGrowingLogAndRefusesARollback(jailed: Bool) throws {
        let dir = try Self.scratch("rollback")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = dir + "/log"
        try Self.write(log, records: 2)
        let w = try Witness(state: dir + "/state", socket: dir + "/w.sock", logKey: log + "/log.pub", jailed: jailed)
        defer { w.stop() }
        if jailed {
            #expect(w.status("Uid")?.hasPrefix("1899999999") == true, "\(w.status("Uid") ?? "?")")
            #expect(w.status("Seccomp") == "2" && w.status("NoNewPrivs") == "1" && w.status("CapEff") == "0000000000000000")
        }
        try Self.write(log, records: 20, witness: w)
        // The log's copy and the witness's own state agree with the log.
        let stateFile = try FileManager.default.contentsOfDirectory(atPath: w.state).first { $0.hasPrefix("log-") }.map { w.state + "/" + $0 }
        #expect(stateFile != nil)
        for extra in [[], ["--witness-checkpoint", stateFile ?? "/nonexistent"]] {
            let v = try bulkhead(["audit", "verify", log, "--witness-key", w.key] + extra)
            #expect(v.status == 0 && v.stdout.contains("the witness bulkhead.test/witness agrees"), "\(extra): \(v.stdout) \(v.stderr)")
        }
        // Roll the log back to a copy taken before its last records, and go on writing.
        try FileManager.default.copyItem(atPath: log, toPath: dir + "/backup")
        try Self.write(log, records: 3, witness: w)
        try FileManager.default.removeItem(atPath: log)
        try FileManager.default.moveItem(atPath: dir + "/backup", toPath: log)
        try Self.write(log, records: 3, witness: w)
        let refused = try Self.actions(log).filter { $0.0 == "log.witness-refused" }
        #expect(refused.first?.1.contains("rolled back") == true, "\(refused)")
        // The witness kept the rolled-back checkpoint as evidence, and its view disagrees with the log.
        let refusals = (try? String(contentsOfFile: w.state + "/refusals.log", encoding: .utf8)) ?? ""
        #expect(refusals.contains("\"reason\":\"rollback"), "\(refusals)")
        let v = try bulkhead(["audit", "verify", log, "--witness-key", w.key, "--witness-checkpoint", stateFile ?? "", "--format", "json"])
        #expect(v.status == 1 && (v.stdout.contains("witness-disagrees") || v.stdout.contains("witness-ahead")), "\(v.stdout)")
        if jailed {
            let attributes = try FileManager.default.attributesOfItem(atPath: stateFile ?? "")
            #expect((attributes[.ownerAccountID] as? NSNumber)?.uint32Value == 1_899_999_999)
        }
    }

    /// Garbage, oversized and unknown requests get their status (or the connection is dropped),
    /// a client that never reads its answers cannot wedge it, a restarted witness reads its state
    /// back; it serves an honest request after each.
    @Test(arguments: modes)
    func hostileClientsDoNotStopTheWitness(jailed: Bool) throws {
        let dir = try Self.scratch("hostile")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = dir + "/log"
        try Self.write(log, records: 2)
        var w = try Witness(state: dir + "/state", socket: dir + "/w.sock", logKey: log + "/log.pub", jailed: jailed)
        defer { w.stop() }
        try Self.write(log, records: 5, witness: w)
        let origin = try String(contentsOfFile: log + "/log.pub", encoding: .utf8).split(separator: "+").first.map(String.init) ?? ""
        let get = Array("get-checkpoint\n\(origin)".utf8)
        guard case .cosigned(let held)? = try Self.ask(w.socket, get) else { Issue.record("no checkpoint held"); return }
        #expect(held.contains("\u{2014} bulkhead.test/witness "))

        #expect(try Self.ask(w.socket, Array("hello".utf8))?.status == 400)
        #expect(try Self.ask(w.socket, Array("add-checkpoint\nold 0\n\nnot a note\n".utf8))?.status == 400)
        #expect(try Self.ask(w.socket, Array("get-checkpoint\nno.such/log".utf8))?.status == 404)
        let stranger = try NoteSigner(name: "bulkhead.test/stranger", privateKey: .init())
        let foreign = Array(try stranger.sign(Checkpoint(origin: stranger.verifierKey.name, size: 0, rootHash: Merkle.emptyRoot).text).utf8)
        #expect(try Self.ask(w.socket, Array("add-checkpoint\n".utf8) + AddCheckpoint(oldSize: 0, proof: [], note: foreign).encoded)?.status == 404)
        // Oversized: the witness drops that connection.
        #expect((try? Self.ask(w.socket, [UInt8](repeating: 0x41, count: 200_000))) ?? nil == nil)
        // A client that floods requests and never reads.
        let flood = try UnixSeqpacket.connect(w.socket, timeoutSeconds: 5)
        try flood.setNonBlocking()
        for _ in 0..<5000 { if (try? flood.sendMessage(Array("get-checkpoint\n\(origin)".utf8))) == nil { break } }
        #expect(try Self.ask(w.socket, get)?.status == 200, "the witness stopped answering after a flood")
        // Restarted: the state is read back from its file (the jailed witness through its
        // descriptor, under its seccomp allowlist), and the log goes on being cosigned.
        w.stop()
        w = try Witness(state: dir + "/state", socket: dir + "/w.sock", logKey: log + "/log.pub", jailed: jailed)
        #expect(try Self.ask(w.socket, get) == .cosigned(held))
        try Self.write(log, records: 3, witness: w)
        let witnessEvents = try Self.actions(log).filter { $0.0.hasPrefix("log.witness-") }
        #expect(witnessEvents.isEmpty, "\(witnessEvents)")
        let v = try bulkhead(["audit", "verify", log, "--witness-key", w.key])
        #expect(v.status == 0, "\(v.stdout)")
        #expect(w.process.isRunning)
    }

    /// Bad starts are clear errors: no log key, a state directory others may read, a garbage key.
    @Test func badStartsAreRefused() throws {
        let dir = try Self.scratch("starts")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.write(dir + "/log", records: 1)
        try "garbage\n".write(toFile: dir + "/bad.pub", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/open", withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        for (args, words) in [([String](), "usage"), (["--log-key", dir + "/bad.pub"], "verifier key"),
                              (["--log-key", dir + "/log/log.pub", "--state", dir + "/open"], "mode 0700"),
                              (["--log-key", dir + "/log/log.pub", "--state", dir + "/log/log.pub"], "directory")] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.witnessBinary)
            p.arguments = ["--no-jail", "--socket", dir + "/s", "--state", dir + "/state"] + args
            let err = Pipe()
            p.standardError = err
            try p.run()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus == 2 && text.contains(words), "\(args): \(text)")
        }
    }
}
