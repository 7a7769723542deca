import HostOS
import KVM
import Synchronization

/// Where guest console output goes: the terminal or a file. Writes from several vCPU threads
/// are serialised, so lines from different vCPUs never interleave within one write.
public final class ConsoleSink: Sendable {
    private let target: Mutex<Target>
    private struct Target: ~Copyable, @unchecked Sendable {
        // Sendable: only used under the mutex.
        var fd: FileDescriptor
        var failed = false
        var captured: [UInt8]?
    }

    public init(fd: FileDescriptor) { target = Mutex(Target(fd: fd)) }

    /// Output to standard output.
    public static func standardOutput() -> ConsoleSink { ConsoleSink(fd: .standardOutput) }

    /// Output to a regular file at `path`, created or emptied, opened with the caller's
    /// permissions (`Caller.open`): never a symbolic link, a FIFO or a device.
    public static func file(_ path: String, caller: Caller = .current) throws(PathRefusal) -> ConsoleSink {
        ConsoleSink(fd: try caller.open(path, what: "console file", access: .createOrTruncate))
    }

    /// Also keeps a copy of everything written (for tests).
    public func startCapture() { target.withLock { $0.captured = [] } }
    public var captured: [UInt8] { target.withLock { $0.captured ?? [] } }

    public func write(_ bytes: [UInt8]) {
        target.withLock { t in
            t.captured?.append(contentsOf: bytes)
            guard !t.failed else { return }
            // A console that cannot be written (closed pipe, full disk) must not stop the VM.
            do { try t.fd.writeAll(bytes) } catch { t.failed = true }
        }
    }
}
