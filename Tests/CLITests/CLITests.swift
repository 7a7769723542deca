import Foundation
import HostTestSupport
import HostOS
import KVM
import Testing

let root: String = {
    var path = #filePath
    for _ in 0..<3 { if let i = path.lastIndex(of: "/") { path = String(path[..<i]) } }
    return path
}()
let guests = ProcessInfo.processInfo.environment["BULKHEAD_GUEST_DIR"] ?? root + "/.build/guests"
let hasGuests = FileManager.default.fileExists(atPath: guests + "/hello.elf")
    || ProcessInfo.processInfo.environment["BULKHEAD_REQUIRE_GUESTS"] == "1"

/// The `bulkhead` binary built next to this test bundle.
let binary: String = {
    let exe = executablePath() ?? ""
    let dir = exe.lastIndex(of: "/").map { String(exe[..<$0]) } ?? "."
    return dir + "/bulkhead"
}()

/// `bulkhead-worker`, built next to `bulkhead`.
let workerBinary: String = String(binary.dropLast("bulkhead".count)) + "bulkhead-worker"

/// A run mode of the tests besides `bulkhead run`'s own (jailed, `--no-jail`): the in-process
/// baseline, `bulkhead-worker --standalone`. `bulkhead(["run", ..., "--standalone", ...])` and
/// `watchedBulkhead` run `bulkhead-worker --standalone` with the other arguments instead
/// (`--worker-sha256 HEX` dropped: there is no worker to verify).
let standalone = ["--standalone"]

/// The executable and arguments for `args` (see `standalone`).
func resolveRun(_ args: [String], executable: String) -> (executable: String, arguments: [String]) {
    guard args.first == "run", args.contains("--standalone") else { return (executable, args) }
    var rest: [String] = []
    var i = 1
    while i < args.count {
        if args[i] == "--worker-sha256" { i += 2; continue }
        if args[i] != "--standalone" { rest.append(args[i]) }
        i += 1
    }
    return (workerBinary, ["--standalone"] + rest)
}

struct Result {
    var status: Int32
    var stdout: String
    var stderr: String
    /// Standard output as it came (a guest may print bytes that are not UTF-8).
    var stdoutBytes: [UInt8] = []
}

/// Runs `bulkhead` (or another copy of it, `executable`) and collects its status and output.
/// Its standard input is `input` (then end of file), or /dev/null: never the terminal of whoever
/// runs the tests (a kernel guest's console reads it).
func bulkhead(_ args: [String], environment extra: [String: String] = [:], executable: String = binary,
              input: [UInt8]? = nil) throws -> Result {
    let p = Process()
    let (path, arguments) = resolveRun(args, executable: executable)
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env["BULKHEAD_GUEST_DIR"] = guests
    for (k, v) in extra { env[k] = v }
    p.environment = env
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    let stdin = input.map { _ in Pipe() }
    p.standardInput = stdin ?? FileHandle.nullDevice
    try p.run()
    if let stdin, let input {
        // Written on a thread of its own (the child may not read it all before we read its output).
        let writer = stdin.fileHandleForWriting
        Thread.detachNewThread {
            try? writer.write(contentsOf: Data(input))
            try? writer.close()
        }
    }
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self),
                  stdoutBytes: [UInt8](o))
}

@Suite struct CLIOptionTests {
    @Test func badOptionsAreUsageErrors() throws {
        for args in [["run", "--vcpus", "0"], ["run", "--vcpus", "65"], ["run", "--memory", "0"],
                     ["run", "--memory", "4096"], ["run", "--timeout", "-1"], ["run", "--timeout", "nan"],
                     ["run", "--hide-cpu-feature", "warp-drive"], ["run", "--no-such-flag"], ["frobnicate", "x"]] {
            let r = try bulkhead(args)
            #expect(r.status == 64, "\(args): \(r.stderr)")
            #expect(r.stderr.contains("Error") || r.stderr.contains("error"), "\(args)")
        }
        #expect(try bulkhead(["run", "--vcpus", "0"]).stderr.contains("--vcpus must be between 1 and 64"))
    }

    @Test func missingImages() throws {
        // Without root the jail is refused first (status 69, CLINoKVMTests); --no-jail gets past it.
        let jail = TestHost.isRoot ? [] : ["--no-jail"]
        let missing = try bulkhead(["run", "/nonexistent/guest.elf"] + jail)
        #expect(missing.status == 65)
        #expect(missing.stderr.contains("cannot read guest image /nonexistent/guest.elf"))
    }

