import Crypto

// The witness (docs/audit-log.md, "The witness"): a separate process that holds the latest
// checkpoint it accepted for each log and co-signs a new one only after checking a consistency
// proof from it, so that a log can be neither rolled back nor rewritten without the witness
// noticing. The request and its answers have the shape of c2sp.org/tlog-witness (add-checkpoint
// with the old size and a consistency proof; 200 with cosignature lines, 409 with the witness's
// size, 400/403/404/422), carried here in one Unix SOCK_SEQPACKET message each way; cosignatures
// are c2sp.org/tlog-cosignature's Ed25519 `cosignature/v1`. Pure: the process is bulkhead-witness.

/// A witness's public key (cosignature/v1, key type 0x04): the key ID is
/// SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key)[:4]; its text is `NAME+KEYID+base64(0x04 ‖ key)`.
public struct CosignatureKey: Equatable, Sendable {
    public static let type: UInt8 = 0x04
    public let name: String
    public let publicKey: [UInt8]
    public let keyID: UInt32

    public init(name: String, publicKey: [UInt8]) throws(NoteVerifierKey.Invalid) {
        keyID = try KeyText.keyID(name: name, type: Self.type, publicKey: publicKey)
        self.name = name
        self.publicKey = publicKey
    }

    public init(text: String) throws(NoteVerifierKey.Invalid) {
        let k = try KeyText.parseVerifier(text, type: Self.type, form: "a witness key is NAME+KEYID+base64(0x04 || 32-byte Ed25519 key)")
        try self.init(name: k.name, publicKey: k.key)
        try KeyText.check(id: k.id, against: keyID)
    }

    public var text: String { KeyText.verifierText(name: name, id: keyID, type: Self.type, key: publicKey) }

    /// What the cosignature signs: "cosignature/v1\n", "time T\n", then the checkpoint's text.
    public static func message(text: String, timestamp: UInt64) -> [UInt8] {
        Array("cosignature/v1\ntime \(timestamp)\n".utf8) + Array(text.utf8)
    }

    /// What this key's cosignature on a note says.
    public enum Check: Equatable, Sendable {
        /// A valid cosignature made at `timestamp` (POSIX seconds).
        case cosigned(timestamp: UInt64)
        /// A signature line with this key's name and ID that does not verify.
        case invalid
        /// No signature line from this key.
        case absent
    }

    /// Every line with this key's name and ID must verify (as for a note's signatures); the
    /// timestamp is the first such line's.
    public func check(_ note: SignedNote) -> Check {
        var first: UInt64?
        for s in note.signatures where s.name == name && s.keyID == keyID {
            guard s.signature.count == 72, let key = try? Curve25519.Signing.PublicKey(rawRepresentation: publicKey) else { return .invalid }
            let timestamp = s.signature.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard timestamp <= UInt64(Int64.max),
                  key.isValidSignature(Array(s.signature.dropFirst(8)), for: Self.message(text: note.text, timestamp: timestamp)) else { return .invalid }
            first = first ?? timestamp
        }
        return first.map { .cosigned(timestamp: $0) } ?? .absent
    }
}

/// A witness's signing key: makes cosignature/v1 lines. Its text form is
/// `PRIVATE+KEY+NAME+KEYID+base64(0x04 ‖ 32-byte seed)`.
public struct CosignatureSigner: @unchecked Sendable {
    // Sendable: both fields are immutable; swift-crypto's key is a value used read-only (signing
    // does not change it).
    public let verifierKey: CosignatureKey
    let privateKey: Curve25519.Signing.PrivateKey

    public init(name: String, privateKey: Curve25519.Signing.PrivateKey) throws(NoteVerifierKey.Invalid) {
        self.privateKey = privateKey
        verifierKey = try CosignatureKey(name: name, publicKey: Array(privateKey.publicKey.rawRepresentation))
    }

    /// A signer from a 32-byte Ed25519 seed (tests and fuzzers use fixed ones).
    public init(name: String, seed: [UInt8]) throws(NoteVerifierKey.Invalid) {
        try self.init(name: name, privateKey: try KeyText.privateKey(seed: seed))
    }

    public init(text: String) throws(NoteVerifierKey.Invalid) {
        let k = try KeyText.parsePrivate(text, type: CosignatureKey.type,
                                         form: "a witness signing key is PRIVATE+KEY+NAME+KEYID+base64(0x04 || 32-byte seed)")
        try self.init(name: k.name, privateKey: k.key)
        try KeyText.check(id: k.id, against: verifierKey.keyID)
    }

    public var text: String {
        KeyText.privateText(name: verifierKey.name, id: verifierKey.keyID, type: CosignatureKey.type, key: privateKey)
    }

