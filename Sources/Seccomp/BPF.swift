// Classic BPF as seccomp runs it: the instruction format, the actions a filter returns, the
// `struct seccomp_data` it reads, and an interpreter that judges a program the way the kernel
// would — so every compiled policy can be checked syscall by syscall without installing it.

/// One classic BPF instruction (`struct sock_filter`): an opcode, two 8-bit relative jump
/// offsets for conditional jumps (true, false), and a 32-bit constant.
public struct BPFInstruction: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var code: UInt16
    public var jt: UInt8
    public var jf: UInt8
    public var k: UInt32

    public init(code: UInt16, jt: UInt8 = 0, jf: UInt8 = 0, k: UInt32 = 0) {
        self.code = code; self.jt = jt; self.jf = jf; self.k = k
    }

    /// The four fields in `struct sock_filter` order, for installing without this module
    /// (Sources/HostOS/Seccomp.swift takes them as tuples).
    public var fields: (code: UInt16, jt: UInt8, jf: UInt8, k: UInt32) { (code, jt, jf, k) }

    public var description: String {
        func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
        switch code {
        case BPF.ld | BPF.w | BPF.abs: return "ld [\(k)]"
        case BPF.alu | BPF.and | BPF.k: return "and \(hex(k))"
        case BPF.jmp | BPF.ja: return "ja +\(k)"
        case BPF.jmp | BPF.jeq | BPF.k: return "jeq \(hex(k)) jt +\(jt) jf +\(jf)"
        case BPF.jmp | BPF.jge | BPF.k: return "jge \(hex(k)) jt +\(jt) jf +\(jf)"
        case BPF.jmp | BPF.jset | BPF.k: return "jset \(hex(k)) jt +\(jt) jf +\(jf)"
        case BPF.ret | BPF.k: return "ret \(SeccompAction(rawValue: k))"
        default: return "code \(hex(UInt32(code))) jt \(jt) jf \(jf) k \(hex(k))"
        }
    }
}

/// Opcode parts of classic BPF (`<linux/bpf_common.h>`), combined with `|`.
public enum BPF {
    // Instruction classes.
    public static let ld: UInt16 = 0x00, ldx: UInt16 = 0x01, st: UInt16 = 0x02, stx: UInt16 = 0x03
    public static let alu: UInt16 = 0x04, jmp: UInt16 = 0x05, ret: UInt16 = 0x06, misc: UInt16 = 0x07
    // Load sizes and modes.
    public static let w: UInt16 = 0x00, h: UInt16 = 0x08, b: UInt16 = 0x10
    public static let imm: UInt16 = 0x00, abs: UInt16 = 0x20, ind: UInt16 = 0x40, mem: UInt16 = 0x60, len: UInt16 = 0x80
    // ALU operations.
    public static let add: UInt16 = 0x00, sub: UInt16 = 0x10, mul: UInt16 = 0x20, div: UInt16 = 0x30
    public static let or: UInt16 = 0x40, and: UInt16 = 0x50, lsh: UInt16 = 0x60, rsh: UInt16 = 0x70
    public static let neg: UInt16 = 0x80, mod: UInt16 = 0x90, xor: UInt16 = 0xa0
    // Jumps.
    public static let ja: UInt16 = 0x00, jeq: UInt16 = 0x10, jgt: UInt16 = 0x20, jge: UInt16 = 0x30, jset: UInt16 = 0x40
    // Operand source: the constant k, or the index register X. `RET A` returns the accumulator.
    public static let k: UInt16 = 0x00, x: UInt16 = 0x08, a: UInt16 = 0x10
    // MISC: A → X, X → A.
    public static let tax: UInt16 = 0x00, txa: UInt16 = 0x80

    /// The kernel's limit on a filter's length (BPF_MAXINSNS).
    public static let maxInstructions = 4096
    /// Scratch memory words (BPF_MEMWORDS).
    public static let memoryWords = 16
}

