// zeros: reads every byte of the RAM the memory map calls free (all of it, before anything is
// allocated there) and checks that it is zero: guest memory must never show the guest what was
// in it before, whether another VM's data or the VMM's. Prints the byte count and exits 0, or
// the first non-zero address and exits 1.
//
// With the command line "fill", it then writes to every page of that RAM, so the host must give
// the guest all of it (the jail tests use this to reach a worker's memory limit).

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else {
        Console.writeLine("zeros: no valid boot-information block")
        exit(1)
    }
    var checked: UInt64 = 0
    var regions: UInt64 = 0
    var firstDirty: UInt64 = 0
    info.forEachMemoryRegion { region in
        guard region.rawType == MemoryType.freeRAM.rawValue, firstDirty == 0 else { return }
        regions += 1
        var address = region.base
        // Eight bytes at a time (regions are page-aligned), OR-ing a page before testing it.
        while address < region.end {
            guard let page = UnsafePointer<UInt64>(bitPattern: UInt(address)) else { break }
            var any: UInt64 = 0
            var i = 0
            while i < 512 && address + UInt64(8 * i) < region.end {
                any |= page[i]
                i += 1
            }
            if any != 0 {
                var j = 0
                while page[j] == 0 { j += 1 }
                firstDirty = address + UInt64(8 * j)
                return
            }
            checked += UInt64(8 * i)
            address += 4096
        }
    }
    if firstDirty != 0 {
        Console.line { out in
            out.append("zeros: FAIL: non-zero fresh memory at 0x")
            out.append(hex: firstDirty)
        }
        exit(1)
    }
    Console.line { out in
        out.append("zeros: ")
        out.append(decimal: checked)
        out.append(" bytes of fresh memory in ")
        out.append(decimal: regions)
        out.append(" regions, all zero")
    }
    let line = info.commandLine
    if line.count == 4 && line[0] == 0x66 && line[1] == 0x69 && line[2] == 0x6c && line[3] == 0x6c {   // "fill"
        var filled: UInt64 = 0
        info.forEachMemoryRegion { region in
            guard region.rawType == MemoryType.freeRAM.rawValue else { return }
            var address = region.base
            while address + 8 <= region.end {
                guard let word = UnsafeMutablePointer<UInt64>(bitPattern: UInt(address)) else { break }
                word.pointee = 0xa5a5_a5a5_a5a5_a5a5
                filled += 4096
                address += 4096
            }
        }
        Console.line { out in
            out.append("zeros: wrote to ")
            out.append(decimal: filled)
            out.append(" bytes")
        }
    }
    exit(0)
}
