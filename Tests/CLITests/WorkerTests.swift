import Crypto
import HostTestSupport
import Foundation
import HostOS
import KVM
import Testing

/// The SHA-256 of the built worker, as `--worker-sha256` wants it.
let workerDigest: String = {
    let dir = String(binary[..<(binary.lastIndex(of: "/") ?? binary.startIndex)])
    let bytes = (try? Data(contentsOf: URL(fileURLWithPath: dir + "/bulkhead-worker"))) ?? Data()
    return SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}()

/// A launcher running the endless `loop` guest in a worker, and the worker's pid once it shows.
func startLoopingWorker(timeout: String = "30") throws -> (launcher: Process, stderr: Pipe, worker: Int32?) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: binary)
    p.arguments = ["run", "--worker-sha256", workerDigest, guests + "/loop.elf", "--timeout", timeout]
    let err = Pipe()
    p.standardError = err
    p.standardOutput = Pipe()
    try p.run()
    var worker: [Int32] = []
    for _ in 0..<200 where worker.isEmpty {
        worker = children(of: p.processIdentifier, named: "bulkhead-worker")
        usleep(10_000)
    }
    return (p, err, worker.count == 1 ? worker[0] : nil)
}

/// `bulkhead run --worker` with the worker's digest.
func runWorker(_ args: [String]) throws -> Result {
    try bulkhead(["run", "--worker-sha256", workerDigest] + args)
}

/// The processes whose parent is `pid` and whose command name is `name`.
func children(of pid: Int32, named name: String) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { e -> Int32? in
        guard let p = Int32(e), let stat = try? String(contentsOfFile: "/proc/\(e)/stat", encoding: .utf8),
              let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return nil }
        let comm = String(stat[stat.index(after: open)..<close])
        let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        guard fields.count > 1, Int32(fields[1]) == pid, name.hasPrefix(comm) else { return nil }
        return p
    }
}

