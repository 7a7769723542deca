import Boot
import FuzzSupport
import GuestInterface

// FuzzHypercall: the input is a small guest (where its RAM is, which pages it may touch) and a
// sequence of hypercalls. The environment is a byte array; the access map is a real
// `BootPlan.userCanAccess` over input-chosen regions (as `LiveEnvironment` uses it), checked
// against an independent interval oracle. The dispatcher's every result, every guest-memory
// access and its statistics are checked against what the ABI says.
//
// Input layout:
//   u8  memory pages (1...32)          u8 memory base selector
//   u8  region count (0...8), then per region: u8 gap pages, u8 size pages, u8 flags
//   then calls, each: u8 selector, u8 argument modes, 4 × u64 arguments
//     selector bits 0-2: call number 0...7 (6 and 7 are unknown); bit 3: a huge unknown number
//     instead; bit 4: the environment's guest-memory access fails (I/O error)
//     modes: 2 bits per argument: 0 raw, 1 near the memory base, 2 small, 3 near UInt64.max

let memoryBases: [UInt64] = [0, 0x20_0000, 0x4000_0000, 0xffff_ffff_fff0_0000]

/// A real plan to borrow the region type and `userCanAccess` from (their initialisers are
/// internal to Boot); its regions are replaced for every input.
let templatePlan: BootPlan = {
    let code: [UInt8] = [0xf4]  // hlt
    let elf = ELFBuilder.executable(entry: GuestLayout.programStart,
                                    segments: [(address: GuestLayout.programStart, memorySize: 4096, contents: code, flags: 5)])
    do { return try ProgramLoader.plan(image: elf, config: BootConfiguration()) } catch {
        fatalError("template plan: \(error)")
    }
}()

final class FakeEnvironment: HypercallEnvironment {
    let base: UInt64
    var memory: [UInt8]
    let plan: BootPlan
    let oracle: [(start: UInt64, end: UInt64, flags: PageFlags)]
    var failAccess = false
    /// The last range `userCanAccess` granted, which is the only range the dispatcher may touch.
    var granted: (address: UInt64, length: UInt64, rights: PageFlags)?
    var consoleOutput: [[UInt8]] = []
    var randomFills: [(UInt64, Int)] = []
    var clock: UInt64 = 1000
    var lastTime: UInt64 = 0

    init(base: UInt64, pages: Int, plan: BootPlan, oracle: [(start: UInt64, end: UInt64, flags: PageFlags)]) {
        self.base = base
        self.memory = [UInt8](repeating: 0x5a, count: pages * 4096)
        self.plan = plan
        self.oracle = oracle
    }

    func inMemory(_ address: UInt64, _ length: UInt64) -> Bool {
        let (end, o1) = address.addingReportingOverflow(length)
        let (memEnd, o2) = base.addingReportingOverflow(UInt64(memory.count))
        return !o1 && !o2 && address >= base && end <= memEnd
    }

    /// The reference answer: merge the regions that grant `rights` into maximal intervals and
    /// look for one that contains the whole range. Shares no code with `BootPlan.userCanAccess`.
    func oracleAllows(_ address: UInt64, _ length: UInt64, _ rights: PageFlags) -> Bool {
        let (end, overflow) = address.addingReportingOverflow(length)
        if overflow { return false }
        if length == 0 { return true }
        var merged: [(UInt64, UInt64)] = []
        for r in oracle where r.flags.isSuperset(of: rights.union(.user)) {
            if let last = merged.last, last.1 == r.start { merged[merged.count - 1].1 = r.end } else { merged.append((r.start, r.end)) }
        }
        return merged.contains { $0.0 <= address && end <= $0.1 }
    }

    func userCanAccess(_ address: UInt64, length: UInt64, rights: PageFlags) -> Bool {
        let real = plan.userCanAccess(address, length: length, rights: rights)
        let expected = oracleAllows(address, length, rights)
        check(real == expected, "BootPlan.userCanAccess(\(hex(address)), \(hex(length)), \(rights.rawValue)) = \(real), oracle says \(expected)")
        let ok = real && inMemory(address, length)
        granted = ok ? (address, length, rights) : nil
        return ok
    }

