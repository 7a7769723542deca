import GuestInterface
import Foundation
import HostTestSupport
import Testing
import VMM

/// The ways a VM can run: in process (`bulkhead-worker --standalone`), in an unjailed worker
/// (`bulkhead run --no-jail`) and, as root, in a jailed one.
let runPaths: [[String]] = [standalone, ["--no-jail"]] + (isRoot ? [[]] : [])

/// Numbers from the operator: out of range is a usage error (64), in range runs; none may kill
/// `bulkhead` or its worker with a trap (SIGILL, which `Process` reports as status 4).
@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct NumberTests {
    func run(_ path: [String], _ args: [String]) throws -> Result {
        try bulkhead(["run"] + path + ["--worker-sha256", workerDigest] + args)
    }

    @Test(arguments: runPaths)
    func timeoutsOutOfRangeAreUsageErrors(path: [String]) throws {
        for t in ["1e11", "18446744073", "1e300", "1e-300", "inf", "-inf", "0", "0.0004", "31622401"] {
            let r = try run(path, ["--timeout=" + t, guests + "/exit0.elf"])
            #expect(r.status == 64 && r.stderr.contains("--timeout must be between 0.001 and 31622400 seconds"), "\(path) \(t): \(r.status) \(r.stderr)")
        }
        for t in ["31622400", "1e3", "0.5"] {
            let r = try run(path, ["--timeout", t, guests + "/hello.elf"])
            #expect(r.status == 0 && r.stdout.contains("Hello from a Bulkhead guest"), "\(path) \(t): \(r.status) \(r.stderr)")
        }
        let short = try run(path, ["--timeout", "0.3", guests + "/loop.elf"])
        #expect(short.status == 124 && short.stderr.contains("after 0.3 s"), "\(path): \(short.status) \(short.stderr)")
    }

    /// Rate limits at the largest number the options take: the buckets must not overflow.
    @Test(arguments: runPaths)
    func rateLimitsAtTheirMaximumRun(path: [String]) throws {
        let max = String(UInt64.max)
        // One image per run path (the paths' cases run in parallel, each removes its own).
        let image = NSTemporaryDirectory() + "bulkhead-numbers-\(getpid())-\(path.first?.dropFirst(2) ?? "jailed").img"
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20))
        defer { try? FileManager.default.removeItem(atPath: image) }
        let b = try run(path, [guests + "/blk.elf", "--disk", image, "--disk-ops-limit", max, "--disk-bytes-limit", max, "--timeout", "60"])
        #expect(b.status == 0, "\(path): \(b.status) \(b.stdout)\(b.stderr)")
        let r = try run(path, [guests + "/rng.elf", "--rng", "--rng-bytes-limit", max, "--timeout", "60"])
        #expect(r.status == 0 && r.stdout.contains("rng: ok"), "\(path): \(r.status) \(r.stdout)\(r.stderr)")
        for args in [["--disk-bytes-limit", "18446744073709551616"], ["--vsock-cid", "4294967295"], ["--vsock-cid", "18446744073709551616"],
                     ["--memory-limit", "9223372036854775808"], ["--memory-limit", "1048577"], ["--memory", "18446744073709551615"],
                     ["--vcpus", "9223372036854775807"]] {
            let e = try run(path, args + [guests + "/exit0.elf"])
            #expect(e.status == 64, "\(path) \(args): \(e.status) \(e.stderr)")
        }
    }

    /// `--hide-cpu-feature F` warns exactly when the program-kind CPUID probe, run in this
    /// process, finds that a guest still sees F with F hidden.
    @Test(arguments: runPaths)
    func hideCPUFeatureWarnsIffTheProbeSaysItHasNoEffect(path: [String]) throws {
        guard let probe = CPUIDProbe.measured(for: .program) else {
            Issue.record("the program-kind CPUID probe gave no answer")
            return
        }
        for feature in CPUIDPolicy.Feature.allCases {
            let r = try run(path, ["--hide-cpu-feature", feature.rawValue, guests + "/exit0.elf"])
            #expect(r.status == 0, "\(path) \(feature): \(r.stderr)")
            let warned = r.stderr.contains("--hide-cpu-feature has no effect")
            #expect(warned == probe.visibleDespiteHiding.contains(feature), "\(path) \(feature): probe \(probe); \(r.stderr)")
            if warned { #expect(r.stderr.contains("CPUID value for \(feature.rawValue) ")) }
        }
    }
}
