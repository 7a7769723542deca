// exitcode: exits with the status given as a decimal number on the command line
// (default 7). A status above 255 is passed to the VMM as it is; the VMM must refuse it
// (bad argument), and then the program reports that and exits 255.

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    var status: UInt64 = 7
    if let info = BootInfo(address: bootInfoAddress), info.commandLine.count > 0 {
        guard let n = info.commandLine.parseDecimal() else {
            Console.writeLine("exitcode: command line must be a decimal exit status")
            exit(255)
        }
        status = n
    }
    let result = Hypercall.exit(status)
    Console.line { out in
        out.append("exitcode: exit(")
        out.append(decimal: status)
        out.append(") returned ")
        out.append(decimal: result)
    }
    exit(255)
}