/// `bulkhead run --worker`: the VM runs in a bulkhead-worker process configured over a socketpair.
@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct WorkerTests {
    @Test func defaultGuestRunsInAWorker() throws {
        let r = try runWorker(["--stats"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Hello from a Bulkhead guest"))
        #expect(r.stderr.contains("hypercalls: version=0 console_write=1 exit=1") && r.stderr.contains("exits: mmio="), "\(r.stderr)")
    }

    /// Memory hygiene in a worker: the guest's fresh memory reads as zero.
    @Test func freshMemoryInAWorkerIsAllZero() throws {
        let r = try runWorker([guests + "/zeros.elf", "--memory", "64"])
        #expect(r.status == 0 && r.stdout.contains("all zero"), "\(r.stdout)\(r.stderr)")
    }

    /// Each way a VM ends arrives from the worker with the same status as in one process.
    @Test func outcomesMatchTheInProcessRun() throws {
        #expect(try runWorker([guests + "/exitcode.elf", "--cmdline", "9"]).status == 9)
        let f = try runWorker([guests + "/fault-ud.elf"])
        #expect(f.status == 134 && f.stderr.contains("invalid opcode (#UD)"), "\(f.stderr)")
        let t = try runWorker([guests + "/loop.elf", "--timeout", "0.3"])
        #expect(t.status == 124 && t.stderr.contains("timeout"), "\(t.stderr)")
    }

    /// Devices whose back ends the launcher opened and handed over: a disk written and verified.
    @Test func diskAndRNGThroughTheWorker() throws {
        let path = NSTemporaryDirectory() + "bulkhead-worker-disk-\(getpid())"
        FileManager.default.createFile(atPath: path, contents: Data(count: 1 << 20))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let b = try runWorker([guests + "/blk.elf", "--disk", path])
        #expect(b.status == 0, "\(b.stdout)\(b.stderr)")
        let r = try runWorker([guests + "/rng.elf", "--rng", "--rng-bytes-limit", "64"])
        #expect(r.status == 0 && r.stdout.contains("rng: ok"), "\(r.stdout)\(r.stderr)")
    }

    /// A worker killed from outside: the launcher says so and exits 128 + the signal.
    @Test(.timeLimit(.minutes(1)))
    func killedWorkerIsReported() throws {
        let (p, err, worker) = try startLoopingWorker()
        #expect(worker != nil)
        // Killed once its VM runs (it has its vCPU thread): killed earlier, before the launcher
        // has moved it into its cgroup, the launcher reports that move as failed instead.
        if let w = worker {
            for _ in 0..<500 {
                let status = (try? String(contentsOfFile: "/proc/\(w)/status", encoding: .utf8)) ?? ""
                if let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Threads:") }),
                   let n = Int(line.dropFirst(8).trimmingCharacters(in: .whitespaces)), n > 1 { break }
                usleep(10_000)
            }
            kill(w, SIGKILL)
        }
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 128 + SIGKILL, "\(text)")
        #expect(text.contains("killed"), "\(text)")
    }

    /// The first jail steps as the kernel reports them for a running worker: no new privileges,
    /// not dumpable (its /proc files then belong to root), no core dumps, bounded descriptors and
    /// file size, an empty environment.
    @Test(.timeLimit(.minutes(1)))
    func runningWorkerHasItsJailSteps() throws {
        let (p, _, worker) = try startLoopingWorker()
        defer { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        let w = try #require(worker)
        usleep(100_000)   // let it apply its steps and start the VM
        let status = try String(contentsOfFile: "/proc/\(w)/status", encoding: .utf8)
        #expect(status.contains("NoNewPrivs:\t1"), "\(status)")
        let limits = try String(contentsOfFile: "/proc/\(w)/limits", encoding: .utf8)
        func limit(_ name: String) -> [Substring] {
            limits.split(separator: "\n").first { $0.hasPrefix(name) }?.dropFirst(name.count).split(separator: " ") ?? []
        }
        #expect(limit("Max core file size").prefix(2) == ["0", "0"], "\(limits)")
        #expect(limit("Max open files").prefix(2) == ["4096", "4096"], "\(limits)")
        #expect(limit("Max file size").prefix(2) == ["1073741824", "1073741824"], "\(limits)")
        let environ = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(w)/environ"))
        #expect(environ.isEmpty)
        // Its own namespaces (as root): a network with nothing but loopback.
        if getuid() == 0 {
            for kind in ["mnt", "net", "ipc", "uts", "cgroup"] {
                let mine = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(kind)")
                let its = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(w)/ns/\(kind)")
                #expect(mine != its, "the worker shares the \(kind) namespace")
            }
            let devices = try String(contentsOfFile: "/proc/\(w)/net/dev", encoding: .utf8)
                .split(separator: "\n").dropFirst(2).map { $0.split(separator: ":")[0].trimmingCharacters(in: .whitespaces) }
            #expect(devices == ["lo"], "network devices in the worker: \(devices)")
        }
    }

    /// A worker that stops answering (here: stopped with SIGSTOP, so its own watchdog cannot run)
    /// is killed by the launcher once the VM's timeout and a margin have passed.
    @Test(.timeLimit(.minutes(1)))
    func unresponsiveWorkerIsKilledAfterTheTimeout() throws {
        let (p, err, worker) = try startLoopingWorker(timeout: "2")
        let w = try #require(worker)
        kill(w, SIGSTOP)
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 124, "\(text)")
        #expect(text.contains("did not report") && text.contains("killed"), "\(text)")
        let stat = (try? String(contentsOfFile: "/proc/\(w)/stat", encoding: .utf8)) ?? ""
        #expect(stat.isEmpty || stat.contains(") Z "), "the worker is still there: \(stat)")
    }

    /// A launcher killed outright takes its worker with it: no VM outlives the process that
    /// started it.
    @Test(.timeLimit(.minutes(1)))
    func workerDiesWithItsLauncher() throws {
        let (p, _, found) = try startLoopingWorker()
        let w = try #require(found)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        var gone = false
        for _ in 0..<200 where !gone {
            // Gone, or a zombie waiting for its new parent to reap it.
            let stat = (try? String(contentsOfFile: "/proc/\(w)/stat", encoding: .utf8)) ?? ""
            gone = stat.isEmpty || stat.contains(") Z ")
            if !gone { usleep(10_000) }
        }
        #expect(gone, "worker \(w) still running after its launcher was killed")
    }

    /// Verified exec: a binary whose digest is not the expected one is never run.
    @Test func workerWithTheWrongDigestIsRefused() throws {
        let wrong = String(repeating: "0", count: 64)
        let r = try bulkhead(["run", "--worker-sha256", wrong])
        #expect(r.status == 70 && r.stderr.contains("expected \(wrong): refusing to run it"), "\(r.stderr)")
        #expect(!r.stdout.contains("Hello"))
        let bad = try bulkhead(["run", "--worker-sha256", "xyz"])
        #expect(bad.status == 70 && bad.stderr.contains("not 64 hex digits"), "\(bad.stderr)")
    }

    @Test func unsupportedCombinationsAreUsageErrors() throws {
        #expect(try runWorker(["--no-ioeventfd"]).status == 64)
    }
}
