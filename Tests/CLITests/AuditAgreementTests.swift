import AuditLog
import Foundation
import HostOS
import HostTestSupport
import Testing

/// The two verifiers — `bulkhead audit verify --format json` and the independent
/// tools/audit_verify.py (written from docs/audit-log.md alone) — print the same report and exit
/// with the same status on every tampering the issue lists, on the witness's checks, and on
/// random damage. PyNaCl comes from PyPI (`make test` installs it); without it this skips, unless
/// BULKHEAD_REQUIRE_PYNACL=1 (as in `make test`) makes that a failure.
let pythonVerifier = root + "/tools/audit_verify.py"
let hasPyNaCl: Bool = {
    if ProcessInfo.processInfo.environment["BULKHEAD_REQUIRE_PYNACL"] == "1" { return true }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", "import nacl.signing"]
    p.standardError = FileHandle.nullDevice
    guard (try? p.run()) != nil else { return false }
    p.waitUntilExit()
    return p.terminationStatus == 0
}()

@Suite(.enabled(if: hasPyNaCl, "PyNaCl is not installed (python3 -m pip install pynacl; make test does)"))
struct AuditAgreementTests {
    /// A log as segments of frame payloads, to tamper with and write out.
    struct Log {
        var key: String
        var segments: [[[UInt8]]]
        func write(_ dir: String, bytes: ((inout [[UInt8]]) -> Void)? = nil) throws {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try key.write(toFile: dir + "/log.pub", atomically: true, encoding: .utf8)
            var raw = segments.map { $0.flatMap { Frame.encode($0) } }
            bytes?(&raw)
            for (i, s) in raw.enumerated() { try Data(s).write(to: URL(fileURLWithPath: dir + "/" + String(format: "%010d.seg", i))) }
        }
    }

