import Devices
import HostOS
import KVM
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import VMM

func temporaryPath(_ name: String) -> String {
    "/tmp/bh-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

func unlinkPath(_ path: String) { unlink(path) }

/// The vsock host side on real Unix sockets (no KVM needed).
struct UnixVsockHostTests {
    func prefix(_ name: String) -> String { temporaryPath("vsock-\(name)") }

    /// Reads until `count` bytes came or the socket says nothing more (non-blocking reads, polled).
    func drain(_ host: UnixVsockHost, _ id: UInt64, count: Int) -> [UInt8] {
        var out: [UInt8] = []
        var spins = 0
        while out.count < count && spins < 2000 {
            switch host.receive(id, max: 4096) {
            case .data(let b): out += b
            case .empty: spins += 1; _ = waitReadable([host.waitHandle(id)?.hostDescriptor ?? -1], timeoutMilliseconds: 5)
            case .closed, .reset: return out
            }
        }
        return out
    }

    @Test func connectsToPathPortAndCarriesBytesBothWays() throws {
        let p = prefix("echo")
        let listener = try UnixStream.listen(p + "_5000")
        defer { unlinkPath(p + "_5000") }
        let host = try UnixVsockHost(pathPrefix: p)
        let id = try #require(host.connect(port: 5000))
        let peer = try UnixStream.accept(listener)
        #expect(host.send(id, Array("ping".utf8)) == 4)
        #expect(try peer.readStream(max: 100) == .data(Array("ping".utf8)))
        #expect(try peer.writeStream(Array("pong".utf8)[...]) == 4)
        #expect(drain(host, id, count: 4) == Array("pong".utf8))
        #expect(host.receive(id, max: 10) == .empty)
        // Half close from the guest: the peer reads end-of-stream and can still answer.
        host.finishSending(id)
        #expect(try peer.readStream(max: 10) == .closed)
        #expect(try peer.writeStream([1, 2][...]) == 2)
        #expect(drain(host, id, count: 2) == [1, 2])
        host.close(id)
        #expect(host.openCount == 0 && host.waitHandle(id) == nil)
    }

    /// The host program closes with bytes from the guest still unread: a reset, not an end of
    /// stream, so the guest learns that data was lost.
    @Test func closingWithUnreadDataIsAReset() throws {
        let p = prefix("reset")
        let listener = try UnixStream.listen(p + "_9")
        defer { unlinkPath(p + "_9") }
        let host = try UnixVsockHost(pathPrefix: p)
        let id = try #require(host.connect(port: 9))
        var peer: FileDescriptor? = try UnixStream.accept(listener)
        #expect(host.send(id, [1, 2, 3]) == 3)
        peer = nil
        _ = peer
        #expect(host.receive(id, max: 10) == .reset)
    }

    @Test func nothingListeningIsRefused() throws {
        let host = try UnixVsockHost(pathPrefix: prefix("none"))
        #expect(host.connect(port: 1) == nil)
        #expect(host.refused == 1 && host.openCount == 0)
    }

    @Test func aFullSocketTakesNothingAndAGonePeerFailsSends() throws {
        let p = prefix("full")
        let listener = try UnixStream.listen(p + "_7")
        defer { unlinkPath(p + "_7") }
        let host = try UnixVsockHost(pathPrefix: p)
        let id = try #require(host.connect(port: 7))
        var peer: FileDescriptor? = try UnixStream.accept(listener)
        let chunk = [UInt8](repeating: 0xab, count: 65536)
        var total = 0
        var zero = false
        for _ in 0..<1000 {
            let n = try #require(host.send(id, chunk))
            if n == 0 { zero = true; break }
            total += n
        }
        #expect(zero && total > 0)   // the socket filled up and the VMM was not blocked
        peer = nil                   // the host program goes away
        _ = peer
        #expect(drain(host, id, count: 1).isEmpty)
        #expect(host.send(id, [1]) == nil)
        #expect(host.errors >= 1)
    }

    /// Guest-chosen ports are numbers, so paths stay under the operator's prefix; bad prefixes
    /// are refused up front.
    @Test func pathsAreThePrefixAndANumber() throws {
        let host = try UnixVsockHost(pathPrefix: "/run/vm1/v")
        #expect(host.path(port: 0) == "/run/vm1/v_0")
        #expect(host.path(port: UInt32.max) == "/run/vm1/v_4294967295")
        #expect(throws: UnixVsockHostError.self) { try UnixVsockHost(pathPrefix: "") }
        #expect(throws: UnixVsockHostError.self) { try UnixVsockHost(pathPrefix: String(repeating: "a", count: 100)) }
        #expect(throws: UnixVsockHostError.self) { try UnixVsockHost(pathPrefix: "a\u{0}b") }
    }
}