    /// The image is parsed where the VM runs (the worker, which needs /dev/kvm: the launcher
    /// opens that first, and without it says so, 69), on every path.
    @Test(.requiresKVM) func malformedImages() throws {
        let text = NSTemporaryDirectory() + "bulkhead-not-elf-\(getpid())"
        try "#!/bin/sh\n".write(toFile: text, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: text) }
        for path in [standalone, ["--no-jail"]] + (TestHost.isRoot ? [[String]()] : []) {
            let bad = try bulkhead(["run", text] + path)
            #expect(bad.status == 65, "\(path): \(bad.stderr)")
            #expect(bad.stderr.contains("not an ELF file"), "\(path): \(bad.stderr)")
        }
    }

    @Test func surfaceMatchesThePinnedFile() throws {
        let r = try bulkhead(["surface", "--json"])
        #expect(r.status == 0)
        #expect(r.stdout == (try String(contentsOfFile: root + "/docs/attack-surface.json", encoding: .utf8)))
        let text = try bulkhead(["surface"])
        #expect(text.stdout.contains("hypercall-page"))
    }
}

@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct CLIRunTests {
    @Test func defaultGuestIsHello() throws {
        let r = try bulkhead(["run", "--cmdline", "from the CLI", "--vcpus", "3"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Hello from a Bulkhead guest: vCPU 0 of 3, command line: \"from the CLI\""))
    }

    @Test func tooSmallMemoryIsExplained() throws {
        let r = try bulkhead(["run", "--memory", "4", "--vcpus", "8", guests + "/hello.elf"])
        #expect(r.status == 64)
        #expect(r.stderr.contains("too small for 8 vCPU(s)"))
    }

    /// What `make run` does: no image, no BULKHEAD_GUEST_DIR; the built-in guest is found next
    /// to the build products.
    @Test(.enabled(if: guests == root + "/.build/guests", "guests are elsewhere"))
    func builtInGuestIsFoundWithoutConfiguration() throws {
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "BULKHEAD_GUEST_DIR")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["run"]
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = Pipe()
        try p.run()
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(o.contains("Hello from a Bulkhead guest"))
    }

    @Test func exitStatusIsTheGuests() throws {
        #expect(try bulkhead(["run", guests + "/exitcode.elf", "--cmdline", "9"]).status == 9)
    }

    @Test func faultsAndTimeoutsHaveReasonsAndStatuses() throws {
        let f = try bulkhead(["run", guests + "/fault-ud.elf"])
        #expect(f.status == 134)
        #expect(f.stderr.contains("invalid opcode (#UD)"))
        let t = try bulkhead(["run", guests + "/loop.elf", "--timeout", "0.3"])
        #expect(t.status == 124)
        #expect(t.stderr.contains("timeout"))
    }

    @Test func consoleToFileAndStatistics() throws {
        let path = NSTemporaryDirectory() + "bulkhead-console-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try bulkhead(["run", "--console", path, "--stats"])
        #expect(r.status == 0)
        #expect(r.stdout.isEmpty)
        #expect(try String(contentsOfFile: path, encoding: .utf8).contains("Hello from a Bulkhead guest"))
        #expect(r.stderr.contains("hypercalls: version=") && r.stderr.contains("exit=1"))
    }

    @Test func rateLimitedDevicesAreSlowedNotFailed() throws {
        let r = try bulkhead(["run", guests + "/rng.elf", "--rng", "--rng-bytes-limit", "64"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("rng: ok"))
        #expect(try bulkhead(["run", "--rng-bytes-limit", "0"]).status == 64)
    }

    @Test func hiddenCPUFeaturesStillRun() throws {
        let r = try bulkhead(["run", "--hide-cpu-feature", "cx16", "--hide-cpu-feature", "xsave", guests + "/cpu.elf"])
        #expect(r.status == 0, "\(r.stderr)")
    }
}

/// Hides /dev/kvm behind /dev/null in a private mount namespace (needs root and unshare(1)).
let canHideKVM = getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare")

@Suite(.enabled(if: canHideKVM, "needs root and unshare(1) to hide /dev/kvm"),
       .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct CLINoKVMTests {
    @Test func unusableKVMIsAClearError() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        p.arguments = ["--mount", "--propagation", "private", "sh", "-c",
                       "mount --bind /dev/null /dev/kvm && exec \"$0\" run \"$1\"", binary, guests + "/hello.elf"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 69, "\(e)")
        #expect(e.contains("not a usable KVM device"))
    }
}

