import Foundation
import HostTestSupport
import HostOS
import KVM
import Testing

/// The host side of a `device-reset` run, until the VM exits (or `seconds` pass: the VM is then
/// terminated): an echo server on the vsock listener (every connection it accepts is echoed
/// until it ends) and the frame peer on the network link (a HELLO of count N is answered with N
/// DATA frames, a PING with a reply of the same sequence; see Guest/Programs/device-reset).
func serveDeviceResetPeers(vm: Process, vsockListener: FileDescriptor?, link: FileDescriptor?, seconds: UInt64 = 100) {
    let peerMAC: [UInt8] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe]
    var link = link
    var connections: [FileDescriptor] = []
    var frame = [UInt8](repeating: 0, count: 2048)
    let deadline = monotonicNanoseconds() + seconds * 1_000_000_000

    func reply(to guest: ArraySlice<UInt8>, kind: UInt8, sequence: [UInt8]) {
        var f = [UInt8](repeating: 0, count: 60)
        f.replaceSubrange(0..<6, with: guest)
        f.replaceSubrange(6..<12, with: peerMAC)
        f[12] = 0x88; f[13] = 0xb5
        f.replaceSubrange(14..<18, with: Array("BHDR".utf8))
        f[18] = kind
        f.replaceSubrange(20..<24, with: sequence)
        // A full socket: the guest reads its frames in time, so wait a little rather than drop.
        for _ in 0..<1000 {
            guard let l = link, let sent = try? l.sendDatagram(f) else { return }
            if sent == .sent { return }
            usleep(1000)
        }
    }

    var exited = false
    while !exited {
        // One more pass after the VM exited: nothing is left unanswered that it could still see.
        exited = !vm.isRunning
        if monotonicNanoseconds() > deadline {
            vm.terminate()
            return
        }
        var fds: [Int32] = []
        if let l = vsockListener { fds.append(l.rawValue) }
        if let l = link { fds.append(l.rawValue) }
        fds += connections.map(\.rawValue)
        guard !fds.isEmpty else {
            usleep(20_000)
            continue
        }
        var ready = waitReadable(fds, timeoutMilliseconds: 20)
        if ready.isEmpty { ready = [Bool](repeating: false, count: fds.count) }  // a timeout
        var i = 0
        var accepted: FileDescriptor?
        if let l = vsockListener {
            if ready[i] { accepted = try? UnixStream.accept(l) }
            i += 1
        }
        if link != nil {
            if ready[i] {
                while let l = link, let r = try? l.receiveDatagram(into: &frame) {
                    switch r {
                    case .datagram(let f):
                        guard f.count >= 24, f[12] == 0x88, f[13] == 0xb5, Array(f[14..<18]) == Array("BHDR".utf8) else { continue }
                        if f[18] == UInt8(ascii: "H") {
                            for n in 0..<Int(f[19]) {
                                reply(to: f[6..<12], kind: UInt8(ascii: "D"), sequence: [UInt8(n), 0, 0, 0])
                            }
                        } else if f[18] == UInt8(ascii: "P") {
                            reply(to: f[6..<12], kind: UInt8(ascii: "R"), sequence: Array(f[20..<24]))
                        }
                        continue
                    case .truncated: continue
                    case .wouldBlock: break
                    case .closed: link = nil
                    }
                    break
                }
            }
            i += 1
        }
        var open: [FileDescriptor] = []
        for c in connections {
            defer { i += 1 }
            guard ready[i] else {
                open.append(c)
                continue
            }
            switch try? c.readStream(max: 65536) {
            case .data(let bytes):
                var sent = 0
                var tries = 0
                while sent < bytes.count, tries < 5000, let n = try? c.writeStream(bytes[sent...]) {
                    sent += n
                    if n == 0 { tries += 1; usleep(1000) }
                }
                open.append(c)
            case .wouldBlock:
                open.append(c)
            default:
                break  // closed, reset or an error: the connection is over
            }
        }
        if let c = accepted { open.append(c) }
        connections = open
    }
}

