import AuditLog
import TestSupport
import Testing

func unhex(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var i = s.startIndex
    while i < s.endIndex {
        let j = s.index(i, offsetBy: 2)
        out.append(UInt8(s[i..<j], radix: 16) ?? 0)
        i = j
    }
    return out
}

func hexString(_ b: [UInt8]) -> String { b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }

/// RFC 6962's tree, checked against the Certificate Transparency reference vectors (the leaves
/// and tree heads every RFC 6962 implementation is tested with), then against its own proofs
/// for every size and pair up to 64, and against mangled proofs.
@Suite struct MerkleTests {
    static let entries = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                          "606162636465666768696a6b6c6d6e6f"].map(unhex)
    static let roots = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    static let leaves = entries.map(Merkle.leafHash)

    @Test func theReferenceTreeHeads() {
        for n in 0...8 {
            #expect(hexString(Merkle.root(Self.leaves[0..<n])) == Self.roots[n], "size \(n)")
            var frontier = MerkleFrontier()
            for l in Self.leaves[0..<n] { frontier.append(leafHash: l) }
            #expect(hexString(frontier.root) == Self.roots[n], "frontier, size \(n)")
        }
    }

    @Test func theReferenceInclusionProofs() throws {
        let cases: [(UInt64, UInt64, [String])] = [
            (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        ]
        for (index, size, proof) in cases {
            let made = try Merkle.inclusionProof(Self.leaves, index: index, size: size)
            #expect(made.map(hexString) == proof, "inclusion \(index)/\(size)")
            #expect(Merkle.verifyInclusion(leafHash: Self.leaves[Int(index)], index: index, size: size,
                                           proof: proof.map(unhex), root: unhex(Self.roots[Int(size)])))
        }
    }

    @Test func theReferenceConsistencyProofs() throws {
        let cases: [(UInt64, UInt64, [String])] = [
            (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        ]
        for (old, new, proof) in cases {
            let made = try Merkle.consistencyProof(Self.leaves, old: old, new: new)
            #expect(made.map(hexString) == proof, "consistency \(old)->\(new)")
            #expect(Merkle.verifyConsistency(old: old, new: new, oldRoot: unhex(Self.roots[Int(old)]),
                                             newRoot: unhex(Self.roots[Int(new)]), proof: proof.map(unhex)))
        }
    }

    static let many: [[UInt8]] = (0..<64).map { Merkle.leafHash([UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 &* 7)]) }
    static let manyRoots: [[UInt8]] = (0...64).map { Merkle.root(many[0..<$0]) }

    /// Every leaf of every tree up to 64 has a proof that verifies, and no other leaf, index,
    /// size or root passes with it.
    @Test func everyInclusionProofVerifiesAndNothingElse() throws {
        for n in 1...64 {
            for i in 0..<n {
                let proof = try Merkle.inclusionProof(Self.many, index: UInt64(i), size: UInt64(n))
                let root = Self.manyRoots[n]
                #expect(Merkle.verifyInclusion(leafHash: Self.many[i], index: UInt64(i), size: UInt64(n), proof: proof, root: root))
                let other = Self.many[(i + 1) % 64]
                #expect(!Merkle.verifyInclusion(leafHash: other, index: UInt64(i), size: UInt64(n), proof: proof, root: root))
                if n > 1 {
                    #expect(!Merkle.verifyInclusion(leafHash: Self.many[i], index: UInt64((i + 1) % n), size: UInt64(n), proof: proof, root: root))
                }
                // Against the next tree (its own size and root), this proof passes only if it is
                // that tree's proof too. (The same root under another size can pass: the path's
                // shape is all that binds the size, which is why a checkpoint signs size and root
                // together.)
                if n < 64 {
                    let next = try Merkle.inclusionProof(Self.many, index: UInt64(i), size: UInt64(n + 1))
                    #expect(Merkle.verifyInclusion(leafHash: Self.many[i], index: UInt64(i), size: UInt64(n + 1), proof: proof,
                                                   root: Self.manyRoots[n + 1]) == (next == proof))
                }
                #expect(!Merkle.verifyInclusion(leafHash: Self.many[i], index: UInt64(i), size: UInt64(n), proof: proof, root: Self.manyRoots[n - 1]))
                if !proof.isEmpty {
                    var flipped = proof
                    flipped[flipped.count - 1][7] ^= 1
                    #expect(!Merkle.verifyInclusion(leafHash: Self.many[i], index: UInt64(i), size: UInt64(n), proof: flipped, root: root))
                    #expect(!Merkle.verifyInclusion(leafHash: Self.many[i], index: UInt64(i), size: UInt64(n), proof: Array(proof.dropLast()), root: root))
                }
                #expect(!Merkle.verifyInclusion(leafHash: Self.many[i], index: UInt64(i), size: UInt64(n), proof: proof + [[UInt8](repeating: 0xab, count: 32)], root: root))
            }
        }
    }

    /// Every pair of sizes up to 64 has a consistency proof that verifies, and a rewritten or
    /// truncated history does not.
    @Test func everyConsistencyProofVerifiesAndNothingElse() throws {
        for new in 0...64 {
            for old in 0...new {
                let proof = try Merkle.consistencyProof(Self.many, old: UInt64(old), new: UInt64(new))
                let (r1, r2) = (Self.manyRoots[old], Self.manyRoots[new])
                #expect(Merkle.verifyConsistency(old: UInt64(old), new: UInt64(new), oldRoot: r1, newRoot: r2, proof: proof), "\(old)->\(new)")
                guard old > 0, old < new else { continue }
                // A rewritten history: the old root of another tree.
                var forged = r1
                forged[0] ^= 0x80
                #expect(!Merkle.verifyConsistency(old: UInt64(old), new: UInt64(new), oldRoot: forged, newRoot: r2, proof: proof))
                #expect(!Merkle.verifyConsistency(old: UInt64(old), new: UInt64(new), oldRoot: r1, newRoot: Self.manyRoots[new - 1], proof: proof))
                #expect(!Merkle.verifyConsistency(old: UInt64(old), new: UInt64(new), oldRoot: r1, newRoot: r2, proof: Array(proof.dropLast())))
                #expect(!Merkle.verifyConsistency(old: UInt64(old), new: UInt64(new), oldRoot: r1, newRoot: r2, proof: proof + [[UInt8](repeating: 0xcd, count: 32)]))
                var flipped = proof
                flipped[0][3] ^= 0x80
                #expect(!Merkle.verifyConsistency(old: UInt64(old), new: UInt64(new), oldRoot: r1, newRoot: r2, proof: flipped))
                // A smaller "new" tree (a rollback) never verifies.
                #expect(!Merkle.verifyConsistency(old: UInt64(new), new: UInt64(old), oldRoot: r2, newRoot: r1, proof: proof))
            }
        }
    }

    /// The frontier's root equals the recursive root at every size, over random leaf counts.
    @Test func theFrontierMatchesTheTree() {
        var rng = SplitMix64(seed: 6962)
        for _ in 0..<20 {
            let n = Int(rng.next() % 300)
            let leaves = (0..<n).map { _ in Merkle.leafHash((0..<8).map { _ in UInt8(truncatingIfNeeded: rng.next()) }) }
            var f = MerkleFrontier()
            for (i, l) in leaves.enumerated() {
                f.append(leafHash: l)
                #expect(f.size == UInt64(i + 1))
                #expect(f.nodes.count == (i + 1).nonzeroBitCount)   // one complete subtree per set bit
            }
            #expect(f.root == Merkle.root(leaves))
        }
    }

    /// Bad requests and malformed proofs: errors and false, never a trap.
    @Test func hostileArgumentsAreRefused() {
        #expect(throws: Merkle.ProofError.indexOutOfRange(index: 8, size: 8)) { try Merkle.inclusionProof(Self.leaves, index: 8, size: 8) }
        #expect(throws: Merkle.ProofError.sizeBeyondTree(size: 9, leaves: 8)) { try Merkle.inclusionProof(Self.leaves, index: 0, size: 9) }
        #expect(throws: Merkle.ProofError.sizesOutOfOrder(old: 5, new: 3)) { try Merkle.consistencyProof(Self.leaves, old: 5, new: 3) }
        #expect(throws: Merkle.ProofError.sizeBeyondTree(size: UInt64.max, leaves: 8)) { try Merkle.consistencyProof(Self.leaves, old: 1, new: UInt64.max) }
        let root8 = unhex(Self.roots[8])
        #expect(!Merkle.verifyInclusion(leafHash: [1, 2, 3], index: 0, size: 8, proof: [], root: root8))
        #expect(!Merkle.verifyInclusion(leafHash: Self.leaves[0], index: UInt64.max, size: UInt64.max, proof: [], root: root8))
        #expect(!Merkle.verifyInclusion(leafHash: Self.leaves[0], index: 0, size: 8, proof: [[0]], root: root8))
        #expect(!Merkle.verifyInclusion(leafHash: Self.leaves[0], index: 0, size: UInt64.max,
                                        proof: Array(repeating: Self.leaves[1], count: 70), root: root8))
        #expect(Merkle.verifyConsistency(old: 0, new: 8, oldRoot: Merkle.emptyRoot, newRoot: root8, proof: []))
        #expect(!Merkle.verifyConsistency(old: 0, new: 8, oldRoot: Merkle.emptyRoot, newRoot: root8, proof: [root8]))
        #expect(!Merkle.verifyConsistency(old: 3, new: UInt64.max, oldRoot: unhex(Self.roots[3]), newRoot: root8,
                                          proof: Array(repeating: root8, count: 70)))
        #expect(!Merkle.verifyConsistency(old: 8, new: 8, oldRoot: root8, newRoot: unhex(Self.roots[7]), proof: []))
    }
}

