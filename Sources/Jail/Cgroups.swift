import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// A VM's cgroup: memory, CPU and process-count limits for its worker, on cgroup v1, cgroup v2 or
/// a hybrid of both (these machines: memory, pids and cpu are v1 hierarchies; cgroup2 is mounted
/// with only hugetlb).
///
/// Each controller is used where the host has it: a v1 hierarchy that carries it, else the v2
/// hierarchy if the launcher's own v2 cgroup offers it. The VM's cgroup is made below the
/// launcher's own cgroup in that hierarchy, so the limits of whatever contains the launcher (a
/// systemd unit, a container) still apply to its VMs. Reading the layout and planning are pure
/// (`CgroupLayout.parse`, `plan`), and tested on the texts of v1, v2 and hybrid hosts; `create`,
/// `join`, `remove` do the I/O.
public struct CgroupLayout: Equatable, Sendable {
    public enum Version: Equatable, Sendable { case v1, v2 }

    /// Where a controller lives: the hierarchy's mount point and the launcher's cgroup in it.
    public struct Place: Equatable, Sendable {
        public var version: Version
        public var directory: String
    }

    /// The controllers a VM's limits need.
    public static let controllers = ["memory", "pids", "cpu"]

    /// Controller → the launcher's own cgroup directory for it (v1 only; v2 is `unified`).
    public var v1: [String: String] = [:]
    /// The launcher's own cgroup directory in the v2 hierarchy, if one is mounted.
    public var unified: String?

