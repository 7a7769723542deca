import TestSupport
import Testing
@testable import HostOS

#if canImport(Glibc)
import Glibc
#endif

/// The console's escape keys (issue 10, point 2): a pure state machine, fed whatever a person or
/// a paste sends, split anywhere.
struct ConsoleEscapeTests {
    func forwarded(_ events: [ConsoleEscape.Event]) -> [UInt8] {
        events.flatMap { if case .forward(let b) = $0 { return b } else { return [] } }
    }
    func commands(_ events: [ConsoleEscape.Event]) -> [ConsoleEscape.Command] {
        events.compactMap { if case .command(let c) = $0 { return c } else { return nil } }
    }

    @Test func plainBytesPassUnchanged() {
        var e = ConsoleEscape()
        let text = Array("root\r ls -l\u{3}\u{4}".utf8)
        #expect(e.feed(text) == [.forward(text)])
        #expect(!e.afterPrefix)
    }

    @Test func commandsAndLiteralPrefix() {
        var e = ConsoleEscape()
        #expect(e.feed([0x61, 0x01, 0x78, 0x62]) == [.forward([0x61]), .command(.stop), .forward([0x62])])
        #expect(e.feed([0x01, 0x64]) == [.command(.detach)])
        #expect(e.feed([0x01, 0x68, 0x01, 0x3f]) == [.command(.help), .command(.help)])
        // Ctrl-A a and Ctrl-A Ctrl-A send one Ctrl-A; an unknown key goes with its Ctrl-A.
        #expect(e.feed([0x01, 0x61, 0x01, 0x01, 0x01, 0x7a]) == [.forward([0x01, 0x01, 0x01, 0x7a])])
    }

    @Test func thePrefixMayEndARead() {
        var e = ConsoleEscape()
        #expect(e.feed([0x41, 0x01]) == [.forward([0x41])])
        #expect(e.afterPrefix)
        #expect(e.feed([0x58]) == [.command(.stop)])
        #expect(e.feed([0x01]) == [])
        #expect(e.feed([0x01]) == [.forward([0x01])])
    }

    /// Hostile input: any bytes, split at any points. Nothing is lost but the keys that made
    /// commands, and feeding byte by byte gives the same as feeding at once.
    @Test func anySplitGivesTheSameResult() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let n = Int.random(in: 0..<200, using: &rng)
            // Many Ctrl-As and command keys, so that every path is taken.
            let alphabet: [UInt8] = [0x01, 0x01, 0x78, 0x64, 0x68, 0x61, 0x3f, 0x00, 0xff, 0x0d, 0x41]
            let input = (0..<n).map { _ in Bool.random(using: &rng) ? alphabet.randomElement(using: &rng)! : UInt8.random(in: 0...255, using: &rng) }
            var whole = ConsoleEscape()
            let all = whole.feed(input)
            var pieces = ConsoleEscape()
            var split: [ConsoleEscape.Event] = []
            var i = 0
            while i < input.count {
                let k = Int.random(in: 1...max(1, input.count - i), using: &rng)
                split += pieces.feed(input[i..<i + k])
                i += k
            }
            #expect(forwarded(all) == forwarded(split))
            #expect(commands(all) == commands(split))
            #expect(whole.afterPrefix == pieces.afterPrefix)
            // Every forwarded byte was typed; each command used two typed bytes.
            #expect(forwarded(all).count + 2 * commands(all).count <= input.count)
        }
    }
}

/// The relay between the launcher's standard input and the VM's pipe.
struct ConsoleInputRelayTests {
    /// Reads the VM's end until end of file (or `limit` seconds pass).
    func drain(_ fd: FileDescriptor, limit: Double = 10) -> [UInt8] {
        var out: [UInt8] = []
        let end = monotonicNanoseconds() + UInt64(limit * 1e9)
        while monotonicNanoseconds() < end {
            guard waitReadable([fd.rawValue], timeoutMilliseconds: 100).first == true else { continue }
            switch try? fd.readSome(maxBytes: 65536) {
            case .bytes(let b)?: out += b
            case .wouldBlock?: continue
            case .end?, nil: return out
            }
        }
        return out
    }

