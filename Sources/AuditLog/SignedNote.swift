import Crypto

/// Standard base64 (RFC 4648 §4) with padding, decoded strictly: only the canonical encoding of
/// some bytes is accepted (no whitespace, no missing or extra padding, no stray low bits).
public enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let values: [UInt8: UInt8] = Dictionary(uniqueKeysWithValues: alphabet.enumerated().map { ($1, UInt8($0)) })

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            let b0 = bytes[i], b1 = n > 1 ? bytes[i + 1] : 0, b2 = n > 2 ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 3) << 4 | b1 >> 4)])
            out.append(n > 1 ? alphabet[Int((b1 & 0xf) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(n > 2 ? alphabet[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ text: String) -> [UInt8]? {
        let s = Array(text.utf8)
        guard s.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        for q in stride(from: 0, to: s.count, by: 4) {
            let pad = s[q + 3] == UInt8(ascii: "=") ? (s[q + 2] == UInt8(ascii: "=") ? 2 : 1) : 0
            guard pad == 0 || q + 4 == s.count else { return nil }
            var v: [UInt8] = []
            for c in s[q..<(q + 4 - pad)] {
                guard let x = values[c] else { return nil }
                v.append(x)
            }
            out.append(v[0] << 2 | v[1] >> 4)
            if pad < 2 { out.append(v[1] << 4 | v[2] >> 2) }
            if pad < 1 { out.append(v[2] << 6 | v[3]) }
        }
        return encode(out) == text ? out : nil
    }
}

/// A signed note's key (c2sp.org/signed-note, Ed25519, type 0x01): its name and public key, and
/// the key ID SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4]. Its text form is what a verifier holds:
/// `NAME+KEYID+base64(0x01 ‖ key)` (KEYID in 8 lowercase hex digits), as Go's sumdb/note writes it.
public struct NoteVerifierKey: Equatable, Sendable {
    public let name: String
    public let publicKey: [UInt8]
    public let keyID: UInt32

    public struct Invalid: Error, Equatable, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// A key name is non-empty UTF-8 with no spaces, no `+` and no control characters.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && !name.unicodeScalars.contains { $0 == "+" || $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7f }
    }

    public static let type: UInt8 = 0x01

    public init(name: String, publicKey: [UInt8]) throws(Invalid) {
        keyID = try KeyText.keyID(name: name, type: Self.type, publicKey: publicKey)
        self.name = name
        self.publicKey = publicKey
    }

    /// Parses `NAME+KEYID+base64(0x01 ‖ key)`, refusing a key ID that does not match the key.
    public init(text: String) throws(Invalid) {
        let k = try KeyText.parseVerifier(text, type: Self.type, form: "a verifier key is NAME+KEYID+base64(0x01 || 32-byte Ed25519 key)")
        try self.init(name: k.name, publicKey: k.key)
        try KeyText.check(id: k.id, against: keyID)
    }

    public var text: String { KeyText.verifierText(name: name, id: keyID, type: Self.type, key: publicKey) }

    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: publicKey) else { return false }
        return key.isValidSignature(signature, for: message)
    }
}

/// Signs note texts with an Ed25519 private key under a name.
public struct NoteSigner {
    public let verifierKey: NoteVerifierKey
    let privateKey: Curve25519.Signing.PrivateKey

    public init(name: String, privateKey: Curve25519.Signing.PrivateKey) throws(NoteVerifierKey.Invalid) {
        self.privateKey = privateKey
        verifierKey = try NoteVerifierKey(name: name, publicKey: Array(privateKey.publicKey.rawRepresentation))
    }

    /// A signer from a 32-byte Ed25519 seed (tests and fuzzers use fixed ones).
    public init(name: String, seed: [UInt8]) throws(NoteVerifierKey.Invalid) {
        try self.init(name: name, privateKey: try KeyText.privateKey(seed: seed))
    }

    /// Parses the private key's text form, `PRIVATE+KEY+NAME+KEYID+base64(0x01 ‖ 32-byte seed)`.
    public init(text: String) throws(NoteVerifierKey.Invalid) {
        let k = try KeyText.parsePrivate(text, type: NoteVerifierKey.type, form: "a signer key is PRIVATE+KEY+NAME+KEYID+base64(0x01 || 32-byte seed)")
        try self.init(name: k.name, privateKey: k.key)
        try KeyText.check(id: k.id, against: verifierKey.keyID)
    }

    /// The private key's text form (keep it readable by its owner only).
    public var text: String {
        KeyText.privateText(name: verifierKey.name, id: verifierKey.keyID, type: NoteVerifierKey.type, key: privateKey)
    }

