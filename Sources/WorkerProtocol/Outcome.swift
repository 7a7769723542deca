/// How a VM ended, as the worker saw it. (A worker killed by a signal says nothing: the launcher
/// learns that from its exit status.)
public enum VMOutcome: Equatable, Sendable {
    case exited(status: UInt8)
    /// A CPU exception or triple fault; the text is the worker's description.
    case faulted(String)
    case timedOut(milliseconds: UInt64)
    case vcpuFailure(String)
    /// A kernel reset the machine (i8042).
    case reset
    /// A kernel powered the machine off (ACPI S5).
    case poweredOff
    /// A kernel reported a panic (pvpanic).
    case panicked

    public static let maxReasonLength = 1024

    func encode(into e: inout Encoder) {
        switch self {
        case .exited(let s): e.u8(1); e.u8(s)
        case .faulted(let r): e.u8(2); e.string(r)
        case .timedOut(let ms): e.u8(3); e.u64(ms)
        case .vcpuFailure(let r): e.u8(4); e.string(r)
        case .reset: e.u8(5)
        case .poweredOff: e.u8(6)
        case .panicked: e.u8(7)
        }
    }

    static func decode(_ d: inout Decoder) throws(WorkerProtocolError) -> VMOutcome {
        switch try d.u8("outcome") {
        case 1: return .exited(status: try d.u8("exit status"))
        case 2: return .faulted(try d.string("fault", max: maxReasonLength))
        case 3: return .timedOut(milliseconds: try d.u64("timeout"))
        case 4: return .vcpuFailure(try d.string("failure", max: maxReasonLength))
        case 5: return .reset
        case 6: return .poweredOff
        case 7: return .panicked
        case let k: throw .invalid("outcome", "kind \(k)")
        }
    }
}
