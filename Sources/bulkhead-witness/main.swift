// bulkhead-witness: holds the latest checkpoint it cosigned for each audit log it serves, and
// cosigns a new one only after checking a consistency proof from it (docs/audit-log.md, "The
// witness"). A log can then be neither rolled back nor rewritten unnoticed by an operator who can
// change its files but not the witness's. Started as root it jails itself before it serves: its
// own uid (WitnessService.uid, nothing else runs as it), user/mount/network/IPC/UTS namespaces,
// an empty read-only root (its state directory is reached through a descriptor kept open), no
// capabilities, no new privileges, and its own seccomp allowlist
// (Sources/CPolicies/policies/witness.policy): a call outside it kills the process.
//
//   bulkhead-witness --state DIR --socket PATH --log-key FILE [--log-key FILE ...] [--name NAME]
//                    [--no-jail] [--seccomp-log]
import AuditLog
import CPolicies
import Crypto
import HostOS
import Jail
import Seccomp
#if canImport(Glibc)
import Glibc
#endif

func fail(_ text: String) -> Never {
    try? FileDescriptor.standardError.writeAll(Array(("bulkhead-witness: " + text + "\n").utf8))
    exit(2)
}

func note(_ text: String) {
    try? FileDescriptor.standardError.writeAll(Array(("bulkhead-witness: " + text + "\n").utf8))
}

enum WitnessService {
    /// The witness's own uid and gid when it jails itself: just below the workers' range, which
    /// no distribution hands out.
    static let uid: UInt32 = JailSetup.uidBase - 1
    static let keyFile = "witness.key", publicKeyFile = "witness.pub", refusals = "refusals.log", rootDirectory = "root"
    /// The state file of a log: its origin's SHA-256 (hex), so no origin can name a path.
    static func stateFile(_ origin: String) -> String {
        "log-" + SHA256.hash(data: Array(origin.utf8)).map { String($0 >> 4, radix: 16) + String($0 & 15, radix: 16) }.joined() + ".checkpoint"
    }
    static let maxRequest = SignedNote.maxSize + 4096
}

// ---- Options ----
var arguments = Array(CommandLine.arguments.dropFirst())
var stateDirectory: String?, socketPath: String?, logKeyFiles: [String] = [], name: String?
var jailed = geteuid() == 0, seccompLog = false
while !arguments.isEmpty {
    let flag = arguments.removeFirst()
    switch flag {
    case "--no-jail": jailed = false; continue
    case "--seccomp-log": seccompLog = true; continue
    default: break
    }
    guard let value = arguments.first else { fail("\(flag) needs a value") }
    arguments.removeFirst()
    switch flag {
    case "--state": stateDirectory = value
    case "--socket": socketPath = value
    case "--log-key": logKeyFiles.append(value)
    case "--name": name = value
    default: fail("unknown option \(flag) (usage: bulkhead-witness --state DIR --socket PATH --log-key FILE ... [--name NAME] [--no-jail])")
    }
}
guard let stateDirectory, let socketPath, !logKeyFiles.isEmpty else {
    fail("usage: bulkhead-witness --state DIR --socket PATH --log-key FILE [--log-key FILE ...] [--name NAME] [--no-jail]")
}
if jailed && geteuid() != 0 { fail("the jail needs root: run as root, or pass --no-jail") }
let owner = jailed ? WitnessService.uid : geteuid()
let group = jailed ? WitnessService.uid : getegid()

func readText(_ path: String, what: String, followSymlinks: Bool = false) -> String {
    let fd: FileDescriptor
    do { fd = try FileDescriptor.openChecked(path, what: what, access: .read, followSymlinks: followSymlinks) } catch { fail(error.description) }
    guard let bytes = try? fd.readAll(limit: 4096) else { fail("cannot read \(what) \(path)") }
    var text = String(decoding: bytes, as: UTF8.self)
    while text.hasSuffix("\n") { text.removeLast() }
    return text
}

// ---- The logs it serves ----
var logKeys: [NoteVerifierKey] = []
for path in logKeyFiles {
    do { logKeys.append(try NoteVerifierKey(text: readText(path, what: "log key", followSymlinks: true))) } catch { fail("\(path): \(error.description)") }
}

