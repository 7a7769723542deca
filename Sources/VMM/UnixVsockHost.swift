import Devices
import HostOS
import KVM

/// The host side of virtio-vsock on Unix sockets, in the style of Firecracker: a guest that
/// connects to host port P reaches the Unix stream socket listening at "PATH_P". Whoever runs the
/// VM creates those listeners; the VMM only connects to them, never creates or removes a path.
///
/// Every socket is non-blocking, so the device thread never waits on a host program: a full
/// socket accepts 0 bytes (the device keeps the data within the credit it advertised and retries),
/// an empty one reads as `.empty`. A host program that goes away makes sends fail (EPIPE, no
/// SIGPIPE) and reads end: the device resets the connection.
///
/// Threats: the guest chooses the port (any 32-bit number) and so which "PATH_P" is tried; it
/// cannot choose the path prefix, and a number has no '/' or "..", so it stays in the directory
/// the operator named. At most `VirtioVsock.maxConnections` sockets are open at once.
///
/// In a worker, which cannot reach host paths, the connections are made by the launcher and
/// passed back (`init(connector:)` with a `VsockBrokerClient`); everything else is the same.
///
/// Not thread-safe: the device serialises its calls.
public final class UnixVsockHost: VsockHost {
    /// Makes the connection for a port (connect(2) to "PATH_P", or a request to the launcher).
    public typealias Connector = (UInt32) throws(SystemError) -> FileDescriptor
    /// Empty when connections come from a connector.
    public let pathPrefix: String
    private let connector: Connector
    private var sockets: [UInt64: FileDescriptor] = [:]
    private var nextID: UInt64 = 1
    /// Connection attempts refused (nothing listening, or a full backlog) and I/O errors.
    public private(set) var refused: UInt64 = 0
    public private(set) var errors: UInt64 = 0
    /// The last failure, for diagnostics (the guest sees only RST).
    public private(set) var lastError: SystemError?

    public init(pathPrefix: String) throws(UnixVsockHostError) {
        try UnixVsockHostError.check(pathPrefix: pathPrefix)
        self.pathPrefix = pathPrefix
        connector = { port throws(SystemError) in try UnixStream.connect("\(pathPrefix)_\(port)") }
    }

    public init(connector: @escaping Connector) {
        pathPrefix = ""
        self.connector = connector
    }

    public func path(port: UInt32) -> String { "\(pathPrefix)_\(port)" }

    public var openCount: Int { sockets.count }

    public func connect(port: UInt32) -> UInt64? {
        do {
            let fd = try connector(port)
            let id = nextID
            nextID += 1
            sockets[id] = fd
            return id
        } catch {
            refused += 1
            lastError = error
            return nil
        }
    }

    public func send(_ id: UInt64, _ bytes: [UInt8]) -> Int? {
        guard let fd = sockets[id] else { return nil }
        do { return try fd.writeStream(bytes[...]) } catch {
            errors += 1
            lastError = error
            return nil
        }
    }

    public func receive(_ id: UInt64, max: Int) -> VsockHostRead {
        guard let fd = sockets[id], max > 0 else { return .closed }
        do {
            switch try fd.readStream(max: max) {
            case .data(let b): return .data(b)
            case .wouldBlock: return .empty
            case .closed: return .closed
            case .reset: return .reset
            }
        } catch {
            errors += 1
            lastError = error
            return .closed
        }
    }

    public func finishSending(_ id: UInt64) {
        sockets[id]?.shutdownWriting()
    }

    public func close(_ id: UInt64) {
        sockets[id] = nil  // FileDescriptor closes on release
    }

    public func waitHandle(_ id: UInt64) -> WaitHandle? { sockets[id].map { WaitHandle(hostDescriptor: $0.rawValue) } }
}
