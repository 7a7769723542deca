import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A child process started from an open descriptor of its executable (verified exec), and its
/// reaping: how the launcher starts one `bulkhead-worker` per VM.
///
/// Starting: `posix_spawn`, which glibc implements with clone(CLONE_VM | CLONE_VFORK) and runs
/// no Swift code in the child, so it is safe in a multithreaded process (a raw fork() is not).
/// The program is executed through the path "/proc/self/fd/N" of a descriptor of the executable,
/// as glibc's fexecve does: the kernel executes the file that descriptor has open, whatever the
/// executable's path names by then. (This needs /proc; without it spawn throws ENOENT.)
///
/// What the child gets:
/// - the argument vector and environment given, nothing of this process's environment;
/// - its standard input, output and error inherited from this process, and each descriptor
///   passed moved to its target number;
/// - no other descriptor. Sources/KVM opens its descriptors close-on-exec (accept sets it just
///   after), but the child does not rely on that: before the exec it closes every other number (glibc's
///   posix_spawn_file_actions_addclosefrom_np, 2.34+, plus one close per number below the
///   executable's descriptor). On an older glibc without closefrom only the numbers up to the
///   executable's descriptor are closed, and descriptors above it stay out only if close-on-exec;
/// - an empty signal mask (this process blocks SIGUSR2 in vCPU threads) and the default
///   disposition for every signal (ignored signals, such as SIGPIPE in many programs, stay
///   ignored across an exec otherwise);
/// - the same session and process group as this process.
///
/// Reaping: `wait()` or `poll()`. This process must not reap its children any other way
/// (waitpid(-1), SIGCHLD set to SIG_IGN): a pid reaped elsewhere can be reused, and only a child
/// reaped here is known never to be signalled again. Sendable: the pid and the exit descriptor
/// are fixed, and the termination is behind a lock.
public final class ChildProcess: Sendable {
    /// How a child ended.
    public enum Termination: Equatable, Sendable, CustomStringConvertible {
        /// exit(status): the low 8 bits of what the program passed to exit.
        case exited(Int32)
        /// Killed by a signal.
        case signaled(Int32, coreDumped: Bool)

        public var description: String {
            switch self {
            case .exited(let status): return "exited with status \(status)"
            case .signaled(let signal, let core):
                return "killed by signal \(signal)\(Termination.name(of: signal).map { " (\($0))" } ?? "")"
                    + (core ? ", core dumped" : "")
            }
        }

        static func name(of signal: Int32) -> String? {
            let names: [Int32: String] = [
                SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
                SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
                SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM",
                SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ", SIGSYS: "SIGSYS",
            ]
            return names[signal]
        }

        /// Decodes a waitpid status (the W* macros, which Swift does not import). Stopped and
        /// continued children are never reported: nothing here asks for WUNTRACED/WCONTINUED.
        static func decode(_ status: Int32) -> Termination? {
            let low = status & 0x7f
            if low == 0 { return .exited((status >> 8) & 0xff) }       // WIFEXITED, WEXITSTATUS
            if low != 0x7f { return .signaled(low, coreDumped: status & 0x80 != 0) } // WIFSIGNALED
            return nil
        }
    }

    /// The child's process id. Valid for signalling only until the child is reaped.
    public let pid: Int32
    /// A pidfd for the child (pidfd_open, Linux 5.3+; nil where unavailable): readable once the
    /// child has exited, so a launcher can poll it together with its socket. Close-on-exec,
    /// owned by this object, valid while it lives. Reading it yields nothing; reap with `wait()`.
    public var exitDescriptor: Int32? { pidfd?.rawValue }

    private let pidfd: FileDescriptor?
    /// The termination once the child has been reaped. Reaping and signalling both hold this
    /// lock, so a signal never reaches a pid after this object reaped it.
    private let reaped = Mutex<Termination?>(nil)

    private init(pid: Int32, pidfd: FileDescriptor?) {
        self.pid = pid
        self.pidfd = pidfd
    }

