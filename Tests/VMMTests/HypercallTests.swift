import GuestInterface
import Boot
import Testing
@testable import VMM

/// A fake guest: 64 KiB of RAM at 0x40_0000; the first half user read-only, the second user
/// read-write. Records every access the dispatcher makes.
final class FakeGuest: HypercallEnvironment {
    let base: UInt64 = 0x40_0000
    var ram = [UInt8](repeating: 0, count: 0x1_0000)
    var output: [UInt8] = []
    var reads: [(UInt64, Int)] = []
    var writes: [(UInt64, Int)] = []

    func region(_ a: UInt64, _ n: UInt64) -> (Int, Int)? {
        let (end, o) = a.addingReportingOverflow(n)
        guard !o, a >= base, end <= base + UInt64(ram.count) else { return nil }
        return (Int(a - base), Int(n))
    }
    func userCanAccess(_ address: UInt64, length: UInt64, rights: PageFlags) -> Bool {
        guard let (off, n) = region(address, length) else { return false }
        if rights.contains(.writable) { return off >= 0x8000 && off + n <= ram.count }
        return true
    }
    func readGuest(_ address: UInt64, count: Int) -> [UInt8]? {
        guard let (off, n) = region(address, UInt64(count)) else { return nil }
        reads.append((address, count))
        return Array(ram[off..<off + n])
    }
    func fillRandom(_ address: UInt64, count: Int) -> Bool {
        guard let (off, n) = region(address, UInt64(count)) else { return false }
        writes.append((address, count))
        for i in off..<off + n { ram[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
        return true
    }
    func console(_ bytes: [UInt8]) { output += bytes }
    func nanosecondsSinceStart() -> UInt64 { 42 }
}

func call(_ env: FakeGuest, _ stats: inout HypercallStatistics, _ nr: UInt64,
          _ a0: UInt64 = 0, _ a1: UInt64 = 0, _ a2: UInt64 = 0, _ a3: UInt64 = 0) -> HypercallOutcome {
    HypercallDispatcher.handle(number: nr, arguments: (a0, a1, a2, a3), environment: env, statistics: &stats)
}

@Suite struct HypercallTests {
    @Test func validCalls() {
        let g = FakeGuest(); var s = HypercallStatistics()
        g.ram.replaceSubrange(0..<5, with: Array("hello".utf8))
        #expect(call(g, &s, 0) == .value(1))
        #expect(call(g, &s, 1, g.base, 5) == .value(5))
        #expect(g.output == Array("hello".utf8))
        #expect(call(g, &s, 4) == .value(42))
        #expect(call(g, &s, 5, g.base + 0x8000, 256) == .value(256))
        #expect(g.ram[0x8000..<0x8100].contains { $0 != 0 })
        #expect(call(g, &s, 3, 1_000) == .wait(nanoseconds: 1_000))
        #expect(call(g, &s, 3, 0) == .wait(nanoseconds: 0))
        #expect(call(g, &s, 2, 0) == .exit(status: 0))
        #expect(call(g, &s, 2, 255) == .exit(status: 255))
        #expect(s.totalCalls == 8 && s.totalErrors == 0)
        #expect(s.count(.consoleWrite) == 1 && s.count(.exit) == 2 && s.count(.wait) == 2)
    }

    @Test func unknownCallsReturnAnErrorAndAreCounted() {
        let g = FakeGuest(); var s = HypercallStatistics()
        for nr: UInt64 in [6, 7, 999, 1 << 32, UInt64.max] {
            #expect(call(g, &s, nr, 1, 2, 3, 4) == .value(UInt64.max)) // -1
        }
        #expect(s.unknownCalls == 5 && s.count(.unknownCall) == 5)
        #expect(g.reads.isEmpty && g.writes.isEmpty && g.output.isEmpty)
    }

    @Test func hostileBuffersAreRefusedWithoutTouchingMemory() {
        let g = FakeGuest(); var s = HypercallStatistics()
        let badAddress = HypercallError.badAddress.returnValue
        let hostile: [(UInt64, UInt64)] = [
            (0, 1), (0x1000, 16), (g.base - 1, 2), (g.base + 0xffff, 2), (UInt64.max, 1),
            (UInt64.max - 3, 8), (0xc000_0000, 8),
        ]
        for (a, n) in hostile {
            #expect(call(g, &s, 1, a, n) == .value(badAddress), "console_write(\(a), \(n))")
            #expect(call(g, &s, 5, a, min(n, 256)) == .value(badAddress), "random(\(a), \(n))")
        }
        // Random into read-only memory.
        #expect(call(g, &s, 5, g.base, 8) == .value(badAddress))
        #expect(call(g, &s, 5, g.base + 0x7ff8, 16) == .value(badAddress)) // straddles RO/RW
        #expect(g.reads.isEmpty && g.writes.isEmpty)
        #expect(s.count(.badAddress) == UInt64(hostile.count * 2 + 2))
    }

    @Test func lengthAndArgumentLimits() {
        let g = FakeGuest(); var s = HypercallStatistics()
        #expect(call(g, &s, 1, g.base, 4097) == .value(HypercallError.badLength.returnValue))
        #expect(call(g, &s, 1, g.base, UInt64.max) == .value(HypercallError.badLength.returnValue))
        #expect(call(g, &s, 1, g.base, 4096) == .value(4096))
        #expect(call(g, &s, 5, g.base + 0x8000, 257) == .value(HypercallError.badLength.returnValue))
        #expect(call(g, &s, 2, 256) == .value(HypercallError.badArgument.returnValue))
        #expect(call(g, &s, 2, UInt64.max) == .value(HypercallError.badArgument.returnValue))
        #expect(call(g, &s, 3, 10_000_000_001) == .value(HypercallError.badArgument.returnValue))
        #expect(call(g, &s, 3, 10_000_000_000) == .wait(nanoseconds: 10_000_000_000))
        #expect(s.count(.badLength) == 3 && s.count(.badArgument) == 3)
        #expect(g.writes.isEmpty)
    }

    @Test func errorValuesAreNegative() {
        #expect(Int64(bitPattern: HypercallError.unknownCall.returnValue) == -1)
        #expect(Int64(bitPattern: HypercallError.badAddress.returnValue) == -2)
        #expect(Int64(bitPattern: HypercallError.badLength.returnValue) == -3)
        #expect(Int64(bitPattern: HypercallError.badArgument.returnValue) == -4)
    }

    @Test func statisticsMerge() {
        var a = HypercallStatistics(), b = HypercallStatistics()
        a.calls[0] = 2; b.calls[0] = 3; b.unknownCalls = 1; b.errors[1] = 1
        a.merge(b)
        #expect(a.count(.version) == 5 && a.unknownCalls == 1 && a.totalErrors == 1)
    }
}
