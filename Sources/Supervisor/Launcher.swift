import Crypto
import HostOS
import Jail
import Seccomp
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

/// `bulkhead run`: the VM runs in a `bulkhead-worker` process of its own. The launcher
/// opens everything the VM will use (the image, /dev/kvm, the console, disks, network sockets),
/// starts the worker from the executable next to this one, hands it the configuration and the
/// descriptors over a SOCK_SEQPACKET socketpair, and reports what the worker says. It trusts
/// nothing the worker sends: every message is decoded strictly, and a worker that dies or talks
/// nonsense is reported as such.
public enum Launcher {
    /// What the launcher concluded.
    public enum Result {
        case ended(VMOutcome, counters: [Counter])
        case refused(String, kind: RefusalKind)
        /// The worker died without reporting an end (a signal, or an exit) or broke the protocol.
        case workerFailed(String, status: Int32, failure: Failure)
        /// `stop` was signalled (Ctrl-A x on the console): the worker was killed.
        case stopped
    }

    /// What kind of failure ended a worker (for the audit log's security events).
    public enum Failure: Equatable, Sendable {
        /// It made a system call its seccomp allowlist forbids.
        case seccompViolation(number: Int, name: String?)
        /// The kernel's OOM killer killed it (its cgroup's memory limit).
        case outOfMemory
        /// It broke the control protocol (a bad message, one out of turn, a failed socket) and was killed.
        case protocolBreach
        /// A signal killed it before it reported an end.
        case killed(signal: Int32)
        /// It exited, or stayed silent past the VM's timeout, without reporting an end.
        case noReport
        /// This launcher was stopped by a signal and killed the worker.
        case launcherStopped(signal: Int32)
        /// It could not be set up (its cgroup).
        case setup
    }

    /// Why the worker binary was not executed.
    public struct VerificationError: Error, CustomStringConvertible {
        public var description: String
    }

    public static var directory: String {
        let exe = executablePath() ?? ""
        return exe.lastIndex(of: "/").map { String(exe[..<$0]) } ?? "."
    }

