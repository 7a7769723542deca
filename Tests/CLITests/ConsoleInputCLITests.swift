import Foundation
import Testing
import HostTestSupport

/// `bulkhead run --kernel` connects its standard input to the guest's COM1 (issue 10, point 2),
/// through a pipe the launcher feeds, on every run path: jailed (as root), in an unjailed
/// worker, and in process (`bulkhead-worker --standalone`, which feeds the pipe itself).
@Suite(.requiresKVM)
struct ConsoleInputCLITests {
    enum Path: String, CaseIterable { case jailed, worker, inProcess }

    /// The echo kernel, in a file anyone may read (the jailed launcher opens it with the
    /// caller's permissions).
    func kernelFile() throws -> String {
        let path = NSTemporaryDirectory() + "bh-echo-kernel-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).elf"
        try Data(echoKernel).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        return path
    }

    func options(_ path: Path) -> [String]? {
        switch path {
        case .jailed: return isRoot ? [] : nil
        case .worker: return ["--no-jail"]
        case .inProcess: return standalone
        }
    }

    @Test(arguments: Path.allCases)
    func standardInputReachesTheGuest(_ path: Path) throws {
        guard let extra = options(path) else { return }   // the jailed run needs root
        let kernel = try kernelFile()
        defer { try? FileManager.default.removeItem(atPath: kernel) }
        // 20 KiB of every byte value but '.', then '.': the guest echoes all of it and powers off.
        let text = (0..<20480).map { UInt8(truncatingIfNeeded: $0 * 13 + 1) }.map { $0 == 0x2e ? 0x2f : $0 }
        let r = try bulkhead(["run", "--kernel", kernel, "--memory", "32", "--timeout", "60"] + extra, input: text + [0x2e])
        #expect(r.status == 0, "\(path): \(r.stderr)")
        #expect(r.stderr.contains("powered the machine off"), "\(path): \(r.stderr)")
        #expect(r.stdoutBytes == text, "\(path): \(r.stdoutBytes.count) of \(text.count) bytes")
    }

    /// --no-console-input: the guest gets nothing (it runs to its timeout), and a guest program
    /// never reads standard input at all.
    @Test(arguments: Path.allCases)
    func noConsoleInputMeansNone(_ path: Path) throws {
        guard let extra = options(path) else { return }
        let kernel = try kernelFile()
        defer { try? FileManager.default.removeItem(atPath: kernel) }
        let r = try bulkhead(["run", "--kernel", kernel, "--memory", "32", "--timeout", "1", "--no-console-input"] + extra,
                             input: Array("ignored.".utf8))
        #expect(r.status == 124, "\(path): \(r.stderr)")
        #expect(r.stdoutBytes.isEmpty)
    }
}
