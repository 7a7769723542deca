import KVM
import VMM
import WorkerProtocol

/// `bulkhead run --worker`: the VM runs in a `bulkhead-worker` process of its own. This process
/// opens everything the VM will use (the image, /dev/kvm, the console, disks, network sockets),
/// starts the worker from the executable next to this one, hands it the configuration and the
/// descriptors over a SOCK_SEQPACKET socketpair, and reports what the worker says. It trusts
/// nothing the worker sends: every message is decoded strictly, and a worker that dies or talks
/// nonsense is reported as such.
struct Launcher {
    /// What the launcher concluded.
    enum Result {
        case ended(VMOutcome, counters: [Counter])
        case refused(String)
        /// The worker died without reporting an end (a signal, or an exit) or broke the protocol.
        case workerFailed(String, status: Int32)
    }

    static func workerExecutable() throws(SystemError) -> FileDescriptor {
        let exe = executablePath() ?? ""
        let dir = exe.lastIndex(of: "/").map { String(exe[..<$0]) } ?? "."
        return try FileDescriptor.open(readOnly: dir + "/bulkhead-worker")
    }

    /// Runs `configuration` with `descriptors` (in the order its indexes name them) in a worker.
    static func run(_ configuration: VMConfiguration, descriptors: [FileDescriptor]) throws(SystemError) -> Result {
        let executable = try workerExecutable()
        let mine: FileDescriptor
        let child: ChildProcess
        do {
            let (a, theirs) = try UnixSeqpacket.pair()
            child = try ChildProcess.spawn(executable: executable, arguments: ["bulkhead-worker"], environment: [],
                                           descriptors: [(theirs, 3)])
            mine = a
        }   // our copy of the worker's end closes here: when the worker dies, reads see the end
        try mine.sendMessage(WorkerProtocol.encode(.configure(configuration)), descriptors: descriptors)

        var started = false
        while true {
            let received: ReceivedMessage?
            do { received = try mine.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: 0) } catch {
                return failed(child, "the control socket failed: \(error)")
            }
            guard let received else { break }
            let message: WorkerMessage
            do {
                message = try WorkerProtocol.decode(received.bytes, from: .worker, descriptors: received.descriptors.count)
            } catch {
                return failed(child, "the worker sent a bad message: \(error)")
            }
            switch message {
            case .started where !started:
                started = true
            case .ended(let outcome, let counters) where started:
                _ = try? child.wait()
                return .ended(outcome, counters: counters)
            case .refused(let why):
                _ = try? child.wait()
                return .refused(why)
            default:
                return failed(child, "the worker sent \(message.type) out of turn")
            }
        }
        // The worker closed its end without an `ended`.
        let end = (try? child.wait()).map { "\($0)" } ?? "unknown"
        switch try? child.wait() {
        case .signaled(let sig, _)?: return .workerFailed("the worker was killed (\(end)) before the VM ended", status: 128 + sig)
        default: return .workerFailed("the worker ended (\(end)) without reporting how the VM ended", status: Status.internalError)
        }
    }

    /// Kills a worker that broke the protocol and reaps it.
    static func failed(_ child: ChildProcess, _ why: String) -> Result {
        try? child.signal(9)
        _ = try? child.wait()
        return .workerFailed(why, status: Status.internalError)
    }
}
