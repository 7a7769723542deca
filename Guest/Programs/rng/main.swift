// rng: reads the virtio entropy device (virtio 1.2 §5.4).
//
// Finds the first entropy device in the device list, initialises it, reads 64 bytes twice
// and checks that neither read is all zero and that they differ. Prints
// `rng: ok <hex of the first 8 bytes>` and exits 0; exits 1 with a reason on any failure,
// 2 if there is no entropy device.

func fail(_ why: StaticString, _ error: VirtioError? = nil) -> Never {
    failProgram("rng", why, error)
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else { fail("no valid boot-information block") }
    guard let entry = info.firstDevice(.entropy) else {
        Console.writeLine("rng: no entropy device")
        exit(2)
    }
    var rng: VirtioRNG
    do throws(VirtioError) {
        rng = try VirtioRNG(entry)
    } catch {
        fail("cannot initialise the entropy device", error)
    }
    guard let memory = Heap.allocate(byteCount: 128, alignment: 64) else { fail("out of memory") }
    let first = UnsafeMutableRawBufferPointer(start: memory, count: 64)
    let second = UnsafeMutableRawBufferPointer(start: memory + 64, count: 64)
    do throws(VirtioError) {
        try rng.read(into: first)
        try rng.read(into: second)
    } catch {
        fail("read", error)
    }
    func allZero(_ b: UnsafeMutableRawBufferPointer) -> Bool {
        for byte in b where byte != 0 { return false }
        return true
    }
    if allZero(first) || allZero(second) { fail("the device returned all-zero bytes") }
    if memcmp(first.baseAddress!, second.baseAddress!, 64) == 0 { fail("two reads returned the same bytes") }
    Console.line { out in
        out.append("rng: ok ")
        for i in 0..<8 { out.append(hexByte: first[i]) }
    }
    exit(0)
}

@_silgen_name("memcmp")
func memcmp(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> CInt
