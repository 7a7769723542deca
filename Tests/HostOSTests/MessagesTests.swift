import Glibc
import Testing
@testable import HostOS

/// The errno of the SystemError a call threw (-1 for another error), or nil when it did not throw.
/// (Takes an untyped closure: inside #expect, closures lose their typed throws.)
private func thrownErrno<T>(_ body: () throws -> T) -> Int32? {
    do { _ = try body(); return nil } catch { return (error as? SystemError)?.errno ?? -1 }
}

/// A pipe, both ends close-on-exec.
private func makePipe() throws -> (read: FileDescriptor, write: FileDescriptor) {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw SystemError("pipe", errno: errno) }
    _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
    return (FileDescriptor(owning: fds[0]), FileDescriptor(owning: fds[1]))
}

private func isCloseOnExec(_ fd: FileDescriptor) -> Bool {
    let flags = fcntl(fd.rawValue, F_GETFD)
    return flags >= 0 && flags & FD_CLOEXEC != 0
}

/// Whether the peer of `end` is closed everywhere (within a second: a concurrent test's
/// posix_spawn child may hold a copy for the moment between its clone and its exec).
private func peerIsClosed(_ end: FileDescriptor) -> Bool {
    if case .closed = try? end.receiveMessage(maxBytes: 16, maxDescriptors: 0, timeoutMilliseconds: 1000) { return true }
    return false
}

@Suite struct MessagesTests {
    @Test func bytesAndThreeDescriptorsRoundTrip() throws {
        let (sender, receiver) = try UnixSeqpacket.pair()
        let pipe = try makePipe()
        var template = Array("/tmp/bulkhead-messages-XXXXXX".utf8CString)
        let rawFile = mkstemp(&template)
        try #require(rawFile >= 0)
        unlink(String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self))
        let file = FileDescriptor(owning: rawFile)
        let (near, far) = try UnixSeqpacket.pair()

        try sender.sendMessage(Array("configuration".utf8), descriptors: [pipe.write, file, far])
        let message = try #require(try receiver.receiveMessage(maxBytes: 64))
        #expect(message.bytes == Array("configuration".utf8))
        try #require(message.descriptors.count == 3)
        for d in message.descriptors {
            #expect(isCloseOnExec(d), "received descriptor \(d.rawValue) is not close-on-exec")
            #expect(![pipe.write.rawValue, file.rawValue, far.rawValue].contains(d.rawValue))
        }

        // The received pipe end writes into the original pipe.
        let ab: [UInt8] = [0x41, 0x42]
        #expect(write(message.descriptors[0].rawValue, ab, 2) == 2)
        var got = [UInt8](repeating: 0, count: 2)
        #expect(read(pipe.read.rawValue, &got, 2) == 2)
        #expect(got == [0x41, 0x42])

        // The received file is the same open file: written through it, read on the original.
        #expect(pwrite(message.descriptors[1].rawValue, Array("abc".utf8), 3, 100) == 3)
        var fromFile = [UInt8](repeating: 0, count: 3)
        #expect(pread(file.rawValue, &fromFile, 3, 100) == 3)
        #expect(fromFile == Array("abc".utf8))

