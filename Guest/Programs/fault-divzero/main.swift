// fault-divzero: integer divide by zero (#DE, vector 0).
//
// Swift checks for a zero divisor and traps with ud2 before dividing, so the division
// is done by an assembly helper (div.S) that the optimiser cannot see into. The divisor
// is also computed at run time (time() & 0) for good measure.

@_silgen_name("bh_div")
func bh_div(_ dividend: UInt64, _ divisor: UInt64) -> UInt64

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    Console.writeLine("fault-divzero: dividing by zero")
    let zero = time() & 0
    let quotient = bh_div(42, zero)
    // Only reached if the CPU did not fault.
    Console.line { out in
        out.append("fault-divzero: no fault, quotient ")
        out.append(decimal: quotient)
    }
    exit(1)
}