// ---- Its state directory and key ----
if !pathExists(stateDirectory) {
    do {
        try makeDirectory(stateDirectory, mode: 0o700)
        try changeOwner(stateDirectory, uid: owner, gid: group)
    } catch { fail("cannot create the state directory: \(error)") }
}
do {
    let info = try pathInfo(stateDirectory)
    guard info.isDirectory, info.owner == owner, info.permissions & 0o077 == 0 else {
        fail("the state directory \(stateDirectory) must be a directory of uid \(owner) that nobody else may use (mode 0700); it is \(info.kind) of uid \(info.owner), mode \(String(info.permissions, radix: 8))")
    }
} catch { fail("\(error)") }
let keyPath = stateDirectory + "/" + WitnessService.keyFile
let signer: CosignatureSigner
if pathExists(keyPath) {
    do {
        let info = try pathInfo(keyPath)
        guard info.isRegularFile, info.owner == owner, info.permissions & 0o077 == 0 else { fail("\(keyPath) must be a file of uid \(owner) with mode 0600") }
        signer = try CosignatureSigner(text: readText(keyPath, what: "witness key"))
    } catch let e as NoteVerifierKey.Invalid { fail("\(keyPath): \(e.description)") } catch { fail("\(error)") }
} else {
    let witnessName = name ?? "bulkhead-witness/" + (randomBytes(8) ?? []).map { String($0 >> 4, radix: 16) + String($0 & 15, radix: 16) }.joined()
    do {
        signer = try CosignatureSigner(name: witnessName, privateKey: Curve25519.Signing.PrivateKey())
        let dir = try FileDescriptor.open(directory: stateDirectory)
        try dir.replaceFile(named: WitnessService.keyFile, with: Array((signer.text + "\n").utf8), mode: 0o600)
        try dir.replaceFile(named: WitnessService.publicKeyFile, with: Array((signer.verifierKey.text + "\n").utf8), mode: 0o644)
        for f in [WitnessService.keyFile, WitnessService.publicKeyFile] { try changeOwner(stateDirectory + "/" + f, uid: owner, gid: group) }
    } catch let e as NoteVerifierKey.Invalid { fail("the witness name: \(e.description)") } catch { fail("cannot create the witness key: \(error)") }
}
if let name, name != signer.verifierKey.name { fail("--name \(name) is not the name of the existing key \(keyPath) (\(signer.verifierKey.name))") }

let state: FileDescriptor
let listener: FileDescriptor
do {
    state = try FileDescriptor.open(directory: stateDirectory)
    listener = try UnixSeqpacket.listening(at: socketPath, mode: 0o660)
} catch { fail("\(error)") }

// ---- The jail ----
if jailed {
    let root = stateDirectory + "/" + WitnessService.rootDirectory
    if !pathExists(root) { do { try makeDirectory(root, mode: 0o755) } catch { fail("\(error)") } }
    do {
        try JailSteps.clearEnvironment()
        try JailSteps.becomeUser(uid: WitnessService.uid, gid: WitnessService.uid)
        try JailSteps.enterUserNamespaces(uid: WitnessService.uid, gid: WitnessService.uid)
        try JailSteps.pivotRoot(into: root)
        try JailSteps.limitResources(openFiles: 64, fileSize: 1 << 30)
        try JailSteps.dropCapabilities()
        try JailSteps.forbidNewPrivileges()
    } catch { fail("jail: \(error)") }
    do {
        let program = try SeccompPolicy(parsing: stringFromStaticCString(bulkhead_policy_witness_text())).compile(defaultAction: seccompLog ? .log : .killProcess)
        try installSeccompFilter(program.map(\.fields))
    } catch { fail("jail step 'seccomp' failed: \(error)") }
    if !isUnderSeccompFilter() { fail("jail step 'seccomp' failed: the filter is not in force") }
}
note("serving \(logKeys.count) log\(logKeys.count == 1 ? "" : "s") as \(signer.verifierKey.name) on \(socketPath)\(jailed ? ", jailed as uid \(WitnessService.uid)" : "")")
try? FileDescriptor.standardError.writeAll(Array("ready\n".utf8))

