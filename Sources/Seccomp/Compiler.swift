/// What a filter does with every system call its policy does not allow.
public enum DefaultAction: Equatable, Sendable {
    /// SECCOMP_RET_TRAP: the call does not run; the thread gets SIGSYS. Production: the worker's
    /// SIGSYS handler reports the syscall to the launcher, then the worker exits.
    case trap
    /// SECCOMP_RET_LOG: the call RUNS and the kernel logs it (`dmesg | grep type=1326`, or the
    /// audit log). The diagnosis mode for finding what a policy lacks; never for production.
    case log
    /// SECCOMP_RET_KILL_PROCESS: the whole process dies at once (SIGSYS, no handler runs).
    case killProcess
    /// SECCOMP_RET_ERRNO: the call does not run and fails with this errno (tests).
    case errno(UInt16)

    public var action: SeccompAction {
        switch self {
        case .trap: return .trap
        case .log: return .log
        case .killProcess: return .killProcess
        case .errno(let e): return .errno(e)
        }
    }
}

/// Why a policy cannot be compiled.
public enum CompileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The program would exceed the kernel's BPF_MAXINSNS.
    case tooLong(instructions: Int)
    /// An errno default outside 1-4095 (the kernel clamps larger values, and 0 would mean success).
    case badErrno(UInt16)

    public var description: String {
        switch self {
        case .tooLong(let n): return "the policy compiles to \(n) BPF instructions, more than the kernel's limit of \(BPF.maxInstructions)"
        case .badErrno(let e): return "default errno \(e) is outside 1-4095"
        }
    }
}

extension SeccompPolicy {
    /// Compiles the policy to a seccomp filter for x86_64.
    ///
    /// Shape of the program:
    /// 1. the architecture must be AUDIT_ARCH_X86_64, else KILL_PROCESS (a 32-bit `int 0x80`
    ///    call has other numbers: reading it with the 64-bit table would allow the wrong calls);
    /// 2. x32 calls (`nr & 0x40000000`) are KILL_PROCESS for the same reason;
    /// 3. a binary search on the syscall number; each leaf compares a few numbers and either
    ///    returns at once (allowed outright, errno rules) or jumps to the syscall's handler;
    ///    a number no leaf matches gets the default action;
    /// 4. handlers: `ioctl` compares the LOW 32 bits of args[1] (the kernel's `unsigned int cmd`;
    ///    a request with the same low bits and other high bits is the same request to the
    ///    kernel) with each allowed request; conditional syscalls test `(arg & mask) == value`
    ///    on the low and high 32-bit words (a half whose mask is zero is not read) for each
    ///    rule in turn, the first rule whose conditions all hold allows the call.
    ///
    /// Classic BPF's conditional jumps reach at most 255 instructions ahead. Every conditional
    /// jump here skips at most one instruction; everything farther is an unconditional `ja`,
    /// whose offset is 32 bits. So no policy size can overflow a jump, and the only limit is
    /// the program length (BPF_MAXINSNS), which throws `.tooLong`.
    public func compile(defaultAction: DefaultAction) throws(CompileError) -> [BPFInstruction] {
        if case .errno(let e) = defaultAction, !(1...4095).contains(e) { throw .badErrno(e) }
        var a = Assembler(defaultAction: defaultAction.action.rawValue)
        a.preamble()

        // One entry per syscall, in number order, with the rules for it in file order.
        var bySyscall: [UInt32: [Rule]] = [:]
        for rule in rules { bySyscall[rule.number, default: []].append(rule) }
        let entries = bySyscall.keys.sorted().map { number -> Assembler.Entry in
            let rs = bySyscall[number] ?? []
            return Assembler.Entry(number: number, rules: rs, label: a.newLabel())
        }
        a.dispatch(entries[...])
        for entry in entries where entry.needsHandler { a.handler(entry) }
        let program = a.resolve()
        guard program.count <= BPF.maxInstructions else { throw .tooLong(instructions: program.count) }
        return program
    }
}

/// Emits instructions with symbolic targets for unconditional jumps, then resolves them.
private struct Assembler {
    /// One syscall with rules, and the label of its handler.
    struct Entry {
        var number: UInt32
        var rules: [SeccompPolicy.Rule]
        var label: Int

        /// A syscall needs a handler unless its one rule decides without looking at arguments.
        var needsHandler: Bool { immediate == nil }

        /// The return value when the rule does not depend on arguments.
        var immediate: UInt32? {
            guard rules.count == 1, let rule = rules.first else { return nil }
            switch rule.kind {
            case .allow: return SeccompAction.allow.rawValue
            case .fail(let e): return SeccompAction.errno(e).rawValue
            case .allowIoctl, .allowIf: return nil
            }
        }
    }

    enum Item {
        case instruction(BPFInstruction)
        case jump(to: Int)
        case label(Int)
    }

    let defaultAction: UInt32
    var items: [Item] = []
    var labels = 0

    init(defaultAction: UInt32) { self.defaultAction = defaultAction }

