import ArgumentParser
import Boot
import GuestInterface
import HostOS
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

/// `bulkhead run`: the options, their checks, and the run itself. Opening what the VM needs is in
/// RunSetup.swift, reporting its end in RunReport.swift; starting and watching the worker is the
/// Supervisor library's.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a Bulkhead guest program; print its console and exit with its status.",
        discussion: """
            With no IMAGE, runs the built-in `hello` guest. The VM runs in a bulkhead-worker process \
            of its own, jailed (as root) or not (--no-jail). Exit status: the guest's own (0-255) \
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

    @Option(name: .customLong("audit-log"), help: "Record the VM's lifecycle and security events in the tamper-evident audit log in this directory (created, mode 0700, if absent; `bulkhead audit verify` checks it). The VM does not start unless its intent is recorded.")
    var auditLog: String?

    @Option(name: .customLong("audit-witness"), help: "With --audit-log: ask the bulkhead-witness listening at this socket to cosign each checkpoint (needs --audit-witness-key).")
    var auditWitness: String?

    @Option(name: .customLong("audit-witness-key"), help: "The witness's key file (its witness.pub), which its cosignatures must verify with.")
    var auditWitnessKey: String?

    @Flag(help: "Print hypercall statistics to standard error when the guest ends.")
    var stats = false

    @Flag(name: .customLong("no-jail"), help: "Run the VM in a worker that is not jailed (no per-VM uid, namespaces, cgroup or seccomp filters). Needed without root.")
    var noJail = false

    @Flag(help: ArgumentHelp("No effect: every VM runs in a worker (kept for scripts written for earlier versions, where --no-jail alone ran the VM in process; that is now `bulkhead-worker --standalone`).", visibility: .hidden))
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
        if (auditWitness != nil || auditWitnessKey != nil) && auditLog == nil { throw ValidationError("--audit-witness needs --audit-log") }
        if (auditWitness == nil) != (auditWitnessKey == nil) { throw ValidationError("give --audit-witness and --audit-witness-key together") }
        if let vsock { do { try UnixVsockHostError.check(pathPrefix: vsock) } catch { throw ValidationError("--vsock: \(error)") } }
        if vsockCID < 3 || vsockCID >= 0xffff_ffff { throw ValidationError("--vsock-cid must be between 3 and 4294967294") }
        if let memoryLimit, memoryLimit < 16 || memoryLimit > 1 << 20 { throw ValidationError("--memory-limit must be between 16 and 1048576 MiB") }
        if let jailProbe, !["probes", "violation"].contains(jailProbe) { throw ValidationError("--jail-probe is probes or violation") }
        if let mac, Run.parseMAC(mac) == nil { throw ValidationError("--mac must look like 52:54:00:12:34:56 (unicast)") }
        for (name, v) in [("--disk-ops-limit", diskOpsLimit), ("--disk-bytes-limit", diskBytesLimit), ("--rng-bytes-limit", rngBytesLimit),
                        ("--net-ops-limit", netOpsLimit), ("--net-bytes-limit", netBytesLimit),
                        ("--vsock-ops-limit", vsockOpsLimit), ("--vsock-bytes-limit", vsockBytesLimit)] {
            if let v, v == 0 { throw ValidationError("\(name) must be at least 1") }
        }
        // Without ioeventfds, device I/O runs on vCPU threads, which their seccomp filter forbids.
        if !noJail && noIoeventfd { throw ValidationError("--no-ioeventfd needs --no-jail") }
        if kernel != nil && image != nil { throw ValidationError("give either IMAGE or --kernel, not both") }
        if initrd != nil && kernel == nil { throw ValidationError("--initrd needs --kernel") }
        for f in hiddenFeatures where CPUIDPolicy.Feature(rawValue: f) == nil {
            throw ValidationError("unknown CPU feature '\(f)' (known: \(CPUIDPolicy.Feature.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
    }

    func run() throws {
        // As root the VM runs in a jailed worker; --no-jail opts out (and is needed without root).
        if !noJail && geteuid() != 0 {
            printError("the jail (a per-VM uid, PID namespace and cgroup) needs root: run as root, or pass --no-jail to run this VM without it")
            throw ExitCode(RunEnd.unavailable)
        }
        try launch(jailed: !noJail)
    }
}
