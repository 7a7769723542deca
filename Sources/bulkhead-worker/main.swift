// bulkhead-worker: runs one VM, and nothing else. Two modes:
//
// With no arguments, for a launcher (`bulkhead run`): started with one descriptor besides 0-2,
// descriptor 3, a connected SOCK_SEQPACKET socket to the launcher. It reads no environment and
// opens no paths. Everything it will use arrives in the first message (WorkerProtocol
// `configure`) as attached descriptors: the image, the KVM device, the console, the disks,
// sockets and the vsock broker. It jails itself as the configuration says (Supervised.swift),
// answers `started` (or `refused`), runs the VM, reports `ended` with the outcome and counters,
// and exits. A `stop` message, or the launcher going away, ends it at once. A system call its
// seccomp filters forbid ends it with `violation` and status 159.
// Exit status: 0 after `ended` was sent, 3 after `refused`, 2 when the launcher's message was
// not a valid `configure`, 1 when the control socket failed.
//
// With `--standalone IMAGE [options]` (Standalone.swift): opens the files itself, as whoever runs
// it, and runs the VM in this process without a jail or a launcher: the baseline the benchmarks
// compare the launcher and the jail against. The same configuration and the same VM as the
// launcher-driven mode, and the same exit statuses and messages (WorkerProtocol's RunEnd).
import HostOS
#if canImport(Glibc)
import Glibc
#endif

let processStart = monotonicNanoseconds()
let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "--standalone" {
    runStandalone(Array(arguments.dropFirst()))
}
if !arguments.isEmpty {
    try? FileDescriptor.standardError.writeAll(Array("bulkhead-worker: started by `bulkhead run` with no arguments, or as `bulkhead-worker --standalone IMAGE [options]` (--standalone --help lists them)\n".utf8))
    exit(64)
}
runForLauncher(processStart: processStart)
