// exit0: the very first thing it does is the exit hypercall with status 0
// (startup benchmarks: VM creation to first guest exit).

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    exit(0)
}