    static func read(_ dir: String) throws -> Log {
        let key = try String(contentsOfFile: dir + "/log.pub", encoding: .utf8)
        var segments: [[[UInt8]]] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: dir).filter({ $0.hasSuffix(".seg") }).sorted() {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name)))
            var frames: [[UInt8]] = [], at = 0
            while case .frame(let payload, let next) = Frame.parse(bytes, at: at) { frames.append(payload); at = next }
            segments.append(frames)
        }
        return Log(key: key, segments: segments)
    }

    static func run(_ executable: String, _ args: [String]) throws -> (Int32, NSDictionary?) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        let err = Pipe()
        p.standardError = err
        try p.run()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        if !errors.isEmpty { print("\(args.prefix(3)): \(String(decoding: errors, as: UTF8.self))") }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let json = (try? JSONSerialization.jsonObject(with: data)) as? NSDictionary
        return (p.terminationStatus, json)
    }

    /// Both verifiers on `dir` with `args`: same status, same report. Returns the report.
    @discardableResult
    static func agree(_ dir: String, _ args: [String] = [], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> NSDictionary? {
        let swift = try run(binary, ["audit", "verify", dir, "--format", "json"] + args)
        let python = try run("/usr/bin/env", ["python3", pythonVerifier, dir] + args)
        #expect(swift.0 == python.0, "\(what): exit \(swift.0) (Swift) vs \(python.0) (Python)", sourceLocation: sourceLocation)
        #expect(swift.1 == python.1, "\(what): \(String(describing: swift.1)) vs \(String(describing: python.1))", sourceLocation: sourceLocation)
        #expect(swift.0 != 2 && swift.1 != nil, "\(what): the log could not be read (exit \(swift.0))", sourceLocation: sourceLocation)
        return swift.1
    }

    static func problems(_ report: NSDictionary?) -> [String] {
        ((report?["problems"] as? [NSDictionary]) ?? []).compactMap { $0["kind"] as? String }
    }

    static func scratch() throws -> String {
        let dir = NSTemporaryDirectory() + "bh-agree-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        return dir
    }

    static func writeLog(_ dir: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: String(binary.dropLast("bulkhead".count)) + "bulkhead-audit-writer")
        p.arguments = [dir, "--writers", "4", "--records", "20", "--segment-bytes", "5000"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try #require(p.terminationStatus == 0)
    }

    @Test func everyTamperingIsNamedTheSameByBothVerifiers() throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.writeLog(dir + "/log")
        let clean = try Self.read(dir + "/log")
        let signer = try NoteSigner(text: try String(contentsOfFile: dir + "/log/log.key", encoding: .utf8).trimmingCharacters(in: .newlines))
        let stranger = try NoteSigner(name: signer.verifierKey.name, privateKey: .init())
        let last = clean.segments.count - 1
        // Where the records of a segment are (groups, and so checkpoints, fall where the writers'
        // timing put them).
        let records = { (s: Int) in clean.segments[s].indices.filter { !AuditVerifier.isCheckpoint(clean.segments[s][$0]) } }
        let saved = dir + "/saved.checkpoint"
        try Data(clean.segments[last].last ?? []).write(to: URL(fileURLWithPath: saved))

        var cases: [(String, [String], (inout Log) -> Void, ((inout [[UInt8]]) -> Void)?, [String])] = []
        func add(_ name: String, _ args: [String] = [], expect: [String], _ f: @escaping (inout Log) -> Void, bytes: ((inout [[UInt8]]) -> Void)? = nil) {
            cases.append((name, args, f, bytes, expect))
        }
        add("clean", expect: []) { _ in }
        add("a payload byte", expect: ["damaged-frame"], { _ in }, bytes: { $0[1][8 + 30] ^= 1 })
        add("a CRC", expect: ["damaged-frame"], { _ in }, bytes: { $0[2][4] ^= 0x10 })
        // Two records next to each other (no checkpoint between): deleting the first of them is
        // seen as a gap in the sequence rather than as a checkpoint's wrong size.
        let pair = clean.segments.indices.dropFirst().lazy.compactMap { s in
            records(s).first { records(s).contains($0 + 1) }.map { (s, $0) }
        }.first ?? (1, records(1)[0])
        add("a record deleted in the middle", expect: ["out-of-sequence"]) { $0.segments[pair.0].remove(at: pair.1) }
        add("a record inserted", expect: ["out-of-sequence"]) { l in l.segments[1].insert(l.segments[1][records(1)[0]], at: records(1)[0] + 1) }
        add("two records swapped", expect: ["out-of-sequence"]) { l in l.segments[2].swapAt(records(2)[0], records(2)[1]) }
        add("the last record deleted", expect: ["checkpoint-size"]) { l in l.segments[last].remove(at: l.segments[last].count - 2) }
        add("the last record with its checkpoint", [ "--checkpoint", saved], expect: ["truncated"]) { l in l.segments[last].removeLast(2) }
        add("the last ten records", ["--checkpoint", saved], expect: ["truncated"]) { l in
            var removed = 0
            while removed < 10, !l.segments.isEmpty {
                if l.segments[l.segments.count - 1].isEmpty { l.segments.removeLast(); continue }
                if !AuditVerifier.isCheckpoint(l.segments[l.segments.count - 1].removeLast()) { removed += 1 }
            }
            while let f = l.segments.last?.last, !AuditVerifier.isCheckpoint(f) { l.segments[l.segments.count - 1].removeLast() }
        }
        add("a segment in the middle", expect: ["missing-segment"]) { l in l.segments[1] = [] }   // written, then removed below
        add("the last segment", ["--checkpoint", saved], expect: ["truncated"]) { l in l.segments.removeLast() }
        add("a checkpoint's signature", expect: ["bad-checkpoint"]) { l in
            var note = l.segments[0][1]
            note[note.count - 5] = note[note.count - 5] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
            l.segments[0][1] = note
        }
        add("a checkpoint from another key", expect: ["bad-checkpoint"]) { l in
            let c = (try? Checkpoint.parse((try? SignedNote.parse(l.segments[0][1]))?.text ?? "")) ?? Checkpoint(origin: "x", size: 0, rootHash: [])
            l.segments[0][1] = Array(((try? stranger.sign(c.text)) ?? "").utf8)
        }
        add("a torn tail", expect: [], { _ in }, bytes: { s in s[s.count - 1] += Frame.encode(Array("{\"v\":1}".utf8)).prefix(9) })
        add("zeros at the tail", expect: ["damaged-frame"], { _ in }, bytes: { s in s[s.count - 1] += [UInt8](repeating: 0, count: 64) })

        for (i, c) in cases.enumerated() {
            var log = clean
            c.2(&log)
            let path = dir + "/case\(i)"
            try log.write(path, bytes: c.3)
            if c.0 == "a segment in the middle" { try FileManager.default.removeItem(atPath: path + "/0000000001.seg") }
            let report = try Self.agree(path, c.1, c.0)
            #expect(Self.problems(report) == c.4, "\(c.0): \(Self.problems(report))")
        }

        // The witness's view: cosigned by a witness key made here, then the log rolled back or rewritten.
        let witness = try CosignatureSigner(name: "bulkhead.test/witness", privateKey: .init())
        try (witness.verifierKey.text + "\n").write(toFile: dir + "/witness.pub", atomically: true, encoding: .utf8)
        let note = clean.segments[last].last ?? []
        let text = (try SignedNote.parse(note)).text
        try Data(note + Array(try witness.cosign(text, timestamp: 1_800_000_000).utf8)).write(to: URL(fileURLWithPath: dir + "/cosigned"))
        let other = try CosignatureSigner(name: "bulkhead.test/witness", privateKey: .init())
        try Data(note + Array(try other.cosign(text, timestamp: 1_800_000_000).utf8)).write(to: URL(fileURLWithPath: dir + "/forged"))
        let witnessArgs = ["--witness-key", dir + "/witness.pub", "--witness-checkpoint", dir + "/cosigned"]
        #expect(Self.problems(try Self.agree(dir + "/case0", witnessArgs, "witness agrees")) == [])
        #expect(Self.problems(try Self.agree(dir + "/case10", witnessArgs, "rolled back behind the witness")) == ["witness-ahead"])
        #expect(Self.problems(try Self.agree(dir + "/case0", ["--witness-key", dir + "/witness.pub", "--witness-checkpoint", dir + "/forged"], "a forged cosignature")) == ["bad-witness-checkpoint"])
        // Rewritten: a record changed and every checkpoint re-signed with the log's own key.
        var rewritten = clean
        var seen: [[UInt8]] = []
        for s in rewritten.segments.indices {
            for f in rewritten.segments[s].indices {
                if AuditVerifier.isCheckpoint(rewritten.segments[s][f]) {
                    let c = Checkpoint(origin: signer.verifierKey.name, size: UInt64(seen.count), rootHash: Merkle.root(seen))
                    rewritten.segments[s][f] = Array(try signer.sign(c.text).utf8)
                } else {
                    if seen.count == 5, var r = try? AuditRecord.parse(rewritten.segments[s][f]) { r.action = "vm.forged"; rewritten.segments[s][f] = r.payload }
                    seen.append(Merkle.leafHash(rewritten.segments[s][f]))
                }
            }
        }
        try rewritten.write(dir + "/rewritten")
        #expect(Self.problems(try Self.agree(dir + "/rewritten", [], "rewritten, alone")) == [])
        #expect(Self.problems(try Self.agree(dir + "/rewritten", witnessArgs, "rewritten, against the witness")) == ["witness-disagrees"])
        #expect(Self.problems(try Self.agree(dir + "/rewritten", ["--checkpoint", saved], "rewritten, against a saved checkpoint")) == ["rewritten"])
    }

    /// Random damage — a byte changed anywhere, a segment cut anywhere — gets the same report from both.
    @Test func randomDamageGetsTheSameReport() throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.writeLog(dir + "/log")
        let clean = try Self.read(dir + "/log")
        var rng = SplitMix64(seed: 20261206)
        for i in 0..<40 {
            let path = dir + "/r\(i)"
            try clean.write(path) { segments in
                let s = Int(rng.next() % UInt64(segments.count))
                guard !segments[s].isEmpty else { return }
                let at = Int(rng.next() % UInt64(segments[s].count))
                if i % 4 == 3 { segments[s] = Array(segments[s].prefix(at)) } else { segments[s][at] ^= UInt8(truncatingIfNeeded: rng.next() | 1) }
            }
            try Self.agree(path, [], "random damage \(i)")
        }
    }
}
