import Testing
import HostOS
#if canImport(Glibc)
import Glibc
#endif
@testable import Jail

/// The cgroup layout and plan, from the texts of three kinds of host. Only the hybrid layout
/// (these machines) is exercised end to end (Tests/CLITests/JailTests.swift); the v2 and
/// container layouts are checked here.
struct CgroupsTests {
    static let hybridMountinfo = """
    31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
    33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
    39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
    """
    static let hybridCgroup = """
    9:name=systemd:/
    8:pids:/
    4:memory:/process_api/faab
    2:cpuacct:/
    1:cpu:/
    0::/
    """
    static let limits = CgroupLimits(memoryBytes: 128 << 20, processes: 9, cpuQuotaMicroseconds: 200_000)

    @Test func hybridHostUsesTheV1Hierarchies() throws {
        let layout = CgroupLayout.parse(cgroup: Self.hybridCgroup, mountinfo: Self.hybridMountinfo)
        #expect(layout.v1 == ["memory": "/sys/fs/cgroup/memory/process_api/faab", "pids": "/sys/fs/cgroup/pids", "cpu": "/sys/fs/cgroup/cpu"])
        #expect(layout.unified == "/sys/fs/cgroup/unified")
        // cgroup2 here offers only hugetlb: nothing is planned there.
        let plan = try CgroupPlan.plan(layout, name: "bulkhead-7", limits: Self.limits, v2Controllers: ["hugetlb"])
        #expect(plan.directories.map(\.path) == ["/sys/fs/cgroup/cpu/bulkhead-7", "/sys/fs/cgroup/memory/process_api/faab/bulkhead-7",
                                                  "/sys/fs/cgroup/pids/bulkhead-7"])
        let memory = try #require(plan.directories.first { $0.controllers == ["memory"] })
        #expect(memory.version == .v1 && memory.enableInParent.isEmpty)
        #expect(memory.writes.map(\.file) == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"])
        #expect(memory.writes.map(\.value) == [String(128 << 20), String(128 << 20)])
        #expect(memory.writes.map(\.optional) == [false, true])
        let cpu = try #require(plan.directories.first { $0.controllers == ["cpu"] })
        #expect(cpu.writes.map { "\($0.file)=\($0.value)" } == ["cpu.cfs_period_us=100000", "cpu.cfs_quota_us=200000"])
    }

    @Test func pureV2HostUsesOneDirectoryAndEnablesItsControllers() throws {
        let mountinfo = "25 21 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot"
        let layout = CgroupLayout.parse(cgroup: "0::/system.slice/bulkhead.service\n", mountinfo: mountinfo)
        #expect(layout.v1.isEmpty && layout.unified == "/sys/fs/cgroup/system.slice/bulkhead.service")
        let plan = try CgroupPlan.plan(layout, name: "bulkhead-0", limits: Self.limits, v2Controllers: ["cpuset", "cpu", "io", "memory", "pids"])
        #expect(plan.directories.count == 1)
        let d = try #require(plan.directories.first)
        #expect(d.path == "/sys/fs/cgroup/system.slice/bulkhead.service/bulkhead-0" && d.version == .v2)
        #expect(d.enableInParent == ["memory", "pids", "cpu"])
        #expect(d.writes.map { "\($0.file)=\($0.value)" } == ["memory.max=\(128 << 20)", "memory.swap.max=0", "pids.max=9", "cpu.max=200000 100000"])
        // A v2 host whose cgroup does not offer a controller: refused, naming it.
        #expect(throws: CgroupPlan.Unavailable(controllers: ["pids"])) {
            try CgroupPlan.plan(layout, name: "x", limits: Self.limits, v2Controllers: ["memory", "cpu"])
        }
    }

    /// A container that mounts its own cgroup as the hierarchy's root, with co-mounted cpu,cpuacct
    /// and a mount point that needs unescaping.
    @Test func containerRootsAndCoMountedControllers() throws {
        let mountinfo = """
        40 31 0:37 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
        41 31 0:38 /docker/abc /sys/fs/cgroup/mem\\040ory rw - cgroup cgroup rw,memory
        42 31 0:39 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
        """
        let cgroup = "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc/inner\n3:pids:/docker/abc\n"
        let layout = CgroupLayout.parse(cgroup: cgroup, mountinfo: mountinfo)
        #expect(layout.v1["cpu"] == "/sys/fs/cgroup/cpu,cpuacct")
        #expect(layout.v1["memory"] == "/sys/fs/cgroup/mem ory/inner")
        #expect(layout.v1["pids"] == "/sys/fs/cgroup/pids")
        #expect(layout.unified == nil)
    }

    @Test func noCgroupsAtAllIsAClearRefusal() {
        let layout = CgroupLayout.parse(cgroup: "", mountinfo: "")
        #expect(throws: CgroupPlan.Unavailable(controllers: ["memory", "pids", "cpu"])) {
            try CgroupPlan.plan(layout, name: "x", limits: Self.limits, v2Controllers: [])
        }
        let e = CgroupPlan.Unavailable(controllers: ["memory"])
        #expect(e.description.contains("no memory cgroup controller"))
    }
}