    /// Starts the program open in `executable` (see the type's documentation).
    ///
    /// - `arguments`: the whole argument vector, as execve(2) takes it: `arguments[0]` is the
    ///   name the program sees as argv[0]. It must not be empty.
    /// - `environment`: "NAME=value" strings, the child's entire environment.
    /// - `descriptors`: (descriptor, target number) pairs; each descriptor is open in the child
    ///   at its target number (without close-on-exec). Targets must be distinct and in 3..<1024;
    ///   0, 1 and 2 are inherited.
    ///
    /// A "#!" script cannot be started this way: its interpreter would have to open
    /// "/proc/self/fd/N" after the exec, when N is closed. It starts and its interpreter fails.
    /// The descriptor pins the file, not its contents: whoever can write the file can still
    /// change it; verify a file nobody else can write (or a sealed memfd copy).
    ///
    /// Throws EINVAL for bad arguments (empty `arguments`, a NUL byte in a string, bad targets)
    /// and whatever posix_spawn reports, including the exec's own failure (ENOENT, EACCES,
    /// ENOEXEC...): no child is left behind then.
    public static func spawn(executable: FileDescriptor, arguments: [String], environment: [String] = [],
                             descriptors: [(FileDescriptor, Int32)] = []) throws(SystemError) -> ChildProcess {
        guard !arguments.isEmpty else {
            throw SystemError("spawn: an empty argument vector (arguments[0] is the program's name)", errno: EINVAL)
        }
        guard !(arguments + environment).contains(where: { $0.utf8.contains(0) }) else {
            throw SystemError("spawn: a NUL byte in an argument or environment string", errno: EINVAL)
        }
        let targets = descriptors.map { $0.1 }
        guard targets.allSatisfy({ (3..<1024).contains($0) }), Set(targets).count == targets.count else {
            throw SystemError("spawn: descriptor targets \(targets) (must be distinct, in 3..<1024)", errno: EINVAL)
        }
        let highestTarget = targets.max() ?? 2

        // Parent-side duplicates above every target, close-on-exec (the child's copies are
        // closed by the exec): the executable's first, at the lowest free number E, then each
        // descriptor's. In the child the descriptors are moved from these copies to their
        // targets, so a descriptor whose number is another one's target is never overwritten
        // before it is moved, and no move is dup2(n, n) (which would keep close-on-exec).
        let program = try duplicate(executable, atLeast: highestTarget + 1)
        var sources: [FileDescriptor] = []
        for (descriptor, _) in descriptors {
            sources.append(try duplicate(descriptor, atLeast: program.rawValue + 1))
        }

        // SAFETY: both glibc objects live in storage owned by this function at a fixed address
        // (glibc keeps pointers to heap arrays inside file actions), initialized by their init
        // calls before any other use, destroyed and freed by the defers on every path.
        let actions = UnsafeMutablePointer<posix_spawn_file_actions_t>.allocate(capacity: 1)
        defer { actions.deallocate() }
        guard posix_spawn_file_actions_init(actions) == 0 else { throw SystemError("posix_spawn_file_actions_init", errno: ENOMEM) }
        defer { posix_spawn_file_actions_destroy(actions) }
        let attributes = UnsafeMutablePointer<posix_spawnattr_t>.allocate(capacity: 1)
        defer { attributes.deallocate() }
        guard posix_spawnattr_init(attributes) == 0 else { throw SystemError("posix_spawnattr_init", errno: ENOMEM) }
        defer { posix_spawnattr_destroy(attributes) }

        // The file actions run in the child in this order.
        for (source, target) in zip(sources, targets) {
            try checkSpawn("posix_spawn_file_actions_adddup2", posix_spawn_file_actions_adddup2(actions, source.rawValue, target))
        }
        // Every number from 3 below E that is not a target (closing a number that is not open
        // is not an error), then everything above E. E itself is close-on-exec: the exec reads
        // the program through it, then closes it.
        let targetSet = Set(targets)
        for n in Int32(3)..<program.rawValue where !targetSet.contains(n) {
            try checkSpawn("posix_spawn_file_actions_addclose", posix_spawn_file_actions_addclose(actions, n))
        }
        if let closeFrom = GlibcExtras.addCloseFrom {
            try checkSpawn("posix_spawn_file_actions_addclosefrom_np", closeFrom(actions, program.rawValue + 1))
        }

        var emptySet = sigset_t()
        sigemptyset(&emptySet)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        // sigfillset leaves out glibc's two internal signals, 32 and 33 (SIGCANCEL, SIGSETXID).
        // posix_spawn sets those to SIG_IGN in the child unless they are in the default set, and
        // an ignored signal stays ignored across the exec. Signal n is bit n - 1 of the set (the
        // kernel's layout, which glibc's sigset_t and posix_spawn's raw bit test use); nothing
        // sends these signals to the child before its exec (they go to this process's threads).
        allSignals.__val.0 |= (1 << 31) | (1 << 32)
        try checkSpawn("posix_spawnattr_setsigmask", posix_spawnattr_setsigmask(attributes, &emptySet))
        try checkSpawn("posix_spawnattr_setsigdefault", posix_spawnattr_setsigdefault(attributes, &allSignals))
        try checkSpawn("posix_spawnattr_setflags",
                       posix_spawnattr_setflags(attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)))

