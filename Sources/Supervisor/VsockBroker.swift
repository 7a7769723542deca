import HostOS
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

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
