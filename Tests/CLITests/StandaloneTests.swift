import Foundation
import HostTestSupport
import Testing

/// `bulkhead-worker --standalone`: its own small command line (hostile input gets a usage error,
/// 64, before anything is opened; no KVM needed), and the one table of outcomes (the same status
/// and the same words as `bulkhead run`).
@Suite struct StandaloneOptionTests {
    func worker(_ args: [String]) throws -> Result { try bulkhead(args, executable: workerBinary) }

    @Test func badOptionsAreUsageErrorsBeforeAnythingIsOpened() throws {
        let image = "/nonexistent/image.elf"
        let cases: [([String], String)] = [
            (["--memory", "18446744073709551616", image], "--memory must be a whole number between 1 and 3072"),
            (["--memory", "0", image], "--memory must be a whole number between 1 and 3072"),
            (["--memory", "-1", image], "--memory must be"),
            (["--memory=3073", image], "--memory must be"),
            (["--vcpus", "9223372036854775807", image], "--vcpus must be a whole number between 1 and 64"),
            (["--vcpus", "65", image], "--vcpus must be"),
            (["--vcpus", " 1", image], "--vcpus must be"),
            (["--timeout", "1e300", image], "--timeout must be between 0.001 and 31622400 seconds"),
            (["--timeout", "nan", image], "--timeout must be"),
            (["--timeout", "-inf", image], "--timeout must be"),
            (["--timeout", "0", image], "--timeout must be"),
            (["--disk-ops-limit", "0", image], "--disk-ops-limit must be"),
            (["--disk-bytes-limit", "18446744073709551616", image], "--disk-bytes-limit must be"),
            (["--rng-bytes-limit", "x", image], "--rng-bytes-limit must be"),
            (["--memory", "32", "--memory", "64", image], "--memory given twice"),
            ([image, "--memory"], "--memory needs a value"),
            (["--rng=yes", image], "--rng takes no value"),
            (["--frobnicate", image], "unknown option '--frobnicate'"),
            (["--net-listen", "/tmp/x", image], "unknown option '--net-listen' (the network and vsock devices need `bulkhead run`)"),
            (["--vsock", "/tmp/x", image], "unknown option '--vsock'"),
            ([image, image], "more than one IMAGE"),
            (["--kernel", image, image], "give either IMAGE or --kernel, not both"),
            (["--initrd", image, image], "--initrd needs --kernel"),
            ([], "give an IMAGE or --kernel"),
            (["--hide-cpu-feature", "warp-drive", image], "unknown CPU feature 'warp-drive'"),
            (Array(repeating: ["--disk", image], count: 33).flatMap { $0 } + [image], "at most 32 devices"),
        ]
        for (args, message) in cases {
            let r = try worker(["--standalone"] + args)
            #expect(r.status == 64 && r.stderr.contains(message), "\(args.prefix(6)): \(r.status) \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(args.prefix(6)): \(r.stdout)")
        }
    }

    @Test func argumentsWithoutStandaloneAreRefused() throws {
        for args in [["run"], ["--memory", "64"], ["--standalon"]] {
            let r = try worker(args)
            #expect(r.status == 64 && r.stderr.contains("bulkhead-worker --standalone IMAGE"), "\(args): \(r.status) \(r.stderr)")
        }
    }

    @Test func helpListsTheOptions() throws {
        let r = try worker(["--standalone", "--help"])
        #expect(r.status == 0)
        for option in ["--kernel", "--memory", "--vcpus", "--timeout", "--disk", "--rng", "--report-timing", "--stats"] {
            #expect(r.stdout.contains(option), "\(option) missing from: \(r.stdout)")
        }
    }
}

/// The one table: a VM ends with the same status and the same last lines whichever way it ran.
@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct OneOutcomeTableTests {
    /// The last lines of standard error without the program's "name: " prefix.
    func endLines(_ r: Result) -> [String] {
        r.stderr.split(separator: "\n").map { line in
            line.hasPrefix("bulkhead-worker: ") ? String(line.dropFirst(17)) : line.hasPrefix("bulkhead: ") ? String(line.dropFirst(10)) : String(line)
        }
    }

    @Test func everyPathEndsAVMTheSameWay() throws {
        let paths: [[String]] = [standalone, ["--no-jail"]] + (isRoot ? [[]] : [])
        let cases: [([String], Int32, String?)] = [
            ([guests + "/hello.elf"], 0, nil),
            ([guests + "/exitcode.elf", "--cmdline", "7"], 7, "guest exited with status 7"),
            ([guests + "/fault-divzero.elf"], 134, "guest fault: vCPU 0: divide error (#DE)"),
            ([guests + "/loop.elf", "--timeout", "0.3", "--vcpus", "2"], 124, "timeout: the guest was still running after 0.3 s and was stopped"),
        ]
        for (args, status, message) in cases {
            var seen: [[String]] = []
            for path in paths {
                let r = try bulkhead(["run"] + path + ["--worker-sha256", workerDigest] + args)
                #expect(r.status == status, "\(path) \(args): \(r.status) \(r.stderr)")
                let lines = endLines(r)
                if let message {
                    #expect(lines.contains { $0.hasPrefix(message) }, "\(path) \(args): \(r.stderr)")
                } else {
                    #expect(lines.isEmpty, "\(path) \(args): \(r.stderr)")
                }
                seen.append(lines.filter { !$0.hasPrefix("stopped at: ") })   // where the vCPUs were varies
            }
            #expect(Set(seen.map { $0.joined(separator: "\n") }).count == 1, "\(args): the paths differ: \(seen)")
        }
    }

    /// A timeout says where each vCPU stood, on every path.
    @Test func aTimeoutSaysWhereTheVCPUsStopped() throws {
        for path in [standalone, ["--no-jail"]] + (isRoot ? [[]] : []) {
            let r = try bulkhead(["run"] + path + ["--worker-sha256", workerDigest, guests + "/loop.elf", "--timeout", "0.3", "--vcpus", "2"])
            #expect(r.status == 124)
            let line = endLines(r).first { $0.hasPrefix("stopped at: ") } ?? ""
            #expect(line.contains("vCPU 0 rip 0x") && line.contains("vCPU 1 rip 0x"), "\(path): \(r.stderr)")
        }
    }
}
