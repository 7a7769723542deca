import ArgumentParser
import AuditLog
import AuditStore
import HostOS

/// `bulkhead audit`: the auditor's tools over a log directory (docs/audit-log.md). They only read;
/// nothing here can change a record.
struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify and read a tamper-evident audit log.",
        subcommands: [AuditVerifyCommand.self, AuditCheckpointCommand.self, AuditTailCommand.self, AuditProveCommand.self])
}

/// Exit statuses of the audit tools: 0 clean, 1 a problem found, 2 cannot read.
enum AuditExit {
    static let problem: Int32 = 1
    static let unreadable: Int32 = 2
}

func say(_ text: String) { try? FileDescriptor.standardOutput.writeAll(Array((text + "\n").utf8)) }

/// The options every audit tool shares: the directory and the key to check it with.
struct AuditLogOptions: ParsableArguments {
    @Argument(help: "The audit log's directory.")
    var directory: String

    @Option(help: "The log's verifier key file (NAME+KEYID+BASE64). Default: DIR/log.pub, the log's own copy; an auditor passes the key it holds.")
    var key: String?

    func verifierKey() throws -> NoteVerifierKey {
        do { return try AuditDirectory.verifierKey(at: key ?? directory + "/" + AuditDirectory.publicKeyFile) } catch {
            printError(error.description)
            throw ExitCode(AuditExit.unreadable)
        }
    }

    func verify(saved: [[UInt8]] = [], witness: (key: CosignatureKey, checkpoints: [[UInt8]])? = nil,
                keepingTree: Bool = false) throws -> (NoteVerifierKey, AuditVerifier.Report) {
        let k = try verifierKey()
        do { return (k, try AuditDirectory.verify(directory, key: k, savedCheckpoints: saved, witness: witness, keepingTree: keepingTree)) } catch {
            printError(error.description)
            throw ExitCode(AuditExit.unreadable)
        }
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable { case text, json }

struct AuditVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every frame, record and checkpoint of a log, and its consistency with checkpoints saved earlier.",
        discussion: "Exit status: 0 when the log verifies clean, 1 when it has a problem (each is named), 2 when it cannot be read.")

    @OptionGroup var log: AuditLogOptions

    @Option(name: .customLong("checkpoint"), help: "A signed checkpoint saved earlier (`bulkhead audit checkpoint`): the log must still hold its records unchanged. Repeatable.")
    var saved: [String] = []

    @Option(name: .customLong("witness-key"), help: "The witness's key file (NAME+KEYID+BASE64, type 0x04): check the witness's view of the log — the checkpoint it cosigned — against the log.")
    var witnessKey: String?

    @Option(name: .customLong("witness-checkpoint"), help: "A checkpoint the witness cosigned (its state file for this log, or `get-checkpoint`'s answer). Default with --witness-key: DIR/witness.cosigned, the log's own copy. Repeatable.")
    var witnessCheckpoints: [String] = []

    @Option(help: "text, or json (the report tools/audit_verify.py prints too).")
    var format: OutputFormat = .text

