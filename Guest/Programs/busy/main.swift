// busy: every vCPU makes hypercalls at the same time, for seccomp and scale tests.
//
// Command line: `rounds=N` (default 200). Each vCPU waits until all have checked in, then
// makes N rounds of `version`, `time`, `random` (64 bytes into its own stack) and a zero-time
// `wait`, and checks in again. The VMM serves these on every vCPU thread at once, so each
// thread allocates and frees at the same moment as the others (glibc gives busy threads
// malloc arenas of their own: the 9th needs a system call that a short trace never sees).
// vCPU 0 waits (at most ~60 s of VM time) for every vCPU, prints
// `busy: N vCPUs made M hypercalls each` and exits 0, or says what went wrong and exits 1.

import Synchronization

let arrived = Atomic<UInt64>(0)
let finished = Atomic<UInt64>(0)
let failures = Atomic<UInt64>(0)

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard let info = BootInfo(address: bootInfoAddress) else {
        if vcpu == 0 {
            Console.writeLine("busy: no valid boot-information block")
            exit(1)
        }
        parkForever()
    }
    let count = UInt64(info.vcpuCount)
    var rounds: UInt64 = 200
    if let text = info.commandLine.value(of: "rounds") {
        guard let n = text.parseDecimal(), n <= 1_000_000 else {
            if vcpu == 0 {
                Console.writeLine("busy: rounds=N needs N between 0 and 1000000")
                exit(2)
            }
            parkForever()
        }
        rounds = n
    }

    // Start together, so that the threads are busy at the same moment.
    arrived.wrappingAdd(1, ordering: .sequentiallyConsistent)
    let start = time()
    while arrived.load(ordering: .sequentiallyConsistent) < count && time() &- start < 30_000_000_000 {
        wait(0)
    }

    var buffer: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    var i: UInt64 = 0
    var bad = false
    while i < rounds {
        if Hypercall.version() != Hypercall.abiVersion { bad = true }
        _ = time()
        withUnsafeMutableBytes(of: &buffer) { b in
            do throws(HypercallError) { try random(into: b) } catch { bad = true }
        }
        if wait(0) != 0 { bad = true }
        i += 1
    }
    if bad { failures.wrappingAdd(1, ordering: .sequentiallyConsistent) }
    finished.wrappingAdd(1, ordering: .sequentiallyConsistent)
    guard vcpu == 0 else { parkForever() }

    let deadline = time() &+ 60_000_000_000
    while finished.load(ordering: .sequentiallyConsistent) < count && time() < deadline {
        wait(1_000_000)
    }
    let done = finished.load(ordering: .sequentiallyConsistent)
    let failed = failures.load(ordering: .sequentiallyConsistent)
    Console.line { out in
        out.append("busy: ")
        out.append(decimal: done)
        out.append(" vCPUs made ")
        out.append(decimal: rounds * 4)
        out.append(" hypercalls each")
        if done != count {
            out.append(" (of ")
            out.append(decimal: count)
            out.append(" vCPUs)")
        }
        if failed != 0 {
            out.append("; ")
            out.append(decimal: failed)
            out.append(" saw a failed call")
        }
    }
    exit(done == count && failed == 0 ? 0 : 1)
}
