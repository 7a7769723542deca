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

/// The launcher's side: serves a worker's `connectRequest`s until the worker closes the socket.
/// Every message is decoded strictly; anything but a request ends the service (the guest's vsock
/// connections then fail, nothing else does). The launcher connects only to "PATH_P" under the
/// operator's prefix: the worker chooses P, which is a number. The serving thread connects with
/// the caller's filesystem credentials (`Caller.adoptOnThisThread`), taken at its start; if it
/// cannot take them it serves nothing.
public enum VsockBrokerService {
    public static func serve(_ socket: FileDescriptor, pathPrefix: String, caller: Caller = .current) {
        do { try caller.adoptOnThisThread() } catch { return }
        while true {
            guard let received = try? socket.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: 0),
                  case .connectRequest(let port)? = try? WorkerProtocol.decode(received.bytes, from: .worker, descriptors: received.descriptors.count)
            else { return }
            do {
                let fd = try UnixStream.connect("\(pathPrefix)_\(port)")
                try socket.sendMessage(WorkerProtocol.encode(.connectReply(port: port, errno: 0)), descriptors: [fd])
            } catch {
                let e = error.errno > 0 && error.errno < 4096 ? UInt32(error.errno) : UInt32(ECONNREFUSED)
                guard (try? socket.sendMessage(WorkerProtocol.encode(.connectReply(port: port, errno: e)))) != nil else { return }
            }
        }
    }
}
