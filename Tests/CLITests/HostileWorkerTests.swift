import Crypto
import HostTestSupport
import Foundation
import HostOS
import KVM
import Testing

/// A worker taken over by its guest, played by `bulkhead-fake-worker`: whatever it sends, the
/// launcher reports it, kills it, and (as root) tears its jail down. The fake is linked, as
/// bulkhead-worker, into a directory of its own next to a link of `bulkhead`, and run with its
/// own digest; its configuration's command line says how to misbehave.
@Suite(.serialized, .requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct HostileWorkerTests {
    static let directory: String? = {
        let built = String(binary[..<(binary.lastIndex(of: "/") ?? binary.startIndex)])
        // Links left by earlier runs go first (they are only links into the build directory).
        for old in (try? FileManager.default.contentsOfDirectory(atPath: built)) ?? [] where old.hasPrefix("hostile-worker-test-") {
            try? FileManager.default.removeItem(atPath: built + "/" + old)
        }
        let dir = built + "/hostile-worker-test-\(getpid())"
        guard (try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)) != nil,
              link(binary, dir + "/bulkhead") == 0, link(built + "/bulkhead-fake-worker", dir + "/bulkhead-worker") == 0 else { return nil }
        return dir
    }()

    static let digest: String = {
        let bytes = (try? Data(contentsOf: URL(fileURLWithPath: (directory ?? "") + "/bulkhead-worker"))) ?? Data()
        return SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }()

    func run(_ behaviour: String) throws -> Result {
        let dir = try #require(Self.directory)
        return try bulkhead(["run", "--worker-sha256", Self.digest, "--cmdline", behaviour, guests + "/hello.elf", "--timeout", "20"]
                            + (getuid() == 0 ? [] : ["--no-jail"]), executable: dir + "/bulkhead")
    }

    @Test(.timeLimit(.minutes(1)), arguments: [
        ("garbage", "bad message"), ("started-twice", "out of turn"), ("ended-before-started", "out of turn"),
        ("launcher-message", "may not come from this sender"), ("descriptor-attached", "more descriptors"),
        ("oversized", "control socket"),
    ])
    func protocolBreachesAreReportedAndTheWorkerKilled(behaviour: String, expected: String) throws {
        let r = try run(behaviour)
        #expect(r.status == 70, "\(behaviour): \(r.stderr)")
        #expect(r.stderr.contains(expected), "\(behaviour): \(r.stderr)")
        #expect(orphanedWorkers().isEmpty)
        if getuid() == 0 { #expect(jailLeftovers().isEmpty, "\(jailLeftovers())") }
    }

    /// With --audit-log, a worker that broke the protocol, or reported a seccomp violation, is a
    /// security event in the log, with the reason.
    @Test(.timeLimit(.minutes(1)), arguments: [("garbage", "vm.protocol-breach", "bad message"),
                                                ("violation", "vm.seccomp-violation", "system call 101 (ptrace)")])
    func brokenWorkersAreAuditedAsSecurityEvents(behaviour: String, action: String, words: String) throws {
        let dir = try #require(Self.directory)
        let audit = NSTemporaryDirectory() + "bh-hostile-audit-\(getpid())-\(behaviour)"
        defer { try? FileManager.default.removeItem(atPath: audit) }
        let r = try bulkhead(["run", "--worker-sha256", Self.digest, "--cmdline", behaviour, guests + "/hello.elf", "--timeout", "20",
                              "--audit-log", audit] + (getuid() == 0 ? [] : ["--no-jail"]), executable: dir + "/bulkhead")
        #expect(r.status != 0, "\(r.stderr)")
        let tail = try bulkhead(["audit", "tail", audit, "-n", "4"]).stdout
        #expect(tail.contains("\"action\":\"\(action)\"") && tail.contains(words), "\(tail)")
        #expect(try bulkhead(["audit", "verify", audit]).status == 0)
    }

    /// A `violation` report ends the worker even if it carries on afterwards.
    @Test(.timeLimit(.minutes(1)))
    func aViolationReportEndsTheWorker() throws {
        let r = try run("violation")
        #expect(r.status == 159, "\(r.stderr)")
        #expect(r.stderr.contains("number 101 (ptrace)"), "\(r.stderr)")
        #expect(orphanedWorkers().isEmpty)
    }

    /// Terminal escapes in the worker's text are made harmless before they are printed.
    @Test func escapesInTheWorkersTextAreNeutralised() throws {
        let r = try run("escapes")
        #expect(r.status == 134, "\(r.stderr)")
        #expect(!r.stderr.contains("\u{1b}") && !r.stderr.contains("\u{07}"), "\(r.stderr)")
        #expect(r.stderr.contains("?]0;owned??[2J fault"), "\(r.stderr)")
    }

    /// The outcome is printed as soon as the worker reports it, while the worker is still tearing
    /// its VM down (issue 9: closing a VM with the in-kernel irqchip takes 12-20 ms). The fake
    /// worker here lingers 3 s after `ended`: when the outcome line appears it must still be
    /// alive. (Before, the launcher reaped the worker first and printed after.)
    @Test(.timeLimit(.minutes(1)))
    func theOutcomeIsReportedBeforeTheWorkerIsGone() throws {
        let dir = try #require(Self.directory)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: dir + "/bulkhead")
        p.arguments = ["run", "--worker-sha256", Self.digest, "--cmdline", "ended-then-lingers", guests + "/hello.elf", "--timeout", "20"]
            + (getuid() == 0 ? [] : ["--no-jail"])
        var env = ProcessInfo.processInfo.environment
        env["BULKHEAD_GUEST_DIR"] = guests
        p.environment = env
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        // The worker: the launcher's only child, seen from any of its threads.
        var worker: Int32?
        for _ in 0..<500 where worker == nil {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p.processIdentifier)/task")) ?? []
            worker = tasks.lazy.compactMap { t in
                ((try? String(contentsOfFile: "/proc/\(p.processIdentifier)/task/\(t)/children", encoding: .utf8)) ?? "")
                    .split(separator: " ").first.flatMap { Int32($0) }
            }.first
            if worker == nil { usleep(2_000) }
        }
        let w = try #require(worker, "the launcher started no worker")
        var text = ""
        var aliveWhenReported: Bool?
        while true {
            let chunk = err.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
            if aliveWhenReported == nil, text.contains("guest exited with status 3") { aliveWhenReported = !isGone(w) }
        }
        p.waitUntilExit()
        #expect(p.terminationStatus == 3, "\(text)")
        let alive = try #require(aliveWhenReported, "no outcome line in: \(text)")
        #expect(alive, "the outcome was printed only after the worker was gone")
    }

    @Test func aCrashingWorkerIsReportedWithItsSignal() throws {
        let r = try run("dies")
        #expect(r.status > 128 && r.status != 128 + SIGKILL, "\(r.stderr)")
        #expect(r.stderr.contains("killed"), "\(r.stderr)")
        if getuid() == 0 { #expect(jailLeftovers().isEmpty, "\(jailLeftovers())") }
    }
}