/// What a seccomp filter tells the kernel to do with a system call (`SECCOMP_RET_*`).
public enum SeccompAction: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// Run it.
    case allow
    /// Run it, and log it (the kernel's audit log / dmesg `type=1326`).
    case log
    /// Do not run it; send the thread SIGSYS (the syscall number is in `si_syscall`).
    case trap
    /// Do not run it; it fails with this errno.
    case errno(UInt16)
    /// Do not run it; hand it to a tracer (with this value), or fail with ENOSYS when none.
    case trace(UInt16)
    /// Do not run it; hand it to a user-space supervisor.
    case userNotify
    /// Kill the calling thread.
    case killThread
    /// Kill the whole process (as by SIGSYS, with a core dump if allowed).
    case killProcess

    // The values of <linux/seccomp.h>.
    static let retKillProcess: UInt32 = 0x8000_0000
    static let retKillThread: UInt32 = 0x0000_0000
    static let retTrap: UInt32 = 0x0003_0000
    static let retErrno: UInt32 = 0x0005_0000
    static let retUserNotify: UInt32 = 0x7fc0_0000
    static let retTrace: UInt32 = 0x7ff0_0000
    static let retLog: UInt32 = 0x7ffc_0000
    static let retAllow: UInt32 = 0x7fff_0000
    /// The action part of a return value (SECCOMP_RET_ACTION_FULL); the rest is data.
    static let actionMask: UInt32 = 0xffff_0000

    /// The 32-bit value a filter returns for this action.
    public var rawValue: UInt32 {
        switch self {
        case .allow: return Self.retAllow
        case .log: return Self.retLog
        case .trap: return Self.retTrap
        case .errno(let e): return Self.retErrno | UInt32(e)
        case .trace(let d): return Self.retTrace | UInt32(d)
        case .userNotify: return Self.retUserNotify
        case .killThread: return Self.retKillThread
        case .killProcess: return Self.retKillProcess
        }
    }

    /// Decodes a filter's return value as the kernel does: by its upper 16 bits. Values no
    /// action claims are treated as kill-process, like the kernel treats them.
    public init(rawValue: UInt32) {
        let data = UInt16(truncatingIfNeeded: rawValue)
        switch rawValue & Self.actionMask {
        case Self.retAllow: self = .allow
        case Self.retLog: self = .log
        case Self.retTrap: self = .trap
        case Self.retErrno: self = .errno(data)
        case Self.retTrace: self = .trace(data)
        case Self.retUserNotify: self = .userNotify
        case Self.retKillThread: self = .killThread
        default: self = .killProcess
        }
    }

    public var description: String {
        switch self {
        case .allow: return "ALLOW"
        case .log: return "LOG"
        case .trap: return "TRAP"
        case .errno(let e): return "ERRNO(\(e))"
        case .trace(let d): return "TRACE(\(d))"
        case .userNotify: return "USER_NOTIF"
        case .killThread: return "KILL_THREAD"
        case .killProcess: return "KILL_PROCESS"
        }
    }

    /// When several filters are installed the kernel runs them all and takes the most
    /// restrictive answer: the lowest action value compared as a signed 32-bit number
    /// (kill-process < kill-thread < trap < errno < user-notify < trace < log < allow).
    /// `results` are the return values, most recently installed filter first; on a tie the
    /// earlier one (the newer filter) wins, as in the kernel.
    public static func combine(_ results: [UInt32]) -> UInt32 {
        var best = retAllow
        var first = true
        for r in results {
            if first || Int32(bitPattern: r & actionMask) < Int32(bitPattern: best & actionMask) { best = r }
            first = false
        }
        return best
    }
}

/// The input of a seccomp filter (`struct seccomp_data`, 64 bytes): the system call number,
/// the audit architecture, the instruction pointer and the six argument registers. A filter
/// reads it in 32-bit words, little-endian: each 64-bit field is its low word, then its high.
public struct SeccompData: Equatable, Sendable {
    public var nr: Int32
    public var arch: UInt32
    public var instructionPointer: UInt64
    public var args: [UInt64]

    /// AUDIT_ARCH_X86_64 (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
    public static let auditArchX86_64: UInt32 = 0xc000_003e
    /// The size of the structure: loads must lie inside it.
    public static let size: UInt32 = 64

    /// A call of `nr` on x86_64 with these arguments (missing ones are 0, extra ones ignored).
    public init(nr: Int32, arch: UInt32 = SeccompData.auditArchX86_64, instructionPointer: UInt64 = 0, args: [UInt64] = []) {
        self.nr = nr
        self.arch = arch
        self.instructionPointer = instructionPointer
        self.args = (0..<6).map { $0 < args.count ? args[$0] : 0 }
    }

