// bulkhead-worker: runs one VM for a launcher, and nothing else.
//
// Started by `bulkhead run --worker` with one descriptor besides 0-2: descriptor 3, a connected
// SOCK_SEQPACKET socket to the launcher. It takes no arguments and reads no environment; it
// opens no paths. Everything it will use arrives in the first message (WorkerProtocol
// `configure`) as attached descriptors: the image, the KVM device, the console, the disks and
// sockets. It answers `started` (or `refused`), runs the VM, reports `ended` with the outcome and
// counters, and exits. A `stop` message, or the launcher going away, ends it at once.
//
// Before reading anything it applies the first steps of its jail (see below).
//
// Exit status: 0 after `ended` was sent, 3 after `refused`, 2 when the launcher's message was
// not a valid `configure`, 1 when the control socket failed.
import KVM
import VMM
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

setThreadName("bulkhead-worker")   // started from a descriptor, it would be called "3" or so
// Never outlive the launcher: SIGKILL when it goes (the closed control socket ends us too).
setParentDeathSignal(SIGKILL)
let control = FileDescriptor(borrowing: 3)
ignoreBrokenPipe()

// The jail's first steps, while this process is single-threaded, each checked (Sources/KVM/
// Jail.swift): only descriptors 0-3 open, no environment, its own mount, network, IPC, UTS and
// cgroup namespaces (as root), no core dumps, bounded descriptors and file growth, no new
// privileges, not dumpable. A step that fails is refused.
do {
    try Jail.closeDescriptors(above: 3)
    try Jail.clearEnvironment()
    // Namespaces need root; a worker started without it (`bulkhead run --worker` by a user) runs
    // without them for now.
    if geteuid() == 0 { try Jail.enterNamespaces() }
    try Jail.limitResources(openFiles: 4096, fileSize: 1 << 30)
    try Jail.forbidNewPrivileges()
} catch {
    send(.refused(error.description))
    exit(3)
}

func send(_ m: WorkerMessage) {
    do { try control.sendMessage(WorkerProtocol.encode(m)) } catch { exit(1) }
}

func refuse(_ why: String, status: Int32 = 3) -> Never {
    send(.refused(String(why.prefix(VMOutcome.maxReasonLength))))
    exit(status)
}

let first: ReceivedMessage
do {
    guard let m = try control.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: WorkerProtocol.maxDescriptors) else {
        exit(1) // the launcher went away before saying anything
    }
    first = m
} catch {
    refuse("control socket: \(error)", status: 1)
}

let configuration: VMConfiguration
do {
    let message = try WorkerProtocol.decode(first.bytes, from: .launcher, descriptors: first.descriptors.count)
    guard case .configure(let c) = message else { refuse("expected configure, got \(message.type)", status: 2) }
    configuration = c
} catch {
    refuse("bad configure message: \(error)", status: 2)
}

let vm: WorkerVM
do { vm = try WorkerVM(configuration, descriptors: first.descriptors) } catch { refuse(error.description) }

// The launcher's later messages: `stop` (or its going away) ends the VM and this process now.
do {
    _ = try OSThread.spawn {
        while true {
            let next = try? control.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: 0)
            guard let next else { _exit(0) }
            if case .stop? = try? WorkerProtocol.decode(next.bytes, from: .launcher, descriptors: next.descriptors.count) {
                _exit(0)
            }
            // Anything else after configure is a protocol violation by the launcher: stop too.
            _exit(2)
        }
    }
} catch {
    refuse("cannot start the control thread: \(error)")
}

send(.started)
do {
    let report = try vm.run()
    send(WorkerVM.ended(report))
    exit(0)
} catch {
    refuse(error.description)
}
