// bulkhead-fake-worker: a worker that has been taken over, for the launcher's tests
// (Tests/CLITests/HostileWorkerTests.swift). It reads the launcher's `configure` message and then
// misbehaves in the way the configuration's command line names, so that the tests can check that
// the launcher reports it, kills it and cleans up, whatever it does.
import HostOS
import Jail
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

// `bulkhead-fake-worker --move-root DIR` (as root, not from a launcher): the jail's root change
// the way a host that runs from an initramfs needs it (JailSteps.pivotRoot's move-and-chroot), then
// the rest of the jail and its probes, printed on standard output (Tests/CLITests/JailTests.swift).
if CommandLine.arguments.count == 3, CommandLine.arguments[1] == "--move-root" {
    func say(_ line: String) { try? FileDescriptor.standardOutput.writeAll(Array((line + "\n").utf8)) }
    do {
        try JailSteps.enterUserNamespaces(uid: getuid(), gid: getgid())
        let change = try JailSteps.pivotRoot(into: CommandLine.arguments[2], forceMove: true)
        try JailSteps.dropCapabilities()
        try JailSteps.forbidNewPrivileges()
        say("root change: \(change.rawValue)")
        // Undoing the cover over the host's tree needs CAP_SYS_ADMIN, which is gone.
        say("umount /: \(umount2("/", Int32(MNT_DETACH)) == 0 ? "done" : errno == EPERM ? "EPERM" : "errno \(errno)")")
        say("chroot ..: \(chroot("..") == 0 ? "done" : errno == EPERM ? "EPERM" : "errno \(errno)")")
        JailProbes.run(writingTo: .standardOutput)
        exit(0)
    } catch {
        say("failed: \(error)")
        exit(1)
    }
}

let control = FileDescriptor(borrowing: 3)
guard let first = try? control.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: WorkerProtocol.maxDescriptors),
      case .configure(let configuration)? = try? WorkerProtocol.decode(first.bytes, from: .launcher, descriptors: first.descriptors.count)
else { exit(1) }

func send(_ bytes: [UInt8], descriptors: [FileDescriptor] = []) { _ = try? control.sendMessage(bytes, descriptors: descriptors) }
func hang() -> Never { while true { sleep(60) } }

switch configuration.commandLine {
case "garbage":
    send([UInt8](repeating: 0x41, count: 16))
    hang()
case "started-twice":
    send(WorkerProtocol.encode(.started)); send(WorkerProtocol.encode(.started))
    hang()
case "ended-before-started":
    send(WorkerProtocol.encode(.ended(.exited(status: 0), counters: [])))
    hang()
case "launcher-message":
    send(WorkerProtocol.encode(.stop))
    hang()
case "descriptor-attached":
    send(WorkerProtocol.encode(.started), descriptors: [FileDescriptor(borrowing: 0)])
    hang()
case "oversized":
    send([UInt8](repeating: 0, count: WorkerProtocol.maxMessage + 100))
    hang()
case "violation":
    send(WorkerProtocol.encode(.violation(syscall: 101)))   // ptrace; then pretends nothing happened
    hang()
case "escapes":
    send(WorkerProtocol.encode(.started))
    send(WorkerProtocol.encode(.ended(.faulted("\u{1b}]0;owned\u{07}\u{1b}[2J fault"), counters: [Counter(name: "x\u{1b}[31m", value: 1)])))
    exit(0)
case "ended-then-lingers":
    // A worker whose VM takes long to tear down: `ended` first, then three seconds before it exits.
    send(WorkerProtocol.encode(.started))
    send(WorkerProtocol.encode(.ended(.exited(status: 3), counters: [])))
    sleep(3)
    exit(0)
case "dies":
    // A trap (ud2): the kernel's SIGILL kills even a PID namespace's init, which kill(2) from
    // inside would not.
    fatalError("the fake worker crashes")
default:
    exit(1)
}
