#if canImport(Glibc)
import Glibc
#endif

/// The console's escape sequence on a terminal, as QEMU's: Ctrl-A, then a command key.
///
///   Ctrl-A x   stop the VM
///   Ctrl-A d   detach: standard input no longer goes to the guest (the VM runs on)
///   Ctrl-A h   print this help (also Ctrl-A ?)
///   Ctrl-A a   send Ctrl-A itself to the guest (also Ctrl-A Ctrl-A)
///
/// Any other key after Ctrl-A goes to the guest with the Ctrl-A before it, so that nothing typed
/// is lost. A pure state machine: the prefix may end one read and its key begin the next.
public struct ConsoleEscape: Equatable, Sendable {
    public static let prefix: UInt8 = 0x01   // Ctrl-A

    public enum Command: Equatable, Sendable { case stop, detach, help }

    public enum Event: Equatable, Sendable {
        /// Bytes for the guest.
        case forward([UInt8])
        case command(Command)
    }

    public static let help = """
        bulkhead console keys: Ctrl-A x  stop the VM    Ctrl-A d  detach (the VM runs on, without input)
                               Ctrl-A a  send Ctrl-A    Ctrl-A h  this help
        """

    /// The last byte fed was Ctrl-A and its key has not come yet.
    public private(set) var afterPrefix = false

    public init() {}

    /// The events for `bytes`, in order. Bytes after a command in the same call are still
    /// parsed (the caller decides whether to go on after `stop` or `detach`).
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [Event] {
        var events: [Event] = []
        var run: [UInt8] = []
        func flush() { if !run.isEmpty { events.append(.forward(run)); run = [] } }
        for b in bytes {
            if afterPrefix {
                afterPrefix = false
                switch b {
                case UInt8(ascii: "x"), UInt8(ascii: "X"): flush(); events.append(.command(.stop))
                case UInt8(ascii: "d"), UInt8(ascii: "D"): flush(); events.append(.command(.detach))
                case UInt8(ascii: "h"), UInt8(ascii: "H"), UInt8(ascii: "?"): flush(); events.append(.command(.help))
                case UInt8(ascii: "a"), UInt8(ascii: "A"), Self.prefix: run.append(Self.prefix)
                default: run.append(Self.prefix); run.append(b)
                }
            } else if b == Self.prefix {
                afterPrefix = true
            } else {
                run.append(b)
            }
        }
        flush()
        return events
    }
}

/// Standard input → the guest's console (COM1's receive side), through a pipe whose read end
/// the VM gets (a jailed worker is never handed the launcher's terminal).
///
/// On a terminal (`interactive`) the escape keys of `ConsoleEscape` work, and the relay never
/// blocks on a guest that does not read: its input waits here, up to `backlogLimit` bytes, and
/// what comes beyond that is dropped with a message (as a real UART overruns), so that Ctrl-A x
/// always works. Otherwise (a pipe or a file) every byte is passed on unchanged, in order, and
/// the relay waits for the guest as long as it takes; end of file ends the guest's input.
public enum ConsoleInputRelay {
    public static let backlogLimit = 64 << 10

    /// This process's standard input relayed for a guest's console; nil when there is none to
    /// give: a closed standard input, a terminal of which this process is not in the foreground
    /// (a background job that read it would be stopped by SIGTTIN), or one that cannot be put in
    /// raw mode (`say` warns). A terminal is put in raw mode and read with the escape keys; a
    /// pipe or file is passed on byte for byte.
    public static func standardInput(say: @escaping @Sendable (String) -> Void,
                                     stop: @escaping @Sendable () -> Void) throws(SystemError) -> FileDescriptor? {
        guard fcntl(0, F_GETFD) >= 0 else { return nil }
        let stdin = FileDescriptor(borrowing: 0)
        var interactive = false
        if stdin.isTerminal {
            guard RawTerminal.standardInputIsForegroundTerminal else { return nil }
            do { try RawTerminal.enter() } catch {
                say("warning: no console input: the terminal cannot be put in raw mode: \(error)")
                return nil
            }
            interactive = true
            say("the console reads this terminal: Ctrl-A x stops the VM, Ctrl-A h lists the keys")
        }
        do { return try start(source: stdin, interactive: interactive, say: say, stop: stop) } catch {
            RawTerminal.restore()
            throw error
        }
    }

    /// Starts the relay's thread; returns the read end for the VM. `say` prints a line for the
    /// person at the terminal; `stop` runs after Ctrl-A x (the relay has ended then).
    public static func start(source: FileDescriptor, interactive: Bool,
                             say: @escaping @Sendable (String) -> Void,
                             stop: @escaping @Sendable () -> Void) throws(SystemError) -> FileDescriptor {
        let pipe = try OSPipe(nonBlockingWrites: interactive)
        let writeEnd = pipe.writeEnd
        do {
            _ = try OSThread.spawn {
                setThreadName("console relay")
                if interactive {
                    // Detached, stopped or hung up: the terminal gets its own settings back.
                    let stopRequested = relayInteractive(from: source, to: writeEnd, say: say)
                    RawTerminal.restore()
                    if stopRequested { stop() }
                } else {
                    relayVerbatim(from: source, to: writeEnd)
                }
            }
        } catch {
            throw SystemError("cannot start the console input thread: \(error)", errno: 0)
        }
        return pipe.readEnd
    }

    /// Copies everything until end of file (or an error on either side).
    static func relayVerbatim(from source: FileDescriptor, to sink: FileDescriptor) {
        while case .bytes(let b)? = try? source.readSome(maxBytes: 4096) {
            guard (try? sink.writeAll(b)) != nil else { return }
        }
    }

    /// The terminal relay; returns true when the person asked to stop the VM.
    static func relayInteractive(from source: FileDescriptor, to sink: FileDescriptor,
                                 say: (String) -> Void) -> Bool {
        var escape = ConsoleEscape()
        var backlog: [UInt8] = []
        var dropped = 0
        var sinkOpen = true
        while true {
            if sinkOpen && !backlog.isEmpty {
                do {
                    let n = try sink.writeSome(backlog[...])
                    backlog.removeFirst(n)
                } catch {
                    // The VM's end is closed (the VM ended): keep serving the escape keys.
                    sinkOpen = false
                    backlog = []
                }
            }
            // With a backlog, look again in 10 ms whether the guest has made room.
            let ready = waitReadable([source.rawValue], timeoutMilliseconds: backlog.isEmpty ? -1 : 10)
            guard ready.first == true else { continue }
            let chunk: [UInt8]
            switch try? source.readSome(maxBytes: 4096) {
            case .bytes(let b)?: chunk = b
            case .wouldBlock?: continue
            case .end?, nil: return false
            }
            for event in escape.feed(chunk) {
                switch event {
                case .forward(let bytes):
                    guard sinkOpen else { continue }
                    let room = max(0, backlogLimit - backlog.count)
                    backlog += bytes.prefix(room)
                    if bytes.count > room {
                        if dropped == 0 { say("bulkhead: the guest is not reading its console; input beyond \(backlogLimit >> 10) KiB is dropped") }
                        dropped += bytes.count - room
                    }
                case .command(.stop):
                    say("bulkhead: stopping the VM (Ctrl-A x)")
                    return true
                case .command(.detach):
                    // What was typed before Ctrl-A d still goes, as far as the VM's end has room.
                    if sinkOpen, !backlog.isEmpty { _ = try? sink.writeSome(backlog[...]) }
                    say("bulkhead: console input detached (Ctrl-A d); the VM runs on")
                    return false
                case .command(.help):
                    say(ConsoleEscape.help)
                }
            }
        }
    }
}
