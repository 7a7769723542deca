import Boot
import FuzzSupport
#if canImport(Glibc)
import Glibc
#endif

// FuzzPageTables: random map() calls on a PageTableBuilder, against a model of what is mapped.
//   - a request that is misaligned or leaves the 47-bit lower half throws and changes nothing;
//   - a request that overlaps an existing mapping throws (never silently remaps);
//   - a request that fits succeeds unless the pool runs out;
//   - translate() of mapped pages gives the right physical address and flags, of unmapped nil;
//   - the bytes of pages() decode (independently) to exactly the model.
//   - a request that throws changes nothing (map is all or nothing);
//   - a physical range beyond MAXPHYADDR (52 bits), or one that wraps, must be refused, since
//     the frame field of an entry has 40 bits: higher bits would land in the ignored bits or NX.
//
// Input: u8 pool pages (1...24), then at most 24 operations of 1 byte `op` + operands:
//   op bits 0-2: flags (user, writable, executable)
//   op bits 3-4: virtual: 0 = u16 page index; 1 = u8 × 2 MiB; 2 = raw u64; 3 = 2^47 − u16 pages
//   op bits 5-6: physical: 0 = identity; 1 = u16 page index; 2 = u16 × 2 MiB; 3 = raw u64
//   op bit 7:    size: 0 = u8 pages; 1 = (u8 % 3) × 2 MiB + u8 pages, or (first u8 = 0xff) a raw
//                u32 below 4 MiB

func flag(_ name: String) -> Bool {
    guard let v = getenv(name) else { return false }
    return String(cString: v) == "1"
}
let maxPhysical: UInt64 = 1 << 52

struct Mapping {
    var virtual: UInt64, physical: UInt64, size: UInt64, flags: PageFlags
    var end: UInt64 { virtual + size }
}

struct Model {
    var mappings: [Mapping] = []

    func lookup(_ va: UInt64) -> (physical: UInt64, flags: PageFlags)? {
        for m in mappings where m.virtual <= va && va < m.end { return (m.physical + (va - m.virtual), m.flags) }
        return nil
    }

    func overlaps(_ start: UInt64, _ end: UInt64) -> Bool {
        start < end && mappings.contains { $0.virtual < end && start < $0.end }
    }
}

