import TestSupport
import Seccomp
import Testing

/// What a policy means, written directly from its rules (no BPF): the oracle the compiled
/// programs are checked against.
func reference(_ policy: SeccompPolicy, _ data: SeccompData, default fallback: DefaultAction) -> SeccompAction {
    guard data.arch == SeccompData.auditArchX86_64 else { return .killProcess }
    let nr = UInt32(bitPattern: data.nr)
    guard nr & 0x4000_0000 == 0 else { return .killProcess }
    for rule in policy.rules where rule.number == nr {
        switch rule.kind {
        case .allow: return .allow
        case .fail(let e): return .errno(e)
        case .allowIoctl(let request): if UInt32(truncatingIfNeeded: data.args[1]) == request { return .allow }
        case .allowIf(let conditions): if conditions.allSatisfy({ data.args[$0.argument] & $0.mask == $0.value }) { return .allow }
        }
    }
    return fallback.action
}


/// The compiler, judged by the interpreter against the policy's meaning.
struct CompilerTests {
    static let sample = """
        read                    # r
        write                   # w
        close                   # c
        exit_group              # e
        ioctl KVM_RUN           # run
        ioctl FIONREAD          # bytes waiting
        mmap if arg2 & 0x4 == 0 # no exec
        futex if arg1 & 0xfffffe7f == 0   # wait
        futex if arg1 & 0xfffffe7f == 1   # wake
        clone if arg0 & 0x7e030900 == 0x10900   # threads only
        kill if arg1 == 0x10000000a             # a 64-bit comparison (both halves)
        socket if arg0 & 0xffffffff00000000 == 0x500000000 and arg1 == 1  # only the high half, and a second argument
        clone3 errno ENOSYS     # fall back to clone
        """

    func run(_ program: [BPFInstruction], _ nr: Int32, _ args: [UInt64] = [], arch: UInt32 = SeccompData.auditArchX86_64) throws -> SeccompAction {
        SeccompAction(rawValue: try BPFInterpreter.run(program, on: SeccompData(nr: nr, arch: arch, args: args)))
    }

