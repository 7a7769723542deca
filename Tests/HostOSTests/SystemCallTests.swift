import HostOS
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The one EINTR loop of the host-OS layer.
@Suite struct SystemCallTests {
    /// A call interrupted twice is made three times and its result returned.
    @Test func anInterruptedCallIsMadeAgain() throws {
        var calls = 0
        let r = try SystemCall.retrying("test call") { () -> Int in
            calls += 1
            if calls < 3 { errno = EINTR; return -1 }
            return 42
        }
        #expect(r == 42 && calls == 3)
    }

    /// Any other failure is thrown once, with the operation and its errno.
    @Test func otherFailuresAreThrownWithTheirErrno() {
        var calls = 0
        #expect(throws: SystemError("test call", errno: EBADF)) {
            try SystemCall.retrying("test call") { () -> Int32 in
                calls += 1
                errno = EBADF
                return -1
            }
        }
        #expect(calls == 1)
    }

    /// `uninterrupted` hands back a failure other than EINTR with errno still set.
    @Test func uninterruptedLeavesOtherErrorsToTheCaller() {
        var calls = 0
        let r = SystemCall.uninterrupted { () -> Int in
            calls += 1
            errno = calls == 1 ? EINTR : EAGAIN
            return -1
        }
        let e = errno
        #expect(r == -1 && e == EAGAIN && calls == 2)
    }

    /// A real call: a read from a pipe whose writer wrote 3 bytes and closed.
    @Test func aRealReadGoesThrough() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let reader = FileDescriptor(owning: fds[0])
        do {
            let writer = FileDescriptor(owning: fds[1])
            try writer.writeAll([1, 2, 3])
        }   // the writer is closed when its owner goes
        #expect(try reader.readAll(limit: 16) == [1, 2, 3])
    }
}

/// The calls HostOS makes through swift-system: a failure comes back as the same `SystemError`
/// (operation, errno, the system's text) as the hand-written calls give, and nothing is left open
/// or changed.
@Suite struct SwiftSystemCallTests {
    func scratch(_ name: String) -> String {
        let dir = "/tmp/bh-system-\(getpid())-\(name)"
        _ = mkdir(dir, 0o755)
        return dir
    }

    @Test func openingWhatIsNotThereSaysSo() {
        do {
            _ = try FileDescriptor.open(readOnly: "/nonexistent/bulkhead")
            Issue.record("opened a path that does not exist")
        } catch {
            #expect(error.errno == ENOENT && error.operation == "open /nonexistent/bulkhead")
            #expect(error.description == "open /nonexistent/bulkhead failed: No such file or directory (errno 2)")
        }
        #expect(throws: SystemError.self) { try FileDescriptor.open(readWrite: "/nonexistent/bulkhead") }
        #expect(SystemError.message(for: EACCES) == String(cString: strerror(EACCES)))
    }

    @Test func aWriteReadAndPositionalRoundTrip() throws {
        let dir = scratch("round")
        defer { unlink(dir + "/f"); rmdir(dir) }
        let w = try FileDescriptor.open(writing: dir + "/f")
        try w.writeAll(Array("0123456789".utf8))
        let f = try FileDescriptor.open(readWrite: dir + "/f")
        try f.write(Array("ab".utf8), at: 4)
        #expect(try f.read(at: 3, count: 4) == Array("3ab6".utf8))
        #expect(try FileDescriptor.open(readOnly: dir + "/f").readAll(limit: 100) == Array("0123ab6789".utf8))
        #expect(throws: SystemError.self) { try FileDescriptor.open(readOnly: dir + "/f").readAll(limit: 9) }   // over the limit
        #expect(throws: SystemError.self) { try f.read(at: 8, count: 4) }                                     // past the end: EIO
        #expect(throws: SystemError.self) { try f.read(at: UInt64.max - 1, count: 4) }                       // offset overflow
    }

    /// A control file is written whole or not at all; a missing one is refused, never created.
    @Test func controlFilesAreNeverCreated() {
        let dir = scratch("control")
        defer { rmdir(dir) }
        do { try writeControlFile(dir + "/missing", "1") ; Issue.record("wrote a file that did not exist") } catch {
            #expect(error.errno == ENOENT)
        }
        #expect(writeInOneCall(dir + "/missing", "1") == String(cString: strerror(ENOENT)))
        #expect(access(dir + "/missing", F_OK) != 0)
    }

    /// A lock file's path that is a symbolic link is refused (O_NOFOLLOW), and the link's target
    /// is not created.
    @Test func aLockFileIsNeverASymbolicLink() throws {
        let dir = scratch("lock")
        defer { unlink(dir + "/link"); unlink(dir + "/lock"); rmdir(dir) }
        #expect(symlink(dir + "/target", dir + "/link") == 0)
        #expect(throws: SystemError.self) { try LockFile.acquire(dir + "/link") }
        #expect(access(dir + "/target", F_OK) != 0)
        let lock = try LockFile.acquire(dir + "/lock")
        #expect(lock != nil)
        #expect(try LockFile.acquire(dir + "/lock") == nil)   // held
        lock?.release()
        #expect(access(dir + "/lock", F_OK) != 0)
    }
}