/// The stored-level tree gives the same roots and proofs as the leaf-list functions, for every
/// size and pair of sizes up to 70, and refuses the same hostile arguments.
@Suite struct MerkleTreeTests {
    @Test func theTreeAgreesWithTheLeafLists() throws {
        let leaves = (0..<70).map { Merkle.leafHash([UInt8(truncatingIfNeeded: $0), 0x5a]) }
        var tree = MerkleTree()
        #expect(try tree.root(size: 0) == Merkle.emptyRoot)
        for leaf in leaves { tree.append(leafHash: leaf) }
        for n in 0...UInt64(70) {
            #expect(try tree.root(size: n) == Merkle.root(leaves[0..<Int(n)]))
            for i in 0..<n { #expect(try tree.inclusionProof(index: i, size: n) == Merkle.inclusionProof(leaves, index: i, size: n)) }
            for m in 0...n { #expect(try tree.consistencyProof(old: m, new: n) == Merkle.consistencyProof(leaves, old: m, new: n)) }
        }
        #expect(throws: Merkle.ProofError.sizeBeyondTree(size: 71, leaves: 70)) { try tree.root(size: 71) }
        #expect(throws: Merkle.ProofError.indexOutOfRange(index: 5, size: 5)) { try tree.inclusionProof(index: 5, size: 5) }
        #expect(throws: Merkle.ProofError.indexOutOfRange(index: .max, size: 70)) { try tree.inclusionProof(index: .max, size: 70) }
        #expect(throws: Merkle.ProofError.sizesOutOfOrder(old: 9, new: 8)) { try tree.consistencyProof(old: 9, new: 8) }
        #expect(throws: Merkle.ProofError.sizeBeyondTree(size: .max, leaves: 70)) { try tree.consistencyProof(old: 1, new: .max) }
    }
}
