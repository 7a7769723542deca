// fault-stack-overflow: unbounded recursion until the stack runs into the unmapped
// guard page below it (#PF, vector 14, cr2 in the guard page, error code:
// not-present, write, user).
//
// Each frame keeps a 256-byte buffer on the stack, so no frame skips over the 4 KiB
// guard page. `@_optimize(none)` keeps the compiler from turning the recursion into a
// loop.

@_optimize(none)
func recurse(_ depth: UInt64) -> UInt64 {
    var buffer: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                 UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                 UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                 UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
        (depth, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
         0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, depth)
    let below = withUnsafeMutableBytes(of: &buffer) { bytes in
        volatileStore(depth, to: bytes.baseAddress!)
        return recurse(depth &+ 1)
    }
    return below &+ buffer.0 &+ buffer.31
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    Console.line { out in
        out.append("fault-stack-overflow: recursing from rsp ")
        out.append(hex: stackPointer())
    }
    let result = recurse(0)
    Console.line { out in
        out.append("fault-stack-overflow: no fault, result ")
        out.append(decimal: result)
    }
    exit(1)
}
