import Crypto
import Foundation
import KVM
import Testing

/// A worker taken over by its guest, played by `bulkhead-fake-worker`: whatever it sends, the
/// launcher reports it, kills it, and (as root) tears its jail down. The fake is linked, as
/// bulkhead-worker, into a directory of its own next to a link of `bulkhead`, and run with its
/// own digest; its configuration's command line says how to misbehave.
@Suite(.serialized, .enabled(if: hasKVM, "needs /dev/kvm"), .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
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
                            + (getuid() == 0 ? [] : ["--no-jail", "--worker"]), executable: dir + "/bulkhead")
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

    @Test func aCrashingWorkerIsReportedWithItsSignal() throws {
        let r = try run("dies")
        #expect(r.status > 128 && r.status != 128 + SIGKILL, "\(r.stderr)")
        #expect(r.stderr.contains("killed"), "\(r.stderr)")
        if getuid() == 0 { #expect(jailLeftovers().isEmpty, "\(jailLeftovers())") }
    }
}