    /// The SHA-256 the worker binary must have: `expected` (from --worker-sha256) or the first
    /// word of `bulkhead-worker.sha256` next to this executable (what `make build` and
    /// `make release` write, in `sha256sum` format).
    public static func expectedDigest(_ expected: String?) throws(VerificationError) -> String {
        var text = expected
        if text == nil, let bytes = try? readFile(directory + "/bulkhead-worker.sha256", limit: 4096) {
            text = String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).first.map(String.init)
        }
        guard let hex = text?.lowercased() else {
            throw VerificationError(description: "no expected SHA-256 for bulkhead-worker: put bulkhead-worker.sha256 next to bulkhead (make build writes it) or pass --worker-sha256")
        }
        guard hex.count == 64, hex.allSatisfy({ $0.isHexDigit }) else {
            throw VerificationError(description: "the expected SHA-256 '\(hex.prefix(80))' is not 64 hex digits")
        }
        return hex
    }

    /// Opens the worker binary next to this executable and checks it before anything runs it: a
    /// regular file, writable by nobody but its owner, owned by root or by us, whose SHA-256 is
    /// `digest`. The descriptor returned is the one that was checked, and the one executed.
    public static func verifiedWorker(digest: String) throws(VerificationError) -> FileDescriptor {
        let path = directory + "/bulkhead-worker"
        let fd: FileDescriptor
        let status: FileStatus
        var hasher = SHA256()
        do {
            // Bulkhead's own file, opened by the launcher itself: never blocks, regular files only.
            fd = try FileDescriptor.openChecked(path, what: "worker binary", access: .read, followSymlinks: true)
            status = try fd.status()
            guard status.isRegularFile, status.size <= 256 << 20 else {
                throw VerificationError(description: "\(path) is not a regular file of at most 256 MiB")
            }
            guard status.permissions & 0o022 == 0, status.owner == 0 || status.owner == geteuid() else {
                throw VerificationError(description: "\(path) may be changed by others (owner \(status.owner), mode \(String(status.permissions, radix: 8))): refusing to run it")
            }
            try fd.readChunks(size: status.size) { hasher.update(data: $0) }
        } catch let e as VerificationError { throw e } catch {
            throw VerificationError(description: "cannot read the worker binary \(path): \(error)")
        }
        let actual = hasher.finalize().map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
        guard actual == digest else {
            throw VerificationError(description: "\(path) has SHA-256 \(actual), expected \(digest): refusing to run it")
        }
        return fd
    }

    /// How long after the VM's own timeout the launcher waits for the worker's report before it
    /// kills the worker: a worker that stops answering (only a compromised or stopped one would)
    /// cannot keep the launcher, or its VM, alive for ever.
    public static let reportMarginMilliseconds = 2000

    /// When the worker was started (CLOCK_MONOTONIC), for --report-timing.
    public nonisolated(unsafe) static var spawnNanoseconds: UInt64 = 0

    /// Runs `configuration` with `descriptors` (in the order its indexes name them) in a worker
    /// started from `executable` (see `verifiedWorker`). With `jail` (root only), the worker
    /// starts as pid 1 of a new PID namespace, joins the VM's cgroup before it reads anything,
    /// and is told to jail itself with the slot's uid and directory; the launcher tears the
    /// jail's host side down once the worker is reaped, however it ended.
    /// `onEnded` gets the outcome as soon as the worker reports it, before the worker has
    /// finished tearing its VM down (12-20 ms with the in-kernel irqchip) and before the jail is
    /// taken down: the caller can tell the user at once (issue 9).
    /// A signal of `stop` kills the worker and ends the run with `.stopped`.
    public static func run(_ configuration: VMConfiguration, descriptors: [FileDescriptor], executable: FileDescriptor,
                    jail: JailSetup? = nil, stop: EventFD? = nil,
                    onStarted: (_ pid: Int32) -> Void = { _ in },
                    onEnded: (VMOutcome, [Counter]) -> Void = { _, _ in },
                    warn: (String) -> Void = { _ in }) throws(SystemError) -> Result {
        // Made now: once this thread's children start in the worker's PID namespace, it can
        // create no thread (clone fails with EINVAL), and its children would die with the worker.
        let forker = jail != nil ? try? CleanupForker() : nil
        defer { forker?.cancel() }
        var unreaped: ChildProcess?
        var result = try supervise(configuration, descriptors: descriptors, executable: executable, jail: jail,
                                   stop: stop, onStarted: onStarted, onEnded: onEnded, unreaped: &unreaped)
        if let child = unreaped {
            // The worker reported its end and is closing its VM (12-20 ms with the in-kernel
            // irqchip). The outcome is out; this process need not wait: a child of ours waits for
            // the worker and takes the jail down (it holds the slot's lock meanwhile), and the
            // exit status reaches our caller at once (issue 9). The ChildProcess is kept, not
            // released: its deinit would kill and reap the worker here.
            if let jail, let exit = child.exitDescriptor,
               forker?.fork(waitingFor: exit, directories: jail.cgroup.directories.reversed().map(\.path) + [jail.root],
                            files: [jail.lock.path]) == true {
                lingering.append(child)
                return result
            }
            if jail == nil {
                // An unjailed worker has nothing to take down: it ends on its own (its parent-
                // death signal reaches it too when we exit).
                lingering.append(child)
                return result
            }
            _ = try? child.wait()
        }
        if let jail {
            if case .workerFailed(let why, let status, _) = result, status == 128 + SIGKILL, let kills = jail.cgroup.oomKills(), kills > 0 {
                result = .workerFailed("the worker was killed by the kernel's OOM killer: the VM reached its memory limit of \(jail.limits.memoryBytes >> 20) MiB (\(why))",
                                       status: status, failure: .outOfMemory)
            }
            for problem in jail.teardown() { warn("jail teardown: \(problem)") }
        }
        return result
    }

    /// Workers that reported their end and are still closing their VM when `run` returns: kept
    /// (never released) until this process exits.
    nonisolated(unsafe) static var lingering: [ChildProcess] = []

    /// Runs the worker until it ends. For `.ended`, `unreaped` is the worker, not yet reaped: it
    /// sends `ended` before it closes its VM; every other end is reaped here.
    static func supervise(_ configuration: VMConfiguration, descriptors: [FileDescriptor], executable: FileDescriptor,
                          jail: JailSetup?, stop: EventFD? = nil, onStarted: (Int32) -> Void = { _ in },
                          onEnded: (VMOutcome, [Counter]) -> Void = { _, _ in },
                          unreaped: inout ChildProcess?) throws(SystemError) -> Result {
        let start = monotonicNanoseconds()
        let deadline: UInt64? = configuration.timeoutMilliseconds == 0 ? nil
            : Saturating.adding(start, Saturating.multiplying(Saturating.adding(configuration.timeoutMilliseconds, UInt64(reportMarginMilliseconds)), 1_000_000))
        let mine: FileDescriptor
        let child: ChildProcess
        do {
            let (a, theirs) = try UnixSeqpacket.pair()
            // This thread's children start in a PID namespace of their own; the worker will be
            // its pid 1, alone there. (This thread lives as long as the launcher: the worker's
            // parent-death signal follows the thread that started it.)
            if jail != nil { try startChildrenInNewPIDNamespace() }
            spawnNanoseconds = monotonicNanoseconds()
            child = try ChildProcess.spawn(executable: executable, arguments: ["bulkhead-worker"], environment: [],
                                           descriptors: [(theirs, 3)])
            mine = a
        }   // our copy of the worker's end closes here: when the worker dies, reads see the end
        // The worker waits for its configuration; it joins the VM's cgroup before it gets it, so
        // everything it allocates is accounted and limited.
        if let jail {
            do { try jail.cgroup.join(pid: child.pid) } catch {
                return failed(child, "cannot put the worker in its cgroup: \(error)", .setup)
            }
        }
        try mine.sendMessage(WorkerProtocol.encode(.configure(configuration)), descriptors: descriptors)

        var started = false
        // SIGINT, SIGTERM, SIGHUP, blocked at start for a jailed run (main.swift): they stop the
        // worker and the jail is torn down (by `run`), instead of leaving both to the next launcher.
        let signals = jail != nil ? try? TerminationSignals() : nil
        while true {
            var wait = -1
            if let deadline {
                let now = monotonicNanoseconds()
                wait = now >= deadline ? 0 : Int(Saturating.pollMilliseconds(nanoseconds: deadline - now))
            }
            if signals != nil || stop != nil {
                let ready = waitReadable([mine.rawValue, signals?.descriptor.rawValue ?? -1, stop?.fd.rawValue ?? -1],
                                         timeoutMilliseconds: Int32(clamping: wait))
                if ready.count == 3, ready[1], let sig = signals?.next() {
                    let r = failed(child, "stopped by signal \(sig): the worker was killed", .launcherStopped(signal: sig))
                    if case .workerFailed(let why, _, let f) = r { return .workerFailed(why, status: 128 + sig, failure: f) }
                    return r
                }
                if ready.count == 3, ready[2] {
                    _ = failed(child, "stopped")
                    return .stopped
                }
                if ready.first == true {
                    wait = 0   // a message (or the end) is there
                } else if let deadline, monotonicNanoseconds() >= deadline {
                    wait = 0   // timed out: the receive below says so at once
                } else {
                    continue   // a wake-up with nothing to read
                }
            }
            let received: ReceivedMessage
            do {
                switch try mine.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: 0, timeoutMilliseconds: wait) {
                case .message(let m): received = m
                case .closed: return ended(child)
                case .timedOut:
                    let r = failed(child, "the worker did not report within \(reportMarginMilliseconds / 1000) s of the VM's timeout and was killed", .noReport)
                    if case .workerFailed(let why, _, let f) = r { return .workerFailed(why, status: 124, failure: f) }
                    return r
                }
            } catch {
                return failed(child, "the control socket failed: \(error)")
            }
            let message: WorkerMessage
            do {
                message = try WorkerProtocol.decode(received.bytes, from: .worker, descriptors: received.descriptors.count)
            } catch {
                return failed(child, "the worker sent a bad message: \(error)")
            }
            switch message {
            case .started where !started:
                started = true
                onStarted(child.pid)
            case .ended(let outcome, let counters) where started:
                let safe: VMOutcome
                switch outcome {
                case .faulted(let why): safe = .faulted(WorkerProtocol.printable(why))
                case .vcpuFailure(let why): safe = .vcpuFailure(WorkerProtocol.printable(why))
                default: safe = outcome
                }
                let safeCounters = counters.map { Counter(name: WorkerProtocol.printable($0.name), value: $0.value) }
                // The worker sends `ended` before it closes its VM: report first (the caller of
                // `run` decides whether to wait for it).
                onEnded(safe, safeCounters)
                unreaped = child
                return .ended(safe, counters: safeCounters)
            case .refused(let why, let kind):
                _ = try? child.wait()
                return .refused(WorkerProtocol.printable(why), kind: kind)
            case .violation(let number):
                // The worker's SIGSYS handler sends this and ends the worker; make sure.
                let name = SyscallTable.name(of: number).map { " (\($0))" } ?? ""
                let r = failed(child, "the worker made a system call its seccomp allowlist forbids: number \(number)\(name); the kernel refused it and the worker was stopped",
                               .seccompViolation(number: Int(number), name: SyscallTable.name(of: number)))
                if case .workerFailed(let why, _, let f) = r { return .workerFailed(why, status: 128 + SIGSYS, failure: f) }
                return r
            default:
                return failed(child, "the worker sent \(message.type) out of turn")
            }
        }
    }

    /// The worker closed its end without an `ended`.
    static func ended(_ child: ChildProcess) -> Result {
        let end = (try? child.wait()).map { "\($0)" } ?? "unknown"
        switch try? child.wait() {
        case .signaled(let sig, _)?: return .workerFailed("the worker was killed (\(end)) before the VM ended", status: 128 + sig, failure: .killed(signal: sig))
        default: return .workerFailed("the worker ended (\(end)) without reporting how the VM ended", status: RunEnd.internalError, failure: .noReport)
        }
    }

    /// Kills a worker that broke the protocol and reaps it.
    static func failed(_ child: ChildProcess, _ why: String, _ failure: Failure = .protocolBreach) -> Result {
        try? child.signal(9)
        _ = try? child.wait()
        return .workerFailed(why, status: RunEnd.internalError, failure: failure)
    }
}