    /// From the texts of /proc/self/cgroup and /proc/self/mountinfo.
    public static func parse(cgroup: String, mountinfo: String) -> CgroupLayout {
        // Mounts: a v1 hierarchy by its controller list, the v2 one; each with its root (a
        // container may mount a sub-cgroup as the hierarchy's root).
        var v1Mounts: [[String]: (root: String, point: String)] = [:]
        var v2Mount: (root: String, point: String)?
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, fields.count >= dash + 4 else { continue }
            let root = unescape(fields[3]), point = unescape(fields[4]), type = fields[dash + 1]
            if type == "cgroup2" {
                v2Mount = (root, point)
            } else if type == "cgroup" {
                let names = fields[dash + 3].split(separator: ",").map(String.init).filter { $0 != "rw" && $0 != "ro" && !$0.contains("=") }
                v1Mounts[names.sorted()] = (root, point)
            }
        }
        var layout = CgroupLayout()
        for line in cgroup.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3, parts[2].hasPrefix("/") else { continue }
            if parts[0] == "0" && parts[1].isEmpty {
                if let m = v2Mount { layout.unified = join(m.point, relative(parts[2], to: m.root)) }
                continue
            }
            let names = parts[1].split(separator: ",").map(String.init).sorted()
            guard let m = v1Mounts[names] else { continue }
            for name in names where controllers.contains(name) {
                layout.v1[name] = join(m.point, relative(parts[2], to: m.root))
            }
        }
        return layout
    }

    /// Reads this process's layout.
    public static func current() throws(SystemError) -> CgroupLayout {
        let cgroup = String(decoding: try readFile("/proc/self/cgroup", limit: 1 << 16), as: UTF8.self)
        let mountinfo = String(decoding: try readFile("/proc/self/mountinfo", limit: 1 << 20), as: UTF8.self)
        return parse(cgroup: cgroup, mountinfo: mountinfo)
    }

    static func relative(_ path: String, to root: String) -> String {
        if root == "/" { return path }
        if path == root { return "/" }
        if path.hasPrefix(root + "/") { return String(path.dropFirst(root.count)) }
        return path
    }

    static func join(_ point: String, _ path: String) -> String { path == "/" ? point : point + path }

    /// mountinfo escapes space, tab, newline and backslash as octal.
    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count, let v = UInt8(String(decoding: b[i + 1...i + 3], as: UTF8.self), radix: 8) {
                out.append(v); i += 4
            } else {
                out.append(b[i]); i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// What a VM's worker may use.
public struct CgroupLimits: Equatable, Sendable {
    public var memoryBytes: UInt64
    public var processes: UInt32
    /// CPU time per 100 ms period, in µs (200_000: two CPUs' worth).
    public var cpuQuotaMicroseconds: UInt64
    public static let cpuPeriodMicroseconds: UInt64 = 100_000
    public init(memoryBytes: UInt64, processes: UInt32, cpuQuotaMicroseconds: UInt64) {
        self.memoryBytes = memoryBytes; self.processes = processes; self.cpuQuotaMicroseconds = cpuQuotaMicroseconds
    }
}

/// The directories a VM's cgroup is made of and what is written in them.
public struct CgroupPlan: Equatable, Sendable {
    public struct Directory: Equatable, Sendable {
        public var path: String
        public var version: CgroupLayout.Version
        public var controllers: [String]
        /// v2: the controllers to switch on in the parent's cgroup.subtree_control first.
        public var enableInParent: [String]
        /// Control files and values, in order. A file marked optional may be absent (swap
        /// accounting off).
        public var writes: [(file: String, value: String, optional: Bool)]

        public static func == (a: Directory, b: Directory) -> Bool {
            a.path == b.path && a.version == b.version && a.controllers == b.controllers && a.enableInParent == b.enableInParent
                && a.writes.map { "\($0.file)=\($0.value)\($0.optional ? "?" : "")" } == b.writes.map { "\($0.file)=\($0.value)\($0.optional ? "?" : "")" }
        }
    }

    public struct Unavailable: Error, CustomStringConvertible, Equatable {
        public var controllers: [String]
        public var description: String {
            "this host has no \(controllers.joined(separator: ", ")) cgroup controller for the launcher's cgroup (neither a cgroup v1 hierarchy nor in its cgroup v2 cgroup.controllers)"
        }
    }

    public var directories: [Directory]

    /// Plans cgroup `name` with `limits`. `v2Controllers` is the launcher's v2 cgroup's
    /// cgroup.controllers (what it may hand down), if a v2 hierarchy is mounted.
    public static func plan(_ layout: CgroupLayout, name: String, limits: CgroupLimits, v2Controllers: [String]) throws(Unavailable) -> CgroupPlan {
        var v1Dirs: [String: [String]] = [:]   // parent directory → controllers (co-mounted ones share it)
        var v2: [String] = []
        var missing: [String] = []
        for c in CgroupLayout.controllers {
            if let dir = layout.v1[c] { v1Dirs[dir, default: []].append(c) } else if layout.unified != nil, v2Controllers.contains(c) { v2.append(c) } else { missing.append(c) }
        }
        guard missing.isEmpty else { throw Unavailable(controllers: missing) }
        func writes(_ c: String, _ version: CgroupLayout.Version) -> [(file: String, value: String, optional: Bool)] {
            let quota = String(limits.cpuQuotaMicroseconds), period = String(CgroupLimits.cpuPeriodMicroseconds)
            switch (c, version) {
            case ("memory", .v1):
                // The limit first (memsw must stay >= it); memsw also bounds swap, where accounted.
                return [("memory.limit_in_bytes", String(limits.memoryBytes), false),
                        ("memory.memsw.limit_in_bytes", String(limits.memoryBytes), true)]
            case ("memory", .v2): return [("memory.max", String(limits.memoryBytes), false), ("memory.swap.max", "0", true)]
            case ("pids", _): return [("pids.max", String(limits.processes), false)]
            case ("cpu", .v1): return [("cpu.cfs_period_us", period, false), ("cpu.cfs_quota_us", quota, false)]
            case ("cpu", .v2): return [("cpu.max", "\(quota) \(period)", false)]
            default: return []
            }
        }
        var dirs: [Directory] = []
        for (parent, cs) in v1Dirs.sorted(by: { $0.key < $1.key }) {
            dirs.append(Directory(path: parent + "/" + name, version: .v1, controllers: cs, enableInParent: [], writes: cs.flatMap { writes($0, .v1) }))
        }
        if !v2.isEmpty, let parent = layout.unified {
            dirs.append(Directory(path: parent + "/" + name, version: .v2, controllers: v2, enableInParent: v2, writes: v2.flatMap { writes($0, .v2) }))
        }
        return CgroupPlan(directories: dirs)
    }

    /// Makes the directories and writes the limits. On failure, removes what it made.
    public func create() throws(SystemError) {
        var made: [String] = []
        do throws(SystemError) {
            for d in directories {
                if !d.enableInParent.isEmpty {
                    let parent = String(d.path[..<(d.path.lastIndex(of: "/") ?? d.path.endIndex)])
                    try writeControlFile(parent + "/cgroup.subtree_control", d.enableInParent.map { "+" + $0 }.joined(separator: " "))
                }
                try makeDirectory(d.path, mode: 0o755)
                made.append(d.path)
                for w in d.writes {
                    do { try writeControlFile(d.path + "/" + w.file, w.value) } catch {
                        if !(w.optional && error.errno == ENOENT) { throw error }
                    }
                }
            }
        } catch {
            for p in made.reversed() { try? removeDirectory(p) }
            throw error
        }
    }

    /// Moves process `pid` into every directory, then checks /proc/PID/cgroup says so.
    public func join(pid: Int32) throws(SystemError) {
        for d in directories {
            try writeControlFile(d.path + "/cgroup.procs", String(pid))
        }
        let text = String(decoding: try readFile("/proc/\(pid)/cgroup", limit: 1 << 16), as: UTF8.self)
        let name = directories.first.map { String($0.path[($0.path.lastIndex(of: "/") ?? $0.path.startIndex)...]) } ?? ""
        for d in directories {
            let lines = text.split(separator: "\n").filter { line in
                let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 3 else { return false }
                if d.version == .v2 { return parts[0] == "0" }
                return d.controllers.allSatisfy { parts[1].split(separator: ",").contains(Substring($0)) }
            }
            guard let line = lines.first, line.hasSuffix(name) else {
                throw SystemError("the worker is not in \(d.path) (/proc/\(pid)/cgroup)", errno: ESRCH)
            }
        }
    }

    /// How many times the kernel's OOM killer killed a process of the memory cgroup (nil: unknown).
    public func oomKills() -> UInt64? {
        for d in directories where d.controllers.contains("memory") {
            let file = d.path + (d.version == .v1 ? "/memory.oom_control" : "/memory.events")
            guard let bytes = try? readFile(file, limit: 4096) else { return nil }
            for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
                let f = line.split(separator: " ")
                if f.count == 2, f[0] == "oom_kill" { return UInt64(f[1]) }
            }
        }
        return nil
    }

    /// Removes the directories. The processes must be gone; the kernel may take a moment after
    /// the last one is reaped (EBUSY), so this retries for up to `patienceMilliseconds`.
    public func remove(patienceMilliseconds: Int = 1000) -> [SystemError] {
        var failures: [SystemError] = []
        for d in directories.reversed() where pathExists(d.path) {
            var attempt = 0
            while true {
                do { try removeDirectory(d.path); break } catch {
                    if error.errno == EBUSY && attempt < patienceMilliseconds / 2 { attempt += 1; usleep(2000); continue }
                    if error.errno != ENOENT { failures.append(error) }
                    break
                }
            }
        }
        return failures
    }
}