        let argv = try CStringArray(arguments)
        let envp = try CStringArray(environment)
        var pid: pid_t = 0
        let path = "/proc/self/fd/\(program.rawValue)"
        // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated strings that live
        // until they go out of scope after this call; actions and attributes are initialized.
        let r = posix_spawn(&pid, path, actions, attributes, argv.pointers, envp.pointers)
        withExtendedLifetime((argv, envp, program, sources, executable)) {}
        guard r == 0 else { throw SystemError("posix_spawn of \(path) (\(arguments[0]))", errno: r) }

        // The child is at worst a zombie until this object reaps it, so pidfd_open finds it.
        var pidfd: FileDescriptor?
        if let open = GlibcExtras.pidfdOpen {
            let fd = open(pid, 0)
            if fd >= 0 { pidfd = FileDescriptor(owning: fd) }
        }
        return ChildProcess(pid: pid, pidfd: pidfd)
    }

    /// Opens `path` (read-only, close-on-exec) and starts the file it names, as
    /// `spawn(executable:...)` does. The path is resolved once, here.
    public static func spawn(path: String, arguments: [String], environment: [String] = [],
                             descriptors: [(FileDescriptor, Int32)] = []) throws(SystemError) -> ChildProcess {
        let raw = open(path, O_RDONLY | O_CLOEXEC)
        guard raw >= 0 else { throw SystemError("open \(path)", errno: errno) }
        return try spawn(executable: FileDescriptor(owning: raw), arguments: arguments,
                         environment: environment, descriptors: descriptors)
    }

    /// Waits for the child to end and reaps it. Calling it again (or after `poll()` reaped the
    /// child) returns the same termination.
    public func wait() throws(SystemError) -> Termination {
        if let done = reaped.withLock({ $0 }) { return done }
        // Wait without reaping (WNOWAIT) and without the lock, so that `signal` and `poll` are
        // not held up; then reap under the lock.
        var info = siginfo_t()
        while true {
            // SAFETY: waitid writes one siginfo_t, a local variable.
            if SystemCall.uninterrupted({ waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) }) != 0 {
                let e = errno
                if e == ECHILD, let done = reaped.withLock({ $0 }) { return done } // reaped by poll()
                throw SystemError("waitid(\(pid))", errno: e)
            }
            if let done = try poll() { return done }
        }
    }

    /// Reaps the child if it has ended, without waiting; nil while it runs.
    public func poll() throws(SystemError) -> Termination? {
        let result: Result<Termination?, SystemError> = reaped.withLock { state in
            if let done = state { return .success(done) }
            var status: Int32 = 0
            // SAFETY: waitpid writes one Int32, a local variable.
            let r = SystemCall.uninterrupted { waitpid(pid, &status, WNOHANG) }
            if r == 0 { return .success(nil) }
            guard r == pid else { return .failure(SystemError("waitpid(\(pid))", errno: errno)) }
            guard let termination = Termination.decode(status) else {
                return .failure(SystemError("waitpid(\(pid)): unexpected status \(status)", errno: EINVAL))
            }
            state = termination
            return .success(termination)
        }
        return try result.get()
    }

    /// Sends `sig` to the child (0 checks that it can be signalled). Refused with ESRCH once the
    /// child was reaped: its pid may belong to another process by then. An exited child not yet
    /// reaped takes the signal without effect.
    public func signal(_ sig: Int32) throws(SystemError) {
        let error: SystemError? = reaped.withLock { state in
            if let done = state {
                return SystemError("signal \(sig) to child \(pid), which was already reaped (\(done))", errno: ESRCH)
            }
            let r: Int32
            if let pidfd, let send = GlibcExtras.pidfdSendSignal {
                r = send(pidfd.rawValue, sig, nil, 0)
            } else {
                r = kill(pid, sig)
            }
            return r == 0 ? nil : SystemError("signal \(sig) to child \(pid)", errno: errno)
        }
        if let error { throw error }
    }

    /// A child that was never reaped is killed (SIGKILL) and reaped here, which blocks until it
    /// is gone: no zombie, and no worker outliving the object that was its only handle. Keep
    /// the object, or `wait()` for it, for as long as the child should run.
    deinit {
        reaped.withLock { state in
            guard state == nil else { return }
            if let pidfd, let send = GlibcExtras.pidfdSendSignal {
                _ = send(pidfd.rawValue, SIGKILL, nil, 0)
            } else {
                _ = kill(pid, SIGKILL)
            }
            var status: Int32 = 0
            // SAFETY: waitpid writes one Int32, a local variable.
            _ = SystemCall.uninterrupted { waitpid(pid, &status, 0) }
        }
    }

    private static func duplicate(_ descriptor: FileDescriptor, atLeast minimum: Int32) throws(SystemError) -> FileDescriptor {
        let fd = fcntl(descriptor.rawValue, F_DUPFD_CLOEXEC, minimum)
        guard fd >= 0 else { throw SystemError("fcntl(\(descriptor.rawValue), F_DUPFD_CLOEXEC, \(minimum))", errno: errno) }
        return FileDescriptor(owning: fd)
    }

    /// posix_spawn* functions return an error number instead of setting errno.
    private static func checkSpawn(_ operation: String, _ result: Int32) throws(SystemError) {
        guard result == 0 else { throw SystemError(operation, errno: result) }
    }
}