    @Test func aPipeIsPassedOnByteForByte() throws {
        var source: OSPipe? = try OSPipe()
        let vm = try ConsoleInputRelay.start(source: source!.readEnd, interactive: false, say: { _ in }, stop: {})
        // 1 MiB with every byte value, Ctrl-A x included: not a terminal, so no escapes.
        let data = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) } + [0x01, 0x78]
        // The writer's end is the thread's alone, and closes when it ends: end of file reaches
        // the VM's end.
        let writer = try OSThread.spawn { [w = source!.writeEnd] in try? w.writeAll(data) }
        source = nil
        let got = drain(vm)
        writer.join()
        #expect(got.count == data.count)
        #expect(got == data)
    }

    @Test func aPipeEndsWithEndOfFile() throws {
        var source: OSPipe? = try OSPipe()
        let vm = try ConsoleInputRelay.start(source: source!.readEnd, interactive: false, say: { _ in }, stop: {})
        let data = Array("typed by the host\n".utf8)
        try source?.writeEnd.writeAll(data)
        source = nil   // both of our ends close: the relay reads end of file
        #expect(drain(vm) == data)
    }

    @Test func aTerminalsEscapesStopOrDetach() throws {
        let stopped = Locked(0)
        let said = Locked<[String]>([])
        let source = try OSPipe()
        let vm = try ConsoleInputRelay.start(source: source.readEnd, interactive: true,
                                             say: { line in said.withLock { $0.append(line) } },
                                             stop: { stopped.withLock { $0 += 1 } })
        try source.writeEnd.writeAll([0x6c, 0x73, 0x01, 0x01, 0x0d, 0x01, 0x68])
        // The relay ends at Ctrl-A x, then end of file: the VM's end sees (at most) what came
        // before it, nothing after.
        #expect(drain(vm, limit: 1) == [0x6c, 0x73, 0x01, 0x0d])
        try source.writeEnd.writeAll([0x01, 0x78, 0x65, 0x63, 0x68, 0x6f])   // Ctrl-A x, then more keys
        #expect(drain(vm) == [])
        #expect(stopped.withLock { $0 } == 1)
        #expect(said.withLock { $0 }.contains(ConsoleEscape.help))
        #expect(said.withLock { $0 }.contains { $0.contains("stopping the VM") })

        let detached = try OSPipe()
        let vm2 = try ConsoleInputRelay.start(source: detached.readEnd, interactive: true, say: { _ in }, stop: { stopped.withLock { $0 += 1 } })
        try detached.writeEnd.writeAll([0x61, 0x01, 0x64, 0x62])
        #expect(drain(vm2) == [0x61])
        #expect(stopped.withLock { $0 } == 1)   // detaching does not stop the VM
    }

    /// A guest that never reads must not take Ctrl-A x away: the relay keeps at most
    /// `backlogLimit` bytes, drops the rest (saying so once), and still sees the keys.
    @Test func aGuestThatDoesNotReadCannotBlockTheEscape() throws {
        let stopped = Locked(false)
        let said = Locked<[String]>([])
        let source = try OSPipe()
        let vm = try ConsoleInputRelay.start(source: source.readEnd, interactive: true,
                                             say: { line in said.withLock { $0.append(line) } },
                                             stop: { stopped.withLock { $0 = true } })
        let flood = [UInt8](repeating: 0x41, count: 4 << 20)
        try source.writeEnd.writeAll(flood + [0x01, 0x78])
        let end = monotonicNanoseconds() + 20_000_000_000
        while !stopped.withLock({ $0 }) && monotonicNanoseconds() < end { usleep(10_000) }
        #expect(stopped.withLock { $0 })
        #expect(said.withLock { $0 }.filter { $0.contains("not reading") }.count == 1)
        // What reached the VM's end: the pipe's capacity, no more than the backlog behind it.
        let got = drain(vm, limit: 2)
        #expect(got.count <= ConsoleInputRelay.backlogLimit + 1 << 20)
        #expect(got.allSatisfy { $0 == 0x41 })
    }
}
