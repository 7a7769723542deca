import Boot

/// A CPU exception taken by guest code, as the fault stubs reported it.
public struct FaultReport: Equatable, Sendable, CustomStringConvertible {
    public var vcpu: Int
    public var vector: Int
    public var errorCode: UInt64?
    public var rip: UInt64
    public var rsp: UInt64
    /// The faulting linear address, for page faults.
    public var address: UInt64?
    /// A stack guard page was hit.
    public var guardPageHit: Bool = false

    public init(vcpu: Int, vector: Int, errorCode: UInt64? = nil, rip: UInt64, rsp: UInt64, address: UInt64? = nil,
                guardPageHit: Bool = false) {
        self.vcpu = vcpu; self.vector = vector; self.errorCode = errorCode
        self.rip = rip; self.rsp = rsp; self.address = address; self.guardPageHit = guardPageHit
    }

    public static func name(of vector: Int) -> String {
        switch vector {
        case 0: return "divide error (#DE)"
        case 1: return "debug exception (#DB)"
        case 2: return "non-maskable interrupt"
        case 3: return "breakpoint (#BP)"
        case 4: return "overflow (#OF)"
        case 5: return "bound range exceeded (#BR)"
        case 6: return "invalid opcode (#UD)"
        case 7: return "device not available (#NM)"
        case 8: return "double fault (#DF)"
        case 10: return "invalid TSS (#TS)"
        case 11: return "segment not present (#NP)"
        case 12: return "stack-segment fault (#SS)"
        case 13: return "general protection fault (#GP)"
        case 14: return "page fault (#PF)"
        case 16: return "x87 floating-point error (#MF)"
        case 17: return "alignment check (#AC)"
        case 18: return "machine check (#MC)"
        case 19: return "SIMD floating-point exception (#XM)"
        case 20: return "virtualization exception (#VE)"
        case 21: return "control protection exception (#CP)"
        default: return "exception \(vector)"
        }
    }

    /// For a page fault, what the access was and why it failed (from the error code bits).
    public var pageFaultDetail: String? {
        guard vector == 14, let code = errorCode else { return nil }
        let access = code & 0x10 != 0 ? "instruction fetch" : (code & 0x2 != 0 ? "write" : "read")
        let hex = "0x" + String(address ?? 0, radix: 16)
        if guardPageHit { return "stack overflow: \(access) at \(hex) hit the stack guard page" }
        if code & 0x1 == 0 { return "\(access) at unmapped address \(hex)" }
        if code & 0x10 != 0 { return "\(access) at \(hex) in a no-execute page" }
        if code & 0x2 != 0 { return "\(access) at \(hex) in a read-only page" }
        if code & 0x4 != 0 { return "\(access) at \(hex) in a page not accessible to the guest program" }
        return "\(access) at \(hex) violated page protection"
    }

    public var description: String {
        var s = "vCPU \(vcpu): \(FaultReport.name(of: vector))"
        if let d = pageFaultDetail { s += ": " + d }
        s += " at rip 0x" + String(rip, radix: 16)
        if let e = errorCode, vector != 14 { s += " (error code 0x" + String(e, radix: 16) + ")" }
        return s
    }
}