    /// The cosignature line for a checkpoint's text at `timestamp` (POSIX seconds, > 0).
    public func cosign(_ text: String, timestamp: UInt64) throws -> String {
        let signature = try privateKey.signature(for: CosignatureKey.message(text: text, timestamp: timestamp))
        let stamp = (0..<8).map { UInt8(truncatingIfNeeded: timestamp >> (56 - 8 * UInt64($0))) }
        return SignedNote.Signature(name: verifierKey.name, keyID: verifierKey.keyID, signature: stamp + Array(signature)).line
    }
}

/// The add-checkpoint request (c2sp.org/tlog-witness): `old N`, up to 63 consistency-proof lines
/// (base64 hashes), a blank line, then the signed checkpoint.
public struct AddCheckpoint: Equatable, Sendable {
    public static let maxProof = 63
    public var oldSize: UInt64
    public var proof: [[UInt8]]
    public var note: [UInt8]

    public init(oldSize: UInt64, proof: [[UInt8]], note: [UInt8]) {
        self.oldSize = oldSize; self.proof = proof; self.note = note
    }

    public var encoded: [UInt8] {
        Array(("old \(oldSize)\n" + proof.map { Base64.encode($0) + "\n" }.joined() + "\n").utf8) + note
    }

    public struct Invalid: Error, Equatable, Sendable, CustomStringConvertible { public var description: String }

    public static func parse(_ bytes: [UInt8]) throws(Invalid) -> AddCheckpoint {
        guard bytes.count <= SignedNote.maxSize + 128 + maxProof * 46 else { throw Invalid(description: "a request of \(bytes.count) bytes") }
        var at = 0
        func line() throws(Invalid) -> String {
            guard let end = bytes[at...].firstIndex(of: 0x0a) else { throw Invalid(description: "a line without its newline") }
            let text = String(decoding: bytes[at..<end], as: UTF8.self)
            at = end + 1
            return text
        }
        let old = try line()
        guard old.hasPrefix("old "), let size = UInt64(old.dropFirst(4)), String(size) == old.dropFirst(4), size <= UInt64(Int64.max) else {
            throw Invalid(description: "the first line is not `old SIZE`")
        }
        var proof: [[UInt8]] = []
        while true {
            let l = try line()
            if l.isEmpty { break }
            guard proof.count < maxProof else { throw Invalid(description: "more than \(maxProof) consistency proof lines") }
            guard let hash = Base64.decode(l), hash.count == Merkle.hashSize else { throw Invalid(description: "a proof line that is not a base64 hash") }
            proof.append(hash)
        }
        return AddCheckpoint(oldSize: size, proof: proof, note: Array(bytes[at...]))
    }
}

/// A witness's answer, with tlog-witness's status codes.
public enum WitnessAnswer: Equatable, Sendable {
    /// 200: the cosignature lines.
    case cosigned(String)
    /// 409: the old size is not the witness's; it has cosigned this size.
    case conflict(size: UInt64)
    /// 400: malformed, or an old size above the checkpoint's.
    case badRequest(String)
    /// 403: not signed by the log's key.
    case forbidden(String)
    /// 404: a log the witness does not know.
    case unknownLog(String)
    /// 422: the proof does not verify (a rewritten or forked log).
    case unprocessable(String)
    /// 500: the witness could not persist its state; it cosigned nothing.
    case failed(String)

    public var status: Int {
        switch self {
        case .cosigned: 200
        case .conflict: 409
        case .badRequest: 400
        case .forbidden: 403
        case .unknownLog: 404
        case .unprocessable: 422
        case .failed: 500
        }
    }

    /// "STATUS\n" and the body (the cosignature lines; the size and a newline; or the reason).
    public var encoded: [UInt8] {
        let body: String
        switch self {
        case .cosigned(let lines): body = lines
        case .conflict(let size): body = "\(size)\n"
        case .badRequest(let s), .forbidden(let s), .unknownLog(let s), .unprocessable(let s), .failed(let s): body = s
        }
        return Array("\(status)\n\(body)".utf8)
    }

    public static func parse(_ bytes: [UInt8]) -> WitnessAnswer? {
        guard bytes.count <= 1 << 16, let nl = bytes.firstIndex(of: 0x0a), let status = Int(String(decoding: bytes[..<nl], as: UTF8.self)) else { return nil }
        let body = String(decoding: bytes[(nl + 1)...], as: UTF8.self)
        switch status {
        case 200: return .cosigned(body)
        case 409:
            guard body.hasSuffix("\n"), let size = UInt64(body.dropLast()) else { return nil }
            return .conflict(size: size)
        case 400: return .badRequest(body)
        case 403: return .forbidden(body)
        case 404: return .unknownLog(body)
        case 422: return .unprocessable(body)
        case 500: return .failed(body)
        default: return nil
        }
    }
}

