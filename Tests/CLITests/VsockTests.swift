import Foundation
import HostTestSupport
import HostOS
import KVM
import Testing

/// A host program on the far side of vsock: accepts one connection at `path`, streams `payload`
/// to it while reading what comes back, half-closes, and reads until the guest closes.
/// Returns what came back (nil if nobody connected within `acceptSeconds`).
func vsockEchoPeer(listener: FileDescriptor, payload: [UInt8], acceptSeconds: Int32 = 30) throws -> [UInt8]? {
    guard waitReadable([listener.rawValue], timeoutMilliseconds: acceptSeconds * 1000).first == true else { return nil }
    let c = try UnixStream.accept(listener)
    var sent = 0
    var back: [UInt8] = []
    let deadline = monotonicNanoseconds() + 60_000_000_000
    var shut = false
    while monotonicNanoseconds() < deadline {
        if sent < payload.count {
            sent += try c.writeStream(payload[sent..<min(payload.count, sent + 65536)])
        } else if !shut {
            c.shutdownWriting()
            shut = true
        }
        switch try c.readStream(max: 65536) {
        case .data(let b): back += b
        case .closed, .reset: return back
        case .wouldBlock:
            _ = waitReadable([c.rawValue], timeoutMilliseconds: sent < payload.count ? 1 : 100)
        }
    }
    return back
}

@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct VsockTests {
    /// Runs the vsock-echo guest against a host peer streaming `payload`; returns what came
    /// back, the VMM's exit status and output, and the wall time from start to exit.
    /// `jailed`: in a jailed worker, whose connections the launcher makes (the vsock broker);
    /// otherwise in process.
    func echo(_ payload: [UInt8], options: [String] = [], jailed: Bool) throws -> (back: [UInt8]?, status: Int32, text: String, nanoseconds: UInt64) {
        let prefix = NSTemporaryDirectory() + "bh-vs-\(getpid())-\(options.count)-\(jailed)"
        let listener = try UnixStream.listen(prefix + "_5000")
        defer { unlink(prefix + "_5000") }
        let vm = Process()
        vm.executableURL = URL(fileURLWithPath: binary)
        vm.arguments = ["run"] + (jailed ? ["--worker-sha256", workerDigest] : ["--no-jail"])
            + [guests + "/vsock-echo.elf", "--vsock", prefix, "--cmdline", "port=5000", "--timeout", "60"] + options
        let out = Pipe()
        vm.standardOutput = out
        vm.standardError = out
        let start = monotonicNanoseconds()
        try vm.run()
        let back = try vsockEchoPeer(listener: listener, payload: payload)
        vm.waitUntilExit()
        let elapsed = monotonicNanoseconds() - start
        return (back, vm.terminationStatus, String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self), elapsed)
    }

    /// A guest program connects to a host Unix socket over vsock and echoes 1 MiB of random
    /// bytes: more than 16 times the credit of a connection, so flow control runs both ways.
    @Test(.timeLimit(.minutes(2)), arguments: isRoot ? [false, true] : [false])
    func guestEchoesAMebibyteToAHostSocket(jailed: Bool) throws {
        let payload = try #require(randomBytes(1 << 20))
        let r = try echo(payload, jailed: jailed)
        #expect(r.back == payload ? true : false, "the echo differs: \(r.back?.count ?? -1) bytes back; \(r.text)")
        #expect(r.status == 0, "\(r.text)")
        #expect(r.text.contains("echoed \(payload.count) bytes"), "\(r.text)")
    }

    /// The same echo under a bytes limit in each direction: everything arrives, and no faster
    /// than the limit allows (256 KiB each way at 128 KiB/s after a 128 KiB burst: at least 1 s;
    /// a bound the token bucket guarantees, not a speed measurement).
    @Test(.timeLimit(.minutes(2)))
    func rateLimitedEchoLosesNothing() throws {
        let payload = try #require(randomBytes(256 << 10))
        let r = try echo(payload, options: ["--vsock-bytes-limit", "131072"], jailed: isRoot)
        #expect(r.back == payload ? true : false, "the echo differs: \(r.back?.count ?? -1) bytes back; \(r.text)")
        #expect(r.status == 0, "\(r.text)")
        #expect(r.nanoseconds >= 1_000_000_000, "took \(r.nanoseconds) ns")
    }

    /// Nothing listens at the port: the guest's request is refused (RST) and it says so.
    @Test(.timeLimit(.minutes(1)), arguments: isRoot ? [false, true] : [false])
    func refusedConnectionIsReportedByTheGuest(jailed: Bool) throws {
        let prefix = NSTemporaryDirectory() + "bh-vs-none-\(getpid())"
        let r = try bulkhead(["run"] + (jailed ? ["--worker-sha256", workerDigest] : ["--no-jail"])
                             + [guests + "/vsock-echo.elf", "--vsock", prefix, "--cmdline", "port=5001", "--timeout", "30"])
        #expect(r.status != 0 && r.status != 124, "\(r.stdout)\(r.stderr)")
        #expect((r.stdout + r.stderr).lowercased().contains("refused"), "\(r.stdout)\(r.stderr)")
    }

    @Test func badVsockOptions() throws {
        #expect(try bulkhead(["run", "--vsock", ""]).status == 64)
        #expect(try bulkhead(["run", "--vsock", String(repeating: "x", count: 120)]).status == 64)
        #expect(try bulkhead(["run", "--vsock", "/tmp/v", "--vsock-cid", "2"]).status == 64)
        #expect(try bulkhead(["run", "--vsock", "/tmp/v", "--vsock-cid", "4294967295"]).status == 64)
    }
}
