// fault-ud: executes ud2 (#UD, vector 6) through the SDK's assembly helper `trap()`.

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    Console.writeLine("fault-ud: executing ud2")
    trap()
}