    /// The 32-bit word at byte `offset` (a multiple of 4 below 64), as `BPF_LD|BPF_W|BPF_ABS` reads it.
    public func word(at offset: UInt32) -> UInt32? {
        guard offset % 4 == 0, offset < Self.size else { return nil }
        switch offset {
        case 0: return UInt32(bitPattern: nr)
        case 4: return arch
        case 8: return UInt32(truncatingIfNeeded: instructionPointer)
        case 12: return UInt32(truncatingIfNeeded: instructionPointer >> 32)
        default:
            let field = Int(offset - 16) / 8
            let value = field < args.count ? args[field] : 0
            return (offset - 16) % 8 == 0 ? UInt32(truncatingIfNeeded: value) : UInt32(truncatingIfNeeded: value >> 32)
        }
    }
}

/// Why a program cannot run as a seccomp filter. The kernel refuses such programs at install
/// time (EINVAL); the interpreter refuses them before running anything.
public struct BPFProgramError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The instruction at fault (nil: the program as a whole).
    public var index: Int?
    public var reason: String
    public var description: String {
        if let index { return "BPF instruction \(index): \(reason)" }
        return "BPF program: \(reason)"
    }
}

/// Runs classic BPF programs on `seccomp_data` with the kernel's seccomp rules: the
/// instruction subset seccomp accepts, loads only as aligned words inside `seccomp_data`,
/// jumps forward only and inside the program, the last instruction a return.
public enum BPFInterpreter {
    /// Checks `program` the way the kernel does before accepting it as a filter.
    public static func validate(_ program: [BPFInstruction]) throws(BPFProgramError) {
        guard !program.isEmpty else { throw BPFProgramError(index: nil, reason: "empty") }
        guard program.count <= BPF.maxInstructions else {
            throw BPFProgramError(index: nil, reason: "\(program.count) instructions, more than the kernel's \(BPF.maxInstructions)")
        }
        for (pc, i) in program.enumerated() {
            func fail(_ why: String) -> BPFProgramError { BPFProgramError(index: pc, reason: why) }
            let remaining = program.count - pc - 1
            switch i.code {
            case BPF.ld | BPF.w | BPF.abs:
                guard i.k % 4 == 0, i.k < SeccompData.size else { throw fail("load of offset \(i.k) outside seccomp_data or unaligned") }
            case BPF.ld | BPF.w | BPF.len, BPF.ldx | BPF.w | BPF.len, BPF.ld | BPF.imm, BPF.ldx | BPF.imm,
                 BPF.misc | BPF.tax, BPF.misc | BPF.txa, BPF.ret | BPF.k, BPF.ret | BPF.a, BPF.alu | BPF.neg:
                break
            case BPF.ld | BPF.mem, BPF.ldx | BPF.mem, BPF.st, BPF.stx:
                guard i.k < UInt32(BPF.memoryWords) else { throw fail("scratch memory index \(i.k) out of range") }
            case BPF.alu | BPF.add | BPF.k, BPF.alu | BPF.sub | BPF.k, BPF.alu | BPF.mul | BPF.k, BPF.alu | BPF.and | BPF.k,
                 BPF.alu | BPF.or | BPF.k, BPF.alu | BPF.xor | BPF.k,
                 BPF.alu | BPF.add | BPF.x, BPF.alu | BPF.sub | BPF.x, BPF.alu | BPF.mul | BPF.x, BPF.alu | BPF.and | BPF.x,
                 BPF.alu | BPF.or | BPF.x, BPF.alu | BPF.xor | BPF.x, BPF.alu | BPF.lsh | BPF.x, BPF.alu | BPF.rsh | BPF.x,
                 BPF.alu | BPF.div | BPF.x:
                break
            case BPF.alu | BPF.div | BPF.k:
                guard i.k != 0 else { throw fail("division by the constant 0") }
            case BPF.alu | BPF.lsh | BPF.k, BPF.alu | BPF.rsh | BPF.k:
                guard i.k < 32 else { throw fail("shift by \(i.k)") }
            case BPF.jmp | BPF.ja:
                guard i.k < UInt32(remaining) else { throw fail("jump past the end") }
            case BPF.jmp | BPF.jeq | BPF.k, BPF.jmp | BPF.jgt | BPF.k, BPF.jmp | BPF.jge | BPF.k, BPF.jmp | BPF.jset | BPF.k,
                 BPF.jmp | BPF.jeq | BPF.x, BPF.jmp | BPF.jgt | BPF.x, BPF.jmp | BPF.jge | BPF.x, BPF.jmp | BPF.jset | BPF.x:
                guard Int(i.jt) < remaining, Int(i.jf) < remaining else { throw fail("conditional jump past the end") }
            default:
                throw fail("opcode 0x\(String(i.code, radix: 16)) is not allowed in a seccomp filter")
            }
        }
        guard let last = program.last, last.code == BPF.ret | BPF.k || last.code == BPF.ret | BPF.a else {
            throw BPFProgramError(index: program.count - 1, reason: "the last instruction is not a return")
        }
    }

