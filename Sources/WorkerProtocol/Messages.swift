// MARK: - Messages

public enum WorkerMessage: Equatable, Sendable {
    /// Launcher → worker, first and once: the VM to run, with its descriptors attached (indexes
    /// in the configuration name them).
    case configure(VMConfiguration)
    /// Launcher → worker: stop the VM now.
    case stop
    /// Worker → launcher: the configuration was accepted and the VM is running.
    case started
    /// Worker → launcher, last: how the VM ended, and its counters.
    case ended(VMOutcome, counters: [Counter])
    /// Worker → launcher, instead of `started`: the configuration cannot be run, and why.
    case refused(String, kind: RefusalKind)
    /// Worker → launcher, last: a thread made a system call its seccomp allowlist forbids (the
    /// kernel did not run it), and the worker is ending itself. Sent by the worker's SIGSYS
    /// handler from a prebuilt template; `syscallOffset` is where the number goes.
    case violation(syscall: UInt32)
    /// Worker → launcher, on the vsock broker socket: the guest connects to host port `port`;
    /// connect me to "PATH_port" (the worker cannot reach host paths).
    case connectRequest(port: UInt32)
    /// Launcher → worker, the answer: with `errno` 0 the connected socket is attached; else the
    /// connection failed with that errno and nothing is attached.
    case connectReply(port: UInt32, errno: UInt32)

    /// Where `violation`'s syscall number sits in the encoded message.
    public static let violationSyscallOffset = WorkerProtocol.headerSize

    public var type: MessageType {
        switch self {
        case .configure: return .configure
        case .stop: return .stop
        case .started: return .started
        case .ended: return .ended
        case .refused: return .refused
        case .violation: return .violation
        case .connectRequest: return .connectRequest
        case .connectReply: return .connectReply
        }
    }

    /// Descriptors this message must arrive with.
    public var descriptorCount: Int {
        if case .configure(let c) = self { return Int(c.descriptorCount) }
        if case .connectReply(_, let e) = self, e == 0 { return 1 }
        return 0
    }

    func encodePayload(into e: inout Encoder) {
        switch self {
        case .configure(let c): c.encode(into: &e)
        case .stop, .started: break
        case .ended(let o, let counters):
            o.encode(into: &e)
            e.u16(UInt16(truncatingIfNeeded: counters.count))
            for c in counters { e.string(c.name); e.u64(c.value) }
        case .refused(let why, let kind): e.string(why); e.u8(kind.rawValue)
        case .violation(let n): e.u32(n)
        case .connectRequest(let port): e.u32(port)
        case .connectReply(let port, let errno): e.u32(port); e.u32(errno)
        }
    }

    static func decodePayload(_ type: MessageType, _ d: inout Decoder, descriptors: Int) throws(WorkerProtocolError) -> WorkerMessage {
        switch type {
        case .configure: return .configure(try VMConfiguration.decode(&d, descriptors: descriptors))
        case .stop: return .stop
        case .started: return .started
        case .ended:
            let outcome = try VMOutcome.decode(&d)
            let n = Int(try d.u16("counter count"))
            guard n <= Counter.maxCount else { throw .tooLong("counters", n) }
            var counters: [Counter] = []
            for _ in 0..<n {
                let name = try d.string("counter name", max: Counter.maxNameLength)
                guard !name.isEmpty else { throw .invalid("counter name", "empty") }
                counters.append(Counter(name: name, value: try d.u64("counter value")))
            }
            return .ended(outcome, counters: counters)
        case .refused:
            let why = try d.string("reason", max: VMOutcome.maxReasonLength)
            let raw = try d.u8("refusal kind")
            guard let kind = RefusalKind(rawValue: raw) else { throw .invalid("refusal kind", "\(raw)") }
            return .refused(why, kind: kind)
        case .violation: return .violation(syscall: try d.u32("syscall number"))
        case .connectRequest: return .connectRequest(port: try d.u32("port"))
        case .connectReply:
            let port = try d.u32("port")
            let errno = try d.u32("errno")
            guard errno < 4096 else { throw .invalid("errno", "\(errno)") }
            return .connectReply(port: port, errno: errno)
        }
    }
}

/// What kind of problem a refusal is, so that the launcher exits with the same status as a VM run
/// in process would (the values are those exit statuses, from sysexits.h).
public enum RefusalKind: UInt8, Sendable {
    /// The configuration cannot work (e.g. too little memory for the vCPUs): 64, EX_USAGE.
    case configuration = 64
    /// The image or kernel is not one Bulkhead can run: 65, EX_DATAERR.
    case image = 65
    /// KVM is missing or lacks something: 69, EX_UNAVAILABLE.
    case unavailable = 69
    /// Anything else, including a jail step that failed: 70, EX_SOFTWARE.
    case `internal` = 70
}

/// A named count the worker reports at the end (hypercalls, exits, device drops...).
public struct Counter: Equatable, Sendable {
    public static let maxCount = 256
    public static let maxNameLength = 64
    public var name: String
    public var value: UInt64
    public init(name: String, value: UInt64) { self.name = name; self.value = value }
}