    mutating func newLabel() -> Int { labels += 1; return labels - 1 }
    mutating func emit(_ code: UInt16, jt: UInt8 = 0, jf: UInt8 = 0, k: UInt32 = 0) {
        items.append(.instruction(BPFInstruction(code: code, jt: jt, jf: jf, k: k)))
    }
    mutating func jump(to label: Int) { items.append(.jump(to: label)) }
    mutating func place(_ label: Int) { items.append(.label(label)) }
    mutating func ret(_ value: UInt32) { emit(BPF.ret | BPF.k, k: value) }
    mutating func load(offset: UInt32) { emit(BPF.ld | BPF.w | BPF.abs, k: offset) }

    static let offsetNr: UInt32 = 0
    static let offsetArch: UInt32 = 4
    static func offsetArg(_ i: Int, high: Bool) -> UInt32 { 16 + 8 * UInt32(i) + (high ? 4 : 0) }
    static let x32Bit: UInt32 = 0x4000_0000

    /// Architecture and x32 checks; leaves the syscall number in A.
    mutating func preamble() {
        load(offset: Self.offsetArch)
        emit(BPF.jmp | BPF.jeq | BPF.k, jt: 1, jf: 0, k: SeccompData.auditArchX86_64)
        ret(SeccompAction.killProcess.rawValue)
        load(offset: Self.offsetNr)
        emit(BPF.jmp | BPF.jset | BPF.k, jt: 0, jf: 1, k: Self.x32Bit)
        ret(SeccompAction.killProcess.rawValue)
    }

    /// Above this many syscalls a range is split in two; below, numbers are compared in turn.
    static let leafSize = 4

    /// The binary search over the syscall numbers in A.
    mutating func dispatch(_ entries: ArraySlice<Entry>) {
        if entries.count <= Self.leafSize {
            for e in entries {
                // Equal: fall through to the next instruction (return or jump to the handler);
                // not equal: skip it.
                emit(BPF.jmp | BPF.jeq | BPF.k, jt: 0, jf: 1, k: e.number)
                if let value = e.immediate { ret(value) } else { jump(to: e.label) }
            }
            ret(defaultAction)
            return
        }
        let middle = entries.startIndex + entries.count / 2
        let upper = newLabel()
        // nr >= middle's number: take the jump to the upper half; else skip it into the lower half.
        emit(BPF.jmp | BPF.jge | BPF.k, jt: 0, jf: 1, k: entries[middle].number)
        jump(to: upper)
        dispatch(entries[..<middle])
        place(upper)
        dispatch(entries[middle...])
    }

    /// The argument checks of one syscall; ends with the default action.
    mutating func handler(_ entry: Entry) {
        place(entry.label)
        let requests = entry.rules.compactMap { rule -> UInt32? in
            if case .allowIoctl(let r) = rule.kind { return r }
            return nil
        }
        if !requests.isEmpty {
            // The kernel's ioctl takes `unsigned int cmd`: only the low word of args[1] counts.
            load(offset: Self.offsetArg(1, high: false))
            for r in requests {
                emit(BPF.jmp | BPF.jeq | BPF.k, jt: 0, jf: 1, k: r)
                ret(SeccompAction.allow.rawValue)
            }
        }
        for rule in entry.rules {
            guard case .allowIf(let conditions) = rule.kind else { continue }
            let next = newLabel()
            for c in conditions {
                for high in [false, true] {
                    let shift: UInt64 = high ? 32 : 0
                    let mask = UInt32(truncatingIfNeeded: c.mask >> shift)
                    let value = UInt32(truncatingIfNeeded: c.value >> shift)
                    if mask == 0 { continue }   // the parser made sure value has no bits here either
                    load(offset: Self.offsetArg(c.argument, high: high))
                    if mask != .max { emit(BPF.alu | BPF.and | BPF.k, k: mask) }
                    // Holds: skip the jump to the next rule.
                    emit(BPF.jmp | BPF.jeq | BPF.k, jt: 1, jf: 0, k: value)
                    jump(to: next)
                }
            }
            ret(SeccompAction.allow.rawValue)
            place(next)
        }
        ret(defaultAction)
    }

    /// Lays the program out and turns each label jump into `ja` with its 32-bit offset.
    func resolve() -> [BPFInstruction] {
        var address = [Int](repeating: 0, count: labels)
        var pc = 0
        for item in items {
            switch item {
            case .instruction, .jump: pc += 1
            case .label(let l): address[l] = pc
            }
        }
        var program: [BPFInstruction] = []
        program.reserveCapacity(pc)
        for item in items {
            switch item {
            case .instruction(let i): program.append(i)
            case .jump(let l):
                // Labels are always placed after the jumps to them (handlers and upper halves
                // come later), so the offset is never negative.
                let offset = address[l] - (program.count + 1)
                program.append(BPFInstruction(code: BPF.jmp | BPF.ja, k: UInt32(clamping: max(0, offset))))
            case .label: break
            }
        }
        return program
    }
}
