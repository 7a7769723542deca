// hostile: feeds the hypercall interface bad input and checks every answer.
//
// One line per check: `hostile: ok   <what> -> <result>` or
// `hostile: FAIL <what> -> <result>, expected <value>`; then a summary. Exits 0 only
// if every check passed, else 1. Expected results follow docs/guest-abi.md: errors
// are -1 unknown call, -2 bad address, -3 bad length, -4 bad argument.

@_silgen_name("bh_hypercall_clobbers")
func bh_hypercall_clobbers(_ nr: UInt64, _ a0: UInt64, _ a1: UInt64, _ a2: UInt64, _ a3: UInt64) -> UInt64

let unknownCall: Int64 = -1
let badAddress: Int64 = -2
let badLength: Int64 = -3
let badArgument: Int64 = -4

var passed = 0
var failed = 0

func check(_ what: StaticString, _ result: Int64, expected: Int64) {
    let ok = result == expected
    if ok { passed += 1 } else { failed += 1 }
    Console.line { out in
        out.append("hostile: ")
        out.append(ok ? "ok   " : "FAIL ")
        out.append(what)
        out.append(" -> ")
        out.append(decimal: result)
        if !ok {
            out.append(", expected ")
            out.append(decimal: expected)
        }
    }
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else {
        Console.writeLine("hostile: FAIL no valid boot-information block")
        exit(1)
    }
    let ramSize = info.ramSize
    // A valid, readable and writable buffer: fresh heap memory (zeroed).
    guard let scratch = Heap.allocate(byteCount: 8192, alignment: 4096) else {
        Console.writeLine("hostile: FAIL cannot allocate a scratch buffer")
        exit(1)
    }
    let good = address(of: scratch)
    // Unmapped: above the end of RAM, or the null guard page if RAM reaches 2 GiB.
    let unmapped: UInt64 = ramSize <= 0x8000_0000 ? 0x8000_0000 : 0x10

    // Sanity: the interface works at all.
    check("version", Hypercall.version(), expected: Hypercall.abiVersion)
    check("console_write of 0 bytes of a good buffer", Hypercall.consoleWrite(good, 0), expected: 0)

    // Unknown call numbers.
    check("call 999", Hypercall.raw(999), expected: unknownCall)
    check("call 0xffffffffffffffff", Hypercall.raw(UInt64.max), expected: unknownCall)
    check("call 6 (first unassigned)", Hypercall.raw(6), expected: unknownCall)

    // console_write: bad addresses.
    check("console_write in the VMM system area (0x1000)", Hypercall.consoleWrite(0x1000, 16), expected: badAddress)
    check("console_write in the null page (0x0)", Hypercall.consoleWrite(0, 16), expected: badAddress)
    check("console_write of unmapped memory", Hypercall.consoleWrite(unmapped, 16), expected: badAddress)
    check("console_write of the hypercall page", Hypercall.consoleWrite(hypercallPageAddress, 8), expected: badAddress)
    check("console_write of the fault-report page", Hypercall.consoleWrite(hypercallPageAddress + 0x1000, 8), expected: badAddress)
    check("console_write straddling the end of RAM", Hypercall.consoleWrite(ramSize - 8, 16), expected: badAddress)
    check("console_write with addr+len overflowing", Hypercall.consoleWrite(UInt64.max - 7, 16), expected: badAddress)
    if let stack = info.region(containing: stackPointer(), type: .stack) {
        check("console_write straddling the stack guard page", Hypercall.consoleWrite(stack.base - 8, 16), expected: badAddress)
    } else {
        check("stack region in the memory map", -99, expected: 0)
    }

    // console_write: bad length.
    check("console_write of 4097 bytes", Hypercall.consoleWrite(good, 4097), expected: badLength)

    // random: bad addresses and length.
    check("random into the boot-information block", Hypercall.random(info.address, 16), expected: badAddress)
    check("random into the program text", Hypercall.random(0x40_0000, 16), expected: badAddress)
    check("random into the VMM system area (0x1000)", Hypercall.random(0x1000, 16), expected: badAddress)
    check("random into the hypercall page", Hypercall.random(hypercallPageAddress, 8), expected: badAddress)
    check("random with addr+len overflowing", Hypercall.random(UInt64.max - 7, 16), expected: badAddress)
    check("random of 257 bytes", Hypercall.random(good, 257), expected: badLength)

    // Bad arguments.
    check("exit with status 256", Hypercall.exit(256), expected: badArgument)
    check("exit with status 0xffffffffffffffff", Hypercall.exit(UInt64.max), expected: badArgument)
    check("wait 11 s", Hypercall.wait(11_000_000_000), expected: badArgument)

    // The VMM must change no register but rax.
    let clobbered = bh_hypercall_clobbers(Hypercall.version.rawValue, 0x11, 0x22, 0x33, 0x44)
    check("registers changed by a hypercall (bit mask)", Int64(bitPattern: clobbered), expected: 0)
    let clobberedOnError = bh_hypercall_clobbers(999, 0x11, 0x22, 0x33, 0x44)
    check("registers changed by a failing hypercall (bit mask)", Int64(bitPattern: clobberedOnError), expected: 0)

    // After all that the interface still works.
    check("version again", Hypercall.version(), expected: Hypercall.abiVersion)

    Console.line { out in
        out.append("hostile: ")
        out.append(decimal: passed)
        out.append(" of ")
        out.append(decimal: passed + failed)
        out.append(" checks passed")
    }
    exit(failed == 0 ? 0 : 1)
}
