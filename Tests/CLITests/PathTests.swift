import Foundation
import HostTestSupport
import HostOS
import KVM
import Testing

// Issue 9, items 4 to 6: the paths `bulkhead run` is given. Every path is checked for its type
// without blocking; a symbolic link as the final component, a directory or a device is refused;
// the caller's own permissions apply when bulkhead runs with more privilege than they have; and
// `--net-listen` waits for a peer for a bounded time, then removes its socket.

/// What a watched run gave, and whether the watchdog had to kill it.
struct WatchedResult {
    var result: Result
    var hung: Bool
    var seconds: Double
}

/// Runs `bulkhead` (through `prefix`, such as setpriv, when given) and kills it if it has not
/// ended after `limit` seconds, so that a regression that hangs cannot hang the suite. Output goes
/// through files, read once it ended.
func watchedBulkhead(_ args: [String], prefix: [String] = [], limit: Double = 20) throws -> WatchedResult {
    let dir = NSTemporaryDirectory() + "bh-watch-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    _ = FileManager.default.createFile(atPath: dir + "/out", contents: nil)
    _ = FileManager.default.createFile(atPath: dir + "/err", contents: nil)
    let p = Process()
    let (program, arguments) = resolveRun(args, executable: binary)
    p.executableURL = URL(fileURLWithPath: prefix.first ?? program)
    p.arguments = (prefix.isEmpty ? [] : Array(prefix.dropFirst()) + [program]) + arguments
    var env = ProcessInfo.processInfo.environment
    env["BULKHEAD_GUEST_DIR"] = guests
    p.environment = env
    p.standardInput = FileHandle.nullDevice
    p.standardOutput = FileHandle(forWritingAtPath: dir + "/out")
    p.standardError = FileHandle(forWritingAtPath: dir + "/err")
    let start = monotonicNanoseconds()
    try p.run()
    var hung = false
    while p.isRunning {
        if Double(monotonicNanoseconds() - start) / 1e9 > limit {
            hung = true
            kill(p.processIdentifier, SIGKILL)
            break
        }
        usleep(20_000)
    }
    p.waitUntilExit()
    let seconds = Double(monotonicNanoseconds() - start) / 1e9
    let out = (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? ""
    return WatchedResult(result: Result(status: p.terminationStatus, stdout: out, stderr: err), hung: hung, seconds: seconds)
}

/// The ways a run is made: jailed (as root: the launcher opens the paths, the worker gets the
/// descriptors), in an unjailed worker (--no-jail: the same), and in process
/// (`bulkhead-worker --standalone`, which opens them itself).
let pathModes: [[String]] = (getuid() == 0 ? [["--worker-sha256", workerDigest]] : []) + [["--no-jail"], standalone]
/// The modes that can attach network and vsock devices (not the standalone one).
let socketModes = pathModes.filter { $0 != standalone }

/// A fresh directory of mode 0755 under the temporary directory.
func scratchDirectory(_ name: String) throws -> String {
    let dir = NSTemporaryDirectory() + "bh-paths-\(getpid())-\(name)"
    try? FileManager.default.removeItem(atPath: dir)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    chmod(dir, 0o755)
    return dir
}

let hasSetpriv = FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")
/// Runs as uid and gid 4242 with no groups, its effective uid still 0: a caller with less
/// privilege than the launcher (as under a setuid launcher).
let asUser4242 = ["/usr/bin/setpriv", "--ruid", "4242", "--rgid", "4242", "--clear-groups"]

/// Copies of the test guests that uid 4242 may read: under `asUser4242` the image is opened with
/// that user's permissions, and the repository (so .build/guests) may sit in a directory only
/// root may search, as a clone in a `mktemp -d` directory does.
let callerGuests: String = {
    let dir = NSTemporaryDirectory() + "bh-paths-\(getpid())-guests"
    try? FileManager.default.removeItem(atPath: dir)
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    chmod(dir, 0o755)
    for name in ["hello", "blk", "vsock-echo", "net-ping"] {
        try? FileManager.default.copyItem(atPath: guests + "/\(name).elf", toPath: dir + "/\(name).elf")
        chmod(dir + "/\(name).elf", 0o644)
    }
    return dir
}()

@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"))
struct PathTests {
    /// A FIFO with nobody at the other end, as each kind of file: refused at once, with what it is.
    @Test func aFIFOIsRefusedPromptly() throws {
        let dir = try scratchDirectory("fifo")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fifo = dir + "/fifo"
        #expect(mkfifo(fifo, 0o666) == 0)
        let hello = guests + "/hello.elf"
        let cases: [([String], Int32, String)] = [
            ([fifo], 65, "the guest image \(fifo) is a FIFO, not a regular file"),
            (["--kernel", fifo], 65, "the kernel \(fifo) is a FIFO, not a regular file"),
            ([hello, "--disk", fifo], 65, "the disk \(fifo) is a FIFO, not a regular file"),
            ([hello, "--read-only-disk", fifo], 65, "the disk \(fifo) is a FIFO, not a regular file"),
            ([hello, "--console", fifo], 70, "the console file \(fifo) is a FIFO, not a regular file"),
        ]
        for mode in pathModes {
            for (args, status, message) in cases {
                let r = try watchedBulkhead(["run"] + mode + args + ["--timeout", "5"])
                #expect(!r.hung, "\(mode + args): still running after 20 s")
                #expect(r.result.status == status && r.result.stderr.contains(message), "\(mode + args): \(r.result.status) \(r.result.stderr)")
            }
        }
    }

    /// A symbolic link to a root-only file, as a disk and as the image: refused, the file untouched.
    @Test func aSymbolicLinkIsRefused() throws {
        let dir = try scratchDirectory("link")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let target = dir + "/root-only.img"
        let original = Data((0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        try original.write(to: URL(fileURLWithPath: target))
        chmod(target, 0o600)
        #expect(symlink(target, dir + "/link.img") == 0)
        #expect(symlink(guests + "/hello.elf", dir + "/hello-link.elf") == 0)
        for mode in pathModes {
            for option in ["--disk", "--read-only-disk"] {
                let r = try watchedBulkhead(["run"] + mode + [guests + "/blk.elf", option, dir + "/link.img"])
                #expect(r.result.status == 65 && r.result.stderr.contains("the disk \(dir)/link.img is a symbolic link: give the file itself"),
                        "\(mode) \(option): \(r.result.status) \(r.result.stdout) \(r.result.stderr)")
                #expect(!r.result.stdout.contains("blk:"), "the guest ran: \(r.result.stdout)")
            }
            let image = try watchedBulkhead(["run"] + mode + [dir + "/hello-link.elf"])
            #expect(image.result.status == 65 && image.result.stderr.contains("is a symbolic link: give the file itself"), "\(mode): \(image.result.stderr)")
            #expect(!image.result.stdout.contains("Hello"))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == original)
    }

    /// A directory and character devices, as a disk and as the image.
    @Test func directoriesAndDevicesAreRefused() throws {
        for mode in pathModes {
            for (path, kind) in [(NSTemporaryDirectory(), "a directory"), ("/dev/null", "a character device"), ("/dev/zero", "a character device")] {
                let disk = try watchedBulkhead(["run"] + mode + [guests + "/hello.elf", "--disk", path])
                #expect(disk.result.status == 65 && disk.result.stderr.contains("is \(kind), not a regular file"), "\(mode) \(path): \(disk.result.stderr)")
                let image = try watchedBulkhead(["run"] + mode + [path])
                #expect(image.result.status == 65 && image.result.stderr.contains("is \(kind), not a regular file"), "\(mode) \(path): \(image.result.stderr)")
            }
        }
    }

    /// `--net-listen` with no peer: gives up after --timeout, says so, and leaves no socket behind.
    @Test func listeningWithoutAPeerGivesUp() throws {
        let dir = try scratchDirectory("listen")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/vm.sock"
        for mode in socketModes {
            let r = try watchedBulkhead(["run"] + mode + [guests + "/net-pong.elf", "--net-listen", path, "--timeout", "1"])
            #expect(!r.hung && r.seconds < 10, "\(mode): \(r.seconds) s")
            #expect(r.result.status == 70 && r.result.stderr.contains("no peer connected to \(path) within 1.0 s"), "\(mode): \(r.result.status) \(r.result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: path), "\(mode): \(path) was left behind")
        }
    }
}

/// As root, bulkhead run under `setpriv` as uid 4242 (effective uid still 0): the caller's own
/// permissions decide, as the kernel applies them to that user.
@Suite(.requiresKVM, .enabled(if: hasGuests, "test guests not built: run Guest/build.sh"),
       .enabled(if: getuid() == 0, "needs root, to run bulkhead for another user"),
       .enabled(if: hasSetpriv, "needs setpriv(1) from util-linux"))
struct CallerPermissionTests {
    @Test func theCallersPermissionsApply() throws {
        let dir = try scratchDirectory("caller")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Root's own file, of a size that must not appear in any message.
        let secret = dir + "/root-only.img"
        let original = Data((0..<1_049_088).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try original.write(to: URL(fileURLWithPath: secret))
        chmod(secret, 0o600)
        // The caller's own.
        let theirs = dir + "/theirs.img"
        _ = FileManager.default.createFile(atPath: theirs, contents: Data(count: 1 << 20))
        chown(theirs, 4242, 4242)
        chmod(theirs, 0o600)
        // Readable by all, in a directory only root may search.
        try FileManager.default.createDirectory(atPath: dir + "/closed", withIntermediateDirectories: false)
        chmod(dir + "/closed", 0o700)
        let hidden = dir + "/closed/open.img"
        _ = FileManager.default.createFile(atPath: hidden, contents: Data(count: 1 << 20))
        chmod(hidden, 0o644)

        for mode in pathModes {
            for option in ["--disk", "--read-only-disk"] {
                let refused = try watchedBulkhead(["run"] + mode + [callerGuests + "/blk.elf", option, secret], prefix: asUser4242)
                #expect(refused.result.status == 65 && refused.result.stderr.contains("Permission denied")
                        && refused.result.stderr.contains("checked for uid 4242"), "\(mode) \(option): \(refused.result.stderr)")
                #expect(!refused.result.stderr.contains("1049088"), "the size of a refused file: \(refused.result.stderr)")
                #expect(!refused.result.stdout.contains("blk:"))
                let search = try watchedBulkhead(["run"] + mode + [callerGuests + "/blk.elf", option, hidden], prefix: asUser4242)
                #expect(search.result.status == 65 && search.result.stderr.contains("Permission denied"), "\(mode) \(option): \(search.result.stderr)")
            }
            let works = try watchedBulkhead(["run"] + mode + [callerGuests + "/blk.elf", "--disk", theirs], prefix: asUser4242)
            #expect(works.result.status == 0 && works.result.stdout.contains("blk: capacity 2048 sectors"), "\(mode): \(works.result.stdout) \(works.result.stderr)")
            // An image and a console in places the caller may not read or write.
            let image = try watchedBulkhead(["run"] + mode + [hidden], prefix: asUser4242)
            #expect(image.result.status == 65 && image.result.stderr.contains("cannot read guest image \(hidden): Permission denied"), "\(image.result.stderr)")
            let console = try watchedBulkhead(["run"] + mode + [callerGuests + "/hello.elf", "--console", dir + "/closed/console"], prefix: asUser4242)
            #expect(console.result.status == 70 && console.result.stderr.contains("Permission denied"), "\(console.result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/closed/console"))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: secret)) == original)
    }

    /// Sockets the launcher connects to for the caller (vsock, through the broker when jailed;
    /// --net-connect) in a directory the caller may not search: never reached.
    @Test func socketsAreConnectedToAsTheCaller() throws {
        let dir = try scratchDirectory("sockets")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        chmod(dir, 0o700)
        let listener = try UnixStream.listen(dir + "/vs_5000")
        for mode in socketModes {
            let r = try watchedBulkhead(["run"] + mode + [callerGuests + "/vsock-echo.elf", "--vsock", dir + "/vs", "--cmdline", "port=5000", "--timeout", "10"],
                                        prefix: asUser4242)
            #expect(r.result.status != 0 && r.result.stdout.contains("connection refused"), "\(mode): \(r.result.stdout) \(r.result.stderr)")
            #expect(waitReadable([listener.rawValue], timeoutMilliseconds: 0).isEmpty, "\(mode): the launcher connected for uid 4242")
            let net = try watchedBulkhead(["run"] + mode + [callerGuests + "/net-ping.elf", "--net-connect", dir + "/vs_5000", "--timeout", "10"],
                                          prefix: asUser4242)
            #expect(net.result.status == 70 && net.result.stderr.contains("Permission denied"), "\(mode): \(net.result.stderr)")
        }
    }

    /// A console file bulkhead creates for the caller is the caller's.
    @Test func aCreatedConsoleBelongsToTheCaller() throws {
        let dir = try scratchDirectory("owned")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        chown(dir, 4242, 4242)
        for (index, mode) in pathModes.enumerated() {
            let console = dir + "/console-\(index)"
            let r = try watchedBulkhead(["run"] + mode + [callerGuests + "/hello.elf", "--console", console], prefix: asUser4242)
            #expect(r.result.status == 0, "\(mode): \(r.result.stderr)")
            let attributes = try FileManager.default.attributesOfItem(atPath: console)
            #expect((attributes[.ownerAccountID] as? NSNumber)?.uint32Value == 4242)
            #expect(try String(contentsOfFile: console, encoding: .utf8).contains("Hello from a Bulkhead guest"))
        }
    }
}