/// What a witness holds for one log: the latest checkpoint it cosigned, with its cosignature.
public struct WitnessedLog: Equatable, Sendable {
    public var size: UInt64
    public var rootHash: [UInt8]
    /// The checkpoint as the log signed it, with the witness's cosignature line added.
    public var note: [UInt8]

    public init(size: UInt64, rootHash: [UInt8], note: [UInt8]) { self.size = size; self.rootHash = rootHash; self.note = note }
}

/// The witness's decisions (c2sp.org/tlog-witness, add-checkpoint), with no I/O: the caller
/// persists `accepted` before it answers, and records `refusal`.
public struct WitnessCore: Sendable {
    public let signer: CosignatureSigner
    /// The logs it serves, by origin: their verifier keys.
    public let logs: [String: NoteVerifierKey]

    public init(signer: CosignatureSigner, logs: [NoteVerifierKey]) {
        self.signer = signer
        var byName: [String: NoteVerifierKey] = [:]
        for k in logs { byName[k.name] = k }
        self.logs = byName
    }

    public struct Decision: Equatable, Sendable {
        public var answer: WitnessAnswer
        /// The new state for the log, to persist before answering (a 200 only).
        public var accepted: WitnessedLog?
        /// Why a request from a known log with a valid signature was refused: evidence of a log
        /// that rolled back or rewrote itself, which the witness keeps.
        public var refusal: String?
        public var origin: String?
    }

    /// Decides `request` against `current`, the latest checkpoint cosigned for its log (nil:
    /// none yet), at `now` (POSIX seconds).
    public func decide(_ request: AddCheckpoint, current: (String) -> WitnessedLog?, now: UInt64) -> Decision {
        func answer(_ a: WitnessAnswer, origin: String? = nil, refusal: String? = nil) -> Decision {
            Decision(answer: a, accepted: nil, refusal: refusal, origin: origin)
        }
        let note: SignedNote, checkpoint: Checkpoint
        do {
            note = try SignedNote.parse(request.note)
            checkpoint = try Checkpoint.parse(note.text)
        } catch { return answer(.badRequest("the checkpoint: \(error.description)")) }
        let origin = checkpoint.origin
        guard let key = logs[origin] else { return answer(.unknownLog("no log \(origin.prefix(80)) is known here")) }
        guard case .verified = note.verify([key]) else { return answer(.forbidden("the checkpoint is not signed by \(origin)'s key"), origin: origin) }
        guard request.oldSize <= checkpoint.size else {
            return answer(.badRequest("old size \(request.oldSize) is above the checkpoint's \(checkpoint.size)"), origin: origin)
        }
        let held = current(origin)
        let heldSize = held?.size ?? 0
        guard request.oldSize == heldSize else {
            // A checkpoint smaller than what was cosigned is a rollback: keep it as evidence.
            let rollback = checkpoint.size < heldSize ? "rollback: a checkpoint of \(checkpoint.size) records after \(heldSize) were cosigned" : nil
            return answer(.conflict(size: heldSize), origin: origin, refusal: rollback)
        }
        if checkpoint.size == 0 && checkpoint.rootHash != Merkle.emptyRoot {
            return answer(.unprocessable("a checkpoint of size 0 with a root other than the empty tree's"), origin: origin, refusal: "an empty tree with a wrong root")
        }
        if heldSize == 0 {
            guard request.proof.isEmpty else { return answer(.unprocessable("a proof from size 0"), origin: origin) }
        } else if heldSize == checkpoint.size {
            guard held?.rootHash == checkpoint.rootHash, request.proof.isEmpty else {
                return answer(.unprocessable("a different root for size \(heldSize)"), origin: origin,
                              refusal: "rewritten: a different root at the cosigned size \(heldSize)")
            }
        } else if let held {
            guard Merkle.verifyConsistency(old: held.size, new: checkpoint.size, oldRoot: held.rootHash, newRoot: checkpoint.rootHash, proof: request.proof) else {
                return answer(.unprocessable("the consistency proof from \(held.size) to \(checkpoint.size) does not verify"), origin: origin,
                              refusal: "rewritten: no consistency from the cosigned \(held.size) records to \(checkpoint.size)")
            }
        }
        let line: String
        do { line = try signer.cosign(note.text, timestamp: max(1, now)) } catch { return answer(.failed("cannot sign: \(error)"), origin: origin) }
        // The note as the log signed it (its own signature lines only), then the cosignature.
        let logLines = note.signatures.filter { $0.name == key.name && $0.keyID == key.keyID }.map(\.line).joined()
        let stored = Array((note.text + "\n" + logLines + line).utf8)
        return Decision(answer: .cosigned(line), accepted: WitnessedLog(size: checkpoint.size, rootHash: checkpoint.rootHash, note: stored),
                        refusal: nil, origin: origin)
    }
}