// ---- Serving ----
/// The witness's decisions over its state directory: what it holds per log, refusals kept.
final class Server {
    let core: WitnessCore
    let state: FileDescriptor
    var held: [String: WitnessedLog] = [:]

    init(core: WitnessCore, state: FileDescriptor) { self.core = core; self.state = state }

    /// The latest checkpoint cosigned for `origin`, from memory or its state file.
    func current(_ origin: String) -> WitnessedLog? {
        if let h = held[origin] { return h }
        guard let fd = try? state.openFile(named: WitnessService.stateFile(origin)), let bytes = try? fd.readAll(limit: SignedNote.maxSize),
              let note = try? SignedNote.parse(bytes), let c = try? Checkpoint.parse(note.text), c.origin == origin else { return nil }
        let h = WitnessedLog(size: c.size, rootHash: c.rootHash, note: bytes)
        held[origin] = h
        return h
    }

    func handle(_ request: [UInt8]) -> WitnessAnswer {
        let add = Array("add-checkpoint\n".utf8), get = Array("get-checkpoint\n".utf8)
        if request.starts(with: get) {
            let origin = String(decoding: request.dropFirst(get.count), as: UTF8.self).trimmingSuffixNewline()
            guard let h = current(origin) else { return .unknownLog("no checkpoint of \(origin.prefix(80)) is held here") }
            return .cosigned(String(decoding: h.note, as: UTF8.self))
        }
        guard request.starts(with: add) else { return .badRequest("the request is neither add-checkpoint nor get-checkpoint") }
        let parsed: AddCheckpoint
        do { parsed = try AddCheckpoint.parse(Array(request.dropFirst(add.count))) } catch { return .badRequest(error.description) }
        let t = UInt64(max(1, wallClockNanoseconds() / 1_000_000_000))
        let decision = core.decide(parsed, current: { self.current($0) }, now: t)
        if let refusal = decision.refusal, let origin = decision.origin {
            // Evidence of a log that rolled back or rewrote itself: kept, with the checkpoint it sent.
            let record = JSONValue.object(["time": .integer(Int64(t)), "origin": .string(origin), "status": .integer(Int64(decision.answer.status)),
                                           "reason": .string(refusal), "old_size": .integer(Int64(clamping: parsed.oldSize)),
                                           "checkpoint": .string(Base64.encode(parsed.note))])
            do { try state.appendToFile(named: WitnessService.refusals, record.canonicalBytes + [0x0a], mode: 0o600) } catch {
                note("cannot record a refusal: \(error)")
            }
            note("refused \(origin): \(refusal)")
        }
        if let accepted = decision.accepted, let origin = decision.origin {
            // Persisted before the answer: a cosignature is never given for a state that could be lost.
            do { try state.replaceFile(named: WitnessService.stateFile(origin), with: accepted.note, mode: 0o600) } catch {
                return .failed("cannot persist the checkpoint: \(error)")
            }
            held[origin] = accepted
        }
        return decision.answer
    }

    /// Serves for ever: the listener and up to 32 connections, one message each way at a time.
    func serve(_ listener: FileDescriptor) -> Never {
        var connections: [FileDescriptor] = []
        while true {
            let ready = waitReadable([listener.rawValue] + connections.map(\.rawValue), timeoutMilliseconds: -1)
            var keep: [FileDescriptor] = []
            for (i, c) in connections.enumerated() {
                guard ready.count > i + 1, ready[i + 1] else { keep.append(c); continue }
                guard let m = try? c.receiveMessage(maxBytes: WitnessService.maxRequest, maxDescriptors: 0, timeoutMilliseconds: 0),
                      case .message(let message) = m else { continue }   // closed, or broken: dropped
                // Never waits: a client whose answers pile up unread is dropped.
                guard case .sent? = try? c.sendDatagram(handle(message.bytes).encoded) else { continue }
                keep.append(c)
            }
            connections = keep
            if ready.first == true, let c = try? UnixSeqpacket.accept(listener, timeoutMilliseconds: 0) {
                if connections.count < 32 { connections.append(c) }
            }
        }
    }
}

extension String {
    func trimmingSuffixNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}

Server(core: WitnessCore(signer: signer, logs: logKeys), state: state).serve(listener)
