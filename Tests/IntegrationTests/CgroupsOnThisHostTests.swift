import Testing
import HostTestSupport
import HostOS
#if canImport(Glibc)
import Glibc
#endif
@testable import Jail

/// `create`, `join` and `remove` on this host's real hierarchies (root only). The v2 hierarchy
/// here offers no controller the VMs need, so the v2 directory is made with none: that still
/// checks making it, moving a process in (and seeing it in /proc/PID/cgroup) and removing it.
@Suite(.requiresRoot, .enabled(if: pathExists("/proc/self/cgroup"), "needs /proc/self/cgroup"))
struct CgroupsOnThisHostTests {
    static let limits = CgroupLimits(memoryBytes: 128 << 20, processes: 9, cpuQuotaMicroseconds: 200_000)

    @Test func aPlanIsMadeJoinedAndRemoved() throws {
        let layout = try CgroupLayout.current()
        let name = "bulkhead-test-\(getpid())"
        var plan = try CgroupPlan.plan(layout, name: name, limits: Self.limits, v2Controllers: [])
        if let unified = layout.unified {
            plan.directories.append(.init(path: unified + "/" + name, version: .v2, controllers: [], enableInParent: [], writes: []))
        }
        try plan.create()
        // A process to move: a child that waits on a pipe.
        let child = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["sleep", "30"])
        defer { try? child.signal(SIGKILL); _ = try? child.wait(); #expect(plan.remove().isEmpty) }
        try plan.join(pid: child.pid)
        let text = String(decoding: try readFile("/proc/\(child.pid)/cgroup", limit: 65536), as: UTF8.self)
        #expect(text.split(separator: "\n").filter { $0.hasSuffix("/" + name) }.count == plan.directories.count, "\(text)")
        for d in plan.directories where d.version == .v1 && d.controllers.contains("memory") {
            #expect(String(decoding: try readFile(d.path + "/memory.limit_in_bytes", limit: 64), as: UTF8.self) == "\(128 << 20)\n")
        }
        #expect(plan.oomKills() == 0 || !plan.directories.contains { $0.controllers.contains("memory") })
    }

    @Test func joiningAProcessThatIsGoneFails() throws {
        let layout = try CgroupLayout.current()
        let plan = try CgroupPlan.plan(layout, name: "bulkhead-test-gone-\(getpid())", limits: Self.limits, v2Controllers: [])
        try plan.create()
        defer { #expect(plan.remove().isEmpty) }
        #expect(throws: SystemError.self) { try plan.join(pid: 999_999_999) }
    }
}
