import HostOS
import KVM
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

/// The worker's side of the vsock broker: a jailed worker cannot reach host paths, so when its
/// guest connects to host port P it asks the launcher, over a SOCK_SEQPACKET socket of their own,
/// to connect to "PATH_P", and receives the connected socket (or the errno). One request at a
/// time, from the device thread; a launcher that does not answer within `timeoutMilliseconds`
/// counts as a refusal, so the device thread never waits long.
public final class VsockBrokerClient: @unchecked Sendable {
    public static let timeoutMilliseconds = 2000
    let socket: FileDescriptor

    public init(socket: FileDescriptor) { self.socket = socket }

    public func connect(port: UInt32) throws(SystemError) -> FileDescriptor {
        try socket.sendMessage(WorkerProtocol.encode(.connectRequest(port: port)))
        while true {
            let answer: ReceivedMessage
            switch try socket.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: 1, timeoutMilliseconds: Self.timeoutMilliseconds) {
            case .message(let m): answer = m
            case .timedOut: throw SystemError("vsock broker: no answer for port \(port)", errno: ETIMEDOUT)
            case .closed: throw SystemError("vsock broker: the launcher is gone", errno: ECONNREFUSED)
            }
            let message: WorkerMessage
            do { message = try WorkerProtocol.decode(answer.bytes, from: .launcher, descriptors: answer.descriptors.count) } catch {
                throw SystemError("vsock broker: a bad answer (\(error))", errno: EPROTO)
            }
            guard case .connectReply(let p, let e) = message else {
                throw SystemError("vsock broker: \(message.type) instead of an answer", errno: EPROTO)
            }
            if p != port { continue }   // a late answer to an earlier request that timed out
            if e != 0 { throw SystemError("connect to host port \(port) (by the launcher)", errno: Int32(e)) }
            guard let fd = answer.descriptors.first else { throw SystemError("vsock broker: no socket attached", errno: EPROTO) }
            return fd
        }
    }
}
