import Crypto

/// The whole tree kept in memory as its perfect subtrees, level by level (level h holds the hash of
/// every aligned run of 2^h leaves, 32 bytes each, in one flat array: about 64 bytes a record), so
/// that any subtree an RFC 6962 proof needs is found or made from O(log n) stored hashes: a root,
/// an inclusion proof or a consistency proof at a million records costs microseconds, where the
/// leaf-list functions of `Merkle` rehash the whole tree. For the tools and the daemon's proofs.
public struct MerkleTree: Equatable, Sendable {
    private var levels: [[UInt8]] = []
    public private(set) var size: UInt64 = 0

    public init() {}

    public mutating func append(leafHash: [UInt8]) {
        precondition(leafHash.count == Merkle.hashSize, "a leaf hash is 32 bytes")
        if levels.isEmpty { levels.append([]) }
        levels[0] += leafHash
        size += 1
        // Every time a level's count becomes even, its last two nodes make one node above.
        var h = 0, count = size
        while count & 1 == 0 {
            let n = levels[h].count
            let parent = Merkle.nodeHash(Array(levels[h][(n - 64)..<(n - 32)]), Array(levels[h][(n - 32)..<n]))
            if levels.count == h + 1 { levels.append([]) }
            levels[h + 1] += parent
            h += 1; count >>= 1
        }
    }

    /// MTH(D[a..<b]) for a range the RFC's recursion reaches (every left part is a perfect,
    /// aligned subtree, stored; right parts split further).
    func hash(_ a: UInt64, _ b: UInt64) -> [UInt8] {
        let n = b - a
        if n == 0 { return Merkle.emptyRoot }
        if n & (n - 1) == 0, a % n == 0 {
            let h = n.trailingZeroBitCount, i = Int(a / n) * 32
            return Array(levels[h][i..<(i + 32)])
        }
        let k = Merkle.split(n)
        return Merkle.nodeHash(hash(a, a + k), hash(a + k, b))
    }

    /// The root of the tree of the first `size` leaves.
    public func root(size n: UInt64) throws(Merkle.ProofError) -> [UInt8] {
        guard n <= size else { throw .sizeBeyondTree(size: n, leaves: size) }
        return hash(0, n)
    }

    /// As `Merkle.inclusionProof`, from the stored levels.
    public func inclusionProof(index: UInt64, size n: UInt64) throws(Merkle.ProofError) -> [[UInt8]] {
        guard n <= size else { throw .sizeBeyondTree(size: n, leaves: size) }
        guard index < n else { throw .indexOutOfRange(index: index, size: n) }
        var proof: [[UInt8]] = []
        path(index, 0, n, &proof)
        return proof
    }

    private func path(_ m: UInt64, _ a: UInt64, _ b: UInt64, _ out: inout [[UInt8]]) {
        guard b - a > 1 else { return }
        let k = Merkle.split(b - a)
        if m < k { path(m, a, a + k, &out); out.append(hash(a + k, b)) } else { path(m - k, a + k, b, &out); out.append(hash(a, a + k)) }
    }

    /// As `Merkle.consistencyProof`, from the stored levels.
    public func consistencyProof(old m: UInt64, new n: UInt64) throws(Merkle.ProofError) -> [[UInt8]] {
        guard n <= size else { throw .sizeBeyondTree(size: n, leaves: size) }
        guard m <= n else { throw .sizesOutOfOrder(old: m, new: n) }
        guard m > 0, m < n else { return [] }
        var proof: [[UInt8]] = []
        subproof(m, 0, n, true, &proof)
        return proof
    }

    private func subproof(_ m: UInt64, _ a: UInt64, _ b: UInt64, _ complete: Bool, _ out: inout [[UInt8]]) {
        let n = b - a
        if m == n { if !complete { out.append(hash(a, b)) }; return }
        let k = Merkle.split(n)
        if m <= k { subproof(m, a, a + k, complete, &out); out.append(hash(a + k, b)) } else {
            subproof(m - k, a + k, b, false, &out); out.append(hash(a, a + k))
        }
    }
}