/// A thread that waits to fork the child that takes a jail down (`cleanUpAfterExit`). It is made
/// before the launcher's thread moves its children to the worker's PID namespace
/// (`startChildrenInNewPIDNamespace`): after that, that thread can create no thread, and a child
/// it forked would be in the worker's namespace, where the kernel kills it when the worker ends.
final class CleanupForker: @unchecked Sendable {
    // Sendable: `job` is set before `go` is signalled and read by the thread after it wakes;
    // `forked` is written by the thread before it ends and read after it was joined.
    private let go: EventFD
    private var job: (exit: Int32, directories: [String], files: [String])?
    private var forked = false
    private var thread: OSThread?

    init() throws(SystemError) {
        go = try EventFD()
        thread = try OSThread.spawn { [self] in
            while !go.wait(nanoseconds: 1_000_000_000) {}
            if let job { forked = cleanUpAfterExit(waitingFor: job.exit, directories: job.directories, files: job.files) }
        }
    }

    /// Forks the clean-up child; false if it could not (the caller then cleans up itself).
    func fork(waitingFor exit: Int32, directories: [String], files: [String]) -> Bool {
        guard let thread else { return false }
        job = (exit, directories, files)
        go.signal()
        thread.join()
        self.thread = nil
        return forked
    }

    /// Ends the thread without forking (nothing when `fork` ran).
    func cancel() {
        guard let thread else { return }
        go.signal()
        thread.join()
        self.thread = nil
    }
}
