import Jail
import WorkerProtocol

extension JailSetup {
    /// The settings the worker applies to itself (sent in its `configure` message).
    public func settings(seccomp: VMConfiguration.Jail.Seccomp, probe: VMConfiguration.Jail.Probe) -> VMConfiguration.Jail {
        VMConfiguration.Jail(uid: uid, gid: uid, root: root, processLimit: limits.processes, seccomp: seccomp, probe: probe)
    }
}
