import Boot

/// One leaf mapping found by walking raw x86-64 page-table bytes, with the effective rights the
/// MMU would apply (U/S and R/W ANDed along the walk, NX ORed).
public struct Leaf: Equatable {
    public var virtual: UInt64
    public var size: UInt64        // 4 KiB or 2 MiB
    public var physical: UInt64
    public var flags: PageFlags

    public var end: UInt64 { virtual + size }
}

/// An independent decoder of the page tables that `PageTableBuilder.pages()` (or a boot plan's
/// chunks) produce: it reads only the bytes, never the builder, so it can check the builder's
/// `translate` and the loader's region map. Structural rules it enforces (each a crash):
/// every table it reaches is one of `tables`, each table is referenced exactly once (a tree),
/// no 1 GiB pages, nothing in the upper half, no reserved or software bits set in a leaf, 2 MiB
/// leaves 2 MiB aligned.
public func walkPageTables(root: UInt64, tables: [UInt64: [UInt8]]) -> [Leaf] {
    let present: UInt64 = 1, rw: UInt64 = 2, us: UInt64 = 4, ps: UInt64 = 0x80, nx: UInt64 = 1 << 63
    let addressMask: UInt64 = 0x000f_ffff_ffff_f000
    let knownLeafBits: UInt64 = present | rw | us | ps | nx | addressMask
    var leaves: [Leaf] = []
    var visited: Set<UInt64> = [root]

    func entry(_ table: [UInt8], _ i: Int) -> UInt64 {
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(table[i * 8 + k]) << (8 * UInt64(k)) }
        return v
    }

    func walk(_ tableAddress: UInt64, level: Int, base: UInt64, user: Bool, writable: Bool, executable: Bool) {
        guard let table = tables[tableAddress] else {
            fatalError("fuzz invariant violated: page table at \(hex(tableAddress)) (level \(level)) is not among the table pages")
        }
        check(table.count == 4096, "table page \(hex(tableAddress)) is \(table.count) bytes")
        let span: UInt64 = 1 << (12 + 9 * UInt64(level - 1))
        for i in 0..<512 {
            let e = entry(table, i)
            guard e & present != 0 else { continue }
            check(!(level == 4 && i >= 256), "upper-half PML4 entry \(i) is present: \(hex(e))")
            let va = base + UInt64(i) * span
            let u = user && e & us != 0, w = writable && e & rw != 0, x = executable && e & nx == 0
            let isLeaf = level == 1 || (level == 2 && e & ps != 0)
            check(!(level >= 3 && e & ps != 0), "PS bit set at level \(level) entry \(i) (\(hex(e)))")
            if isLeaf {
                check(e & ~knownLeafBits == 0, "leaf for \(hex(va)) has unexpected bits: \(hex(e))")
                check(!(level == 1 && e & ps != 0), "PAT bit set in 4 KiB leaf for \(hex(va)): \(hex(e))")
                let pa = e & addressMask
                check(pa % span == 0, "leaf for \(hex(va)) maps unaligned physical \(hex(pa)) (span \(hex(span)))")
                var f: PageFlags = []
                if u { f.insert(.user) }
                if w { f.insert(.writable) }
                if x { f.insert(.executable) }
                leaves.append(Leaf(virtual: va, size: span, physical: pa, flags: f))
            } else {
                check(e & nx == 0 && e & rw != 0 && e & us != 0,
                      "intermediate entry for \(hex(va)) at level \(level) is not permissive: \(hex(e))")
                let next = e & addressMask
                check(visited.insert(next).inserted, "table \(hex(next)) is referenced twice (or is the root)")
                walk(next, level: level - 1, base: va, user: u, writable: w, executable: x)
            }
        }
    }

    walk(root, level: 4, base: 0, user: true, writable: true, executable: true)
    return leaves
}