/// issue 9, item 2: nothing a guest can trigger through an MMIO exit — a device reset (Status 0)
/// or a QueueNotify the doorbell's ioeventfd does not match — may make the VMM run a system call
/// its vCPU seccomp allowlist forbids. The `device-reset` guest resets every device while it has
/// live state on the host side (requests in flight, frames held, vsock connections open),
/// re-initialises it, checks it works, and rings a doorbell through an MMIO exit; in a jailed
/// worker a forbidden call would end the VM with status 159.
@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct DeviceResetTests {
    enum Device: String, CaseIterable {
        case block, net, rng, vsock

        var steps: [String] {
            self == .net ? ["live", "reset", "reinit", "notify", "notify-rx"] : ["live", "reset", "reinit", "notify"]
        }
    }

    /// Runs the `device-reset` guest with `devices` attached (jailed unless `jailed` is false),
    /// the host peers serving it, and checks the outcome.
    func run(_ devices: [Device], jailed: Bool) throws {
        let tag = NSTemporaryDirectory() + "bh-reset-\(getpid())-\(devices.map(\.rawValue).joined(separator: "-"))-\(jailed ? "j" : "u")"
        var options: [String] = []
        var cleanup: [String] = []
        defer { for path in cleanup { unlink(path) } }

        if devices.contains(.block) {
            // Random sector 0, so that "reads as before the reset" means something.
            let image = tag + ".img"
            var bytes = Data(count: 1 << 20)
            bytes.replaceSubrange(0..<512, with: (0..<512).map { _ in UInt8.random(in: 0...255) })
            #expect(FileManager.default.createFile(atPath: image, contents: bytes))
            cleanup.append(image)
            options += ["--disk", image]
        }
        let netPath = tag + ".net"
        if devices.contains(.net) {
            unlink(netPath)
            cleanup.append(netPath)
            options += ["--net-listen", netPath, "--mac", "02:00:00:00:00:01"]
        }
        if devices.contains(.rng) { options += ["--rng"] }
        var listener: FileDescriptor?
        if devices.contains(.vsock) {
            let path = tag + "_5000"
            unlink(path)
            listener = try UnixStream.listen(path)
            cleanup.append(path)
            options += ["--vsock", tag]
        }

        let vm = Process()
        vm.executableURL = URL(fileURLWithPath: binary)
        vm.arguments = ["run"] + (jailed ? ["--worker-sha256", workerDigest] : ["--no-jail"])
            + [guests + "/device-reset.elf", "--cmdline", "vsock-port=5000", "--timeout", "60"] + options
        var env = ProcessInfo.processInfo.environment
        env["BULKHEAD_GUEST_DIR"] = guests
        vm.environment = env
        let out = Pipe(), err = Pipe()
        vm.standardOutput = out
        vm.standardError = err
        try vm.run()
        defer { if vm.isRunning { vm.terminate() } }
        // With --net-listen the VM waits for its peer before the guest starts.
        let link = devices.contains(.net) ? try UnixSeqpacket.connect(netPath, timeoutSeconds: 20) : nil
        try link?.setNonBlocking()
        serveDeviceResetPeers(vm: vm, vsockListener: listener, link: link)
        vm.waitUntilExit()
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let context = "\(jailed ? "jailed" : "in process") \(devices.map(\.rawValue)): status \(vm.terminationStatus)\n\(stdout)\(stderr)"

        #expect(vm.terminationStatus == 0, "\(context)")
        #expect(!stderr.contains("seccomp"), "\(context)")
        let missing = devices.flatMap { d in d.steps.map { "\(d.rawValue) \($0)" } }
            .filter { !stdout.contains("device-reset: ok \($0)") }
        #expect(missing.isEmpty, "steps not passed: \(missing): \(context)")
        #expect(!stdout.contains("device-reset: FAIL"), "\(context)")
        #expect(stdout.contains("device-reset: \(devices.count) devices, all ok"), "\(context)")
    }

    @Test(.requiresRoot, .timeLimit(.minutes(3)))
    func blockJailed() throws { try run([.block], jailed: true) }

    @Test(.requiresRoot, .timeLimit(.minutes(3)))
    func netJailed() throws { try run([.net], jailed: true) }

    @Test(.requiresRoot, .timeLimit(.minutes(3)))
    func rngJailed() throws { try run([.rng], jailed: true) }

    @Test(.requiresRoot, .timeLimit(.minutes(3)))
    func vsockJailed() throws { try run([.vsock], jailed: true) }

    /// Every kind at once, in window order (disk, network, rng, vsock).
    @Test(.requiresRoot, .timeLimit(.minutes(3)))
    func allDevicesJailed() throws { try run(Device.allCases, jailed: true) }

    /// The same in process (no seccomp): what the guest checks holds without the jail too.
    @Test(.timeLimit(.minutes(3)))
    func allDevicesInProcess() throws { try run(Device.allCases, jailed: false) }
}
