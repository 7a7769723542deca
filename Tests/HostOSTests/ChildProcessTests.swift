import Glibc
import Synchronization
import Testing
@testable import HostOS

/// The errno of the SystemError a call threw (-1 for another error), or nil when it did not throw.
/// (Takes an untyped closure: inside #expect, closures lose their typed throws.)
private func thrownErrno<T>(_ body: () throws -> T) -> Int32? {
    do { _ = try body(); return nil } catch { return (error as? SystemError)?.errno ?? -1 }
}

/// Reads everything until end-of-stream from a SOCK_SEQPACKET end (10 s at most).
private func readToEnd(_ end: FileDescriptor) throws -> String {
    var bytes: [UInt8] = []
    while true {
        switch try end.receiveMessage(maxBytes: 1 << 16, maxDescriptors: 0, timeoutMilliseconds: 10_000) {
        case .message(let m): bytes += m.bytes
        case .closed: return String(decoding: bytes, as: UTF8.self)
        case .timedOut: throw SystemError("no end-of-stream from the child", errno: ETIMEDOUT)
        }
    }
}

/// Starts `sh -c script` with one end of a socket pair at descriptor 3; returns the child and
/// the other end. The child's end is released when this returns: the child's exit (and its
/// own children's) is then end-of-stream on the returned end.
private func spawnShell(_ script: String, environment: [String] = []) throws -> (ChildProcess, FileDescriptor) {
    let (parentEnd, childEnd) = try UnixSeqpacket.pair()
    let child = try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "-c", script],
                                       environment: environment, descriptors: [(childEnd, 3)])
    return (child, parentEnd)
}

/// Runs `sh -c script` with a socket at descriptor 3; returns how it ended and what it wrote there.
private func runShell(_ script: String, environment: [String] = []) throws -> (ChildProcess.Termination, String) {
    let (child, output) = try spawnShell(script, environment: environment)
    let text = try readToEnd(output)
    return (try child.wait(), text)
}

/// `sh -c script` with one socket end at 3 and another at 4 (given in the other order).
private func spawnWithTwoSockets(_ script: String) throws -> (ChildProcess, FileDescriptor, FileDescriptor) {
    let (three, threeChild) = try UnixSeqpacket.pair()
    let (four, fourChild) = try UnixSeqpacket.pair()
    let child = try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "-c", script],
                                       descriptors: [(fourChild, 4), (threeChild, 3)])
    return (child, three, four)
}

/// Spawns `executable`, retrying on ETXTBSY: a concurrent test's child between its clone and
/// its exec may still hold a writable copy of a file this test has just written.
private func spawnRetryingBusy(executable: FileDescriptor) throws -> ChildProcess {
    for _ in 0..<100 {
        do {
            return try ChildProcess.spawn(executable: executable, arguments: ["worker"])
        } catch {
            guard error.errno == ETXTBSY else { throw error }
            usleep(10_000)
        }
    }
    return try ChildProcess.spawn(executable: executable, arguments: ["worker"])
}

/// Whole contents of a (small) file, or nil.
private func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var all: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { return nil }
        if n == 0 { return all }
        all += chunk[0..<n]
    }
}

/// Creates `path` with `bytes` and mode 0755 (close-on-exec while open, so no concurrent
/// child keeps it open for writing, which would make executing it fail with ETXTBSY).
private func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
    guard fd >= 0 else { throw SystemError("open \(path)", errno: errno) }
    defer { close(fd) }
    guard write(fd, bytes, bytes.count) == bytes.count else { throw SystemError("write \(path)", errno: errno) }
}

/// The value of "Name:\tvalue" in /proc/PID/status.
private func statusField(_ name: String, of pid: Int32) -> String? {
    guard let bytes = readFile("/proc/\(pid)/status") else { return nil }
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(name + ":") {
        return String(line.dropFirst(name.count + 1).filter { $0 != " " && $0 != "\t" })
    }
    return nil
}

private final class Slot<T: Sendable>: Sendable {
    let value = Mutex<T?>(nil)
}

