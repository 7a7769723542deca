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
