// loop: spins forever without a single hypercall (tests the VMM's timeouts/kill path).

@_silgen_name("bh_spin_forever")
func spinForever() -> Never

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    spinForever()
}
