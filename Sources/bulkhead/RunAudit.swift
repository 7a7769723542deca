import AuditLog
import AuditStore
import HostOS
import Supervisor
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

/// `bulkhead run --audit-log DIR`: the VM's lifecycle and security events in the audit log, under
/// one operation — `vm.run` (intent, written before anything runs: a run whose intent cannot be
/// recorded does not start), `vm.configured`, `vm.started`, how it ended (`vm.ended`, or a
/// security event: `vm.guest-fault`, `vm.guest-panic`, `vm.timeout`, `vm.seccomp-violation`,
/// `vm.oom-kill`, `vm.protocol-breach`, `vm.worker-killed`, `vm.worker-lost`, `vm.refused`,
/// `vm.stopped`), then `vm.run`'s outcome with the exit status.
final class RunAudit {
    private let log: AuditAppender
    private let operation: String
    private let actor: AuditRecord.Actor
    private let target: String
    /// The first write that failed, if one did (the run then ends with an error: fail closed).
    private(set) var failure: AuditStoreError?

    /// Opens the log and records the intent. Throws (with the reason printed) when either fails.
    init(directory: String, vmName: String, witness: WitnessEndpoint? = nil) throws(AuditStoreError) {
        var options = AuditAppender.Options()
        options.witness = witness
        log = try AuditAppender.open(directory, options: options)
        let pid = getpid()
        operation = "run-\(pid)-" + (randomBytes(6) ?? []).map { String($0 >> 4, radix: 16) + String($0 & 15, radix: 16) }.joined()
        actor = .local(uid: getuid(), gid: getgid(), pid: pid)
        target = AuditEntry.clipped("vm/" + vmName)
        do {
            try log.append(AuditEntry(actor: actor, action: "vm.run", target: target, allowed: true,
                                      reason: "local command line: bulkhead run (uid \(getuid()))", stage: .intent, operation: operation))
        } catch {
            try? log.close()
            throw error
        }
    }

    /// Records an event of this run (an outcome of its operation).
    func event(_ action: String, _ result: String) {
        guard failure == nil else { return }
        do {
            try log.append(AuditEntry(actor: actor, action: action, target: target, allowed: true, reason: "bulkhead run",
                                      stage: .outcome, operation: operation, result: AuditEntry.clipped(result)))
        } catch {
            failure = error
            printError("audit log: \(error.description)")
        }
    }

    /// How the VM ended, as its events.
    func ended(_ outcome: VMOutcome) {
        let text = RunEnd.message(outcome) ?? "exited with status 0"
        switch outcome {
        case .faulted: event("vm.guest-fault", text)
        case .panicked: event("vm.guest-panic", text)
        case .timedOut: event("vm.timeout", text)
        default: event("vm.ended", text)
        }
    }

    /// A worker that failed, as a security event.
    func workerFailed(_ why: String, _ failure: Launcher.Failure) {
        switch failure {
        case .seccompViolation(let number, let name): event("vm.seccomp-violation", "system call \(number)\(name.map { " (\($0))" } ?? ""): \(why)")
        case .outOfMemory: event("vm.oom-kill", why)
        case .protocolBreach: event("vm.protocol-breach", why)
        case .killed(let signal): event("vm.worker-killed", "signal \(signal): \(why)")
        case .noReport: event("vm.worker-lost", why)
        case .launcherStopped(let signal): event("vm.stopped", "bulkhead stopped by signal \(signal): \(why)")
        case .setup: event("vm.ended", why)
        }
    }

    /// Records the run's outcome and closes the log. False when a record could not be written
    /// (now or before): the caller exits with an error.
    func finish(status: Int32) -> Bool {
        event("vm.run", "exit status \(status)")
        do { try log.close() } catch {
            if failure == nil { failure = error; printError("audit log: \(error.description)") }
        }
        return failure == nil
    }
}