    func mustBeGranted(_ address: UInt64, _ count: Int, _ rights: PageFlags) -> Int {
        check(count >= 0, "negative count \(count)")
        guard let g = granted else { fatalError("fuzz invariant violated: guest memory \(hex(address))+\(count) touched without an access check") }
        check(g.address == address && g.length == UInt64(count) && g.rights.isSuperset(of: rights),
              "touching \(hex(address))+\(count) (rights \(rights.rawValue)), but the check was for \(hex(g.address))+\(g.length) (rights \(g.rights.rawValue))")
        check(oracleAllows(address, UInt64(count), rights) && inMemory(address, UInt64(count)), "access \(hex(address))+\(count) is outside the permitted region")
        granted = nil
        return Int(address - base)
    }

    func readGuest(_ address: UInt64, count: Int) -> [UInt8]? {
        let offset = mustBeGranted(address, count, [.user])
        if failAccess { return nil }
        return Array(memory[offset..<offset + count])
    }

    func fillRandom(_ address: UInt64, count: Int) -> Bool {
        let offset = mustBeGranted(address, count, [.user, .writable])
        if failAccess { return false }
        for i in 0..<count { memory[offset + i] = UInt8(truncatingIfNeeded: (offset + i) &* 31 &+ 7) }
        randomFills.append((address, count))
        return true
    }

    func console(_ bytes: [UInt8]) { consoleOutput.append(bytes) }

