import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A pipe's two ends, close-on-exec.
public struct OSPipe: Sendable {
    public let readEnd: FileDescriptor
    public let writeEnd: FileDescriptor

    /// With `nonBlockingWrites`, a write to a full pipe fails with EAGAIN instead of waiting.
    public init(nonBlockingWrites: Bool = false) throws(SystemError) {
        var ends: [Int32] = [-1, -1]
        let made = ends.withUnsafeMutableBufferPointer { buf -> Int32 in
            // SAFETY: pipe2 writes exactly two descriptors into the array's storage.
            clinux_pipe_cloexec(buf.baseAddress)
        }
        guard made == 0 else { throw SystemError("pipe2", errno: errno) }
        readEnd = FileDescriptor(owning: ends[0])
        writeEnd = FileDescriptor(owning: ends[1])
        if nonBlockingWrites {
            let flags = fcntl(ends[1], F_GETFL)
            guard flags >= 0, fcntl(ends[1], F_SETFL, flags | O_NONBLOCK) == 0 else { throw SystemError("fcntl O_NONBLOCK", errno: errno) }
        }
    }
}

/// What one `readSome` got.
public enum ReadResult: Equatable, Sendable {
    case bytes([UInt8])
    /// End of file (the writer closed its end, or the terminal hung up).
    case end
    /// Nothing to read without waiting (a non-blocking descriptor).
    case wouldBlock
}

extension FileDescriptor {
    /// One read(2) of at most `maxBytes` (retried on EINTR).
    public func readSome(maxBytes: Int) throws(SystemError) -> ReadResult {
        guard maxBytes > 0 else { return .bytes([]) }
        var chunk = [UInt8](repeating: 0, count: maxBytes)
        let n: Int
        do {
            n = try chunk.withUnsafeMutableBytes { buf throws -> Int in
                // SAFETY: reads at most buf.count bytes into the array's own storage.
                try system.read(into: buf)
            }
        } catch let e as Errno {
            switch e {
            case .resourceTemporarilyUnavailable: return .wouldBlock
            // A terminal whose session ended reads EIO: no more input will come.
            case .ioError: return .end
            default: throw SystemError("read", errno: e.rawValue)
            }
        } catch {
            throw SystemError("read (\(error))", errno: EIO)
        }
        return n > 0 ? .bytes(Array(chunk[0..<n])) : .end
    }

    /// One write(2) of as much of `bytes` as fits without waiting on a non-blocking descriptor
    /// (all of it, on a blocking one); returns how many were written (0: the descriptor is full).
    public func writeSome(_ bytes: ArraySlice<UInt8>) throws(SystemError) -> Int {
        guard !bytes.isEmpty else { return 0 }
        do {
            return try bytes.withUnsafeBytes { buf throws -> Int in
                // SAFETY: writes from the slice's own storage, within its bounds.
                try system.write(buf)
            }
        } catch let e as Errno {
            if e == .resourceTemporarilyUnavailable { return 0 }
            throw SystemError("write", errno: e.rawValue)
        } catch {
            throw SystemError("write (\(error))", errno: EIO)
        }
    }

    /// Whether this descriptor is a terminal.
    public var isTerminal: Bool { isatty(rawValue) == 1 }
}

/// The terminal on standard input in raw mode, for the guest's console: every key goes to the
/// guest (Ctrl-C included) and nothing is echoed locally; output processing stays on, so that
/// a guest's bare newlines still start new lines. The saved settings come back when `restore`
/// runs, and at the latest when the process exits normally (an atexit handler). A process killed
/// outright (SIGKILL) leaves the terminal raw, as with QEMU: `stty sane` repairs it.
public enum RawTerminal {
    nonisolated(unsafe) private static var saved: termios?
    nonisolated(unsafe) private static var registered = false

    /// Whether standard input is a terminal of which this process is in the foreground: a
    /// background job that read it or changed its settings would be stopped (SIGTTIN, SIGTTOU).
    public static var standardInputIsForegroundTerminal: Bool {
        isatty(0) == 1 && tcgetpgrp(0) == getpgrp()
    }

    /// Puts standard input's terminal in raw mode. Call once, before other threads use it.
    public static func enter() throws(SystemError) {
        var t = termios()
        guard tcgetattr(0, &t) == 0 else { throw SystemError("tcgetattr", errno: errno) }
        saved = t
        if !registered {
            registered = true
            atexit { RawTerminal.restore() }
        }
        var raw = t
        cfmakeraw(&raw)
        raw.c_oflag |= tcflag_t(OPOST | ONLCR)
        guard tcsetattr(0, TCSANOW, &raw) == 0 else { throw SystemError("tcsetattr", errno: errno) }
    }

    /// Puts the saved settings back (nothing when none were saved).
    public static func restore() {
        guard var t = saved else { return }
        _ = tcsetattr(0, TCSANOW, &t)
        saved = nil
    }
}
