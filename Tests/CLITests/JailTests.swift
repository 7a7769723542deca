import Foundation
import HostTestSupport
import HostOS
import KVM
import Testing

/// The jail's proofs (issue 4). Root is needed for the jail; without it these skip.
let isRoot = TestHost.isRoot

/// The jail state on the host: slot directories and lock files, and cgroups named bulkhead-N in
/// the hierarchies this process's cgroups are in.
func jailState() -> [String] {
    var found: [String] = []
    let jails = "/run/bulkhead/jails"
    found += ((try? FileManager.default.contentsOfDirectory(atPath: jails)) ?? []).map { jails + "/" + $0 }
    for line in ((try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? "").split(separator: "\n") {
        let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { continue }
        let controller = parts[0] == "0" ? "unified" : String(parts[1].split(separator: ",").first ?? "")
        let dir = "/sys/fs/cgroup/" + controller + (parts[2] == "/" ? "" : String(parts[2]))
        found += ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("bulkhead-") }.map { dir + "/" + $0 }
    }
    return found
}

/// Whether some process holds jail slot N's lock (other tests run VMs at the same time: their
/// jails are live, not left over). Read from /proc/locks, not by trying the lock: a try that
/// succeeded for a moment would make a launcher that was just taking the slot give it up and
/// leave its new lock file behind.
func slotIsHeld(_ slot: Int) -> Bool {
    var st = stat()
    guard stat("/run/bulkhead/jails/\(slot).lock", &st) == 0 else { return false }
    // /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 fe:00:975920 0 EOF" (device major:minor in hex).
    let dev = UInt64(st.st_dev)
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
    let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
    let id = String(format: "%02x:%02x:%llu", major, minor, UInt64(st.st_ino))
    let locks = (try? String(contentsOfFile: "/proc/locks", encoding: .utf8)) ?? ""
    return locks.split(separator: "\n").contains { line in
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        return fields.count > 5 && fields[1] == "FLOCK" && fields.contains { $0 == id }
    }
}

/// Jail state nobody owns: left behind. A slot's directory and cgroups are made after its lock is
/// taken and removed before it is dropped, so a live jail is never counted. Other tests start and
/// end jailed VMs meanwhile: a path listed a moment ago whose slot has since been freed is gone by
/// the time it is checked (so it is looked at again after its lock), and what is left over is
/// looked for again for up to 2 s (a launcher's own teardown, or the child that does it after the
/// launcher exited, may be finishing) before it counts.
func jailLeftovers() -> [String] { settled(seconds: 2, currentJailLeftovers) }

/// What `probe` finds, looked at again every 20 ms for up to `seconds` while it finds something:
/// work that other tests' launchers (or the children they leave) are finishing is not counted.
func settled<T>(seconds: Double, _ probe: () -> [T]) -> [T] {
    var found = probe()
    for _ in 0..<Int(seconds * 50) where !found.isEmpty {
        usleep(20_000)
        found = probe()
    }
    return found
}

func currentJailLeftovers() -> [String] {
    jailState().filter { path in
        let last = path.split(separator: "/").last.map(String.init) ?? ""
        let number = last.hasPrefix("bulkhead-") ? String(last.dropFirst(9)) : last.hasSuffix(".lock") ? String(last.dropLast(5)) : last
        guard let slot = Int(number) else { return true }
        return !slotIsHeld(slot) && FileManager.default.fileExists(atPath: path)
    }
}

/// bulkhead-worker processes whose parent is not a bulkhead launcher and that are still there
/// after up to 3 s: orphans (a worker always dies with its launcher). A worker that reported its
/// VM's end is still closing the VM (12-20 ms) when its launcher has already exited (issue 9):
/// for that moment its parent is init, which reaps it.
func orphanedWorkers() -> [Int32] { settled(seconds: 3, currentOrphanedWorkers) }

/// bulkhead-worker processes whose parent is not a bulkhead launcher, now.
func currentOrphanedWorkers() -> [Int32] {
    func stat(_ pid: String) -> (comm: String, state: String, ppid: String)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(close, offsetBy: 2)...].split(separator: " ")
        guard fields.count > 1 else { return nil }
        return (String(text[text.index(after: open)..<close]), String(fields[0]), String(fields[1]))
    }
    return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { e in
        guard let p = Int32(e), let s = stat(e), s.comm.hasPrefix("bulkhead-worker"), s.state != "Z" else { return nil }
        return stat(s.ppid)?.comm == "bulkhead" ? nil : p
    }
}

