import AuditLog
import TestSupport
import Testing

/// Signed notes and checkpoints, against the published vectors of Go's sumdb/note (the format's
/// first implementation) and of the C2SP signed-note specification.
@Suite struct SignedNoteTests {
    static let peterKey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    static let peterSigner = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
    static let enochKey = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
    static let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
    static let peterLine = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    static let enochLine = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"

    @Test func theGoReferenceKeysAndSignature() throws {
        let peter = try NoteVerifierKey(text: Self.peterKey)
        #expect(peter.name == "PeterNeumann" && peter.keyID == 0xc74f_20a3 && peter.text == Self.peterKey)
        let signer = try NoteSigner(text: Self.peterSigner)
        #expect(signer.verifierKey == peter && signer.text == Self.peterSigner)
        // Ed25519 is deterministic: the same key signs the same text into the same bytes.
        #expect(try signer.sign(Self.text) == Self.text + "\n" + Self.peterLine)
        let note = try SignedNote.parse(Array((Self.text + "\n" + Self.peterLine + Self.enochLine).utf8))
        #expect(note.text == Self.text && note.signatures.map(\.name) == ["PeterNeumann", "EnochRoot"])
        let enoch = try NoteVerifierKey(text: Self.enochKey)
        #expect(note.verify([peter]) == .verified(names: ["PeterNeumann"]))
        #expect(note.verify([peter, enoch]) == .verified(names: ["PeterNeumann", "EnochRoot"]))
        #expect(note.verify([]) == .noKnownSigner)
    }

    @Test func theSpecificationsExample() throws {
        let key = try NoteVerifierKey(text: "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
        let note = try SignedNote.parse(Array("This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n".utf8))
        #expect(note.verify([key]) == .verified(names: ["example.com/foo"]))
    }

    /// A changed text, a changed signature, a key of the same name and another ID (ignored), the
    /// same name and ID but another key (a bad signature): each is told.
    @Test func forgeriesAreTold() throws {
        let peter = try NoteVerifierKey(text: Self.peterKey)
        let changed = try SignedNote.parse(Array((Self.text.replacingFirst("problem", "issue") + "\n" + Self.peterLine).utf8))
        #expect(changed.verify([peter]) == .badSignature(name: "PeterNeumann"))
        var blob = Base64.decode("x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=") ?? []
        blob[20] ^= 1
        let flipped = try SignedNote.parse(Array((Self.text + "\n\u{2014} PeterNeumann " + Base64.encode(blob) + "\n").utf8))
        #expect(flipped.verify([peter]) == .badSignature(name: "PeterNeumann"))
        let impostor = try NoteSigner(name: "PeterNeumann", privateKey: .init())
        let forged = try SignedNote.parse(Array(try impostor.sign(Self.text).utf8))
        #expect(forged.verify([peter]) == .noKnownSigner)                // another ID: not Peter's signature at all
    }

    @Test func malformedNotesAndKeysAreRefused() {
        for note in ["", "\n", "text\n", "text\n\n", "text\n\n\u{2014} PeterNeumann\n", "text\n\n- PeterNeumann AAAA\n",
                     "text\n\n\u{2014} Peter Neumann x08go/ZJ\n", "text\n\n\u{2014} PeterNeumann x08go/ZJ=\n", "text\n\n\u{2014} PeterNeumann AAAAAA==",
                     "te\u{7}xt\n\n" + Self.peterLine, "text\n\n\u{2014} P AAAA\n"] {
            #expect(throws: SignedNote.Invalid.self, "\(note.debugDescription)") { try SignedNote.parse(Array(note.utf8)) }
        }
        #expect(throws: SignedNote.Invalid.self) { try SignedNote.parse([0x74, 0xff, 0x0a, 0x0a, 0x0a]) }
        #expect(throws: SignedNote.Invalid.self) { try SignedNote.parse(Array((Self.text + "\n" + String(repeating: Self.peterLine, count: 65)).utf8)) }
        for key in ["", "PeterNeumann", "PeterNeumann+c74f20a3", "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                    "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                    "PeterNeumann+c74f20a3+ApVfTszYBVEzKVD/OPOdtbXHfTMlGRdtxXN4rTsxaOGZ", "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T"] {
            #expect(throws: NoteVerifierKey.Invalid.self, "\(key)") { try NoteVerifierKey(text: key) }
        }
        #expect(Base64.decode("QQ==") == [0x41] && Base64.decode("QR==") == nil && Base64.decode("QQ") == nil && Base64.decode("Q Q=") == nil)
    }

    @Test func checkpointsRoundTripAndRefuseTheRest() throws {
        let root = MerkleTests.roots[8]
        let c = Checkpoint(origin: "bulkhead.example/host-1", size: 8, rootHash: unhex(root))
        #expect(c.text == "bulkhead.example/host-1\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n")
        #expect(try Checkpoint.parse(c.text) == c)
        let signer = try NoteSigner(name: "bulkhead.example/host-1", privateKey: .init())
        let note = try SignedNote.parse(Array(try signer.sign(c.text).utf8))
        #expect(note.verify([signer.verifierKey]) == .verified(names: ["bulkhead.example/host-1"]))
        #expect(try Checkpoint.parse(note.text) == c)
        for text in ["bulkhead.example/host-1\n08\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "o\n-1\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
                     "o\n8\nXcnaeacG\n", "o\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\next\n", "o p\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
                     "o\n18446744073709551616\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "o\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="] {
            #expect(throws: SignedNote.Invalid.self, "\(text.debugDescription)") { try Checkpoint.parse(text) }
        }
    }
}

extension String {
    func replacingFirst(_ a: String, _ b: String) -> String {
        guard let r = range(of: a) else { return self }
        return replacingCharacters(in: r, with: b)
    }
}
