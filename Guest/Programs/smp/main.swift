// smp: every vCPU checks in.
//
// Each vCPU records its stack pointer and the stack region (memory-map type 3) that
// contains it, then atomically increments a shared counter; vCPUs other than 0 then
// nap until the VM ends. vCPU 0 waits (at most ~5 s) until the counter equals the
// vCPU count from the boot information, checks that every vCPU's rsp lay inside a
// stack region and that the stacks are pairwise distinct, prints
// `smp: N vCPUs checked in` and exits 0 — or prints what went wrong and exits 1.

import Synchronization

let maxVCPUs = 256
let checkedIn = Atomic<UInt64>(0)
let failures = Atomic<UInt64>(0)
/// Per vCPU: the rsp it saw (0 = not checked in).
let stackPointers = InlineArray<256, Atomic<UInt64>> { _ in Atomic(0) }
/// Per vCPU: base of the stack region containing that rsp (0 = none found).
let stackRegions = InlineArray<256, Atomic<UInt64>> { _ in Atomic(0) }

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard let info = BootInfo(address: bootInfoAddress) else {
        if vcpu == 0 {
            Console.writeLine("smp: no valid boot-information block")
            exit(1)
        }
        parkForever()
    }
    let count = info.vcpuCount
    let rsp = stackPointer()

    if vcpu < UInt64(count) && vcpu < UInt64(maxVCPUs) {
        let region = info.region(containing: rsp, type: .stack)
        // Record before checking in: the seq_cst increment publishes both stores.
        stackPointers[Int(vcpu)].store(rsp, ordering: .sequentiallyConsistent)
        stackRegions[Int(vcpu)].store(region?.base ?? 0, ordering: .sequentiallyConsistent)
    } else {
        failures.wrappingAdd(1, ordering: .sequentiallyConsistent)
    }
    checkedIn.wrappingAdd(1, ordering: .sequentiallyConsistent)

    guard vcpu == 0 else { parkForever() }

    // vCPU 0: wait for the others, bounded by ~5 s of VM time (and by iterations, in
    // case the clock does not move).
    let deadline = time() &+ 5_000_000_000
    var naps = 0
    while checkedIn.load(ordering: .sequentiallyConsistent) < UInt64(count)
            && time() < deadline && naps < 5_000 {
        wait(1_000_000)  // 1 ms
        naps += 1
    }
    let arrived = checkedIn.load(ordering: .sequentiallyConsistent)
    var good = true
    if arrived != UInt64(count) {
        good = false
        Console.line { out in
            out.append("smp: timeout: ")
            out.append(decimal: arrived)
            out.append(" of ")
            out.append(decimal: count)
            out.append(" vCPUs checked in")
        }
    }
    if count < 1 || count > maxVCPUs {
        good = false
        Console.line { out in
            out.append("smp: vCPU count ")
            out.append(decimal: count)
            out.append(" out of range 1...256")
        }
    }
    if failures.load(ordering: .sequentiallyConsistent) != 0 {
        good = false
        Console.writeLine("smp: a vCPU index was out of range")
    }
    let checked = min(count, maxVCPUs)
    for i in 0..<checked {
        let sp = stackPointers[i].load(ordering: .sequentiallyConsistent)
        let base = stackRegions[i].load(ordering: .sequentiallyConsistent)
        if sp == 0 || base == 0 {
            good = false
            Console.line { out in
                out.append("smp: vCPU ")
                out.append(decimal: i)
                out.append(" rsp ")
                out.append(hex: sp)
                out.append(" is not inside a stack region of the memory map")
            }
            continue
        }
        for j in 0..<i {
            let otherBase = stackRegions[j].load(ordering: .sequentiallyConsistent)
            if otherBase == base {
                good = false
                Console.line { out in
                    out.append("smp: vCPUs ")
                    out.append(decimal: j)
                    out.append(" and ")
                    out.append(decimal: i)
                    out.append(" share the stack at ")
                    out.append(hex: base)
                }
            }
        }
    }
    if good {
        Console.line { out in
            out.append("smp: ")
            out.append(decimal: count)
            out.append(" vCPUs checked in")
        }
    }
    exit(good ? 0 : 1)
}