    func nr(_ name: String) throws -> Int32 { Int32(try #require(SyscallTable.number(of: name))) }

    @Test func allowedForbiddenAndErrnoRules() throws {
        let policy = try SeccompPolicy(parsing: Self.sample)
        let program = try policy.compile(defaultAction: .errno(1))
        try BPFInterpreter.validate(program)
        for name in ["read", "write", "close", "exit_group"] {
            #expect(try run(program, nr(name)) == .allow, "\(name)")
        }
        #expect(try run(program, nr("clone3")) == .errno(38))
        // Every syscall of the table that the policy does not mention gets the default.
        for (name, number) in SyscallTable.all where !policy.syscalls.contains(number) {
            #expect(try run(program, Int32(number), [0, 0, 0, 0, 0, 0]) == .errno(1), "\(name)")
        }
        // Numbers beyond the table, too.
        for number: Int32 in [451, 462, 1000, 0x3fff_ffff] {
            #expect(try run(program, number) == .errno(1), "\(number)")
        }
        // -1 (what a tracer sets to skip a call) has the x32 bit: killed like any x32 number.
        #expect(try run(program, -1) == .killProcess)
    }

    @Test func ioctlIsJudgedOnTheLowWordOfItsRequest() throws {
        let program = try SeccompPolicy(parsing: Self.sample).compile(defaultAction: .errno(1))
        let ioctl = try nr("ioctl")
        #expect(try run(program, ioctl, [3, 0xae80]) == .allow)           // KVM_RUN
        #expect(try run(program, ioctl, [3, 0x541b]) == .allow)           // FIONREAD
        #expect(try run(program, ioctl, [3, 0xae01]) == .errno(1))        // KVM_CREATE_VM: not listed
        #expect(try run(program, ioctl, [3, 0x5421]) == .errno(1))        // FIONBIO: not listed
        // The kernel's `unsigned int cmd` drops the high word: so does the filter.
        #expect(try run(program, ioctl, [3, 0xffff_ffff_0000_ae80]) == .allow)
        #expect(try run(program, ioctl, [3, 0x0000_0001_0000_ae01]) == .errno(1))
        // The descriptor and the third argument play no part.
        #expect(try run(program, ioctl, [99, 0xae80, 0xdead_beef]) == .allow)
    }

    @Test func conditionsCompareBothHalves() throws {
        let program = try SeccompPolicy(parsing: Self.sample).compile(defaultAction: .trap)
        let mmap = try nr("mmap"), futex = try nr("futex"), clone = try nr("clone"), kill = try nr("kill"), socket = try nr("socket")
        #expect(try run(program, mmap, [0, 4096, 3, 0x22]) == .allow)            // PROT_READ|PROT_WRITE
        #expect(try run(program, mmap, [0, 4096, 7, 0x22]) == .trap)             // PROT_EXEC
        #expect(try run(program, mmap, [0, 4096, 0xffff_ffff_0000_0003]) == .allow)   // mask has no high bits: high half unread
        #expect(try run(program, futex, [0, 0x80]) == .allow)                    // FUTEX_WAIT_PRIVATE
        #expect(try run(program, futex, [0, 0x181]) == .allow)                   // FUTEX_WAKE, PRIVATE|CLOCK_REALTIME
        #expect(try run(program, futex, [0, 0x8c]) == .trap)                     // FUTEX_CMP_REQUEUE_PI
        #expect(try run(program, futex, [0, 0x201]) == .trap)                    // an unknown bit
        #expect(try run(program, clone, [0x3d0f00]) == .allow)                   // glibc's pthread_create
        #expect(try run(program, clone, [0x11]) == .trap)                        // fork(): SIGCHLD only
        #expect(try run(program, clone, [0x3d0f00 | 0x1000_0000]) == .trap)      // CLONE_NEWUSER
        #expect(try run(program, kill, [0, 0x1_0000_000a]) == .allow)
        #expect(try run(program, kill, [0, 0x0_0000_000a]) == .trap)             // high half differs
        #expect(try run(program, kill, [0, 0x1_0000_000b]) == .trap)             // low half differs
        #expect(try run(program, socket, [0x5_1234_5678, 1]) == .allow)          // low half of arg0 unread
        #expect(try run(program, socket, [0x5_1234_5678, 2]) == .trap)
        #expect(try run(program, socket, [0x4_0000_0000, 1]) == .trap)
    }

    @Test func wrongArchitectureAndX32AreKilled() throws {
        for fallback in [DefaultAction.errno(1), .log, .trap, .killProcess] {
            let program = try SeccompPolicy(parsing: Self.sample).compile(defaultAction: fallback)
            #expect(try run(program, 0, arch: 0x4000_0003) == .killProcess)     // AUDIT_ARCH_I386
            #expect(try run(program, 0, arch: 0) == .killProcess)
            #expect(try run(program, 0x4000_0000) == .killProcess)             // x32 read
            #expect(try run(program, 0x4000_0000 | 16, [3, 0xae80]) == .killProcess)   // x32 ioctl
            #expect(try run(program, 0x4000_0000 | 0x200) == .killProcess)
        }
    }

    @Test func defaultActions() throws {
        let policy = try SeccompPolicy(parsing: "read # r")
        let execve = try nr("execve")
        #expect(try run(policy.compile(defaultAction: .trap), execve) == .trap)
        #expect(try run(policy.compile(defaultAction: .log), execve) == .log)
        #expect(try run(policy.compile(defaultAction: .killProcess), execve) == .killProcess)
        #expect(try run(policy.compile(defaultAction: .errno(13)), execve) == .errno(13))
        #expect(try run(policy.compile(defaultAction: .errno(13)), 0) == .allow)
        #expect(throws: CompileError.badErrno(0)) { try policy.compile(defaultAction: .errno(0)) }
        #expect(throws: CompileError.badErrno(4096)) { try policy.compile(defaultAction: .errno(4096)) }
        // An empty policy: the checks and the default.
        let empty = try SeccompPolicy(parsing: "").compile(defaultAction: .trap)
        #expect(try run(empty, 0) == .trap)
        #expect(try run(empty, 0, arch: 1) == .killProcess)
    }

    /// Every system call in the table allowed, and hundreds of ioctl requests: the program is
    /// far longer than a conditional jump reaches (255), and must still be right everywhere.
    @Test func longProgramsNeedNoLongConditionalJumps() throws {
        var text = SyscallTable.all.filter { $0.name != "ioctl" && $0.name != "mmap" }.map { "\($0.name) # all" }
        text += (0..<600).map { "ioctl \(0x1000 + $0 * 3) # request \($0)" }
        text += (0..<150).map { "mmap if arg\($0 % 6) == \($0) # condition \($0)" }
        let policy = try SeccompPolicy(parsing: text.joined(separator: "\n"))
        let program = try policy.compile(defaultAction: .errno(1))
        #expect(program.count > 1500)
        try BPFInterpreter.validate(program)
        for (name, number) in SyscallTable.all where name != "ioctl" && name != "mmap" {
            #expect(try run(program, Int32(number)) == .allow, "\(name)")
        }
        let ioctl = try nr("ioctl"), mmap = try nr("mmap")
        for i in 0..<600 {
            #expect(try run(program, ioctl, [0, UInt64(0x1000 + i * 3)]) == .allow)
            #expect(try run(program, ioctl, [0, UInt64(0x1001 + i * 3)]) == .errno(1))
        }
        for i in 0..<150 {
            var args = [UInt64](repeating: 999, count: 6)
            #expect(try run(program, mmap, args) == .errno(1))
            args[i % 6] = UInt64(i)
            #expect(try run(program, mmap, args) == .allow, "condition \(i)")
        }
        #expect(try run(program, 500) == .errno(1))
    }

    @Test func programsLongerThanTheKernelAcceptsAreRefused() throws {
        let text = (0..<2100).map { "ioctl \($0 + 1) # request \($0)" }.joined(separator: "\n")
        let policy = try SeccompPolicy(parsing: text)
        #expect(throws: CompileError.self) { try policy.compile(defaultAction: .trap) }
        do { _ = try policy.compile(defaultAction: .trap) } catch {
            guard case .tooLong(let n) = error else { Issue.record("\(error)"); return }
            #expect(n > 4096)
            #expect(error.description.contains("more than the kernel's limit of 4096"))
        }
    }

    /// Random policies and random calls: the compiled program and the policy's meaning agree.
    @Test func randomPoliciesAgreeWithTheirMeaning() throws {
        var rng = SplitMix64(seed: 2024)
        let names = ["read", "write", "mmap", "futex", "clone", "kill", "socket", "prctl", "madvise", "tgkill", "ioctl", "openat"]
        for round in 0..<60 {
            var lines: [String] = []
            var seen = Set<String>()
            for _ in 0..<Int.random(in: 1...30, using: &rng) {
                let name = names.randomElement(using: &rng) ?? "read"
                var line: String
                switch (name, Int.random(in: 0..<4, using: &rng)) {
                case ("ioctl", _): line = "ioctl \(Int.random(in: 0...8, using: &rng))"
                case (_, 0): line = name
                case (_, 1): line = "\(name) errno \(Int.random(in: 1...4095, using: &rng))"
                default:
                    var conditions: [String] = []
                    for _ in 0..<Int.random(in: 1...3, using: &rng) {
                        let arg = Int.random(in: 0...5, using: &rng)
                        let mask: UInt64 = [0xff, 0xffff_ffff, 0xffff_ffff_0000_0000, 0x0000_00ff_0000_ff00, .max][Int.random(in: 0..<5, using: &rng)]
                        let value = UInt64.random(in: 0...3, using: &rng) * 0x0101_0101_0101_0101 & mask
                        let c = mask == .max ? "arg\(arg) == \(value)" : "arg\(arg) & 0x\(String(mask, radix: 16)) == 0x\(String(value, radix: 16))"
                        if !conditions.contains(c) { conditions.append(c) }
                    }
                    line = "\(name) if " + conditions.joined(separator: " and ")
                }
                // Keep only lines the parser accepts next to the ones before (no contradictions).
                guard !seen.contains(line) else { continue }
                let candidate = lines + [line + " # random"]
                if (try? SeccompPolicy(parsing: candidate.joined(separator: "\n"))) != nil {
                    lines = candidate
                    seen.insert(line)
                }
            }
            let policy = try SeccompPolicy(parsing: lines.joined(separator: "\n"))
            let fallback = DefaultAction.errno(UInt16(round + 1))
            let program = try policy.compile(defaultAction: fallback)
            for _ in 0..<200 {
                let name = names.randomElement(using: &rng) ?? "read"
                let number = Int32(SyscallTable.number(of: name) ?? 0)
                let args = (0..<6).map { _ in UInt64.random(in: 0...3, using: &rng) * 0x0101_0101_0101_0101 & [0xff, .max, 0xffff_ffff_0000_00ff][Int.random(in: 0..<3, using: &rng)] }
                let data = SeccompData(nr: number, args: args.enumerated().map { $0.offset == 1 && name == "ioctl" ? UInt64.random(in: 0...8, using: &rng) : $0.element })
                let got = SeccompAction(rawValue: try BPFInterpreter.run(program, on: data))
                #expect(got == reference(policy, data, default: fallback), "round \(round): \(name) \(data.args)\n\(lines.joined(separator: "\n"))")
            }
        }
    }
}
