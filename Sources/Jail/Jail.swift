import HostOS
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// The steps of a worker's jail (issue 4), each applied while the worker is still single-threaded
/// and each checked after it is applied: a step that does not hold throws, and the worker refuses
/// to run. The worker's main.swift applies them in order; the launcher does the parts that need
/// the host's privileges (the PID namespace, the cgroup, the jail directory, choosing the uid).
public enum JailSteps {
    public struct StepFailed: Error, CustomStringConvertible {
        public let step: String
        public let reason: String
        public var description: String { "jail step '\(step)' failed: \(reason)" }
    }

    /// Closes every descriptor above `keep` (the worker keeps 0–2 and its control socket, 3),
    /// then checks that none of the next 1024 numbers is open.
    public static func closeDescriptors(above keep: Int32) throws(StepFailed) {
        guard clinux_close_range(UInt32(keep + 1), UInt32.max) == 0 else {
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
    /// With `processes`, also at most that many processes and threads for the process's uid
    /// (RLIMIT_NPROC: with a uid of its own, that is the worker's threads).
    public static func limitResources(openFiles: UInt64, fileSize: UInt64, processes: UInt64? = nil) throws(StepFailed) {
        _ = signal(SIGXFSZ, SIG_IGN)
        var limits = [(RLIMIT_CORE, UInt64(0), "core"), (RLIMIT_NOFILE, openFiles, "open files"), (RLIMIT_FSIZE, fileSize, "file size")]
        if let processes { limits.append((__RLIMIT_NPROC, processes, "processes")) }
        for (resource, value, name) in limits {
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
        guard clinux_set_no_new_privs() == 0, clinux_get_no_new_privs() == 1 else {
            throw StepFailed(step: "no_new_privs", reason: SystemError.message(for: errno))
        }
        guard clinux_set_dumpable(0) == 0, clinux_get_dumpable() == 0 else {
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
        let flags = CLINUX_CLONE_NEWNS | CLINUX_CLONE_NEWNET | CLINUX_CLONE_NEWIPC | CLINUX_CLONE_NEWUTS | CLINUX_CLONE_NEWCGROUP
        guard clinux_unshare(flags) == 0 else {
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
        readSymbolicLink("/proc/self/ns/" + kind) ?? ""
    }

    // MARK: - The jail proper (a root launcher asks for it)

    /// The launcher starts a jailed worker as pid 1 of a new PID namespace (it has to: a process
    /// cannot move itself into one). Checked here: pid 1, and the parent outside (pid 0).
    public static func checkOwnPIDNamespace() throws(StepFailed) {
        guard getpid() == 1, getppid() == 0 else {
            throw StepFailed(step: "PID namespace", reason: "pid \(getpid()), parent \(getppid()): not alone in a PID namespace of its own")
        }
    }

    /// Becomes the VM's own host uid and gid, with no supplementary groups: from here on the
    /// process has no privilege on the host, and nothing else on the host runs as that uid (the
    /// launcher hands out one per running VM). Checked with getresuid/getresgid/getgroups.
    public static func becomeUser(uid: UInt32, gid: UInt32) throws(StepFailed) {
        guard uid != 0, gid != 0 else { throw StepFailed(step: "per-VM uid", reason: "uid and gid must not be 0") }
        guard clinux_setgroups_none() == 0, clinux_setresgid(gid) == 0, clinux_setresuid(uid) == 0 else {
            throw StepFailed(step: "per-VM uid", reason: SystemError.message(for: errno))
        }
        var u: [UInt32] = [0, 0, 0], g: [UInt32] = [0, 0, 0]
        // SAFETY: each call writes three uint32 into the array's own storage.
        guard clinux_getresuid(&u) == 0, clinux_getresgid(&g) == 0, u == [uid, uid, uid], g == [gid, gid, gid],
              getgroups(0, nil) == 0 else {
            throw StepFailed(step: "per-VM uid", reason: "the ids did not hold (uid \(u), gid \(g))")
        }
        // Changing uid made the process non-dumpable, which would leave /proc/self/uid_map owned
        // by host root and unwritable for us; `forbidNewPrivileges` makes it non-dumpable again.
        guard clinux_set_dumpable(1) == 0 else { throw StepFailed(step: "per-VM uid", reason: SystemError.message(for: errno)) }
    }

    /// New user, mount, network, IPC, UTS and cgroup namespaces. In the user namespace the
    /// process is root, mapped to its (unprivileged) host uid and gid and to nothing else: its
    /// capabilities there reach only the namespaces it owns, which lets it build its own root
    /// below. Must follow `becomeUser` (a process may map only its own uid). The network
    /// namespace has nothing but a loopback that is down. Checked via /proc/self/ns and getuid.
    public static func enterUserNamespaces(uid: UInt32, gid: UInt32) throws(StepFailed) {
        let kinds = ["user", "mnt", "net", "ipc", "uts", "cgroup"]
        let before = kinds.map(namespace)
        let flags = CLINUX_CLONE_NEWUSER | CLINUX_CLONE_NEWNS | CLINUX_CLONE_NEWNET | CLINUX_CLONE_NEWIPC | CLINUX_CLONE_NEWUTS | CLINUX_CLONE_NEWCGROUP
        guard clinux_unshare(flags) == 0 else {
            throw StepFailed(step: "namespaces", reason: "unshare: " + SystemError.message(for: errno))
        }
        for (file, text) in [("setgroups", "deny"), ("uid_map", "0 \(uid) 1"), ("gid_map", "0 \(gid) 1")] {
            if let why = writeProcFile("/proc/self/" + file, text) {
                throw StepFailed(step: "namespaces", reason: "writing \(file): \(why)")
            }
        }
        for (kind, old) in zip(kinds, before) {
            let now = namespace(kind)
            guard !now.isEmpty, now != old else { throw StepFailed(step: "namespaces", reason: "still in the host's \(kind) namespace") }
        }
        guard getuid() == 0, getgid() == 0 else { throw StepFailed(step: "namespaces", reason: "not root in the new user namespace") }
    }

    /// How `pivotRoot` replaced the root.
    public enum RootChange: String, Sendable {
        /// pivot_root, then the host's tree detached from this mount namespace.
        case pivot
        /// The host's root cannot be pivoted (it is the initial ramfs, which has no parent mount,
        /// as on hosts that run from an initramfs): the empty root is moved over "/" and made
        /// this process's root with chroot, as container runtimes do. The host's tree stays
        /// beneath it in this mount namespace, covered: no path leads there, and undoing the
        /// cover (umount) needs CAP_SYS_ADMIN, which `dropCapabilities` takes away.
        case moveAndChroot = "move-and-chroot"
    }

    /// Replaces the root with an empty, read-only tmpfs mounted on `path` (an empty directory the
    /// launcher made) in this process's own mount namespace, and detaches the host's whole tree:
    /// afterwards no host file, /proc or /sys is reachable by any path. Mounts are made private
    /// first so nothing reaches the host. Checked with statfs("/") and by looking for /proc.
    /// Where pivot_root refuses the host's root (EINVAL: an initramfs), the root is moved and
    /// chrooted instead (`RootChange.moveAndChroot`; `forceMove` takes that way anywhere, for
    /// tests), with the same checks.
    @discardableResult
    public static func pivotRoot(into path: String, forceMove: Bool = false) throws(StepFailed) -> RootChange {
        func step(_ what: String, _ ok: Bool) throws(StepFailed) {
            guard ok else { throw StepFailed(step: "pivot_root", reason: what + ": " + SystemError.message(for: errno)) }
        }
        try step("making mounts private", mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil) == 0)
        try step("mounting the empty root on \(path)",
                 mount("bulkhead-root", path, "tmpfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), "size=4k,nr_inodes=8,mode=0555") == 0)
        try step("entering it", chdir(path) == 0)
        let change: RootChange
        // With the new root as both arguments, the old root is stacked on it and then detached.
        if !forceMove && clinux_pivot_root(".", ".") == 0 {
            try step("detaching the host's tree", umount2(".", Int32(MNT_DETACH)) == 0)
            change = .pivot
        } else {
            // EINVAL is what an initramfs root gives; anything else is a real failure.
            if !forceMove && errno != EINVAL { try step("pivot_root", false) }
            try step("moving the empty root over / (pivot_root: the root cannot be pivoted)",
                     mount(".", "/", nil, UInt(MS_MOVE), nil) == 0)
            try step("chroot into it", chroot(".") == 0)
            change = .moveAndChroot
        }
        try step("chdir /", chdir("/") == 0)
        try step("making the root read-only",
                 mount(nil, "/", nil, UInt(MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC), nil) == 0)
        var type: Int64 = 0, mountFlags: Int64 = 0
        // SAFETY: clinux_statfs writes one Int64 into each of two stack variables.
        guard clinux_statfs("/", &type, &mountFlags) == 0, type == 0x0102_1994 /* TMPFS_MAGIC */, mountFlags & 1 /* ST_RDONLY */ != 0 else {
            throw StepFailed(step: "pivot_root", reason: "the root is not the read-only tmpfs")
        }
        for host in ["/proc", "/etc", "/dev", "/sys", path, "/../proc"] where access(host, F_OK) == 0 {
            throw StepFailed(step: "pivot_root", reason: "\(host) is still reachable")
        }
        return change
    }

    /// Locks the capability rules (no privilege from uid 0 or setuid transitions, no ambient
    /// capabilities, ever), empties the ambient and bounding sets, then the effective, permitted
    /// and inheritable sets. Checked with capget and PR_CAPBSET_READ.
    public static func dropCapabilities() throws(StepFailed) {
        let bits = CLINUX_SECBIT_NOROOT | CLINUX_SECBIT_NOROOT_LOCKED | CLINUX_SECBIT_NO_SETUID_FIXUP | CLINUX_SECBIT_NO_SETUID_FIXUP_LOCKED
            | CLINUX_SECBIT_KEEP_CAPS_LOCKED | CLINUX_SECBIT_NO_CAP_AMBIENT_RAISE | CLINUX_SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
        guard clinux_prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) == 0, clinux_prctl(PR_GET_SECUREBITS, 0, 0, 0, 0) == Int32(bits) else {
            throw StepFailed(step: "capabilities", reason: "securebits: " + SystemError.message(for: errno))
        }
        guard clinux_prctl(PR_CAP_AMBIENT, UInt(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0) == 0 else {
            throw StepFailed(step: "capabilities", reason: "ambient: " + SystemError.message(for: errno))
        }
        var known = 0
        for cap in 0..<64 {
            guard clinux_prctl(PR_CAPBSET_READ, UInt(cap), 0, 0, 0) >= 0 else { break }   // past the last capability
            known = cap + 1
            guard clinux_prctl(PR_CAPBSET_DROP, UInt(cap), 0, 0, 0) == 0 else {
                throw StepFailed(step: "capabilities", reason: "bounding set, capability \(cap): " + SystemError.message(for: errno))
            }
        }
        let none: [UInt32] = [0, 0, 0, 0, 0, 0]
        // SAFETY: capset reads six uint32 from the array's own storage.
        guard known > 0, clinux_capset(none) == 0 else { throw StepFailed(step: "capabilities", reason: "capset: " + SystemError.message(for: errno)) }
        var sets: [UInt32] = [1, 1, 1, 1, 1, 1]
        // SAFETY: capget writes six uint32 into the array's own storage.
        guard clinux_capget(&sets) == 0, sets == none else { throw StepFailed(step: "capabilities", reason: "capabilities remain: \(sets)") }
        for cap in 0..<known where clinux_prctl(PR_CAPBSET_READ, UInt(cap), 0, 0, 0) != 0 {
            throw StepFailed(step: "capabilities", reason: "capability \(cap) is still in the bounding set")
        }
    }

    /// Writes `text` to a /proc file in one write; nil on success, else why not.
    static func writeProcFile(_ path: String, _ text: String) -> String? { writeInOneCall(path, text) }
}