@Suite struct ChildProcessTests {
    @Test func exitStatus() throws {
        let child = try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "-c", "exit 7"])
        #expect(child.pid > 0)
        #expect(try child.wait() == .exited(7))
        #expect(try child.wait() == .exited(7), "a second wait returns the cached result")
        #expect(try child.poll() == .exited(7))
        #expect(ChildProcess.Termination.exited(7).description == "exited with status 7")
    }

    @Test func killedBySignal() throws {
        let child = try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "-c", "kill -9 $$"])
        let termination = try child.wait()
        #expect(termination == .signaled(SIGKILL, coreDumped: false))
        #expect(termination.description == "killed by signal 9 (SIGKILL)")
    }

    @Test func passedDescriptorsAreUsableAtTheirTargets() throws {
        let (termination, output) = try runShell("echo hi >&3")
        #expect(termination == .exited(0))
        #expect(output == "hi\n")

        // Two descriptors, at 3 and 4, each reaching its own target.
        let (child, three, four) = try spawnWithTwoSockets("echo three >&3; echo four >&4")
        #expect(try readToEnd(three) == "three\n")
        #expect(try readToEnd(four) == "four\n")
        #expect(try child.wait() == .exited(0))
    }

    @Test func noOtherDescriptorReachesTheChild() throws {
        // A descriptor of this process that is NOT close-on-exec: the child must not get it
        // anyway (closefrom in the child), nor any other.
        let (keep, _) = try UnixSeqpacket.pair()
        let inheritable = dup(keep.rawValue)
        try #require(inheritable >= 0)
        defer { close(inheritable) }
        let (termination, output) = try runShell("ls /proc/self/fd >&3")
        #expect(termination == .exited(0))
        let listed = Set(output.split(separator: "\n").compactMap { Int32($0) })
        #expect(!listed.contains(inheritable), "descriptor \(inheritable) (not close-on-exec) leaked into the child: \(listed.sorted())")
        // 0, 1, 2 (inherited), 3 (passed), and the one ls opens to read the directory.
        #expect(listed.isSuperset(of: [0, 1, 2, 3]))
        #expect(listed.subtracting([0, 1, 2, 3]).count <= 1, "unexpected descriptors in the child: \(listed.sorted())")
    }

    @Test func environmentIsExactlyWhatWasGiven() throws {
        let child = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["sleep", "30"],
                                           environment: ["A=1", "B=two words"])
        // posix_spawn returns once the exec has replaced the child's memory, which can be a
        // moment before the kernel has laid out the new environment: an empty read means "not yet".
        var environ = readFile("/proc/\(child.pid)/environ")
        for _ in 0..<200 where environ?.isEmpty == true {
            usleep(10_000)
            environ = readFile("/proc/\(child.pid)/environ")
        }
        try child.signal(SIGKILL)
        #expect(try child.wait() == .signaled(SIGKILL, coreDumped: false))
        #expect(environ.map { $0.split(separator: 0).map { String(decoding: $0, as: UTF8.self) } } == ["A=1", "B=two words"])

        let (termination, output) = try runShell("env >&3")
        #expect(termination == .exited(0))
        // The shell adds only PWD (dash exports it); nothing of this process's environment.
        let names = Set(output.split(separator: "\n").map { $0.prefix(while: { $0 != "=" }) })
        #expect(names.isSubset(of: ["PWD"]), "environment in the child: \(output)")

        let (_, argv) = try runShell("echo \"$0|$1|$#\" >&3")
        #expect(argv == "sh||0\n")
    }

    @Test func executesTheOpenedFileNotWhatThePathNamesNow() throws {
        var template = Array("/tmp/bulkhead-child-XXXXXX".utf8CString)
        try #require(mkdtemp(&template) != nil)
        let directory = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let path = directory + "/worker"
        let replacement = directory + "/replacement"
        defer { unlink(path); unlink(replacement); rmdir(directory) }

        let trueProgram = try #require(readFile("/bin/true"))
        let falseProgram = try #require(readFile("/bin/false"))
        try writeFile(path, trueProgram)
        let opened = open(path, O_RDONLY | O_CLOEXEC)
        try #require(opened >= 0)
        let verified = FileDescriptor(owning: opened)
        // Replace the file at the path (a new inode, as an attacker's rename would).
        try writeFile(replacement, falseProgram)
        try #require(rename(replacement, path) == 0)

        let fromDescriptor = try spawnRetryingBusy(executable: verified)
        #expect(try fromDescriptor.wait() == .exited(0), "the file the descriptor has open (true) ran")
        let fromPath = try spawnRetryingBusy(executable: FileDescriptor(owning: open(path, O_RDONLY | O_CLOEXEC)))
        #expect(try fromPath.wait() == .exited(1), "the path now names false")
    }

    @Test func signalAfterReapingIsRefused() throws {
        let child = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["sleep", "30"])
        #expect(try child.poll() == nil)
        try child.signal(0)
        try child.signal(SIGTERM)
        #expect(try child.wait() == .signaled(SIGTERM, coreDumped: false))
        #expect(thrownErrno { try child.signal(SIGKILL) } == ESRCH)
        #expect(thrownErrno { try child.signal(0) } == ESRCH)
    }

    @Test func exitDescriptorBecomesReadableWhenTheChildExits() throws {
        let child = try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "-c", "sleep 0.2; exit 3"])
        let pidfd = try #require(child.exitDescriptor, "pidfd_open is missing (Linux < 5.3 or glibc < 2.36)")
        #expect(!isReadable(pidfd, 0))
        #expect(try child.poll() == nil)
        #expect(isReadable(pidfd, 10_000))
        #expect(try child.poll() == .exited(3))
    }

    @Test func emptySignalMaskAndDefaultDispositionsEvenFromABlockingThread() throws {
        let slot = Slot<ChildProcess>()
        let failure = Slot<String>()
        let thread = try OSThread.spawn {
            var blocked = sigset_t()
            sigemptyset(&blocked)
            sigaddset(&blocked, SIGUSR2)
            sigaddset(&blocked, SIGTERM)
            pthread_sigmask(SIG_BLOCK, &blocked, nil)
            do {
                let child = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["sleep", "30"])
                slot.value.withLock { $0 = child }
            } catch {
                failure.value.withLock { $0 = "\(error)" }
            }
        }
        thread.join()
        let child = try #require(slot.value.withLock { $0 }, "\(failure.value.withLock { $0 } ?? "")")
        let blocked = statusField("SigBlk", of: child.pid)
        let ignored = statusField("SigIgn", of: child.pid)
        try child.signal(SIGTERM) // blocked in the spawning thread, not in the child
        #expect(try child.wait() == .signaled(SIGTERM, coreDumped: false))
        #expect(blocked == "0000000000000000")
        #expect(ignored == "0000000000000000")
    }

    @Test func anUnreapedChildIsKilledAndReapedWithItsObject() throws {
        var child: ChildProcess? = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["sleep", "30"])
        let pid = try #require(child?.pid)
        child = nil
        _ = child
        // Reaped: the pid is no longer this process's child (a zombie would still be).
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        let e = errno
        #expect(r == -1 && e == ECHILD)
    }

    @Test func argumentsAreChecked() throws {
        let (a, b) = try UnixSeqpacket.pair()
        let sh = ["sh", "-c", "exit 0"]
        #expect(thrownErrno { try ChildProcess.spawn(path: "/bin/sh", arguments: []) } == EINVAL)
        #expect(thrownErrno { try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "a\0b"]) } == EINVAL)
        #expect(thrownErrno { try ChildProcess.spawn(path: "/bin/sh", arguments: sh, environment: ["A=\0"]) } == EINVAL)
        #expect(thrownErrno { try ChildProcess.spawn(path: "/bin/sh", arguments: sh, descriptors: [(a, 2)]) } == EINVAL)
        #expect(thrownErrno { try ChildProcess.spawn(path: "/bin/sh", arguments: sh, descriptors: [(a, 3), (b, 3)]) } == EINVAL)
        #expect(thrownErrno { try ChildProcess.spawn(path: "/bin/sh", arguments: sh, descriptors: [(a, 1024)]) } == EINVAL)
        #expect(thrownErrno { try ChildProcess.spawn(path: "/nonexistent/program", arguments: ["x"]) } == ENOENT)
        // A file that is not executable: the exec's own failure comes back from spawn.
        var template = Array("/tmp/bulkhead-notexec-XXXXXX".utf8CString)
        let raw = mkstemp(&template) // mode 0600
        try #require(raw >= 0)
        _ = fcntl(raw, F_SETFD, FD_CLOEXEC)
        unlink(String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self))
        let notExecutable = FileDescriptor(owning: raw)
        #expect(thrownErrno { try ChildProcess.spawn(executable: notExecutable, arguments: ["x"]) } == EACCES)
    }
}

private func isReadable(_ fd: Int32, _ timeoutMilliseconds: Int32) -> Bool {
    waitReadable([fd], timeoutMilliseconds: timeoutMilliseconds).first == true
}