/// A NULL-terminated array of NUL-terminated C strings (argv, envp; paths a child uses after a
/// fork, when it may not allocate), freed with the object.
final class CStringArray {
    let pointers: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
    let count: Int

    init(_ strings: [String]) throws(SystemError) {
        count = strings.count
        // SAFETY: count + 1 slots, every one initialized here (nil first, so deinit can free
        // any prefix that was filled), freed in deinit.
        pointers = .allocate(capacity: count + 1)
        pointers.initialize(repeating: nil, count: count + 1)
        for (i, string) in strings.enumerated() {
            guard let copy = strdup(string) else { throw SystemError("strdup", errno: ENOMEM) }
            pointers[i] = copy
        }
    }

    deinit {
        // SAFETY: each slot is nil or a strdup'ed string, freed once; then the array itself.
        for i in 0..<count { free(pointers[i]) }
        pointers.deinitialize(count: count + 1)
        pointers.deallocate()
    }
}

/// glibc functions that Swift's Glibc module does not declare (they are behind feature macros
/// or in headers it does not include), looked up by name at run time; nil where this glibc lacks
/// them.
private enum GlibcExtras {
    typealias PidfdOpen = @convention(c) (pid_t, UInt32) -> Int32
    typealias PidfdSendSignal = @convention(c) (Int32, Int32, UnsafeMutablePointer<siginfo_t>?, UInt32) -> Int32
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

    /// int pidfd_open(pid_t pid, unsigned int flags) — glibc 2.36, <sys/pidfd.h>.
    static let pidfdOpen: PidfdOpen? = lookUp("pidfd_open", as: PidfdOpen.self)
    /// int pidfd_send_signal(int pidfd, int sig, siginfo_t *info, unsigned int flags) — glibc 2.36.
    static let pidfdSendSignal: PidfdSendSignal? = lookUp("pidfd_send_signal", as: PidfdSendSignal.self)
    /// int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *, int from) — glibc 2.34.
    static let addCloseFrom: AddCloseFrom? = lookUp("posix_spawn_file_actions_addclosefrom_np", as: AddCloseFrom.self)

    private static func lookUp<F>(_ name: String, as type: F.Type) -> F? {
        // dlsym(RTLD_DEFAULT, name): RTLD_DEFAULT is the null handle on glibc.
        guard let symbol = dlsym(nil, name) else { return nil }
        // SAFETY: the symbol is the glibc function of that name, whose C prototype is the one
        // written beside each use; F is a @convention(c) function type with that prototype, so
        // the address can be called as F.
        return unsafeBitCast(symbol, to: F.self)
    }
}
