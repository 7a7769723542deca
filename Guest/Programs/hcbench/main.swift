// hcbench: N `version` hypercalls, then exit 0. Prints nothing.
//
// N is the command line as a decimal number; default 100000 when the command line is
// empty or there is no boot information (rdi == 0, as a bare C KVM loader passes: then
// no memory other than the stack and this program is touched). A malformed command
// line exits 2; a version other than 1 exits 3.

let defaultIterations: UInt64 = 100_000

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    var iterations = defaultIterations
    if bootInfoAddress != 0, let info = BootInfo(address: bootInfoAddress),
       info.commandLine.count > 0 {
        guard let n = info.commandLine.parseDecimal() else { exit(2) }
        iterations = n
    }
    var bad = false
    var i: UInt64 = 0
    while i < iterations {
        if Hypercall.version() != Hypercall.abiVersion { bad = true }
        i += 1
    }
    exit(bad ? 3 : 0)
}
