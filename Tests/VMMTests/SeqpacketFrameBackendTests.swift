import TestSupport
import Testing
import Devices
import HostOS
import KVM
import Virtio
@testable import VMM
#if canImport(Glibc)
import Glibc
#endif

private func bytes(_ count: Int, seed: Int = 1) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ seed &* 7 &+ ($0 >> 8)) }
}

/// These run on real Unix sockets (no root, no KVM needed).
@Suite struct SeqpacketFrameBackendTests {
    @Test func pairKeepsDatagramBoundaries() throws {
        let (a, b) = try SeqpacketFrameBackend.pair()
        #expect(a.fd.isNonBlocking && b.fd.isNonBlocking)
        #expect(a.fd.isSeqpacketSocket)
        #expect(a.waitHandle?.hostDescriptor == a.fd.rawValue && a.waitHandle != b.waitHandle)
        #expect(b.receive() == nil)                                  // nothing yet: no blocking
        let frames = [bytes(14), bytes(60, seed: 2), bytes(1514, seed: 3), bytes(1, seed: 4), bytes(9018, seed: 5)]
        for f in frames { #expect(a.send(f) == .sent) }
        for f in frames { #expect(b.receive() == f) }               // one datagram, one frame
        #expect(b.receive() == nil)
        // And the other way.
        #expect(b.send(bytes(100)) == .sent)
        #expect(a.receive() == bytes(100))
        #expect(a.counters == SeqpacketCounters() && b.counters == SeqpacketCounters())
        #expect(!a.isClosed && !b.isClosed)
    }

    @Test func emptyDatagramIsNotTheEnd() throws {
        let (a, b) = try UnixSeqpacket.pair()
        let backend = try SeqpacketFrameBackend(fd: b)
        #expect(try a.sendDatagram([]) == .sent)
        #expect(try a.sendDatagram([1, 2, 3]) == .sent)
        #expect(backend.receive() == [])                             // the device drops it as a runt
        #expect(backend.receive() == [1, 2, 3])
        #expect(!backend.isClosed)
    }

    @Test func truncatedDatagramsAreDroppedAndCounted() throws {
        let (a, b) = try UnixSeqpacket.pair()
        try a.setSendBufferSize(1 << 20)
        let backend = try SeqpacketFrameBackend(fd: b)
        let big = bytes(SeqpacketFrameBackend.receiveCapacity + 1)
        #expect(try a.sendDatagram(big) == .sent)
        #expect(try a.sendDatagram(bytes(70_000, seed: 2)) == .sent)
        #expect(try a.sendDatagram(bytes(64, seed: 3)) == .sent)
        // Both oversized datagrams are consumed and counted; the next one arrives whole.
        #expect(backend.receive() == bytes(64, seed: 3))
        #expect(backend.counters.truncated == 2)
        // Exactly the capacity is not truncated.
        #expect(try a.sendDatagram(bytes(SeqpacketFrameBackend.receiveCapacity, seed: 4)) == .sent)
        #expect(backend.receive() == bytes(SeqpacketFrameBackend.receiveCapacity, seed: 4))
        #expect(backend.counters.truncated == 2)
        // A truncated datagram alone: nothing comes out, it is still counted.
        #expect(try a.sendDatagram(big) == .sent)
        #expect(backend.receive() == nil)
        #expect(backend.counters.truncated == 3)
    }

    @Test func fullPeerMeansWouldBlockNotBlocking() throws {
        let (a, b) = try SeqpacketFrameBackend.pair()
        try a.fd.setSendBufferSize(4096)
        let frame = bytes(1514)
        var sent = 0
        var result = FrameSendResult.sent
        // The peer never reads: the buffers fill, and send says so instead of blocking.
        while sent < 100_000 {
            result = a.send(frame)
            guard result == .sent else { break }
            sent += 1
        }
        #expect(result == .wouldBlock)
        #expect(sent > 0 && sent < 100_000)
        #expect(a.send(frame) == .wouldBlock)                        // still full, still not blocking
        // The peer drains: sending works again, and every frame arrives in order and whole.
        var received = 0
        while let f = b.receive() {
            #expect(f == frame)
            received += 1
        }
        #expect(received == sent)
        #expect(a.send(frame) == .sent)
        #expect(a.counters.sendErrors == 0)
    }

    @Test func hungUpPeerClosesTheLink() throws {
        var (a, b): (SeqpacketFrameBackend?, SeqpacketFrameBackend) = try SeqpacketFrameBackend.pair()
        #expect(a?.send(bytes(60)) == .sent)
        a = nil                                                      // the peer's end is closed
        #expect(a == nil)
        #expect(b.receive() == bytes(60))                            // what was queued still arrives
        #expect(!b.isClosed)
        #expect(b.receive() == nil)
        #expect(b.isClosed)
        #expect(b.send(bytes(60)) == .failed)
        // The device stops asking for the socket to be polled.
        let net = try VirtioNet(backend: b, mac: [2, 0, 0, 0, 0, 1])
        #expect(net.inputHandles.isEmpty)
    }

    @Test func sendingToAClosedPeerFails() throws {
        var (a, b): (SeqpacketFrameBackend, SeqpacketFrameBackend?) = try SeqpacketFrameBackend.pair()
        b = nil
        #expect(b == nil)
        #expect(a.send(bytes(60)) == .failed)                        // EPIPE, and no SIGPIPE
        #expect(a.counters.sendErrors == 1 && a.isClosed)
        #expect(a.lastError?.errno == EPIPE)
    }

    @Test func refusesDescriptorsThatAreNotSeqpacket() throws {
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let stream = FileDescriptor(owning: fds[0]), other = FileDescriptor(owning: fds[1])
        #expect(throws: SeqpacketFrameBackendError.notSeqpacket) { try SeqpacketFrameBackend(fd: stream) }
        _ = other
        #expect(pipe(&fds) == 0)
        let r = FileDescriptor(owning: fds[0]), w = FileDescriptor(owning: fds[1])
        #expect(throws: SeqpacketFrameBackendError.system(SystemError("getsockopt(SO_TYPE)", errno: ENOTSOCK))) {
            try SeqpacketFrameBackend(fd: r)
        }
        _ = w
        #expect(SeqpacketFrameBackendError.notSeqpacket.description.contains("SOCK_SEQPACKET"))
    }

    /// Two virtio-net devices wired back to back through a socketpair: a frame one guest transmits
    /// lands in the other guest's receive buffer, and the polled descriptor says when.
    @Test func twoDevicesBackToBack() throws {
        let (la, lb) = try SeqpacketFrameBackend.pair()
        let macA: [UInt8] = [2, 0, 0, 0, 0, 0xa], macB: [UInt8] = [2, 0, 0, 0, 0, 0xb]
        let netA = try VirtioNet(backend: la, mac: macA), netB = try VirtioNet(backend: lb, mac: macB)
        #expect(netB.inputHandles == [lb.waitHandle])

        let ram = ArrayRAM(base: 0, size: 0x1_0000)
        // Transmit queue of A at 0x1000/0x2000/0x3000, receive queue of B at 0x4000/0x5000/0x6000.
        var txDriver = DriverQueue(ram: ram, size: 4, descriptorTable: 0x1000, availRing: 0x2000, usedRing: 0x3000)
        var rxDriver = DriverQueue(ram: ram, size: 4, descriptorTable: 0x4000, availRing: 0x5000, usedRing: 0x6000)
        var tx = txDriver.splitQueue(), rx = rxDriver.splitQueue()
        var arena = BufferArena(start: 0x8000, end: 0x1_0000)
        let frame = [2, 0, 0, 0, 0, 0xb] + macA + [0x08, 0x00] + bytes(46)
        _ = txDriver.submit([.readable([UInt8](repeating: 0, count: 12) + frame)], arena: &arena)
        let receiveBuffer = rxDriver.submit([.writable(1526)], arena: &arena).buffers[0].buffer

        #expect(waitReadable([lb.fd.rawValue], timeoutMilliseconds: 0) == [])   // nothing yet
        #expect(try netA.process(queue: 1, &tx, ram: ram))
        #expect(netA.counters.framesSent == 1)
        #expect(waitReadable([lb.fd.rawValue], timeoutMilliseconds: 1000) == [true])
        var queues: [SplitQueue?] = [rx, nil]
        let r = try netB.receive(queues: &queues, ram: ram)
        #expect(r == ReceiveResult(used: true, needsBuffers: false))
        rx = queues[0]!
        let used = rxDriver.takeUsed()
        #expect(used.count == 1 && used.first?.length == UInt32(12 + frame.count))
        #expect(ram.copyOut(at: receiveBuffer.address, count: 12 + frame.count) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0] + frame)
        #expect(netB.counters.framesReceived == 1)
        _ = rx
    }
}
