import Devices
import HostOS
import KVM
#if canImport(Glibc)
import Glibc
#endif

/// Why a descriptor cannot carry frames.
public enum SeqpacketFrameBackendError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Frames need datagram boundaries: only SOCK_SEQPACKET keeps them on a connected Unix socket.
    case notSeqpacket
    case system(SystemError)

    public var description: String {
        switch self {
        case .notSeqpacket:
            return "the network descriptor is not a SOCK_SEQPACKET socket (one Ethernet frame per datagram)"
        case .system(let e):
            return "network socket: \(e)"
        }
    }
}

/// What the back end has seen go wrong, for metrics. Counters only grow.
public struct SeqpacketCounters: Equatable, Sendable {
    /// Datagrams longer than the receive buffer (`receiveCapacity`): consumed and dropped.
    public var truncated: UInt64 = 0
    /// Sends that failed for good (the peer is gone, EMSGSIZE...).
    public var sendErrors: UInt64 = 0
    /// Receives that failed with an unexpected error.
    public var receiveErrors: UInt64 = 0
}

/// Ethernet frames over a connected Unix SOCK_SEQPACKET socket, one frame per datagram: how two
/// VMMs (or a VMM and a tenant switch) are wired. The socket is already open — whoever starts the
/// VMM connects it and passes the descriptor; the VMM opens nothing. It is put in non-blocking
/// mode, and every send and receive is non-blocking as well (MSG_DONTWAIT), so the device thread
/// never waits on the peer.
///
/// Threats: the peer is another tenant. Its datagrams are read into a buffer of
/// `receiveCapacity` (64 KiB) bytes; a longer one is detected (MSG_TRUNC), dropped and counted,
/// never delivered cut short. Frame contents are the device's business (`VirtioNet` checks their
/// size). A peer that stops reading makes `send` answer `wouldBlock` (back pressure to the
/// guest), never blocks the VMM. A peer that hangs up makes `isClosed` true: the socket would be
/// readable for ever, so it must not be polled any more. SIGPIPE is never raised (MSG_NOSIGNAL).
///
/// Not thread-safe: the device serialises its calls.
public final class SeqpacketFrameBackend: FrameBackend {
    public static let receiveCapacity = 64 * 1024
    /// Datagrams read per `receive` call while skipping truncated ones.
    static let maxSkippedPerReceive = 64

    public let fd: FileDescriptor
    public private(set) var counters = SeqpacketCounters()
    public private(set) var isClosed = false
    /// The last failure, for diagnostics (the guest sees only dropped frames).
    public private(set) var lastError: SystemError?
    /// Reused for every receive: one allocation, not one per frame.
    private var buffer = [UInt8](repeating: 0, count: SeqpacketFrameBackend.receiveCapacity)

    public var waitHandle: WaitHandle? { WaitHandle(hostDescriptor: fd.rawValue) }

    /// Takes a connected SOCK_SEQPACKET socket and makes it non-blocking.
    public init(fd: FileDescriptor) throws(SeqpacketFrameBackendError) {
        let type: Int32
        do { type = try fd.socketType() } catch { throw .system(error) }
        guard type == Int32(SOCK_SEQPACKET.rawValue) else { throw .notSeqpacket }
        do { try fd.setNonBlocking() } catch { throw .system(error) }
        self.fd = fd
    }

    /// Two back ends wired back to back (a socketpair): for two VMs in one process, and tests.
    public static func pair() throws(SeqpacketFrameBackendError) -> (SeqpacketFrameBackend, SeqpacketFrameBackend) {
        let ends: (FileDescriptor, FileDescriptor)
        do { ends = try UnixSeqpacket.pair() } catch { throw .system(error) }
        return (try SeqpacketFrameBackend(fd: ends.0), try SeqpacketFrameBackend(fd: ends.1))
    }

    public func send(_ frame: [UInt8]) -> FrameSendResult {
        guard !isClosed else { return .failed }
        do {
            switch try fd.sendDatagram(frame) {
            case .sent: return .sent
            case .wouldBlock: return .wouldBlock
            }
        } catch {
            counters.sendErrors += 1
            lastError = error
            if error.errno == EPIPE || error.errno == ECONNRESET || error.errno == ENOTCONN { isClosed = true }
            return .failed
        }
    }

    public func receive() -> [UInt8]? {
        guard !isClosed else { return nil }
        for _ in 0..<Self.maxSkippedPerReceive {
            let r: DatagramReceive
            do { r = try fd.receiveDatagram(into: &buffer) } catch {
                counters.receiveErrors += 1
                lastError = error
                return nil
            }
            switch r {
            case .datagram(let bytes): return bytes
            case .truncated: counters.truncated += 1
            case .wouldBlock: return nil
            case .closed:
                isClosed = true
                return nil
            }
        }
        // Still readable: the VMM polls again after serving the others.
        return nil
    }
}
