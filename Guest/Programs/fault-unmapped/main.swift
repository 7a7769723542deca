// fault-unmapped: loads from 0x80000000, which is not mapped (#PF, vector 14, cr2 =
// 0x80000000, error code: not-present, read, user). 0x80000000 lies above guest RAM
// unless the VM has more than 2 GiB; then the program uses the null guard page (0x8).

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    var address: UInt64 = 0x8000_0000
    if let info = BootInfo(address: bootInfoAddress), info.ramSize > address {
        address = 0x8
    }
    Console.line { out in
        out.append("fault-unmapped: loading from ")
        out.append(hex: address)
    }
    let pointer = UnsafeRawPointer(bitPattern: UInt(address))!
    let value = volatileLoad(pointer)
    Console.line { out in
        out.append("fault-unmapped: no fault, read ")
        out.append(hex: value)
    }
    exit(1)
}