/// Whether process `pid` is gone (or a zombie).
func isGone(_ pid: Int32) -> Bool {
    let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    return stat.isEmpty || stat.contains(") Z ")
}

/// Other tests run VMs (jailed, as root) at the same time; these tests look only at what is left
/// over (`jailLeftovers`, `orphanedWorkers`) or at their own worker's slot.
@Suite(.serialized, .requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"),
       .requiresRoot)
struct JailTests {
    /// From inside: the worker's probes, after its jail is complete, find no host file, no /proc,
    /// no device, an empty read-only root, only a loopback network with no route out, no other
    /// process to see or signal, and no capability.
    @Test func fromInsideTheJailNothingIsReachable() throws {
        let r = try runWorker(["--jail-probe", "probes"])
        #expect(r.status == 0, "\(r.stderr)")
        let expected = [
            "open /etc/passwd: ENOENT", "open /proc/self/status: ENOENT", "open /dev/kvm: ENOENT", "open ../../etc/passwd: ENOENT",
            "list /: empty", "create /x: EROFS", "mount tmpfs: EPERM",
            "network interfaces: lo", "connect 1.1.1.1:53: ENETUNREACH",
            "pid: 1 parent 0", "kill -1: ESRCH", "kill 2: ESRCH",
            "uid: 0 capabilities none no_new_privs 1",
        ]
        for line in expected { #expect(r.stdout.contains("jail-probe " + line + "\n"), "missing '\(line)' in:\n\(r.stdout)") }
        #expect(r.stdout.contains("jail-probe setuid 1: EINVAL") || r.stdout.contains("jail-probe setuid 1: EPERM"), "\(r.stdout)")
        // The VM still runs after the probes.
        #expect(r.stdout.contains("Hello from a Bulkhead guest"))
        #expect(jailLeftovers().isEmpty, "\(jailLeftovers())")
    }

    /// From outside: what the kernel says about a running jailed worker.
    @Test(.timeLimit(.minutes(1)))
    func fromOutsideTheWorkerIsJailed() throws {
        let (p, _, worker) = try startLoopingWorker()
        defer { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        let w = try #require(worker)
        usleep(200_000)   // let it jail itself and start the VM
        let status = try String(contentsOfFile: "/proc/\(w)/status", encoding: .utf8)
        func field(_ name: String) -> [Substring] {
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }?.dropFirst(name.count + 1).split(whereSeparator: { $0 == "\t" || $0 == " " }) ?? []
        }
        // Its own uid and gid from the jail range, the same in every slot of each.
        let uid = try #require(field("Uid").first.flatMap { UInt32($0) })
        #expect(uid >= 1_900_000_000 && uid < 1_900_004_096, "\(status)")
        #expect(field("Uid") == Array(repeating: Substring(String(uid)), count: 4))
        #expect(field("Gid") == Array(repeating: Substring(String(uid)), count: 4))
        #expect(field("Groups").isEmpty, "\(status)")
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            #expect(field(caps) == ["0000000000000000"], "\(caps): \(field(caps))")
        }
        #expect(field("NoNewPrivs") == ["1"])
        // Seccomp: the main thread has the main filter; vCPU threads have the vCPU one on top.
        #expect(field("Seccomp") == ["2"] && field("Seccomp_filters") == ["1"], "\(status)")
        var filters: [String] = []
        for task in try FileManager.default.contentsOfDirectory(atPath: "/proc/\(w)/task") {
            let text = (try? String(contentsOfFile: "/proc/\(w)/task/\(task)/status", encoding: .utf8)) ?? ""
            // KVM's own workers (kvm-nx-lpage-recovery) live in the process too; they run kernel
            // code only.
            if text.hasPrefix("Name:\tkvm-") { continue }
            filters += text.split(separator: "\n").filter { $0.hasPrefix("Seccomp_filters:") }.map { String($0.split(separator: "\t").last ?? "") }
        }
        #expect(filters.sorted() == ["1", "1", "2"], "main, control, device threads 1; the vCPU thread 2: \(filters)")
        // Pid 1 of its own PID namespace.
        #expect(field("NSpid").count == 2 && field("NSpid").last == "1", "NSpid \(field("NSpid"))")
        for kind in ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"] {
            let mine = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(kind)")
            let its = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(w)/ns/\(kind)")
            #expect(mine != its, "the worker shares the \(kind) namespace")
        }
        // Its root: one mount, the empty read-only tmpfs.
        let mounts = try String(contentsOfFile: "/proc/\(w)/mountinfo", encoding: .utf8).split(separator: "\n")
        #expect(mounts.count == 1 && mounts[0].contains(" / / ro,") && mounts[0].contains(" - tmpfs "), "\(mounts)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(w)/root/").isEmpty)
        // Its cgroup, with the limits: 64 MiB guest + 64, 1 vCPU + 8 threads, 2 CPUs' worth.
        let cgroups = try String(contentsOfFile: "/proc/\(w)/cgroup", encoding: .utf8)
        let memoryLine = try #require(cgroups.split(separator: "\n").first { $0.contains(":memory:") })
        let name = try #require(memoryLine.split(separator: "/").last.map(String.init))
        #expect(name.hasPrefix("bulkhead-"))
        let slot = try #require(Int(name.dropFirst("bulkhead-".count)))
        #expect(uid == 1_900_000_000 + UInt32(slot))
        for c in ["memory", "pids", "cpu"] {
            #expect(cgroups.split(separator: "\n").contains { $0.contains(":\(c)") && $0.hasSuffix("/" + name) }, "\(c) in \(cgroups)")
        }
        let dirs = jailState().filter { $0.hasSuffix("/" + name) || $0.hasSuffix("/\(slot)") || $0.hasSuffix("/\(slot).lock") }
        func value(_ file: String) -> String? {
            dirs.lazy.compactMap { try? String(contentsOfFile: $0 + "/" + file, encoding: .utf8) }.first?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/memory.limit_in_bytes") {   // v1 (these machines)
            #expect(value("memory.limit_in_bytes") == String(128 << 20))
            #expect(value("pids.max") == "9")
            #expect(value("cpu.cfs_quota_us") == "200000")
        } else {
            #expect(value("memory.max") == String(128 << 20))
            #expect(value("pids.max") == "9")
            #expect(value("cpu.max") == "200000 100000")
        }
        #expect(dirs.contains("/run/bulkhead/jails/\(slot)") && dirs.contains("/run/bulkhead/jails/\(slot).lock"), "\(dirs)")
    }

    /// A guest that writes more memory than its worker may have: the kernel kills the worker, the
    /// launcher says why, and the jail is gone afterwards.
    @Test func memoryLimitKillsTheWorkerAndIsReported() throws {
        let audit = NSTemporaryDirectory() + "bh-oom-audit-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: audit) }
        let r = try runWorker([guests + "/zeros.elf", "--memory", "256", "--memory-limit", "64", "--cmdline", "fill", "--audit-log", audit])
        #expect(r.status == 137, "\(r.stderr)")
        #expect(r.stderr.contains("OOM killer") && r.stderr.contains("memory limit of 64 MiB"), "\(r.stderr)")
        // The audit log has the OOM kill as a security event, and the run's outcome.
        let tail = try bulkhead(["audit", "tail", audit, "-n", "3"]).stdout
        #expect(tail.contains("\"action\":\"vm.oom-kill\"") && tail.contains("memory limit of 64 MiB") && tail.contains("exit status 137"), "\(tail)")
        #expect(!r.stdout.contains("wrote to"))
        #expect(jailLeftovers().isEmpty, "\(jailLeftovers())")
        // Within the limit the same guest writes all of its memory.
        let ok = try runWorker([guests + "/zeros.elf", "--memory", "64", "--cmdline", "fill"])
        #expect(ok.status == 0 && ok.stdout.contains("zeros: wrote to"), "\(ok.stderr)")
    }

    /// A worker that crashes (here: SIGKILL) leaves no process, cgroup, directory or lock behind;
    /// a launcher that is killed leaves its worker dead and its slot to the next launcher, which
    /// cleans it up.
    @Test(.timeLimit(.minutes(1)))
    func crashesLeaveNothingBehind() throws {
        let mountsBefore = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        let (p, err, worker) = try startLoopingWorker()
        let w = try #require(worker)
        usleep(100_000)
        kill(w, SIGKILL)
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 137 && text.contains("killed"), "\(text)")
        #expect(jailLeftovers().isEmpty, "\(jailLeftovers())")
        #expect(isGone(w))

        let (q, _, second) = try startLoopingWorker()
        let w2 = try #require(second)
        usleep(100_000)
        kill(q.processIdentifier, SIGKILL)
        q.waitUntilExit()
        for _ in 0..<200 where !isGone(w2) { usleep(10_000) }
        #expect(isGone(w2), "the worker outlived its launcher")
        // A killed launcher cannot clean up; the next launcher (here, or any other test's) does.
        let r = try runWorker([])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(jailLeftovers().isEmpty, "\(jailLeftovers())")
        // The worker's mounts lived in its own mount namespace: the host's table is unchanged.
        #expect(try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) == mountsBefore)
    }

    /// A VM that ends (here: at its timeout) is reported and `bulkhead` exits while the worker may
    /// still be closing the VM (issue 9); the child it leaves behind waits for the worker and
    /// takes the jail down: the slot's cgroups, directory and lock all go, and its lock is free.
    @Test(.timeLimit(.minutes(1)))
    func aJailIsTakenDownAfterItsLauncherHasExited() throws {
        let (p, _, worker) = try startLoopingWorker(timeout: "1")
        let w = try #require(worker)
        var uid: Int?
        for _ in 0..<200 where (uid ?? 0) < 1_900_000_000 {
            let status = (try? String(contentsOfFile: "/proc/\(w)/status", encoding: .utf8)) ?? ""
            uid = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }?.split(separator: "\t").dropFirst().first.flatMap { Int($0) }
            usleep(10_000)
        }
        let slot = try #require(uid.map { $0 - 1_900_000_000 }, "the worker never took its jail's uid")
        func state() -> [String] {
            jailState().filter { $0.hasSuffix("/\(slot)") || $0.hasSuffix("/\(slot).lock") || $0.hasSuffix("/bulkhead-\(slot)") }
        }
        p.waitUntilExit()
        #expect(p.terminationStatus == 124)
        for _ in 0..<250 where !state().isEmpty || slotIsHeld(slot) { usleep(20_000) }
        #expect(state().isEmpty, "\(state())")
        #expect(!slotIsHeld(slot))
        #expect(isGone(w))
    }

    /// On a host that runs from an initramfs, pivot_root refuses the root (EINVAL; issue 10): the
    /// worker moves its empty root over "/" and chroots instead. That way, taken here on purpose
    /// (the fake worker's --move-root mode runs the real jail steps), keeps every property the
    /// probes check: no host file, /proc or /dev, an empty read-only root, no mount; and the
    /// covered host tree cannot be uncovered (umount) or left (chroot) without the capabilities
    /// the jail dropped.
    @Test func theRootMovedOverAnInitramfsKeepsTheJailsProperties() throws {
        let fake = String(binary[..<(binary.lastIndex(of: "/") ?? binary.startIndex)]) + "/bulkhead-fake-worker"
        let dir = "/run/bulkhead-move-root-test-\(getpid())"
        #expect(mkdir(dir, 0) == 0)
        defer { rmdir(dir) }
        let mountsBefore = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        let r = try bulkhead(["--move-root", dir], executable: fake)
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        for line in ["root change: move-and-chroot", "umount /: EPERM", "chroot ..: EPERM",
                     "jail-probe open /etc/passwd: ENOENT", "jail-probe open /proc/self/status: ENOENT",
                     "jail-probe open /dev/kvm: ENOENT", "jail-probe open ../../etc/passwd: ENOENT", "jail-probe list /: empty",
                     "jail-probe create /x: EROFS", "jail-probe mount tmpfs: EPERM",
                     "jail-probe uid: 0 capabilities none no_new_privs 1"] {
            #expect(r.stdout.contains(line + "\n"), "missing '\(line)' in:\n\(r.stdout)")
        }
        // Its mounts were its own mount namespace's: the host's table is unchanged.
        #expect(try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) == mountsBefore)
    }

    /// A forbidden system call, made after the filters are in place: the kernel does not run
    /// it, the worker says which it was and ends, and the launcher reports it (status 159).
    @Test func forbiddenSystemCallIsReportedByNumberAndName() throws {
        let r = try runWorker(["--jail-probe", "violation"])
        #expect(r.status == 159, "\(r.stderr)")
        #expect(r.stderr.contains("seccomp allowlist forbids: number 41 (socket)"), "\(r.stderr)")
        #expect(!r.stdout.contains("Hello from a Bulkhead guest"), "the VM must not have run")
        #expect(jailLeftovers().isEmpty, "\(jailLeftovers())")
    }

    /// The diagnosis mode: the same call runs, the VM runs, and the kernel logs the call (where
    /// this process may read the kernel log).
    @Test func logModeLetsTheCallRunAndTheKernelLogsIt() throws {
        let r = try runWorker(["--jail-probe", "violation", "--seccomp-log"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Hello from a Bulkhead guest"))
        let dmesg = Process()
        dmesg.executableURL = URL(fileURLWithPath: "/bin/dmesg")
        let out = Pipe()
        dmesg.standardOutput = out
        dmesg.standardError = Pipe()
        guard (try? dmesg.run()) != nil else { return }
        let log = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        dmesg.waitUntilExit()
        if dmesg.terminationStatus == 0 {
            #expect(log.split(separator: "\n").contains { $0.contains("type=1326") && $0.contains("comm=\"bulkhead-worker\"") && $0.contains("syscall=41 ") },
                    "no audit record of the logged call")
        }
    }

    /// Ctrl-C or a `kill` of the launcher stops the worker and tears the jail down at once.
    @Test(.timeLimit(.minutes(1)), arguments: [SIGINT, SIGTERM])
    func signalledLauncherStopsItsWorkerAndCleansUp(signal: Int32) throws {
        let (p, err, worker) = try startLoopingWorker()
        let w = try #require(worker)
        usleep(200_000)
        kill(p.processIdentifier, signal)
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 128 + signal && text.contains("stopped by signal \(signal)"), "\(p.terminationStatus): \(text)")
        #expect(isGone(w))
        #expect(jailLeftovers().isEmpty, "\(jailLeftovers())")
    }

    /// Every vCPU thread making hypercalls at the same moment, jailed (issue 9): with 8 or more
    /// busy threads glibc's malloc makes calls a quiet run never makes (a 9th arena counts the
    /// CPUs; past the arena cap threads share the main arena, grown with brk). Each VM must end
    /// with the guest's own status, never with a seccomp violation (status 159).
    @Test(.timeLimit(.minutes(3)), arguments: [8, 16, 64])
    func manyBusyVCPUsRunUnderTheirSeccompFilters(vcpus: Int) throws {
        let r = try bulkhead(["run", "--worker-sha256", workerDigest, guests + "/busy.elf", "--vcpus", "\(vcpus)",
                              "--cmdline", "rounds=100", "--timeout", "150"])
        #expect(r.status == 0, "\(vcpus) vCPUs: status \(r.status): \(r.stderr)")
        #expect(r.stdout.contains("busy: \(vcpus) vCPUs made 400 hypercalls each\n"), "\(r.stdout)")
        #expect(!r.stderr.contains("seccomp"), "\(r.stderr)")
    }

    /// Without root, `bulkhead run` will not run a VM unjailed unless told to.
    @Test func withoutRootTheJailIsRequiredOrRefusedExplicitly() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid", "65534", "--regid", "65534", "--clear-groups", binary, "run", guests + "/hello.elf"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 69, "\(text)")
        #expect(text.contains("needs root") && text.contains("--no-jail"), "\(text)")
    }

    /// Fifty jailed VMs at once, each started, run and torn down: every one ends well, and
    /// nothing is left afterwards (no worker, cgroup, directory or lock).
    @Test(.timeLimit(.minutes(3)))
    func fiftyJailedVMsAtOnceLeaveNothingBehind() throws {
        let mountsBefore = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        var launchers: [(Process, Pipe, Pipe)] = []
        for i in 0..<50 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = ["run", "--worker-sha256", workerDigest, "--memory", "16", "--cmdline", "vm \(i)", guests + "/hello.elf", "--timeout", "120"]
            let out = Pipe(), err = Pipe()
            p.standardOutput = out
            p.standardError = err
            try p.run()
            launchers.append((p, out, err))
        }
        for (i, (p, out, err)) in launchers.enumerated() {
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus == 0 && text.contains("command line: \"vm \(i)\""), "VM \(i): \(errors)")
        }
        #expect(orphanedWorkers().isEmpty, "\(orphanedWorkers())")
        #expect(jailLeftovers().isEmpty, "\(jailLeftovers())")
        #expect(try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) == mountsBefore)
    }
}