    /// The value `program` returns for `data` (decode it with `SeccompAction(rawValue:)`).
    public static func run(_ program: [BPFInstruction], on data: SeccompData) throws(BPFProgramError) -> UInt32 {
        try validate(program)
        var a: UInt32 = 0
        var x: UInt32 = 0
        var memory = [UInt32](repeating: 0, count: BPF.memoryWords)
        var pc = 0
        // Jumps only go forward (validated), so this ends within program.count steps.
        while pc < program.count {
            let i = program[pc]
            pc += 1
            switch i.code {
            case BPF.ld | BPF.w | BPF.abs:
                guard let word = data.word(at: i.k) else { throw BPFProgramError(index: pc - 1, reason: "bad load") }
                a = word
            case BPF.ld | BPF.w | BPF.len: a = SeccompData.size
            case BPF.ldx | BPF.w | BPF.len: x = SeccompData.size
            case BPF.ld | BPF.imm: a = i.k
            case BPF.ldx | BPF.imm: x = i.k
            case BPF.ld | BPF.mem: a = memory[Int(i.k)]
            case BPF.ldx | BPF.mem: x = memory[Int(i.k)]
            case BPF.st: memory[Int(i.k)] = a
            case BPF.stx: memory[Int(i.k)] = x
            case BPF.misc | BPF.tax: x = a
            case BPF.misc | BPF.txa: a = x
            case BPF.ret | BPF.k: return i.k
            case BPF.ret | BPF.a: return a
            case BPF.alu | BPF.neg: a = 0 &- a
            case BPF.jmp | BPF.ja: pc += Int(i.k)
            default:
                let operand = i.code & BPF.x != 0 ? x : i.k
                if i.code & 0x07 == BPF.alu {
                    switch i.code & 0xf0 {
                    case BPF.add: a = a &+ operand
                    case BPF.sub: a = a &- operand
                    case BPF.mul: a = a &* operand
                    case BPF.div:
                        guard operand != 0 else { return 0 }   // the kernel ends the filter with 0
                        a = a / operand
                    case BPF.and: a = a & operand
                    case BPF.or: a = a | operand
                    case BPF.xor: a = a ^ operand
                    // Shifts by 32 or more give 0 (the kernel's are done in 32-bit registers).
                    case BPF.lsh: a = operand >= 32 ? 0 : a << operand
                    case BPF.rsh: a = operand >= 32 ? 0 : a >> operand
                    default: throw BPFProgramError(index: pc - 1, reason: "unknown ALU operation")
                    }
                } else {
                    let taken: Bool
                    switch i.code & 0xf0 {
                    case BPF.jeq: taken = a == operand
                    case BPF.jgt: taken = a > operand
                    case BPF.jge: taken = a >= operand
                    case BPF.jset: taken = a & operand != 0
                    default: throw BPFProgramError(index: pc - 1, reason: "unknown jump")
                    }
                    pc += Int(taken ? i.jt : i.jf)
                }
            }
        }
        // Unreachable after validation (the last instruction returns).
        throw BPFProgramError(index: nil, reason: "ran off the end")
    }

    /// The action of a stack of filters (first installed first), combined as the kernel does.
    public static func run(stack filters: [[BPFInstruction]], on data: SeccompData) throws(BPFProgramError) -> UInt32 {
        var results: [UInt32] = []
        for program in filters.reversed() { results.append(try run(program, on: data)) }
        return SeccompAction.combine(results)
    }
}