    func run() throws {
        func readNote(_ path: String, _ what: String) throws -> [UInt8] {
            do { return try AuditDirectory.read(path, what: what, limit: SignedNote.maxSize) } catch {
                printError(error.description)
                throw ExitCode(AuditExit.unreadable)
            }
        }
        let notes = try saved.map { try readNote($0, "saved checkpoint") }
        var witness: (key: CosignatureKey, checkpoints: [[UInt8]])?
        if let witnessKey {
            let key: CosignatureKey
            do { key = try AuditDirectory.witnessKey(at: witnessKey) } catch {
                printError(error.description)
                throw ExitCode(AuditExit.unreadable)
            }
            let paths = witnessCheckpoints.isEmpty ? [log.directory + "/" + AuditDirectory.witnessCosignedFile] : witnessCheckpoints
            witness = (key, try paths.map { try readNote($0, "witness checkpoint") })
        } else if !witnessCheckpoints.isEmpty {
            printError("--witness-checkpoint needs --witness-key")
            throw ExitCode(ExitCode.validationFailure.rawValue)
        }
        let (key, report) = try log.verify(saved: notes, witness: witness)
        if format == .json {
            say(String(decoding: report.json.canonicalBytes, as: UTF8.self))
        } else {
            say("audit log \(log.directory), key \(key.name) (\(log.key == nil ? "the log's own log.pub: pass --key for an independent check" : log.key!))")
            say("\(report.records) records, \(report.checkpoints) checkpoints; the latest covers \(report.latestCheckpoint?.size ?? 0) records")
            if let witness, report.problems.allSatisfy({ !["bad-witness-checkpoint", "witness-ahead", "witness-disagrees"].contains($0.kind) }) {
                say("the witness \(witness.key.name) agrees: its cosigned checkpoint\(witness.checkpoints.count == 1 ? " is" : "s are") consistent with the log")
            }
            if report.tornTail { say("the last append was cut off by a crash (a torn frame at the end): the appender cuts it back when it next opens the log") }
            for p in report.problems { say("problem: \(p)") }
            say(report.isClean ? "verified clean" : "NOT clean: \(report.problems.count) problem\(report.problems.count == 1 ? "" : "s")")
        }
        if !report.isClean { throw ExitCode(AuditExit.problem) }
    }
}

struct AuditCheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Print the log's latest signed checkpoint (after verifying the log), for an auditor to keep and give to `verify --checkpoint` later.")

    @OptionGroup var log: AuditLogOptions

    func run() throws {
        let (_, report) = try log.verify()
        guard report.isClean, let note = report.latestNote else {
            for p in report.problems { printError("problem: \(p)") }
            if report.isClean { printError("the log \(log.directory) has no checkpoint yet") }
            throw ExitCode(AuditExit.problem)
        }
        try? FileDescriptor.standardOutput.writeAll(note)
    }
}

struct AuditTailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tail",
        abstract: "Print the log's last records, one JSON object a line; with --follow, then every record as it is appended.",
        discussion: "It reads without verifying (run `verify` for that) and stops at the first frame it cannot read.")

    @Argument(help: "The audit log's directory.")
    var directory: String

    @Option(name: .short, help: "How many of the last records to print first.")
    var n: Int = 10

    @Flag(help: "Keep printing records as they are appended, until interrupted.")
    var follow = false

    func validate() throws {
        guard n >= 0 && n <= 1_000_000 else { throw ValidationError("-n must be between 0 and 1000000") }
    }

    func run() throws {
        var last: [[UInt8]] = []
        var reader = AuditTailReader(directory: directory)
        do {
            try reader.read { payload in
                last.append(payload)
                if last.count > n { last.removeFirst(last.count - n) }
            }
        } catch {
            printError(error.description)
            throw ExitCode(AuditExit.unreadable)
        }
        for p in last { try? FileDescriptor.standardOutput.writeAll(p + [0x0a]) }
        guard follow else { return }
        while true {
            sleepNanoseconds(250_000_000)
            do { try reader.read { try? FileDescriptor.standardOutput.writeAll($0 + [0x0a]) } } catch {
                printError(error.description)
                throw ExitCode(AuditExit.unreadable)
            }
        }
    }
}

/// Reads the records appended since its last call: where it stopped (a segment and offset) is
/// kept, so following a log costs only what was added.
struct AuditTailReader {
    let directory: String
    var segment = 0
    var offset: UInt64 = 0

    mutating func read(_ body: ([UInt8]) -> Void) throws(AuditStoreError) {
        while true {
            let numbers = try AuditDirectory.segments(in: directory)
            guard numbers.contains(segment) else { return }
            let path = directory + "/" + AuditDirectory.segmentName(segment)
            let bytes: [UInt8]
            do {
                let fd = try FileDescriptor.openChecked(path, what: "audit segment", access: .read)
                let size = try fd.status().size
                bytes = size > offset ? try fd.read(at: offset, count: Int(min(size - offset, UInt64(AuditDirectory.maxSegmentBytes)))) : []
            } catch let e as PathRefusal { throw AuditStoreError(.unusable, e.description) } catch {
                throw AuditStoreError(.unusable, "cannot read \(path): \(error)")
            }
            var at = 0
            while case .frame(let payload, let next) = Frame.parse(bytes, at: at) {
                if !AuditVerifier.isCheckpoint(payload) { body(payload) }
                at = next
            }
            offset += UInt64(at)
            // A later segment exists once this one is complete: move on when all of it was read.
            guard at == bytes.count, numbers.contains(segment + 1) else { return }
            segment += 1; offset = 0
        }
    }
}

