// bulkhead: the command line. `bulkhead run` starts one VM in a bulkhead-worker process (jailed
// as root) through the Supervisor library and reports how it ended; `bulkhead surface` prints
// the attack surface. This executable never maps guest memory: it links neither KVM nor VMM
// (Tests/ArchitectureTests).
import ArgumentParser
import HostOS
import Jail
#if canImport(Glibc)
import Glibc
#endif

struct BulkheadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulkhead",
        abstract: "A security-first virtual machine monitor on Linux KVM.",
        subcommands: [Run.self, Surface.self, Audit.self],
        defaultSubcommand: Run.self)
}

func printError(_ message: String) {
    try? FileDescriptor.standardError.writeAll(Array(("bulkhead: " + message + "\n").utf8))
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
