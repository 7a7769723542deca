// fault-readonly: stores into the boot-information block, which is mapped user
// read-only (#PF, vector 14, cr2 = the block's address, error code: present, write,
// user).

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    let address = bootInfoAddress != 0 ? bootInfoAddress : BootInfo.defaultAddress
    Console.line { out in
        out.append("fault-readonly: storing to the boot-information block at ")
        out.append(hex: address)
    }
    let pointer = UnsafeMutableRawPointer(bitPattern: UInt(address))!
    volatileStore(0xdead_beef, to: pointer)
    Console.writeLine("fault-readonly: no fault, the store went through")
    exit(1)
}