        // The received socket end talks to the original pair's other end.
        try message.descriptors[2].sendMessage([7, 8, 9])
        #expect(try near.receiveMessage(maxBytes: 16, maxDescriptors: 0)?.bytes == [7, 8, 9])
    }

    @Test func messageWithoutDescriptorsAndEndOfStream() throws {
        let (sender, receiver) = try UnixSeqpacket.pair()
        try sender.sendMessage([1, 2, 3])
        let message = try #require(try receiver.receiveMessage(maxBytes: 3))
        #expect(message.bytes == [1, 2, 3])
        #expect(message.descriptors.isEmpty)

        _ = consume sender
        #expect(try receiver.receiveMessage(maxBytes: 16) == nil)
        #expect(try receiver.receiveMessage(maxBytes: 16) == nil, "end-of-stream stays end-of-stream")
    }

    @Test func timeoutVariant() throws {
        let (sender, receiver) = try UnixSeqpacket.pair()
        guard case .timedOut = try receiver.receiveMessage(maxBytes: 16, timeoutMilliseconds: 0) else {
            Issue.record("a zero timeout with nothing queued did not time out"); return
        }
        let start = monotonicNanoseconds()
        guard case .timedOut = try receiver.receiveMessage(maxBytes: 16, timeoutMilliseconds: 50) else {
            Issue.record("nothing queued did not time out"); return
        }
        #expect(monotonicNanoseconds() - start >= 45_000_000)

        try sender.sendMessage([42])
        guard case .message(let message) = try receiver.receiveMessage(maxBytes: 16, timeoutMilliseconds: 1000) else {
            Issue.record("a queued message was not received"); return
        }
        #expect(message.bytes == [42])

        _ = consume sender
        guard case .closed = try receiver.receiveMessage(maxBytes: 16, timeoutMilliseconds: 1000) else {
            Issue.record("a closed peer was not reported"); return
        }
    }

    @Test func blockingReceiveWaitsAlsoOnANonBlockingSocket() throws {
        let (sender, receiver) = try UnixSeqpacket.pair()
        try receiver.setNonBlocking()
        let thread = try OSThread.spawn {
            usleep(50_000)
            try? sender.sendMessage([5], descriptors: [sender])
        }
        let message = try #require(try receiver.receiveMessage(maxBytes: 16))
        thread.join()
        #expect(message.bytes == [5])
        #expect(message.descriptors.count == 1)
    }

    @Test func oversizeDatagramIsRefusedAndItsDescriptorsClosed() throws {
        let (sender, receiver) = try UnixSeqpacket.pair()
        var (near, far): (FileDescriptor, FileDescriptor?) = try UnixSeqpacket.pair()
        try sender.sendMessage([UInt8](repeating: 1, count: 100), descriptors: [try #require(far)])
        far = nil // the only copy left is the one in flight
        #expect(thrownErrno { try receiver.receiveMessage(maxBytes: 10) } == EMSGSIZE)
        #expect(peerIsClosed(near), "the descriptor that came with the refused datagram was not closed")

        // The refused datagram is consumed; the link goes on.
        try sender.sendMessage([2])
        #expect(try receiver.receiveMessage(maxBytes: 10)?.bytes == [2])
    }

    @Test func tooManyDescriptorsAreRefusedAndAllClosed() throws {
        let (sender, receiver) = try UnixSeqpacket.pair()
        var nears: [FileDescriptor] = []
        var fars: [FileDescriptor] = []
        for _ in 0..<5 {
            let (near, far) = try UnixSeqpacket.pair()
            nears.append(near); fars.append(far)
        }
        try sender.sendMessage([1], descriptors: fars)
        try sender.sendMessage([2], descriptors: [fars[0]])
        fars = []
        #expect(thrownErrno { try receiver.receiveMessage(maxBytes: 16, maxDescriptors: 2) } == EMSGSIZE)
        // A receiver that takes no descriptors refuses a message that has one.
        #expect(thrownErrno { try receiver.receiveMessage(maxBytes: 16, maxDescriptors: 0) } == EMSGSIZE)
        for (i, near) in nears.enumerated() {
            #expect(peerIsClosed(near), "descriptor \(i) of the refused message was not closed")
        }
    }

    @Test func unexpectedControlMessageIsRefusedAndDescriptorsClosed() throws {
        let (sender, receiver) = try UnixSeqpacket.pair()
        // SO_PASSCRED makes the kernel attach SCM_CREDENTIALS to every message: not SCM_RIGHTS.
        var one: Int32 = 1
        try #require(setsockopt(receiver.rawValue, SOL_SOCKET, SO_PASSCRED, &one, socklen_t(MemoryLayout<Int32>.size)) == 0)
        var (near, far): (FileDescriptor, FileDescriptor?) = try UnixSeqpacket.pair()
        try sender.sendMessage([1], descriptors: [try #require(far)])
        far = nil
        #expect(thrownErrno { try receiver.receiveMessage(maxBytes: 16) } == EPROTO)
        #expect(peerIsClosed(near))
    }

    @Test func sendLimits() throws {
        let (sender, _) = try UnixSeqpacket.pair()
        let (_, far) = try UnixSeqpacket.pair()
        let tooMany = [FileDescriptor](repeating: far, count: FileDescriptor.maxPassedDescriptors + 1)
        #expect(thrownErrno { try sender.sendMessage([1], descriptors: tooMany) } == EINVAL)
        #expect(thrownErrno { try sender.sendMessage([]) } == EINVAL)
        // The limit itself is fine (the same descriptor may go several times).
        let (sender2, receiver2) = try UnixSeqpacket.pair()
        let exactly = [FileDescriptor](repeating: far, count: FileDescriptor.maxPassedDescriptors)
        try sender2.sendMessage([1], descriptors: exactly)
        #expect(try receiver2.receiveMessage(maxBytes: 16)?.descriptors.count == FileDescriptor.maxPassedDescriptors)
    }

    @Test func receiveArgumentsAreChecked() throws {
        let (_, receiver) = try UnixSeqpacket.pair()
        #expect(thrownErrno { try receiver.receiveMessage(maxBytes: 0) } == EINVAL)
        #expect(thrownErrno { try receiver.receiveMessage(maxBytes: 16, maxDescriptors: -1) } == EINVAL)
        #expect(thrownErrno { try receiver.receiveMessage(maxBytes: 16, maxDescriptors: 65) } == EINVAL)
    }

    @Test func sendToAClosedPeerIsAnErrorNotSIGPIPE() throws {
        var (sender, receiver): (FileDescriptor, FileDescriptor?) = try UnixSeqpacket.pair()
        receiver = nil
        _ = receiver
        #expect(thrownErrno { try sender.sendMessage([1]) } == EPIPE)
    }

    @Test func controlMessageLayout() {
        // glibc x86_64: CMSG_LEN(4) = 20, CMSG_SPACE(4) = 24, CMSG_SPACE(12) = 32.
        #expect(ControlMessages.headerSpace == 16)
        #expect(ControlMessages.length(4) == 20)
        #expect(ControlMessages.space(4) == 24)
        #expect(ControlMessages.space(12) == 32)
    }
}