@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct DurabilityTests {
    /// The guest writes a pattern and flushes; the VMM is then killed with SIGKILL. A second VM
    /// finds every flushed sector in the image file.
    @Test(.timeLimit(.minutes(2)))
    func flushedDataSurvivesSIGKILL() throws {
        let path = NSTemporaryDirectory() + "bulkhead-durable-\(getpid()).img"
        FileManager.default.createFile(atPath: path, contents: Data(count: 8 << 20))
        defer { try? FileManager.default.removeItem(atPath: path) }

        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["run", guests + "/blk.elf", "--disk", path, "--cmdline", "write hold", "--timeout", "60"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = Pipe()
        try p.run()
        // Wait for the guest to report its flush complete, then kill the VMM outright.
        var seen = ""
        let handle = out.fileHandleForReading
        while !seen.contains("blk: flushed") {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            seen += String(decoding: chunk, as: UTF8.self)
        }
        #expect(seen.contains("blk: flushed"), "\(seen)")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGKILL)

        let verify = try bulkhead(["run", guests + "/blk.elf", "--read-only-disk", path, "--cmdline", "verify"])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        #expect(verify.stdout.contains("blk: verified"))
    }
}

@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct NetworkTests {
    /// Two VMs wired back to back over a SOCK_SEQPACKET socket: 100 frames of 60 to 1514 bytes are
    /// echoed and checked, and a frame with a forged source MAC never reaches the peer.
    @Test(.timeLimit(.minutes(2)))
    func twoVMsExchangeFramesAndSpoofedFramesAreDropped() throws {
        try exchange(limits: [])
    }

    /// The same under rate limits on both sides, in both directions: nothing lost, and no faster
    /// than the limit allows (101 frames each way at 40 per second, after a burst of 40: at least
    /// 1.5 s; a correctness bound of the token bucket, not a speed measurement).
    @Test(.timeLimit(.minutes(2)))
    func rateLimitedNetworkLosesNothing() throws {
        let start = monotonicNanoseconds()
        try exchange(limits: ["--net-ops-limit", "40", "--net-bytes-limit", "1000000"])
        #expect(monotonicNanoseconds() - start >= 1_500_000_000)
    }

    func exchange(limits: [String]) throws {
        let path = NSTemporaryDirectory() + "bulkhead-net-\(getpid())-\(limits.count).sock"
        let pong = Process()
        pong.executableURL = URL(fileURLWithPath: binary)
        pong.arguments = ["run", guests + "/net-pong.elf", "--net-listen", path, "--cmdline", "count=100", "--timeout", "60"] + limits
        let pongOut = Pipe()
        pong.standardOutput = pongOut
        pong.standardError = Pipe()
        try pong.run()
        let ping = try bulkhead(["run", guests + "/net-ping.elf", "--net-connect", path, "--cmdline", "count=100 spoof",
                                 "--timeout", "60"] + limits)
        pong.waitUntilExit()
        let pongText = String(decoding: pongOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(ping.status == 0, "\(ping.stdout)\(ping.stderr)")
        #expect(ping.stdout.contains("net-ping: 100 frames echoed"))
        #expect(ping.stdout.contains("spoof: ok"))
        #expect(pong.terminationStatus == 0, "\(pongText)")
        #expect(pongText.contains("net-pong: 100 frames echoed"))
        #expect(!FileManager.default.fileExists(atPath: path), "the listening socket \(path) was left behind")
    }

    @Test func badNetworkOptions() throws {
        #expect(try bulkhead(["run", "--net-listen", "/tmp/a", "--net-connect", "/tmp/b"]).status == 64)
        #expect(try bulkhead(["run", "--net-connect", "/tmp/x", "--mac", "01:00:00:00:00:01"]).status == 64) // multicast
        #expect(try bulkhead(["run", "--net-connect", "/tmp/x", "--mac", "nonsense"]).status == 64)
        #expect(try bulkhead(["run", "--net-connect", "/tmp/x", "--net-ops-limit", "0"]).status == 64)
        #expect(try bulkhead(["run", "--net-connect", "/tmp/x", "--net-bytes-limit", "-5"]).status == 64)
    }
}
