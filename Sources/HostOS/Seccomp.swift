import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// Installing seccomp filters, and reporting what they refuse.
//
// The filters themselves are built by the pure Seccomp module from policy files; this file only
// hands a finished program to the kernel. KVM does not depend on Seccomp: callers pass each
// instruction's four fields (`BPFInstruction.fields` in Seccomp).

/// Why a filter or the violation reporter could not be installed.
public enum SeccompInstallError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The thread may still gain privileges: the kernel accepts filters from unprivileged threads
    /// only under no_new_privs, and a worker must never rely on being privileged for this.
    case noNewPrivilegesNotSet
    /// An empty program, or one longer than the kernel accepts (BPF_MAXINSNS).
    case badLength(Int)
    /// The kernel refused: EINVAL for a malformed program, EACCES without no_new_privs, ...
    case system(SystemError)
    /// The reporter's message cannot hold the syscall number at that offset, or the descriptor
    /// is negative.
    case badReporterMessage(String)
    /// The reporter was already installed (it is installed once per process).
    case reporterAlreadyInstalled

    public var description: String {
        switch self {
        case .noNewPrivilegesNotSet:
            return "seccomp filter not installed: no_new_privs is not set on this thread (set it first: JailSteps.forbidNewPrivileges)"
        case .badLength(let n):
            return "seccomp filter not installed: \(n) instructions (need 1-\(CLINUX_BPF_MAXINSNS))"
        case .system(let e): return "seccomp filter not installed: \(e)"
        case .badReporterMessage(let why): return "seccomp violation reporter not installed: \(why)"
        case .reporterAlreadyInstalled: return "seccomp violation reporter not installed: it already is"
        }
    }
}

/// Installs `program` as a seccomp filter on the CALLING THREAD only (no TSYNC): threads it
/// creates afterwards inherit it, threads that already exist do not. Filters stack: a thread
/// under several runs each system call through all of them and the most restrictive answer
/// wins, so a vCPU thread adds its stricter filter on top of the one it inherited.
///
/// Requires no_new_privs on this thread already (`JailSteps.forbidNewPrivileges`; it is inherited by
/// new threads): the filter is then enforceable without any privilege, and a privileged worker
/// is not a precondition that could silently change. Throws `.noNewPrivilegesNotSet` otherwise.
///
/// `logDenials` sets SECCOMP_FILTER_FLAG_LOG: refused calls (trap, errno, kill) are also logged
/// by the kernel (`dmesg | grep type=1326`), as calls allowed by a LOG action always are.
///
/// Once installed a filter cannot be removed or loosened, by this thread or any other.
public func installSeccompFilter(_ program: [(code: UInt16, jt: UInt8, jf: UInt8, k: UInt32)],
                                 logDenials: Bool = false) throws(SeccompInstallError) {
    guard !program.isEmpty, program.count <= Int(CLINUX_BPF_MAXINSNS) else { throw .badLength(program.count) }
    guard clinux_get_no_new_privs() == 1 else { throw .noNewPrivilegesNotSet }
    var filters = program.map { sock_filter(code: $0.code, jt: $0.jt, jf: $0.jf, k: $0.k) }
    let flags = logDenials ? CLINUX_SECCOMP_FILTER_FLAG_LOG : 0
    let result = filters.withUnsafeMutableBufferPointer { buffer -> Int32 in
        var fprog = sock_fprog(len: UInt16(buffer.count), filter: buffer.baseAddress)
        // SAFETY: `fprog` points at the array's own storage, `buffer.count` sock_filter entries,
        // alive for the duration of the call; the kernel copies the program before returning.
        return clinux_seccomp_set_filter(flags, &fprog)
    }
    guard result == 0 else { throw .system(SystemError("seccomp(SECCOMP_SET_MODE_FILTER)", errno: errno)) }
}

/// Whether the calling thread runs under a seccomp filter (PR_GET_SECCOMP says 2).
public func isUnderSeccompFilter() -> Bool { clinux_get_seccomp_mode() == CLINUX_SECCOMP_MODE_FILTER }

// MARK: - Violation reporter

/// What the SIGSYS handler needs, prepared before any filter can trap: four words at fixed
/// offsets (the descriptor, the message's address, its length, the syscall number's offset in
/// it). The pointer is a `let`, so reading through it needs no exclusivity check, allocation or
/// lock; its lazy initialisation is forced at install time so the handler never runs it.
private nonisolated(unsafe) let reporterState: UnsafeMutableRawPointer = {
    // SAFETY: four zeroed words owned by the reporter for the life of the process.
    let state = UnsafeMutableRawPointer.allocate(byteCount: 4 * 8, alignment: 8)
    state.initializeMemory(as: Int.self, repeating: 0, count: 4)
    return state
}()
private enum ReporterField: Int { case descriptor = 0, message = 8, count = 16, syscallOffset = 24 }
/// 0 until a thread takes the report: only the first thread that traps sends it.
private let violationClaimed = Atomic<Int>(0)
/// Set once the reporter is installed (it is installed once per process).
private let reporterInstalled = Atomic<Bool>(false)

