@_exported import GuestABI
import Boot

/// The hypercall numbers, error codes and limits are GuestABI's (Sources/GuestABI/GuestABI.swift,
/// compiled into the guest SDK too). Every hypercall is registered in the attack-surface registry.
extension Hypercall {
    public var name: String {
        switch self {
        case .version: return "version"
        case .consoleWrite: return "console_write"
        case .exit: return "exit"
        case .wait: return "wait"
        case .time: return "time"
        case .random: return "random"
        }
    }
}

extension HypercallError {
    /// The two's-complement negative value the guest sees.
    public var returnValue: UInt64 { 0 &- rawValue }
}

/// What the VMM lends a hypercall handler: checked access to guest memory and the host services.
/// The real implementation wraps `GuestMemory`; tests and fuzzers use a plain byte array.
public protocol HypercallEnvironment {
    /// Whether CPL3 code may access the range with these rights (the guest's own page tables
    /// are supervisor-only, so this map is authoritative).
    func userCanAccess(_ address: UInt64, length: UInt64, rights: PageFlags) -> Bool
    func readGuest(_ address: UInt64, count: Int) -> [UInt8]?
    func fillRandom(_ address: UInt64, count: Int) -> Bool
    func console(_ bytes: [UInt8])
    func nanosecondsSinceStart() -> UInt64
}

/// The result of one hypercall.
public enum HypercallOutcome: Equatable, Sendable {
    /// Return this value in `rax` and continue.
    case value(UInt64)
    /// Block this vCPU up to `nanoseconds` (0: yield), then return 0.
    case wait(nanoseconds: UInt64)
    /// End the VM with this status.
    case exit(status: UInt8)
}

/// Per-vCPU hypercall counters, merged at the end of a run.
public struct HypercallStatistics: Equatable, Sendable {
    public var calls: [UInt64] = Array(repeating: 0, count: Hypercall.allCases.count)
    public var unknownCalls: UInt64 = 0
    public var errors: [UInt64] = Array(repeating: 0, count: HypercallError.allCases.count + 1)

    public init() {}

    public var totalCalls: UInt64 { calls.reduce(0, +) + unknownCalls }
    public var totalErrors: UInt64 { errors.reduce(0, +) }

    public func count(_ call: Hypercall) -> UInt64 { calls[Int(call.rawValue)] }
    public func count(_ error: HypercallError) -> UInt64 { errors[Int(error.rawValue)] }

    public mutating func merge(_ other: HypercallStatistics) {
        for i in calls.indices { calls[i] += other.calls[i] }
        for i in errors.indices { errors[i] += other.errors[i] }
        unknownCalls += other.unknownCalls
    }
}

/// Decodes and executes hypercalls. Every argument is guest-controlled and validated here; a bad
/// call returns an error to the guest and is counted, and never affects the VMM.
public enum HypercallDispatcher {
    public static func handle<E: HypercallEnvironment>(
        number: UInt64, arguments a: (UInt64, UInt64, UInt64, UInt64),
        environment env: E, statistics stats: inout HypercallStatistics
    ) -> HypercallOutcome {
        guard let call = Hypercall(rawValue: number) else {
            stats.unknownCalls += 1
            return fail(.unknownCall, &stats)
        }
        stats.calls[Int(call.rawValue)] += 1
        switch call {
        case .version:
            return .value(Hypercall.interfaceVersion)
        case .consoleWrite:
            let (address, length) = (a.0, a.1)
            guard length <= Hypercall.maxConsoleWrite else { return fail(.badLength, &stats) }
            guard env.userCanAccess(address, length: length, rights: [.user]),
                  let bytes = env.readGuest(address, count: Int(length)) else {
                return fail(.badAddress, &stats)
            }
            env.console(bytes)
            return .value(length)
        case .exit:
            guard a.0 <= 255 else { return fail(.badArgument, &stats) }
            return .exit(status: UInt8(a.0))
        case .wait:
            guard a.0 <= Hypercall.maxWaitNanoseconds else { return fail(.badArgument, &stats) }
            return .wait(nanoseconds: a.0)
        case .time:
            return .value(env.nanosecondsSinceStart())
        case .random:
            let (address, length) = (a.0, a.1)
            guard length <= Hypercall.maxRandom else { return fail(.badLength, &stats) }
            guard env.userCanAccess(address, length: length, rights: [.user, .writable]),
                  env.fillRandom(address, count: Int(length)) else {
                return fail(.badAddress, &stats)
            }
            return .value(length)
        }
    }

    private static func fail(_ e: HypercallError, _ stats: inout HypercallStatistics) -> HypercallOutcome {
        stats.errors[Int(e.rawValue)] += 1
        return .value(e.returnValue)
    }
}
