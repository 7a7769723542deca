import Crypto

/// The Merkle tree of RFC 6962 §2.1 (as RFC 9162 §2.1 restates it) over the audit log's records:
/// a leaf is SHA-256(0x00 ‖ payload), an interior node SHA-256(0x01 ‖ left ‖ right), and a tree of
/// n > 1 leaves splits at k, the largest power of two smaller than n. Pure functions over leaf
/// hashes: the log keeps the hashes, the proofs are computed from them, and the verifiers need
/// nothing but the proof, the sizes and the roots.
public enum Merkle {
    public static let hashSize = 32

    /// SHA-256 of the empty string: the root of the empty tree.
    public static let emptyRoot: [UInt8] = Array(SHA256.hash(data: [UInt8]()))

    private static let leafPrefix: [UInt8] = [0x00], nodePrefix: [UInt8] = [0x01]

    public static func leafHash(_ payload: [UInt8]) -> [UInt8] {
        var h = SHA256()
        h.update(data: leafPrefix)
        h.update(data: payload)
        return Array(h.finalize())
    }

    public static func nodeHash(_ left: [UInt8], _ right: [UInt8]) -> [UInt8] {
        var h = SHA256()
        h.update(data: nodePrefix)
        h.update(data: left)
        h.update(data: right)
        return Array(h.finalize())
    }

    /// The largest power of two smaller than `n` (n ≥ 2).
    static func split(_ n: UInt64) -> UInt64 {
        var k: UInt64 = 1
        while k << 1 < n { k <<= 1 }
        return k
    }

    /// The root of the tree whose leaf hashes are `leaves` (MTH of RFC 6962).
    public static func root(_ leaves: ArraySlice<[UInt8]>) -> [UInt8] {
        switch leaves.count {
        case 0: return emptyRoot
        case 1: return leaves[leaves.startIndex]
        default:
            let k = Int(split(UInt64(leaves.count)))
            let mid = leaves.startIndex + k
            return nodeHash(root(leaves[leaves.startIndex..<mid]), root(leaves[mid...]))
        }
    }

    public static func root(_ leaves: [[UInt8]]) -> [UInt8] { root(leaves[...]) }

    /// Why a proof cannot be made.
    public enum ProofError: Error, Equatable, Sendable, CustomStringConvertible {
        case indexOutOfRange(index: UInt64, size: UInt64)
        case sizesOutOfOrder(old: UInt64, new: UInt64)
        case sizeBeyondTree(size: UInt64, leaves: UInt64)

        public var description: String {
            switch self {
            case .indexOutOfRange(let i, let n): return "record \(i) is not in a tree of \(n) records"
            case .sizesOutOfOrder(let m, let n): return "a tree of \(m) records cannot be a prefix of one of \(n)"
            case .sizeBeyondTree(let n, let have): return "a tree of \(n) records was asked for; the log has \(have)"
            }
        }
    }

    /// The audit path of leaf `index` in the tree made of the first `size` of `leaves`
    /// (PATH of RFC 6962 §2.1.1), from the leaf's sibling up.
    public static func inclusionProof(_ leaves: [[UInt8]], index: UInt64, size: UInt64) throws(ProofError) -> [[UInt8]] {
        guard size <= UInt64(leaves.count) else { throw .sizeBeyondTree(size: size, leaves: UInt64(leaves.count)) }
        guard index < size else { throw .indexOutOfRange(index: index, size: size) }
        return path(Int(index), leaves[0..<Int(size)])
    }

    static func path(_ m: Int, _ d: ArraySlice<[UInt8]>) -> [[UInt8]] {
        guard d.count > 1 else { return [] }
        let k = Int(split(UInt64(d.count)))
        let mid = d.startIndex + k
        if m < k { return path(m, d[d.startIndex..<mid]) + [root(d[mid...])] }
        return path(m - k, d[mid...]) + [root(d[d.startIndex..<mid])]
    }

    /// The proof that the tree of the first `old` leaves is a prefix of the tree of the first
    /// `new` (PROOF of RFC 6962 §2.1.2). Empty when `old` is 0 or equals `new`.
    public static func consistencyProof(_ leaves: [[UInt8]], old: UInt64, new: UInt64) throws(ProofError) -> [[UInt8]] {
        guard new <= UInt64(leaves.count) else { throw .sizeBeyondTree(size: new, leaves: UInt64(leaves.count)) }
        guard old <= new else { throw .sizesOutOfOrder(old: old, new: new) }
        guard old > 0, old < new else { return [] }
        return subproof(Int(old), leaves[0..<Int(new)], true)
    }

