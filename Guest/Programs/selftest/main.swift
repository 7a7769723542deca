// selftest: exercises the guest SDK and the parts of Embedded Swift that need the SDK's
// runtime symbols (classes and arrays -> posix_memalign/free, Dictionary -> ceil and
// arc4random_buf, print -> putchar, memmove/memcmp/memset). One line per check, then
// a summary; exits 0 only if every check passed.

var passed = 0
var failed = 0

func check(_ what: StaticString, _ ok: Bool) {
    if ok { passed += 1 } else { failed += 1 }
    Console.line { out in
        out.append("selftest: ")
        out.append(ok ? "ok   " : "FAIL ")
        out.append(what)
    }
}

/// Formats with a LineWriter into a stack buffer and compares with `expected`.
func formats(_ expected: StaticString, _ body: (inout LineWriter) -> Void) -> Bool {
    withUnsafeTemporaryAllocation(byteCount: LineWriter.capacity + 1, alignment: 8) { storage in
        var writer = LineWriter(storage.baseAddress!)
        body(&writer)
        return UnsafeRawBufferPointer(start: storage.baseAddress, count: writer.count).equals(expected)
    }
}

final class Node {
    let value: Int
    let next: Node?
    init(_ value: Int, _ next: Node?) { self.value = value; self.next = next }
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else {
        Console.writeLine("selftest: FAIL no valid boot-information block")
        exit(1)
    }

    // Boot information.
    check("boot info: ABI version 1", info.abiVersion == 1)
    check("boot info: at least one vCPU", info.vcpuCount >= 1)
    check("boot info: hypercall page at 0xc0000000", info.hypercallPage == hypercallPageAddress)
    check("boot info: BootInfo.current is the block from rdi", BootInfo.current?.address == info.address)
    check("boot info: a free-RAM region exists", info.largestFreeRegion != nil)
    check("boot info: rsp is inside a stack region", info.region(containing: stackPointer(), type: .stack) != nil)
    var imageFound = false
    info.forEachMemoryRegion { region in
        if region.type == .programImage && region.contains(0x40_0000) { imageFound = true }
    }
    check("boot info: the program image is in the memory map", imageFound)

    // Formatting.
    check("format decimal", formats("0 42 -7 18446744073709551615 -9223372036854775808") {
        $0.append(decimal: 0); $0.append(" "); $0.append(decimal: 42); $0.append(" ")
        $0.append(decimal: -7); $0.append(" "); $0.append(decimal: UInt64.max); $0.append(" ")
        $0.append(decimal: Int64.min)
    })
    check("format hex", formats("0x0 0xff 0x00ab 0xffffffffffffffff 0x80") {
        $0.append(hex: 0); $0.append(" "); $0.append(hex: Int8(-1)); $0.append(" ")
        $0.append(hex: 0xab, minDigits: 4); $0.append(" "); $0.append(hex: UInt64.max); $0.append(" ")
        $0.append(hex: UInt8(0x80))
    })
    check("format escaping", formats("a\\x0a\\x5c\\x00z") { out in
        var bytes: (UInt8, UInt8, UInt8, UInt8, UInt8) = (0x61, 0x0a, 0x5c, 0x00, 0x7a)
        withUnsafeBytes(of: &bytes) { out.append(escaping: $0) }
    })
    check("format truncates long lines", formats("") { out in
        for _ in 0..<1000 { out.append(byte: 0x78) }
        // Expected text is not literal here: check the shape instead.
        let ok = out.truncated && out.count == LineWriter.capacity - 1
        out = LineWriter(out.base)
        if !ok { out.append("x") }
    })

    // Command-line parsing.
    func parse(_ s: StaticString) -> UInt64? {
        UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount).parseDecimal()
    }
    check("parseDecimal", parse("42") == 42 && parse(" 7\n") == 7 && parse("") == nil
          && parse("x1") == nil && parse("18446744073709551615") == UInt64.max
          && parse("18446744073709551616") == nil)

    // Hypercalls.
    check("version is 1", hypercallVersion() == 1)
    let t0 = time()
    wait(1_000_000)
    let t1 = time()
    check("time advances across wait(1 ms)", t1 >= t0 + 1_000_000)
    check("wait(0) yields and returns 0", wait(0) == 0)
    let randomBuffer = UnsafeMutableRawBufferPointer(
        start: Heap.allocate(byteCount: 600), count: 600)
    var randomOK = true
    do throws(HypercallError) {
        try random(into: randomBuffer)
    } catch {
        randomOK = false
    }
    var nonZero = 0
    for byte in randomBuffer where byte != 0 { nonZero += 1 }
    check("random(into:) fills 600 bytes in chunks", randomOK && nonZero > 500)
    check("HypercallResult decodes errors",
          HypercallResult(-2) == .failure(.badAddress) && HypercallResult(5) == .success(5)
          && HypercallResult(-9) == .unknownError(-9))

    // Heap and the runtime allocation path.
    let before = Heap.bytesFree
    var list: Node? = nil
    for i in 0..<1000 { list = Node(i, list) }
    var sum = 0
    var node = list
    while let n = node { sum += n.value; node = n.next }
    check("1000 class instances (posix_memalign)", sum == 499_500 && Heap.bytesFree < before)
    var squares: [Int] = []
    for i in 0..<10_000 { squares.append(i &* i) }
    check("Array growth", squares.count == 10_000 && squares[9_999] == 99_980_001)
    var table: [Int: Int] = [:]
    for i in 0..<500 { table[i] = i * 3 }
    check("Dictionary (ceil, arc4random_buf)", table.count == 500 && table[123] == 369 && table[777] == nil)
    let aligned = Heap.allocate(byteCount: 100, alignment: 4096)
    check("Heap.allocate honours alignment", aligned != nil && address(of: aligned!) & 0xfff == 0)
    check("Heap.allocate refuses the impossible", Heap.allocate(byteCount: Int.max) == nil)

    // memmove with overlap (via the standard library's moveInitialize / update).
    var moved = Array(0..<64)
    moved.withUnsafeMutableBufferPointer { p in
        UnsafeMutableRawPointer(p.baseAddress! + 8).copyMemory(from: p.baseAddress!, byteCount: 32 * 8)
    }
    check("overlapping copy", moved[8] == 0 && moved[39] == 31 && moved[40] == 40)

    print("selftest: print works")
    Console.line { out in
        out.append("selftest: ")
        out.append(decimal: passed)
        out.append(" of ")
        out.append(decimal: passed + failed)
        out.append(" checks passed")
    }
    exit(failed == 0 ? 0 : 1)
}
