// fault-exec-nx: copies a `ret` instruction onto the stack and calls it. The stack is
// no-execute, so the instruction fetch faults (#PF, vector 14, cr2 = rip = the stack
// address, error code: present, instruction fetch, user).

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    var code: (UInt64, UInt64) = (0xc3c3_c3c3_c3c3_c3c3, 0xc3c3_c3c3_c3c3_c3c3)  // ret; ret; ...
    withUnsafeMutableBytes(of: &code) { bytes in
        let address = UInt64(UInt(bitPattern: bytes.baseAddress!))
        Console.line { out in
            out.append("fault-exec-nx: calling code on the stack at ")
            out.append(hex: address)
        }
        let function = unsafeBitCast(bytes.baseAddress!, to: (@convention(c) () -> Void).self)
        function()
    }
    Console.writeLine("fault-exec-nx: no fault, the stack is executable")
    exit(1)
}
