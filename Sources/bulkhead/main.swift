import ArgumentParser
import Boot
import Devices
import HostOS
import Jail
import KVM
import VMM
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

struct BulkheadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulkhead",
        abstract: "A security-first virtual machine monitor on Linux KVM.",
        subcommands: [Run.self, Surface.self],
        defaultSubcommand: Run.self)
}

/// Exit statuses of `bulkhead run` besides the guest's own (README.md lists them).
enum Status {
    static let badImage: Int32 = 65
    static let unavailable: Int32 = 69
    static let internalError: Int32 = 70
}

func printError(_ message: String) {
    try? FileDescriptor.standardError.writeAll(Array(("bulkhead: " + message + "\n").utf8))
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a Bulkhead guest program; print its console and exit with its status.",
        discussion: """
            With no IMAGE, runs the built-in `hello` guest. Exit status: the guest's own (0-255) \
            when it calls exit; 134 when it faults; 124 on --timeout; 125 when a vCPU fails; \
            64 for bad options, 65 for a bad image, 69 when KVM is unavailable, 70 on other errors.
            """)

    @Argument(help: "The guest program (a static 64-bit ELF executable). Default: the built-in hello guest.")
    var image: String?

    @Option(help: "Boot this Linux kernel (bzImage, vmlinux or a PVH ELF) instead of a guest program; its console is COM1.")
    var kernel: String?

    @Option(help: "Initial RAM disk for --kernel.")
    var initrd: String?

    @Option(help: "Guest memory in MiB.")
    var memory: UInt64 = 64

    @Option(help: "Number of vCPUs.")
    var vcpus: Int = 1

    @Option(help: "Command line passed to the guest.")
    var cmdline: String = ""

    @Option(help: "Stop the guest after this many seconds (0.001 to 31622400, i.e. 366 days).")
    var timeout: Double?

    /// `--timeout` as whole milliseconds: the one conversion, used by every path (validated).
    var timeoutMilliseconds: UInt64? { timeout.flatMap(VMConfiguration.timeoutMilliseconds(seconds:)) }

    @Option(help: "Write the guest console to this file instead of the terminal.")
    var console: String?

    @Flag(name: .customLong("no-console-input"), help: "Do not connect standard input to a --kernel guest's console. By default it is: on a terminal in raw mode (every key goes to the guest; Ctrl-A x stops the VM, Ctrl-A d detaches, Ctrl-A h helps), from a pipe or file byte for byte.")
    var noConsoleInput = false

    @Option(name: .customLong("hide-cpu-feature"), help: "Hide a CPU feature from the guest (\(CPUIDPolicy.Feature.allCases.map(\.rawValue).joined(separator: ", "))). Repeatable.")
    var hiddenFeatures: [String] = []

    @Flag(help: "Attach a virtio-rng device (entropy from the host kernel's getrandom).")
    var rng = false

    @Option(help: "Attach a raw disk image as a virtio-blk device (size a multiple of 512 bytes). Repeatable.")
    var disk: [String] = []

    @Option(name: .customLong("read-only-disk"), help: "Attach a raw disk image read-only. Repeatable.")
    var readOnlyDisks: [String] = []

    @Option(name: .customLong("net-listen"), help: "Attach a virtio-net device whose frames go over a Unix SOCK_SEQPACKET socket created at this path; waits for one peer (another VM, or a switch) to connect, for at most --timeout seconds (60 without it), then removes the socket and fails.")
    var netListen: String?

    @Option(name: .customLong("net-connect"), help: "Attach a virtio-net device connected to a peer listening at this path.")
    var netConnect: String?

    @Option(help: ArgumentHelp("Attach a virtio-vsock device: a guest connecting to host port P (CID 2) reaches the Unix stream socket listening at PATH_P.", valueName: "path"))
    var vsock: String?

    @Option(name: .customLong("vsock-cid"), help: "The guest's vsock address (3-4294967294).")
    var vsockCID: UInt64 = 3

    @Option(name: .customLong("vsock-ops-limit"), help: "Limit vsock to this many packets per second in each direction.")
    var vsockOpsLimit: UInt64?

    @Option(name: .customLong("vsock-bytes-limit"), help: "Limit vsock to this many bytes per second in each direction.")
    var vsockBytesLimit: UInt64?

    @Option(help: "MAC address of the virtio-net device, aa:bb:cc:dd:ee:ff (default: a random locally administered one).")
    var mac: String?

    @Option(name: .customLong("disk-ops-limit"), help: "Limit each disk to this many requests per second (bursts of one second's worth).")
    var diskOpsLimit: UInt64?

    @Option(name: .customLong("disk-bytes-limit"), help: "Limit each disk to this many bytes per second.")
    var diskBytesLimit: UInt64?

    @Option(name: .customLong("net-ops-limit"), help: "Limit the network device to this many frames per second in each direction.")
    var netOpsLimit: UInt64?

    @Option(name: .customLong("net-bytes-limit"), help: "Limit the network device to this many bytes per second in each direction.")
    var netBytesLimit: UInt64?

    @Option(name: .customLong("rng-bytes-limit"), help: "Limit the rng to this many bytes per second.")
    var rngBytesLimit: UInt64?

    @Flag(help: "Print hypercall statistics to standard error when the guest ends.")
    var stats = false

    @Flag(name: .customLong("no-jail"), help: "Run the VM without the jail: in this process (or, with --worker, in a worker that is not jailed). Needed without root.")
    var noJail = false

    @Flag(help: "With --no-jail: run the VM in a bulkhead-worker process of its own anyway (without root: no jail). As root without --no-jail, the VM always runs in a jailed worker.")
    var worker = false

    @Option(name: .customLong("worker-sha256"), help: "The SHA-256 the worker binary must have (default: from bulkhead-worker.sha256 next to bulkhead).")
    var workerSHA256: String?

    @Option(name: .customLong("memory-limit"), help: "The jailed worker's memory limit in MiB, guest memory included (default: --memory + 64). Over it, the kernel kills the worker.")
    var memoryLimit: Int?

    @Flag(name: .customLong("seccomp-log"), help: "Diagnosis: system calls outside the worker's seccomp allowlists run, and the kernel logs them (dmesg: 'audit: type=1326 ... syscall=N'), instead of stopping the worker.")
    var seccompLog = false

    @Option(name: .customLong("jail-probe"), help: ArgumentHelp("Test mode: the jailed worker tries to escape and reports each try on the console (probes), then also makes a forbidden system call (violation).", visibility: .hidden))
    var jailProbe: String?

    @Flag(help: ArgumentHelp("Print monotonic timestamps (ns) of VMM start and first hypercall to standard error.", visibility: .hidden))
    var reportTiming = false

    @Flag(help: ArgumentHelp("Diagnostic: run without the IDT and fault handlers, so any guest fault is a triple fault.", visibility: .hidden))
    var noFaultHandlers = false

    @Flag(help: ArgumentHelp("Benchmark: serve queue doorbells as MMIO exits instead of ioeventfds.", visibility: .hidden))
    var noIoeventfd = false

    func validate() throws {
        guard vcpus >= 1 && vcpus <= GuestLayout.maxVCPUs else {
            throw ValidationError("--vcpus must be between 1 and \(GuestLayout.maxVCPUs)")
        }
        guard memory >= 1 && memory <= GuestLayout.maxMemory >> 20 else {
            throw ValidationError("--memory must be between 1 and \(GuestLayout.maxMemory >> 20) MiB")
        }
        if let t = timeout, VMConfiguration.timeoutMilliseconds(seconds: t) == nil {
            throw ValidationError("--timeout must be \(VMConfiguration.timeoutRangeDescription)")
        }
        if netListen != nil && netConnect != nil { throw ValidationError("give --net-listen or --net-connect, not both") }
        if let vsock { do { _ = try UnixVsockHost(pathPrefix: vsock) } catch { throw ValidationError("--vsock: \(error)") } }
        if vsockCID < 3 || vsockCID >= 0xffff_ffff { throw ValidationError("--vsock-cid must be between 3 and 4294967294") }
        if let memoryLimit, memoryLimit < 16 || memoryLimit > 1 << 20 { throw ValidationError("--memory-limit must be between 16 and 1048576 MiB") }
        if let jailProbe, !["probes", "violation"].contains(jailProbe) { throw ValidationError("--jail-probe is probes or violation") }
        if let mac, Run.parseMAC(mac) == nil { throw ValidationError("--mac must look like 52:54:00:12:34:56 (unicast)") }
        for (name, v) in [("--disk-ops-limit", diskOpsLimit), ("--disk-bytes-limit", diskBytesLimit), ("--rng-bytes-limit", rngBytesLimit),
                        ("--net-ops-limit", netOpsLimit), ("--net-bytes-limit", netBytesLimit),
                        ("--vsock-ops-limit", vsockOpsLimit), ("--vsock-bytes-limit", vsockBytesLimit)] {
            if let v, v == 0 { throw ValidationError("\(name) must be at least 1") }
        }
        if kernel != nil && image != nil { throw ValidationError("give either IMAGE or --kernel, not both") }
        if initrd != nil && kernel == nil { throw ValidationError("--initrd needs --kernel") }
        for f in hiddenFeatures where CPUIDPolicy.Feature(rawValue: f) == nil {
            throw ValidationError("unknown CPU feature '\(f)' (known: \(CPUIDPolicy.Feature.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
    }

    /// Printed when a probe VM found that guests of this kind still see features the VMM's
    /// CPUID table hides (a PVM host that does not trap CPUID, or not for every bit): the
    /// in-process run measures before it starts; a worker measures where the VM runs and
    /// reports it (`cpuid.enforced`, `cpuid.ineffective`).
    static func cpuidWarning(_ features: [CPUIDPolicy.Feature]) -> String {
        let names = features.map(\.rawValue).joined(separator: ", ")
        return "warning: on this host a guest sees the host's own CPUID value for \(names) whatever the VMM's table says (measured by a probe VM), so --hide-cpu-feature has no effect for it"
    }

    func run() throws {
        // As root the VM runs in a jailed worker; --no-jail opts out (and is needed without root).
        if !noJail {
            guard geteuid() == 0 else {
                printError("the jail (a per-VM uid, PID namespace and cgroup) needs root: run as root, or pass --no-jail to run this VM without it")
                throw ExitCode(Status.unavailable)
            }
            return try runInWorker(jailed: true)
        }
        if worker { return try runInWorker(jailed: false) }
        let hidden = Set(hiddenFeatures.compactMap(CPUIDPolicy.Feature.init(rawValue:)))
        if !hidden.isEmpty, let m = CPUIDProbe.measured(for: kernel == nil ? .program : .kernel), !m.ineffective(hidden).isEmpty {
            printError(Run.cpuidWarning(m.ineffective(hidden)))
        }
        let models = try devices()
        var config = configuration(console: try consoleSink(), devices: models)
        // Ctrl-A x in process: the relay has put the terminal back; ending the process ends the VM.
        config.consoleInput = try consoleInput(stop: { _exit(0) })
        config.rateLimits = rateLimits(for: models)
        config.doorbellsInKernel = !noIoeventfd
        let report: RunReport
        if let kernel {
            let kernelBytes = try readImage(kernel, what: "kernel")
            let initrdBytes = try initrd.map { try readImage($0, what: "initrd") }
            do { report = try Machine.runLinux(kernel: kernelBytes, initrd: initrdBytes, configuration: config) } catch {
                try fail(error)
            }
        } else {
            let path: String
            if let image { path = image } else {
                guard let p = GuestCatalog.locate(GuestCatalog.defaultGuest) else {
                    printError("the built-in '\(GuestCatalog.defaultGuest)' guest is not built; run Guest/build.sh (searched: \(GuestCatalog.searchDirectories.joined(separator: ", ")))")
                    throw ExitCode(Status.unavailable)
                }
                path = p
            }
            let bytes = try readImage(path, what: "guest image")
            do { report = try Machine.run(image: bytes, configuration: config) } catch {
                try fail(error)
            }
        }
        if reportTiming {
            var line = "timing: start-ns \(report.startNanoseconds)"
            if let f = report.firstHypercallNanoseconds { line += " first-hypercall-ns \(f)" }
            try? FileDescriptor.standardError.writeAll(Array((line + "\n").utf8))
        }
        if stats {
            printError(statistics(report.statistics))
            printError(Run.exitStatistics(report.exits))
        }
        if report.outcome != .exited(status: 0) { printError(report.outcome.description) }
        if !report.stoppedAt.isEmpty {
            printError("stopped at: " + report.stoppedAt.sorted { $0.key < $1.key }
                .map { "vCPU \($0.key) rip 0x\(String($0.value, radix: 16))" }.joined(separator: ", "))
        }
        // The outcome is out; closing the VM (12-20 ms with the in-kernel irqchip) is left to a
        // child that outlives this process, so the exit status follows at once (issue 9).
        // Exit here, holding the report: releasing it in this process would close the VM first.
        releaseDescriptorsAfterExit()
        withExtendedLifetime(report) { Glibc.exit(report.outcome.exitCode) }
    }

    func configuration(console sink: ConsoleSink, devices models: [VirtioDeviceModel]) -> MachineConfiguration {
        MachineConfiguration(
            boot: BootConfiguration(memorySize: memory << 20, vcpus: vcpus, commandLine: cmdline, faultHandlers: !noFaultHandlers),
            timeout: timeoutMilliseconds.map { Double($0) / 1000 },
            cpuid: CPUIDPolicy(hidden: Set(hiddenFeatures.compactMap(CPUIDPolicy.Feature.init(rawValue:)))),
            console: sink,
            devices: models)
    }

    /// Standard input for a kernel guest's console (COM1), relayed through a pipe; nil when there
    /// is none to give: a guest program (it cannot reach ports), --no-console-input, a closed
    /// standard input, or a terminal of which this process is not in the foreground (a
    /// background job that read it would be stopped by SIGTTIN).
    func consoleInput(stop: @escaping @Sendable () -> Void) throws -> FileDescriptor? {
        guard kernel != nil, !noConsoleInput, fcntl(0, F_GETFD) >= 0 else { return nil }
        let stdin = FileDescriptor(borrowing: 0)
        var interactive = false
        if stdin.isTerminal {
            guard RawTerminal.standardInputIsForegroundTerminal else { return nil }
            do { try RawTerminal.enter() } catch {
                printError("warning: no console input: the terminal cannot be put in raw mode: \(error)")
                return nil
            }
            interactive = true
            printError("the console reads this terminal: Ctrl-A x stops the VM, Ctrl-A h lists the keys")
        }
        do {
            return try ConsoleInputRelay.start(source: stdin, interactive: interactive, say: { printError($0) }, stop: stop)
        } catch {
            RawTerminal.restore()
            printError("\(error)")
            throw ExitCode(Status.internalError)
        }
    }

    func consoleSink() throws -> ConsoleSink {
        guard let console else { return .standardOutput() }
        do { return try ConsoleSink.file(console) } catch {
            printError("\(error)")
            throw ExitCode(Status.internalError)
        }
    }

    /// Reads an image the caller named, with the caller's permissions (Caller.open): a regular
    /// file, not through a symbolic link.
    func readImage(_ path: String, what: String) throws -> [UInt8] {
        let fd: FileDescriptor
        do { fd = try Caller.current.open(path, what: what, access: .read) } catch {
            printError("\(error)")
            throw ExitCode(Status.badImage)
        }
        do { return try fd.readAll(limit: Int(memory << 20)) } catch {
            printError("cannot read \(what) \(path): \(error)")
            throw ExitCode(Status.badImage)
        }
    }

    /// Attaches the network device's socket: listens (bounded by --timeout, or
    /// UnixSeqpacket.defaultListenSeconds) or connects, with the caller's credentials. Failures
    /// are reported here; a termination signal while listening exits 128 + the signal.
    func networkSocket(_ path: String) throws -> FileDescriptor {
        do {
            if netListen != nil {
                return try UnixSeqpacket.listenAndAccept(path, timeoutSeconds: timeout ?? UnixSeqpacket.defaultListenSeconds)
            }
            return try UnixSeqpacket.connect(path, caller: .current)
        } catch {
            printError("cannot attach the network device on \(path): \(error)")
            if case .interrupted(_, let signal)? = error as? ListenError { throw ExitCode(128 + signal) }
            throw ExitCode(Status.internalError)
        }
    }

    func fail(_ error: MachineError) throws -> Never {
        printError("\(error)")
        throw ExitCode(Int32(error.refusalKind.rawValue))
    }

    /// The rate limits the options ask for, by device index.
    func rateLimits(for models: [VirtioDeviceModel]) -> [Int: RateLimiter] {
        let now = monotonicNanoseconds()
        func bucket(_ rate: UInt64?) -> TokenBucket? { rate.map { TokenBucket(capacity: $0, ratePerSecond: $0, now: now) } }
        var limits: [Int: RateLimiter] = [:]
        for (i, m) in models.enumerated() {
            switch m.deviceType {
            case .block where diskOpsLimit != nil || diskBytesLimit != nil:
                limits[i] = RateLimiter(operations: bucket(diskOpsLimit), bytes: bucket(diskBytesLimit))
            case .network where netOpsLimit != nil || netBytesLimit != nil:
                limits[i] = RateLimiter(operations: bucket(netOpsLimit), bytes: bucket(netBytesLimit))
            case .vsock where vsockOpsLimit != nil || vsockBytesLimit != nil:
                limits[i] = RateLimiter(operations: bucket(vsockOpsLimit), bytes: bucket(vsockBytesLimit))
            case .entropy where rngBytesLimit != nil:
                limits[i] = RateLimiter(bytes: bucket(rngBytesLimit))
            default: break
            }
        }
        return limits
    }

    /// The virtio devices the options ask for, in window order: disks, then the network device,
    /// then the rng, then vsock. Disk images
    /// are opened here, once; the device model only ever sees the open descriptor.
    func devices() throws -> [VirtioDeviceModel] {
        var models: [VirtioDeviceModel] = []
        for (path, readOnly) in disk.map({ ($0, false) }) + readOnlyDisks.map({ ($0, true) }) {
            let fd: FileDescriptor
            do { fd = try Caller.current.open(path, what: "disk", access: readOnly ? .read : .readWrite) } catch {
                printError("\(error)")
                throw ExitCode(Status.badImage)
            }
            do {
                let backend = try FileBlockBackend(fd: fd)
                models.append(VirtioBlock(backend: backend, readOnly: readOnly, id: "bulkhead-disk\(models.count)"))
            } catch {
                printError("cannot attach disk \(path): \(error)")
                throw ExitCode(Status.badImage)
            }
        }
        if let path = netListen ?? netConnect {
            let fd = try networkSocket(path)
            do {
                let address = mac.flatMap(Run.parseMAC) ?? Run.randomMAC()
                models.append(try VirtioNet(backend: try SeqpacketFrameBackend(fd: fd), mac: address))
            } catch {
                printError("cannot attach the network device on \(path): \(error)")
                throw ExitCode(Status.internalError)
            }
        }
        if rng { models.append(VirtioRNG(source: randomBytes)) }
        if let vsock {
            do {
                // With more privilege than the caller, each connection is made with the caller's
                // credentials, on a thread that takes them (Caller.perform).
                let caller = Caller.current
                let host = caller.needsOwnCredentials
                    ? UnixVsockHost(connector: { port throws(SystemError) in try UnixStream.connect("\(vsock)_\(port)", caller: caller) })
                    : try UnixVsockHost(pathPrefix: vsock)
                models.append(try VirtioVsock(guestCID: vsockCID, host: host))
            } catch {
                printError("cannot attach the vsock device: \(error)")
                throw ExitCode(ExitCode.validationFailure.rawValue)
            }
        }
        return models
    }

    /// Opens what the VM needs here and runs it in a bulkhead-worker process, jailed or not.
    func runInWorker(jailed: Bool) throws {
        let launcherStart = monotonicNanoseconds()
        // Without ioeventfds, device I/O runs on vCPU threads, which their seccomp filter forbids.
        if jailed && noIoeventfd { throw ValidationError("--no-ioeventfd needs --no-jail") }
        // Verified exec: the binary is checked (owner, mode, SHA-256) before anything else is
        // opened, and the checked descriptor is the one executed.
        let executable: FileDescriptor
        do { executable = try Launcher.verifiedWorker(digest: try Launcher.expectedDigest(workerSHA256)) } catch {
            printError(error.description)
            throw ExitCode(Status.internalError)
        }
        var descriptors: [FileDescriptor] = []
        func add(_ fd: FileDescriptor) -> UInt8 {
            descriptors.append(fd)
            return UInt8(descriptors.count - 1)
        }
        func open(_ path: String, what: String, status: Int32, readOnly: Bool = true) throws -> FileDescriptor {
            // Paths the caller named, with the caller's permissions (Caller.open).
            do { return try Caller.current.open(path, what: what, access: readOnly ? .read : .readWrite) } catch {
                printError("\(error)")
                throw ExitCode(status)
            }
        }
        let imageSpec: VMConfiguration.Image
        if let kernel {
            let k = add(try open(kernel, what: "kernel", status: Status.badImage))
            let i = try initrd.map { add(try open($0, what: "initrd", status: Status.badImage)) }
            imageSpec = .kernel(descriptor: k, initrd: i)
        } else {
            let path: String
            if let image { path = image } else {
                guard let p = GuestCatalog.locate(GuestCatalog.defaultGuest) else {
                    printError("the built-in '\(GuestCatalog.defaultGuest)' guest is not built; run Guest/build.sh")
                    throw ExitCode(Status.unavailable)
                }
                path = p
            }
            imageSpec = .program(descriptor: add(try open(path, what: "guest image", status: Status.badImage)))
        }
        // A fixed system path, opened by the launcher itself (symbolic links followed).
        let kvmFD: FileDescriptor
        do { kvmFD = try FileDescriptor.openChecked("/dev/kvm", what: "KVM device", access: .readWrite, kind: .characterDevice, followSymlinks: true) } catch {
            printError("\(error)")
            throw ExitCode(Status.unavailable)
        }
        let kvm = add(kvmFD)
        let consoleFD: FileDescriptor
        if let console {
            do { consoleFD = try Caller.current.open(console, what: "console file", access: .createOrTruncate) } catch {
                printError("\(error)")
                throw ExitCode(Status.internalError)
            }
        } else {
            consoleFD = .standardOutput
        }
        let consoleIndex = add(consoleFD)
        let stopRequest: EventFD
        do { stopRequest = try EventFD() } catch {
            printError("\(error)")
            throw ExitCode(Status.internalError)
        }
        let inputIndex = try consoleInput(stop: { stopRequest.signal() }).map(add)
        var devices: [VMConfiguration.Device] = []
        var limits: [VMConfiguration.Limit] = []
        for (path, readOnly) in disk.map({ ($0, false) }) + readOnlyDisks.map({ ($0, true) }) {
            devices.append(.disk(descriptor: add(try open(path, what: "disk", status: Status.badImage, readOnly: readOnly)), readOnly: readOnly))
            limits.append(.init(operationsPerSecond: diskOpsLimit ?? 0, bytesPerSecond: diskBytesLimit ?? 0))
        }
        if let path = netListen ?? netConnect {
            devices.append(.net(descriptor: add(try networkSocket(path)), mac: mac.flatMap(Run.parseMAC) ?? Run.randomMAC()))
            limits.append(.init(operationsPerSecond: netOpsLimit ?? 0, bytesPerSecond: netBytesLimit ?? 0))
        }
        if rng {
            devices.append(.rng)
            limits.append(.init(bytesPerSecond: rngBytesLimit ?? 0))
        }
        if let vsock {
            // The worker cannot reach "PATH_P": this process connects for it (VsockBrokerService).
            do {
                let (mine, theirs) = try UnixSeqpacket.pair()
                devices.append(.vsock(broker: add(theirs), cid: UInt32(vsockCID)))
                limits.append(.init(operationsPerSecond: vsockOpsLimit ?? 0, bytesPerSecond: vsockBytesLimit ?? 0))
                let caller = Caller.current   // the broker's thread connects with the caller's credentials
                _ = try OSThread.spawn { VsockBrokerService.serve(mine, pathPrefix: vsock, caller: caller) }
            } catch {
                printError("cannot attach the vsock device: \(error)")
                throw ExitCode(Status.internalError)
            }
        }
        var configuration = VMConfiguration(
            memoryMiB: UInt32(memory), vcpus: UInt16(vcpus), commandLine: cmdline,
            timeoutMilliseconds: timeoutMilliseconds ?? 0, image: imageSpec, kvm: kvm,
            console: consoleIndex, devices: devices, limits: limits, hiddenCPUFeatures: hiddenFeatures,
            faultHandlers: !noFaultHandlers, doorbellsInKernel: !noIoeventfd, consoleInput: inputIndex)
        var jail: JailSetup?
        if jailed {
            // The worker's threads: main, control, device, one per vCPU, and room to spare.
            let cgroupLimits = CgroupLimits(memoryBytes: UInt64(memoryLimit ?? Int(memory) + 64) << 20, processes: UInt32(vcpus + 8),
                                            cpuQuotaMicroseconds: UInt64(vcpus + 1) * CgroupLimits.cpuPeriodMicroseconds)
            do { jail = try JailSetup.prepare(limits: cgroupLimits) } catch {
                printError("\(error)")
                throw ExitCode(Status.unavailable)
            }
            let probe: VMConfiguration.Jail.Probe = jailProbe == "probes" ? .probes : jailProbe == "violation" ? .probesThenViolation : .none
            configuration.jail = jail?.settings(seccomp: seccompLog ? .log : .enforce, probe: probe)
        }
        /// Prints how the VM ended (as soon as the worker says so, before its teardown: issue 9)
        /// and returns the exit status.
        func reportEnd(_ outcome: VMOutcome, _ counters: [Counter]) -> Int32 {
            if !hiddenFeatures.isEmpty, counters.contains(where: { $0.name == WorkerVM.cpuidEnforcedCounter && $0.value == 0 }) {
                let mask = counters.first { $0.name == WorkerVM.cpuidIneffectiveCounter }?.value ?? 0
                printError(Run.cpuidWarning(WorkerVM.features(mask: mask)))
            }
            if reportTiming {
                // The worker's own start, and its VM's first hypercall (same clock as ours).
                var line = "timing: launcher-start-ns \(launcherStart) spawn-ns \(Launcher.spawnNanoseconds)"
                for c in counters where c.name.hasPrefix("timing.") { line += " \(c.name.dropFirst(7)) \(c.value)" }
                try? FileDescriptor.standardError.writeAll(Array((line + "\n").utf8))
            }
            if stats {
                // As the in-process run prints them: "hypercalls: version=0 ...", "exits: mmio=2 ...".
                var groups: [(String, [String])] = []
                for c in counters {
                    let parts = c.name.split(separator: ".", maxSplits: 1).map(String.init)
                    let (group, name) = parts.count == 2 ? (parts[0], parts[1]) : ("counters", c.name)
                    let item = "\(name)=\(c.value)"
                    if let i = groups.firstIndex(where: { $0.0 == group }) { groups[i].1.append(item) } else { groups.append((group, [item])) }
                }
                for (group, items) in groups {
                    let label = group == "hypercall" ? "hypercalls" : group == "exit" ? "exits" : group
                    printError(label + ": " + items.joined(separator: " "))
                }
            }
            let code: Int32
            switch outcome {
            case .exited(let s): code = Int32(s); if s != 0 { printError("guest exited with status \(s)") }
            case .faulted(let why): code = 134; printError(why)
            case .timedOut(let ms): code = 124; printError("timeout: the guest was still running after \(Double(ms) / 1000) s and was stopped")
            case .vcpuFailure(let why): code = 125; printError(why)
            case .reset: code = 0; printError("the guest reset the machine (i8042 command 0xFE); the VM ended")
            case .poweredOff: code = 0; printError("the guest powered the machine off (ACPI S5); the VM ended")
            case .panicked: code = 134; printError("the guest kernel panicked (reported through pvpanic); the VM was stopped")
            }
            return code
        }
        var endStatus: Int32?
        let result: Launcher.Result
        do {
            result = try Launcher.run(configuration, descriptors: descriptors, executable: executable, jail: jail,
                                      stop: stopRequest, onEnded: { endStatus = reportEnd($0, $1) })
        } catch {
            for problem in jail?.teardown() ?? [] { printError("warning: jail teardown: \(problem)") }
            printError("cannot start the worker: \(error)")
            throw ExitCode(Status.internalError)
        }
        switch result {
        case .refused(let why, let kind):
            printError("the worker refused the VM: \(why)")
            throw ExitCode(Int32(kind.rawValue))
        case .workerFailed(let why, let status):
            printError(why)
            throw ExitCode(status)
        case .ended(let outcome, let counters):
            let code = endStatus ?? reportEnd(outcome, counters)
            if code != 0 { throw ExitCode(code) }
        case .stopped:
            printError("the VM was stopped from its console (Ctrl-A x)")
        }
    }

    static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard bytes.count == 6, bytes[0] & 1 == 0 else { return nil }
        return bytes
    }

    static func randomMAC() -> [UInt8] {
        var b = randomBytes(6) ?? [0, 0, 0, 0, 0, 1]
        b[0] = (b[0] & 0xfe) | 0x02 // unicast, locally administered
        return b
    }

    static func exitStatistics(_ e: ExitStatistics) -> String {
        var line = "exits: mmio=\(e.mmio) pio=\(e.pio) other=\(e.other) unassigned-mmio=\(e.unassignedMMIO)"
        if let a = e.lastUnassignedMMIO { line += " (last 0x\(String(a, radix: 16)))" }
        line += " unassigned-pio=\(e.unassignedPIO)"
        if let p = e.lastUnassignedPort { line += " (last port 0x\(String(p, radix: 16)))" }
        return line
    }

    func statistics(_ s: HypercallStatistics) -> String {
        var parts = Hypercall.allCases.map { "\($0.name)=\(s.count($0))" }
        parts.append("unknown=\(s.unknownCalls)")
        parts.append("errors=\(s.totalErrors)")
        return "hypercalls: " + parts.joined(separator: " ")
    }
}

struct Surface: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the attack surface: every channel from a guest to the VMM.")

    @Flag(help: "Print JSON (the format pinned in docs/attack-surface.json).")
    var json = false

    func run() throws {
        let text = json ? AttackSurface.json() : AttackSurface.text()
        try? FileDescriptor.standardOutput.writeAll(Array(text.utf8))
    }
}

ignoreBrokenPipe()
// A jailed run will move its worker into a cgroup; the first such move in a while waits for an
// RCU grace period (see JailSetup.warmUpCgroupMoves). Start that wait now, before the arguments
// are even parsed, so that it is over by then. A run that turns out not to jail has lost nothing
// but a no-op move of this process into its own cgroup.
if geteuid() == 0, CommandLine.arguments.dropFirst().first == "run", !CommandLine.arguments.contains("--no-jail") {
    // Before any thread exists, so that every thread inherits it: the launcher takes these
    // signals through a signalfd and stops its worker cleanly (Launcher.supervise).
    TerminationSignals.block()
    JailSetup.warmUpCgroupMoves()
}
BulkheadCommand.main()