    /// The signature line for `text`: "— NAME base64(keyID ‖ signature)\n".
    public func signatureLine(for text: String) throws -> String {
        let signature = try privateKey.signature(for: Array(text.utf8))
        return SignedNote.Signature(name: verifierKey.name, keyID: verifierKey.keyID, signature: Array(signature)).line
    }

    /// `text` (ending in a newline) signed: the note.
    public func sign(_ text: String) throws -> String { text + "\n" + (try signatureLine(for: text)) }

    static func hex8(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }
}

/// What the two kinds of Ed25519 key (a note's, type 0x01; a witness's cosignature key, type
/// 0x04) share: the key ID, and the text forms `NAME+KEYID+base64(type ‖ key)` and
/// `PRIVATE+KEY+NAME+KEYID+base64(type ‖ seed)`.
enum KeyText {
    typealias Invalid = NoteVerifierKey.Invalid

    /// SHA-256(name ‖ 0x0A ‖ type ‖ key)[:4], after checking the name and the key's length.
    static func keyID(name: String, type: UInt8, publicKey: [UInt8]) throws(Invalid) -> UInt32 {
        guard NoteVerifierKey.isValidName(name) else {
            throw Invalid(description: "key name '\(name.prefix(80))' is empty or has a space, '+' or a control character")
        }
        guard publicKey.count == 32 else { throw Invalid(description: "an Ed25519 public key is 32 bytes, not \(publicKey.count)") }
        return Array(SHA256.hash(data: Array(name.utf8) + [0x0a, type] + publicKey)).prefix(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// The parts of `NAME+KEYID+base64(type ‖ key)`; `form` says what is expected when it is not that.
    static func parseVerifier(_ text: String, type: UInt8, form: String) throws(Invalid) -> (name: String, key: [UInt8], id: Substring) {
        let parts = text.split(separator: "+", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[1].count == 8, UInt32(parts[1], radix: 16) != nil, parts[1] == parts[1].lowercased(),
              let blob = Base64.decode(String(parts[2])), blob.count == 33, blob[0] == type else {
            throw Invalid(description: form)
        }
        return (String(parts[0]), Array(blob[1...]), parts[1])
    }

    /// The parts of `PRIVATE+KEY+NAME+KEYID+base64(type ‖ seed)`.
    static func parsePrivate(_ text: String, type: UInt8, form: String) throws(Invalid) -> (name: String, key: Curve25519.Signing.PrivateKey, id: Substring) {
        let parts = text.split(separator: "+", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "PRIVATE", parts[1] == "KEY", let blob = Base64.decode(String(parts[4])),
              blob.count == 33, blob[0] == type, let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: Array(blob[1...])) else {
            throw Invalid(description: form)
        }
        return (String(parts[2]), key, parts[3])
    }

    /// The key ID written in a text form must be the key's own.
    static func check(id written: Substring, against keyID: UInt32) throws(Invalid) {
        guard written == Substring(NoteSigner.hex8(keyID)) else {
            throw Invalid(description: "the key ID \(written.prefix(8)) does not match the key")
        }
    }

    static func verifierText(name: String, id: UInt32, type: UInt8, key: [UInt8]) -> String {
        "\(name)+\(NoteSigner.hex8(id))+\(Base64.encode([type] + key))"
    }

    static func privateText(name: String, id: UInt32, type: UInt8, key: Curve25519.Signing.PrivateKey) -> String {
        "PRIVATE+KEY+\(name)+\(NoteSigner.hex8(id))+\(Base64.encode([type] + Array(key.rawRepresentation)))"
    }

    static func privateKey(seed: [UInt8]) throws(Invalid) -> Curve25519.Signing.PrivateKey {
        guard let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
            throw Invalid(description: "an Ed25519 seed is 32 bytes, not \(seed.count)")
        }
        return key
    }
}

/// A signed note (c2sp.org/signed-note): a text ending in a newline, a blank line, then one or
/// more signature lines "— NAME base64(keyID ‖ signature)".
public struct SignedNote: Equatable, Sendable {
    public struct Signature: Equatable, Sendable {
        public var name: String
        public var keyID: UInt32
        public var signature: [UInt8]

        public init(name: String, keyID: UInt32, signature: [UInt8]) { self.name = name; self.keyID = keyID; self.signature = signature }

        /// The signature line: "— NAME base64(key ID, big-endian ‖ signature)\n".
        public var line: String {
            let id = [UInt8(keyID >> 24), UInt8(keyID >> 16 & 0xff), UInt8(keyID >> 8 & 0xff), UInt8(keyID & 0xff)]
            return "\u{2014} \(name) \(Base64.encode(id + signature))\n"
        }
    }

    public let text: String
    public let signatures: [Signature]

    /// The most signatures a note may carry (the specification asks verifiers to accept 16).
    public static let maxSignatures = 64
    public static let maxSize = 1 << 16

    public struct Invalid: Error, Equatable, Sendable, CustomStringConvertible {
        public var description: String
    }

    public static func parse(_ bytes: [UInt8]) throws(Invalid) -> SignedNote {
        guard bytes.count <= maxSize else { throw Invalid(description: "a note of \(bytes.count) bytes (at most \(maxSize))") }
        guard let all = String(validating: bytes, as: UTF8.self) else { throw Invalid(description: "a note that is not UTF-8") }
        guard bytes.count >= 2 else { throw Invalid(description: "an empty note") }
        guard !bytes.contains(where: { $0 < 0x20 && $0 != 0x0a }) else { throw Invalid(description: "a control character other than newline") }
        guard bytes.last == 0x0a else { throw Invalid(description: "a note that does not end in a newline") }
        // The text ends at the last blank line: "\n\n" followed by signature lines only.
        _ = all
        guard let k = (0..<(bytes.count - 1)).last(where: { bytes[$0] == 0x0a && bytes[$0 + 1] == 0x0a }) else {
            throw Invalid(description: "no blank line before the signatures")
        }
        let text = String(decoding: bytes[...k], as: UTF8.self)
        let lines = String(decoding: bytes[(k + 2)...], as: UTF8.self)
        var signatures: [Signature] = []
        for line in lines.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            guard line.hasPrefix("\u{2014} ") else { throw Invalid(description: "a signature line that does not start with an em dash and a space") }
            let fields = line.dropFirst(2).split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count == 2, NoteVerifierKey.isValidName(String(fields[0])), let blob = Base64.decode(String(fields[1])), blob.count > 4 else {
                throw Invalid(description: "a malformed signature line")
            }
            signatures.append(Signature(name: String(fields[0]), keyID: blob.prefix(4).reduce(0) { $0 << 8 | UInt32($1) },
                                        signature: Array(blob.dropFirst(4))))
        }
        guard !signatures.isEmpty else { throw Invalid(description: "no signature") }
        guard signatures.count <= maxSignatures else { throw Invalid(description: "more than \(maxSignatures) signatures") }
        return SignedNote(text: text, signatures: signatures)
    }

    /// What verifying a note against known keys found.
    public enum Verification: Equatable, Sendable {
        /// These known keys signed it (at least one), and no known key's signature failed.
        case verified(names: [String])
        /// A signature by a known key (name and ID) does not verify: the note is rejected.
        case badSignature(name: String)
        /// No signature is from a known key.
        case noKnownSigner
    }

    /// Checks the signatures from `keys` (by name and key ID); others are ignored, as the
    /// specification says.
    public func verify(_ keys: [NoteVerifierKey]) -> Verification {
        var verified: [String] = []
        for s in signatures {
            guard let key = keys.first(where: { $0.name == s.name && $0.keyID == s.keyID }) else { continue }
            guard key.isValidSignature(s.signature, for: Array(text.utf8)) else { return .badSignature(name: s.name) }
            verified.append(s.name)
        }
        return verified.isEmpty ? .noKnownSigner : .verified(names: verified)
    }
}

/// A checkpoint (c2sp.org/tlog-checkpoint): the note text naming a log's origin, its size and
/// its RFC 6962 root hash. Extension lines are neither written nor accepted.
public struct Checkpoint: Equatable, Sendable {
    public var origin: String
    public var size: UInt64
    public var rootHash: [UInt8]

    public init(origin: String, size: UInt64, rootHash: [UInt8]) {
        self.origin = origin; self.size = size; self.rootHash = rootHash
    }

    public var text: String { "\(origin)\n\(size)\n\(Base64.encode(rootHash))\n" }

    public static func parse(_ text: String) throws(SignedNote.Invalid) -> Checkpoint {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count == 4, lines[3].isEmpty else { throw SignedNote.Invalid(description: "a checkpoint is three lines: origin, size, root hash") }
        let origin = String(lines[0])
        guard NoteVerifierKey.isValidName(origin) else { throw SignedNote.Invalid(description: "an origin with a space, '+' or nothing") }
        guard let size = UInt64(lines[1]), String(size) == lines[1] else { throw SignedNote.Invalid(description: "the size '\(lines[1].prefix(40))' is not a decimal number without leading zeros") }
        guard let root = Base64.decode(String(lines[2])), root.count == Merkle.hashSize else { throw SignedNote.Invalid(description: "the root hash is not the base64 of 32 bytes") }
        return Checkpoint(origin: origin, size: size, rootHash: root)
    }
}
