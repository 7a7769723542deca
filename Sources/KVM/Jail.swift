import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// The first steps of a worker's jail (issue 4), each applied while the worker is still
/// single-threaded and each checked after it is applied: a step that does not hold throws, and
/// the worker refuses to run. Namespaces, pivot_root, cgroups, the per-VM uid, capabilities and
/// seccomp come next.
public enum Jail {
    public struct StepFailed: Error, CustomStringConvertible {
        public let step: String
        public let reason: String
        public var description: String { "jail step '\(step)' failed: \(reason)" }
    }

    /// Closes every descriptor above `keep` (the worker keeps 0–2 and its control socket, 3),
    /// then checks that none of the next 1024 numbers is open.
    public static func closeDescriptors(above keep: Int32) throws(StepFailed) {
        guard ckvm_close_range(UInt32(keep + 1), UInt32.max) == 0 else {
            throw StepFailed(step: "close descriptors", reason: SystemError.message(for: errno))
        }
        for fd in (keep + 1)..<(keep + 1025) where fcntl(fd, F_GETFD) != -1 {
            throw StepFailed(step: "close descriptors", reason: "descriptor \(fd) is still open")
        }
    }

    /// Empties the environment (the launcher passes none; this makes sure).
    public static func clearEnvironment() throws(StepFailed) {
        guard clearenv() == 0 else { throw StepFailed(step: "clear environment", reason: "clearenv failed") }
        for name in ["PATH", "HOME", "LD_PRELOAD", "LD_LIBRARY_PATH"] where getenv(name) != nil {
            throw StepFailed(step: "clear environment", reason: "\(name) is still set")
        }
    }

    /// No core dumps (guest memory must never reach a file), at most `openFiles` descriptors, and
    /// files the process writes grow to at most `fileSize` bytes (a guest flooding its console
    /// file cannot fill the host's disk; the write fails instead of raising SIGXFSZ).
    public static func limitResources(openFiles: UInt64, fileSize: UInt64) throws(StepFailed) {
        _ = signal(SIGXFSZ, SIG_IGN)
        for (resource, value, name) in [(RLIMIT_CORE, UInt64(0), "core"), (RLIMIT_NOFILE, openFiles, "open files"),
                                          (RLIMIT_FSIZE, fileSize, "file size")] {
            var limit = rlimit(rlim_cur: rlim_t(value), rlim_max: rlim_t(value))
            // SAFETY: setrlimit/getrlimit read/write one `rlimit` on the stack.
            guard setrlimit(__rlimit_resource_t(resource.rawValue), &limit) == 0 else {
                throw StepFailed(step: "limit \(name)", reason: SystemError.message(for: errno))
            }
            var check = rlimit()
            guard getrlimit(__rlimit_resource_t(resource.rawValue), &check) == 0, check.rlim_cur == rlim_t(value),
                  check.rlim_max == rlim_t(value) else {
                throw StepFailed(step: "limit \(name)", reason: "the limit did not hold")
            }
        }
    }

    /// Neither this process nor anything it executes can gain privileges (setuid bits, file
    /// capabilities), and it cannot be dumped or ptrace-attached by unprivileged processes.
    public static func forbidNewPrivileges() throws(StepFailed) {
        guard ckvm_set_no_new_privs() == 0, ckvm_get_no_new_privs() == 1 else {
            throw StepFailed(step: "no_new_privs", reason: SystemError.message(for: errno))
        }
        guard ckvm_set_dumpable(0) == 0, ckvm_get_dumpable() == 0 else {
            throw StepFailed(step: "not dumpable", reason: SystemError.message(for: errno))
        }
    }

    /// The namespaces a worker gets of its own: mount, network (nothing but a loopback that is
    /// down), IPC, UTS and cgroup. Mounts are made private first so nothing this process mounts
    /// later reaches the host. Checked by comparing each /proc/self/ns link before and after.
    /// Needs CAP_SYS_ADMIN (root); the user and PID namespaces come with the rest of the jail.
    public static func enterNamespaces() throws(StepFailed) {
        let kinds = ["mnt", "net", "ipc", "uts", "cgroup"]
        let before = kinds.map(namespace)
        let flags = CKVM_CLONE_NEWNS | CKVM_CLONE_NEWNET | CKVM_CLONE_NEWIPC | CKVM_CLONE_NEWUTS | CKVM_CLONE_NEWCGROUP
        guard ckvm_unshare(flags) == 0 else {
            throw StepFailed(step: "namespaces", reason: "unshare: " + SystemError.message(for: errno))
        }
        guard mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil) == 0 else {
            throw StepFailed(step: "namespaces", reason: "making mounts private: " + SystemError.message(for: errno))
        }
        for (kind, old) in zip(kinds, before) {
            let now = namespace(kind)
            guard !now.isEmpty, now != old else { throw StepFailed(step: "namespaces", reason: "still in the host's \(kind) namespace") }
        }
    }

    /// The `/proc/self/ns/<kind>` link text, e.g. "net:[4026531840]" (empty if unreadable).
    static func namespace(_ kind: String) -> String {
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { b -> Int in
            guard let base = b.baseAddress else { return -1 }
            // SAFETY: readlink writes at most b.count bytes into the array's own storage.
            return readlink("/proc/self/ns/" + kind, base.assumingMemoryBound(to: CChar.self), b.count)
        }
        return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
    }
}