func expectTranslate(_ pt: PageTableBuilder, _ model: Model, _ va: UInt64, _ context: @autoclosure () -> String) {
    let got = pt.translate(va)
    if let want = model.lookup(va) {
        guard let got else { fatalError("fuzz invariant violated: \(hex(va)) unmapped, model maps it to \(hex(want.physical)) (\(context()))") }
        check(got.physical == want.physical && got.flags == want.flags,
              "translate(\(hex(va))) = \(hex(got.physical)) flags \(got.flags.rawValue), model \(hex(want.physical)) flags \(want.flags.rawValue) (\(context()))")
    } else {
        check(got == nil, "translate(\(hex(va))) = \(hex(got!.physical)) but the model has nothing there (\(context()))")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPageTables(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let poolPages = 1 + Int(input.u8() % 24)
    let poolBase: UInt64 = 0x10_0000
    var pt = PageTableBuilder(poolBase: poolBase, poolPages: poolPages)
    var model = Model()
    let page: UInt64 = 4096, large: UInt64 = 2 << 20
    let canonicalEnd: UInt64 = 1 << 47

    var ops = 0
    while !input.isEmpty && ops < 24 {
        ops += 1
        let op = input.u8()
        let flags = PageFlags(rawValue: op & 7)
        let va: UInt64
        switch (op >> 3) & 3 {
        case 0: va = UInt64(input.u16()) * page
        case 1: va = UInt64(input.u8()) * large
        case 2: va = input.u64()
        default: va = canonicalEnd &- UInt64(input.u16()) * page
        }
        let pa: UInt64
        switch (op >> 5) & 3 {
        case 0: pa = va
        case 1: pa = UInt64(input.u16()) * page
        case 2: pa = UInt64(input.u16()) * large
        default: pa = input.u64()
        }
        var length: UInt64
        if op & 0x80 == 0 {
            length = UInt64(input.u8()) * page
        } else {
            let a = input.u8(), b = input.u8()
            length = a == 0xff ? UInt64(input.u32() & 0x3f_ffff) : UInt64(a % 3) * large + UInt64(b) * page
        }
        let n = ops
        func context() -> String { "op \(n): map(\(hex(va)) -> \(hex(pa)), \(hex(length)), flags \(flags.rawValue))" }
        let (end, overflow) = va.addingReportingOverflow(length)
        let usedBefore = pt.pagesUsed
        let before = model
        let (physicalEnd, physicalOverflow) = pa.addingReportingOverflow(length)
        let physicalBad = physicalOverflow || physicalEnd > maxPhysical
        let firstPageBefore = va < canonicalEnd ? pt.translate(va) : nil

        do {
            try pt.map(virtual: va, physical: pa, size: length, flags: flags)
            trace("\(context()): ok, \(pt.pagesUsed) table pages")
            check(va % page == 0 && pa % page == 0 && length % page == 0, "misaligned request accepted: \(context())")
            check(!overflow && end <= canonicalEnd, "non-canonical request accepted: \(context())")
            check(!before.overlaps(va, end), "overlapping request accepted (silent remap): \(context())")
            check(!physicalBad, "physical range \(hex(pa))+\(hex(length)) beyond 2^52 accepted: \(context())")
            if length > 0 { model.mappings.append(Mapping(virtual: va, physical: pa, size: length, flags: flags)) }
            // Spot checks: the ends of the new range, the 2 MiB boundaries, the neighbours.
            if length > 0 {
                var probes: [UInt64] = [va, end - page, end - 1, va + length / 2]
                var b = (va + large - 1) / large * large
                while b < end && probes.count < 16 { probes += b > 0 ? [b - 1, b] : [b]; b += large }
                if va >= page { probes.append(va - 1) }
                if end < canonicalEnd { probes.append(end) }
                for p in probes where p < canonicalEnd { expectTranslate(pt, model, p, context()) }
            }
        } catch {
            trace("\(context()): \(error.description), \(pt.pagesUsed) table pages")
            check(pt.pagesUsed <= poolPages, "pool overrun: \(pt.pagesUsed) > \(poolPages)")
            if physicalBad {
                // Any error will do, as long as it is raised before anything changes.
                check(pt.pagesUsed == usedBefore, "refused wide physical range allocated tables: \(error), \(context())")
                if va < canonicalEnd {
                    let now = pt.translate(va)
                    check(now?.physical == firstPageBefore?.physical && now?.flags == firstPageBefore?.flags,
                          "refused wide physical range changed \(hex(va)): \(error), \(context())")
                }
                continue
            }
            switch error {
            case .misaligned(let at):
                check(at == va && !(va % page == 0 && pa % page == 0 && length % page == 0), "wrong misaligned error: \(error), \(context())")
                check(pt.pagesUsed == usedBefore, "misaligned request allocated tables")
            case .nonCanonical(let at):
                check(at == va && (overflow || end > canonicalEnd), "wrong non-canonical error: \(error), \(context())")
                check(pt.pagesUsed == usedBefore, "non-canonical request allocated tables")
            case .overlap, .poolExhausted:
                check(va % page == 0 && pa % page == 0 && length % page == 0 && !overflow && end <= canonicalEnd,
                      "bad request not caught up front: \(error), \(context())")
                var stop = end
                if case .overlap(let at) = error {
                    check(at % page == 0 && at >= va && at < end, "overlap address \(hex(at)) outside the request: \(context())")
                    check(!before.overlaps(va, at), "overlap reported at \(hex(at)) but an earlier page was already mapped: \(context())")
                    check(before.overlaps(at, min(end, at + large)), "overlap reported at \(hex(at)) but nothing is mapped there: \(context())")
                    stop = at
                }
                _ = stop
                // All or nothing: a failed request allocates no table and maps nothing.
                check(pt.pagesUsed == usedBefore, "failed request kept \(pt.pagesUsed - usedBefore) new table pages: \(error), \(context())")
                let done = va
                // Everything past the failure is as it was.
                var p = done
                var n = 0
                while p < end && n < 1300 {
                    expectTranslate(pt, model, p, context() + " [after failure]")
                    p += page
                    n += 1
                }
            default:
                fatalError("fuzz invariant violated: unexpected error \(error): \(context())")
            }
        }
        check(pt.pagesUsed >= 1 && pt.pagesUsed <= max(1, poolPages), "pagesUsed \(pt.pagesUsed) of \(poolPages)")
    }

    // Full check: decode the table bytes independently and compare with the model.
    let pages = pt.pages()
    check(pages.count == pt.pagesUsed, "pages() returned \(pages.count), pagesUsed \(pt.pagesUsed)")
    check(pages.first?.address == pt.root && pt.root == poolBase, "root is not the first pool page")
    var tables: [UInt64: [UInt8]] = [:]
    for p in pages {
        check(p.address >= poolBase && p.address < poolBase + UInt64(poolPages) * page && p.address % page == 0,
              "table page \(hex(p.address)) outside the pool")
        check(tables.updateValue(p.bytes, forKey: p.address) == nil, "table page \(hex(p.address)) listed twice")
    }
    let leaves = walkPageTables(root: pt.root, tables: tables)
    var mapped: UInt64 = 0
    for leaf in leaves {
        guard let m = model.mappings.first(where: { $0.virtual <= leaf.virtual && leaf.end <= $0.end }) else {
            fatalError("fuzz invariant violated: leaf \(hex(leaf.virtual))+\(hex(leaf.size)) is not in the model")
        }
        check(leaf.physical == m.physical + (leaf.virtual - m.virtual) && leaf.flags == m.flags,
              "leaf \(hex(leaf.virtual)) -> \(hex(leaf.physical)) flags \(leaf.flags.rawValue), model -> \(hex(m.physical + (leaf.virtual - m.virtual))) flags \(m.flags.rawValue)")
        mapped += leaf.size
    }
    // translate() agrees at a sample of leaves (the walk above already checked every leaf).
    let step = max(1, leaves.count / 128)
    for k in stride(from: 0, to: leaves.count, by: step) {
        for va in [leaves[k].virtual, leaves[k].end - 1] { expectTranslate(pt, model, va, "final") }
    }
    for m in model.mappings {
        for va in [m.virtual, m.end - 1, m.end] where va < canonicalEnd { expectTranslate(pt, model, va, "final") }
        if m.virtual > 0 { expectTranslate(pt, model, m.virtual - 1, "final") }
    }
    let modelBytes = model.mappings.reduce(UInt64(0)) { $0 + $1.size }
    check(mapped == modelBytes, "page tables map \(hex(mapped)) bytes, the model \(hex(modelBytes))")
    return 0
}