    static func subproof(_ m: Int, _ d: ArraySlice<[UInt8]>, _ complete: Bool) -> [[UInt8]] {
        let n = d.count
        if m == n { return complete ? [] : [root(d)] }
        let k = Int(split(UInt64(n)))
        let mid = d.startIndex + k
        if m <= k { return subproof(m, d[d.startIndex..<mid], complete) + [root(d[mid...])] }
        return subproof(m - k, d[mid...], false) + [root(d[d.startIndex..<mid])]
    }

    /// Whether `proof` shows that `leafHash` is leaf `index` of the tree of `size` leaves whose
    /// root is `root` (RFC 9162 §2.1.3.2). False for anything malformed; never traps.
    public static func verifyInclusion(leafHash: [UInt8], index: UInt64, size: UInt64, proof: [[UInt8]], root: [UInt8]) -> Bool {
        guard index < size, leafHash.count == hashSize, root.count == hashSize,
              proof.allSatisfy({ $0.count == hashSize }) else { return false }
        var fn = index, sn = size - 1
        var r = leafHash
        for p in proof {
            if sn == 0 { return false }
            if fn & 1 == 1 || fn == sn {
                r = nodeHash(p, r)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 { fn >>= 1; sn >>= 1 }
                }
            } else {
                r = nodeHash(r, p)
            }
            fn >>= 1; sn >>= 1
        }
        return sn == 0 && r == root
    }

    /// Whether `proof` shows that the tree of `old` leaves with root `oldRoot` is a prefix of the
    /// tree of `new` leaves with root `newRoot` (RFC 9162 §2.1.4.2). False for anything malformed.
    public static func verifyConsistency(old: UInt64, new: UInt64, oldRoot: [UInt8], newRoot: [UInt8], proof: [[UInt8]]) -> Bool {
        guard old <= new, oldRoot.count == hashSize, newRoot.count == hashSize,
              proof.allSatisfy({ $0.count == hashSize }) else { return false }
        if old == new { return proof.isEmpty && oldRoot == newRoot }
        if old == 0 { return proof.isEmpty && oldRoot == emptyRoot }
        guard !proof.isEmpty else { return false }
        var path = proof
        // When old is a power of two its root is the first node of the path: prepend it.
        if old & (old - 1) == 0 { path.insert(oldRoot, at: 0) }
        var fn = old - 1, sn = new - 1
        while fn & 1 == 1 { fn >>= 1; sn >>= 1 }
        var fr = path[0], sr = path[0]
        for c in path.dropFirst() {
            if sn == 0 { return false }
            if fn & 1 == 1 || fn == sn {
                fr = nodeHash(c, fr)
                sr = nodeHash(c, sr)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 { fn >>= 1; sn >>= 1 }
                }
            } else {
                sr = nodeHash(sr, c)
            }
            fn >>= 1; sn >>= 1
        }
        return sn == 0 && fr == oldRoot && sr == newRoot
    }
}

/// The right edge of a growing tree: the roots of its complete subtrees, largest first. An append
/// costs O(log n) hashes and the root is O(log n) from here, so the appender never keeps the
/// whole tree in memory.
public struct MerkleFrontier: Equatable, Sendable {
    /// (root of a complete subtree, its height: 2^height leaves), left to right.
    public private(set) var nodes: [(hash: [UInt8], height: Int)] = []
    public private(set) var size: UInt64 = 0

    public init() {}

    public static func == (a: MerkleFrontier, b: MerkleFrontier) -> Bool {
        a.size == b.size && a.nodes.map(\.hash) == b.nodes.map(\.hash) && a.nodes.map(\.height) == b.nodes.map(\.height)
    }

    /// Adds a leaf hash; merges equal-height subtrees on the right edge.
    public mutating func append(leafHash: [UInt8]) {
        var node = (hash: leafHash, height: 0)
        while let last = nodes.last, last.height == node.height {
            nodes.removeLast()
            node = (Merkle.nodeHash(last.hash, node.hash), node.height + 1)
        }
        nodes.append(node)
        size += 1
    }

    /// The tree's root: the complete subtrees folded from the right.
    public var root: [UInt8] {
        guard var r = nodes.last?.hash else { return Merkle.emptyRoot }
        for n in nodes.dropLast().reversed() { r = Merkle.nodeHash(n.hash, r) }
        return r
    }
}
