// hello: prints a banner with the vCPU count and the command line, then exits 0.

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    // Only vCPU 0 talks; the others nap until vCPU 0's exit ends the VM.
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else {
        Console.writeLine("hello: no valid boot-information block")
        exit(1)
    }
    Console.line { out in
        out.append("Hello from a Bulkhead guest: vCPU ")
        out.append(decimal: vcpu)
        out.append(" of ")
        out.append(decimal: info.vcpuCount)
        out.append(", command line: \"")
        out.append(escaping: info.commandLine)
        out.append("\"")
    }
    exit(0)
}
