import Supervisor
import HostOS
import KVM
import Testing
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif
@testable import VMM

/// The vsock broker: a jailed worker's connections, made by the launcher (no KVM needed).
struct VsockBrokerTests {
    @Test func connectionsAreMadeByTheServiceAndPassedBack() throws {
        let prefix = temporaryPath("broker")
        let listener = try UnixStream.listen(prefix + "_7")
        defer { unlinkPath(prefix + "_7") }
        let service: OSThread
        do {
            let (workerEnd, launcherEnd) = try UnixSeqpacket.pair()
            service = try OSThread.spawn { VsockBrokerService.serve(launcherEnd, pathPrefix: prefix) }
            let host = UnixVsockHost(connector: VsockBrokerClient(socket: workerEnd).connect)
            let id = try #require(host.connect(port: 7))
            let peer = try UnixStream.accept(listener)
            // Accepted descriptors are close-on-exec from the start (accept4).
            #expect(fcntl(peer.rawValue, F_GETFD) & FD_CLOEXEC != 0)
            #expect(host.send(id, [1, 2, 3]) == 3)
            #expect(try peer.readStream(max: 10) == .data([1, 2, 3]))
            // Nothing at port 8: refused, with the launcher's errno.
            #expect(host.connect(port: 8) == nil)
            #expect(host.lastError?.errno == ENOENT || host.lastError?.errno == ECONNREFUSED, "\(String(describing: host.lastError))")
            host.close(id)
        }
        // The worker's end is closed now (the host, its client and the socket are gone): the
        // service ends.
        service.join()
    }

    /// The service faces a compromised worker: anything but a well-formed request ends it, and it
    /// never connects for it.
    @Test(arguments: [
        [UInt8](repeating: 0x41, count: 16),                                   // not a message
        WorkerProtocol.encode(.started),                                        // a valid message of the wrong kind
        WorkerProtocol.encode(.connectReply(port: 7, errno: 111)),              // the launcher's kind
        Array(WorkerProtocol.encode(.connectRequest(port: 7)).dropLast()),      // truncated
    ])
    func hostileRequestsEndTheService(bytes: [UInt8]) throws {
        let (workerEnd, launcherEnd) = try UnixSeqpacket.pair()
        let service = try OSThread.spawn { VsockBrokerService.serve(launcherEnd, pathPrefix: "/nonexistent/x") }
        try workerEnd.sendMessage(bytes)
        service.join()   // returns: the service stopped, without answering
        if case .message = try workerEnd.receiveMessage(maxBytes: 1024, maxDescriptors: 1, timeoutMilliseconds: 0) {
            Issue.record("the service answered a hostile request")
        }
    }

    /// The client faces the launcher: a reply for another port is skipped (a late answer), a
    /// malformed one is an error, silence is a timeout-free refusal when the launcher is gone.
    @Test func clientChecksTheReplies() throws {
        let (workerEnd, launcherEnd) = try UnixSeqpacket.pair()
        let client = VsockBrokerClient(socket: workerEnd)
        try launcherEnd.sendMessage(WorkerProtocol.encode(.connectReply(port: 99, errno: 111)))   // stale: skipped
        try launcherEnd.sendMessage([0x42, 0x48])                                               // garbage
        #expect(throws: SystemError.self) { _ = try client.connect(port: 5) }
        // The request did reach the launcher's end.
        let request = try #require(try launcherEnd.receiveMessage(maxBytes: 1024, maxDescriptors: 0))
        #expect(try WorkerProtocol.decode(request.bytes, from: .worker, descriptors: 0) == .connectRequest(port: 5))
        // A refusal carries the launcher's errno.
        try launcherEnd.sendMessage(WorkerProtocol.encode(.connectReply(port: 6, errno: UInt32(ECONNREFUSED))))
        do { _ = try client.connect(port: 6); Issue.record("connected") } catch { #expect(error.errno == ECONNREFUSED) }
    }
}