struct AuditProveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prove",
        abstract: "Print the proof that a record is in the log (inclusion), or that an earlier tree is a prefix of it (consistency), against the latest checkpoint.",
        discussion: "Hashes are base64, one a line, from the leaf (or the old tree) up, as RFC 6962 orders them; the checkpoint they lead to follows.")

    @OptionGroup var log: AuditLogOptions

    @Option(help: "The record (its sequence number) to prove included.")
    var index: UInt64?

    @Option(name: .customLong("consistency-from"), help: "The size of an earlier tree to prove consistent with the latest checkpoint.")
    var consistencyFrom: UInt64?

    @Option(help: "text, or json.")
    var format: OutputFormat = .text

    func validate() throws {
        guard (index == nil) != (consistencyFrom == nil) else { throw ValidationError("give --index or --consistency-from") }
    }

    func run() throws {
        let (_, report) = try log.verify(keepingTree: true)
        guard report.isClean, let checkpoint = report.latestCheckpoint, let note = report.latestNote, let tree = report.tree else {
            for p in report.problems { printError("problem: \(p)") }
            if report.isClean { printError("the log \(log.directory) has no checkpoint yet") }
            throw ExitCode(AuditExit.problem)
        }
        let n = checkpoint.size
        var out: [String: JSONValue] = ["size": .integer(Int64(clamping: n)), "checkpoint": .string(String(decoding: note, as: UTF8.self))]
        var lines: [String] = []
        do {
            if let index {
                let proof = try tree.inclusionProof(index: index, size: n)
                var payload: [UInt8] = []
                try? AuditDirectory.frames(log.directory) { _, p in
                    if !AuditVerifier.isCheckpoint(p), (try? AuditRecord.parse(p))?.sequence == index { payload = p; return false }
                    return true
                }
                let leaf = Merkle.leafHash(payload)
                guard Merkle.verifyInclusion(leafHash: leaf, index: index, size: n, proof: proof, root: checkpoint.rootHash) else {
                    printError("record \(index) changed while it was read; run the command again")
                    throw ExitCode(AuditExit.problem)
                }
                out["index"] = .integer(Int64(clamping: index))
                out["record"] = .string(String(decoding: payload, as: UTF8.self))
                out["leaf_hash"] = .string(Base64.encode(leaf))
                out["proof"] = .array(proof.map { .string(Base64.encode($0)) })
                lines = ["record \(index) of the \(n) covered by the checkpoint below", String(decoding: payload, as: UTF8.self),
                         "leaf hash \(Base64.encode(leaf))", "inclusion proof (\(proof.count) hashes):"] + proof.map(Base64.encode)
            } else if let m = consistencyFrom {
                let proof = try tree.consistencyProof(old: m, new: n)
                out["old_size"] = .integer(Int64(clamping: m))
                out["old_root"] = .string(Base64.encode(try tree.root(size: m)))
                out["proof"] = .array(proof.map { .string(Base64.encode($0)) })
                lines = ["the tree of \(m) records (root \(Base64.encode(try tree.root(size: m)))) is a prefix of the \(n) of the checkpoint below",
                         "consistency proof (\(proof.count) hashes):"] + proof.map(Base64.encode)
            }
        } catch let e as Merkle.ProofError {
            printError("\(e) (the latest checkpoint covers \(n) records)")
            throw ExitCode(AuditExit.problem)
        }
        if format == .json { say(String(decoding: JSONValue.object(out).canonicalBytes, as: UTF8.self)) } else {
            for l in lines { say(l) }
            say("checkpoint:")
            try? FileDescriptor.standardOutput.writeAll(note)
        }
    }
}