    func nanosecondsSinceStart() -> UInt64 {
        clock += 17
        lastTime = clock
        return clock
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHypercall(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let pages = 1 + Int(input.u8() % 32)
    let base = memoryBases[Int(input.u8()) % memoryBases.count]

    // Regions: sorted, disjoint, page granular, possibly adjacent, possibly beyond RAM.
    var plan = templatePlan
    var regions: [MemoryRegion] = []
    var oracle: [(start: UInt64, end: UInt64, flags: PageFlags)] = []
    var cursor = base
    let template = templatePlan.userRegions[0]
    for _ in 0..<Int(input.u8() % 9) {
        let gap = UInt64(input.u8() % 8), count = 1 + UInt64(input.u8() % 16)
        let flags = PageFlags(rawValue: input.u8() & 7)
        var r = template
        r.start = cursor + gap * 4096
        r.size = count * 4096
        r.flags = flags
        regions.append(r)
        oracle.append((r.start, r.start + r.size, flags))
        cursor = r.start + r.size
    }
    plan.userRegions = regions
    trace("RAM \(hex(base))+\(pages) pages; regions: " + oracle.map { "\(hex($0.start))-\(hex($0.end)):\($0.flags.rawValue)" }.joined(separator: " "))
    let env = FakeEnvironment(base: base, pages: pages, plan: plan, oracle: oracle)

    var halves = [HypercallStatistics(), HypercallStatistics()]
    var expected = [HypercallStatistics(), HypercallStatistics()]
    var calls = 0
    var errorsReturned: UInt64 = 0
    while !input.isEmpty && calls < 256 {
        let selector = input.u8(), modes = input.u8()
        var args: [UInt64] = []
        for i in 0..<4 {
            let raw = input.u64()
            switch (modes >> (2 * UInt8(i))) & 3 {
            case 0: args.append(raw)
            case 1: args.append(base &+ (raw & 0x3_ffff) &- 0x1000)
            case 2: args.append(raw & 0x1fff)
            default: args.append(0 &- (raw & 0x1fff))
            }
        }
        let number: UInt64 = selector & 0x08 != 0 ? UInt64(selector) << 56 | (args[3] >> 8) : UInt64(selector & 7)
        env.failAccess = selector & 0x10 != 0
        let consoleBefore = env.consoleOutput.count, fillsBefore = env.randomFills.count
        let half = calls & 1

        let outcome = HypercallDispatcher.handle(number: number, arguments: (args[0], args[1], args[2], args[3]),
                                                 environment: env, statistics: &halves[half])
        env.granted = nil

        // What the ABI says the call returns.
        let want: HypercallOutcome
        var failure: HypercallError?
        let (address, length) = (args[0], args[1])
        switch Hypercall(rawValue: number) {
        case nil:
            failure = .unknownCall
            expected[half].unknownCalls += 1
        case .some(let call):
            expected[half].calls[Int(call.rawValue)] += 1
            switch call {
            case .version: break
            case .consoleWrite:
                if length > Hypercall.maxConsoleWrite { failure = .badLength }
                else if !(env.oracleAllows(address, length, [.user]) && env.inMemory(address, length)) || env.failAccess { failure = .badAddress }
            case .exit: if args[0] > 255 { failure = .badArgument }
            case .wait: if args[0] > Hypercall.maxWaitNanoseconds { failure = .badArgument }
            case .time: break
            case .random:
                if length > Hypercall.maxRandom { failure = .badLength }
                else if !(env.oracleAllows(address, length, [.user, .writable]) && env.inMemory(address, length)) || env.failAccess { failure = .badAddress }
            }
        }
        if let f = failure {
            want = .value(f.returnValue)
            expected[half].errors[Int(f.rawValue)] += 1
            errorsReturned += 1
        } else {
            switch Hypercall(rawValue: number)! {
            case .version: want = .value(Hypercall.interfaceVersion)
            case .consoleWrite, .random: want = .value(length)
            case .exit: want = .exit(status: UInt8(args[0]))
            case .wait: want = .wait(nanoseconds: args[0])
            case .time: want = .value(env.lastTime)
            }
        }
        trace("call \(hex(number))(\(args.map(hex).joined(separator: ", "))) -> \(outcome)")
        check(outcome == want, "call \(hex(number))(\(args.map(hex))) returned \(outcome), the ABI says \(want)")
        if case .value(let v) = outcome, v >= 0 &- 4096 {  // the error range, as in Linux
            check(HypercallError.allCases.contains { $0.returnValue == v }, "undefined error code \(hex(v))")
        }

        // Side effects: exactly one console write or fill on success, none otherwise.
        let wroteConsole = env.consoleOutput.count - consoleBefore, filled = env.randomFills.count - fillsBefore
        if number == 1 && failure == nil {
            check(wroteConsole == 1 && env.consoleOutput.last!.count == Int(length), "console write of \(length) bytes produced \(wroteConsole) writes")
            let off = Int(address - base)
            check(env.consoleOutput.last! == Array(env.memory[off..<off + Int(length)]), "console bytes differ from guest memory")
        } else {
            check(wroteConsole == 0, "console written by a failed or other call")
        }
        check(filled == (number == 5 && failure == nil ? 1 : 0), "random fill count \(filled)")
        calls += 1
    }

    // Statistics: each vCPU's counters and their merge add up.
    for h in 0..<2 { check(halves[h] == expected[h], "statistics of half \(h): \(halves[h]) vs \(expected[h])") }
    var merged = halves[0]
    merged.merge(halves[1])
    check(merged.totalCalls == UInt64(calls), "merged total calls \(merged.totalCalls) != \(calls)")
    check(merged.totalErrors == errorsReturned, "merged total errors \(merged.totalErrors) != \(errorsReturned)")
    check(merged.errors[0] == 0, "error slot 0 used")
    check(Hypercall.allCases.reduce(UInt64(0)) { $0 + merged.count($1) } + merged.unknownCalls == merged.totalCalls, "per-call counts")
    check(merged.count(.unknownCall) == merged.unknownCalls, "unknown-call errors \(merged.count(.unknownCall)) vs unknown calls \(merged.unknownCalls)")
    return 0
}