/// Installs the process's SIGSYS handler (SA_SIGINFO) for filters whose default action is
/// SECCOMP_RET_TRAP. When a thread makes a system call its filter refuses, the kernel does NOT
/// run the call and raises SIGSYS on that thread; the handler copies the refused call's number
/// (`si_syscall`, 4 bytes, little-endian) into a prepared copy of `template` at `syscallOffset`,
/// `write`s the message to `descriptor` (a SOCK_SEQPACKET socket: one write is one message), and
/// ends the whole process with `_exit(128 + SIGSYS)` (exit_group).
///
/// The handler is async-signal-safe: it allocates nothing, takes no lock and calls into no Swift
/// runtime code that could; it uses the buffer prepared here and two system calls (write and
/// exit_group, which every thread role's policy allows). If two threads trap at once, the first
/// sends the report and the second waits for the process to end.
///
/// Trust: the report comes from the worker itself. A compromised worker can suppress it or send
/// a false one (it can write anything to its control socket), so the launcher must treat the
/// report as a hint for diagnosis, not as evidence. What no worker can do is make the refused
/// call run: with TRAP the kernel has already refused it before any handler exists, and a filter
/// cannot be removed. A worker that ignores SIGSYS, blocks it or replaces the handler gets the
/// kernel's default (the process is killed by SIGSYS), or keeps running without the call.
///
/// Install it once, before the first filter.
public func installViolationReporter(descriptor: Int32, template: [UInt8], syscallOffset: Int) throws(SeccompInstallError) {
    guard descriptor >= 0 else { throw .badReporterMessage("descriptor \(descriptor)") }
    guard syscallOffset >= 0, syscallOffset <= template.count - 4 else {
        throw .badReporterMessage("a \(template.count)-byte message has no room for the 4-byte syscall number at offset \(syscallOffset)")
    }
    guard reporterInstalled.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
        throw .reporterAlreadyInstalled
    }
    // SAFETY: a buffer of exactly template.count bytes, initialised from the template, owned by
    // the reporter for the rest of the process's life (never freed: the handler may run any time).
    let message = UnsafeMutableRawPointer.allocate(byteCount: template.count, alignment: 8)
    for (i, byte) in template.enumerated() { message.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
    // SAFETY: the four words of `reporterState` (this first access also runs its initialiser,
    // here rather than in the handler); written before the handler is installed.
    let state = reporterState
    state.storeBytes(of: Int(descriptor), toByteOffset: ReporterField.descriptor.rawValue, as: Int.self)
    state.storeBytes(of: Int(bitPattern: message), toByteOffset: ReporterField.message.rawValue, as: Int.self)
    state.storeBytes(of: template.count, toByteOffset: ReporterField.count.rawValue, as: Int.self)
    state.storeBytes(of: syscallOffset, toByteOffset: ReporterField.syscallOffset.rawValue, as: Int.self)
    _ = violationClaimed.load(ordering: .relaxed)   // its initialiser, too, runs here

    var action = sigaction()
    action.__sigaction_handler.sa_sigaction = reportViolation
    action.sa_flags = SA_SIGINFO
    // Every other signal waits while the handler runs (a kick must not interrupt the report).
    sigfillset(&action.sa_mask)
    guard sigaction(SIGSYS, &action, nil) == 0 else {
        throw .system(SystemError("sigaction(SIGSYS)", errno: errno))
    }
    // A thread that blocks SIGSYS still gets a seccomp trap (the kernel forces it), but unblock
    // it here so the handler, not the default action, runs for this thread and those it creates.
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGSYS)
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
}

/// The SIGSYS handler (see `installViolationReporter`). Async-signal-safe: reads the prepared
/// globals, writes four bytes into the prepared message, and makes two system calls.
private func reportViolation(_ signal: Int32, _ info: UnsafeMutablePointer<siginfo_t>?, _ context: UnsafeMutableRawPointer?) {
    if violationClaimed.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged {
        // SAFETY: the four words written by installViolationReporter before this handler existed.
        let state = reporterState
        let descriptor = Int32(truncatingIfNeeded: state.load(fromByteOffset: ReporterField.descriptor.rawValue, as: Int.self))
        let address = state.load(fromByteOffset: ReporterField.message.rawValue, as: Int.self)
        let count = state.load(fromByteOffset: ReporterField.count.rawValue, as: Int.self)
        let offset = state.load(fromByteOffset: ReporterField.syscallOffset.rawValue, as: Int.self)
        if let message = UnsafeMutableRawPointer(bitPattern: address), let info {
            // SAFETY: `info` is the kernel's siginfo for this SIGSYS. The four stores stay inside
            // the message: offset + 4 <= count was checked at install.
            let number = UInt32(bitPattern: clinux_siginfo_syscall(info))
            message.storeBytes(of: UInt8(truncatingIfNeeded: number), toByteOffset: offset, as: UInt8.self)
            message.storeBytes(of: UInt8(truncatingIfNeeded: number >> 8), toByteOffset: offset + 1, as: UInt8.self)
            message.storeBytes(of: UInt8(truncatingIfNeeded: number >> 16), toByteOffset: offset + 2, as: UInt8.self)
            message.storeBytes(of: UInt8(truncatingIfNeeded: number >> 24), toByteOffset: offset + 3, as: UInt8.self)
            // SAFETY: `count` bytes of the message buffer allocated at install.
            _ = write(descriptor, message, count)
        }
        _exit(128 + SIGSYS)
    }
    // Another thread is sending the report and will end the process: wait for it without making
    // a system call (this thread's filter might refuse any).
    while true {}
}

/// A Swift string from a NUL-terminated C string with static storage — the policy texts that
/// CPolicies embeds in the binary (`bulkhead_policy_worker_main_text()`). nil gives "".
public func stringFromStaticCString(_ text: UnsafePointer<CChar>?) -> String {
    guard let text else { return "" }
    // SAFETY: the caller passes a pointer to a NUL-terminated array that lives as long as the
    // program (an embedded policy); String copies it.
    return String(cString: text)
}
