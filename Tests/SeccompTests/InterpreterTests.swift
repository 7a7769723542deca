import Seccomp
import Testing

/// The interpreter refuses what the kernel refuses, and computes what the kernel computes.
struct InterpreterTests {
    typealias I = BPFInstruction
    static let allow = SeccompAction.allow.rawValue

    func refusal(_ program: [BPFInstruction]) -> String? {
        do { try BPFInterpreter.validate(program); return nil } catch { return error.description }
    }

    @Test func refusesWhatTheKernelRefuses() {
        let ret = I(code: BPF.ret | BPF.k, k: Self.allow)
        #expect(refusal([])?.contains("empty") == true)
        #expect(refusal(Array(repeating: ret, count: 4097))?.contains("4097 instructions") == true)
        #expect(refusal(Array(repeating: ret, count: 4096)) == nil)
        #expect(refusal([I(code: BPF.ld | BPF.w | BPF.abs, k: 64), ret])?.contains("outside seccomp_data") == true)
        #expect(refusal([I(code: BPF.ld | BPF.w | BPF.abs, k: 2), ret])?.contains("unaligned") == true)
        #expect(refusal([I(code: BPF.ld | BPF.h | BPF.abs, k: 0), ret])?.contains("not allowed") == true)
        #expect(refusal([I(code: BPF.jmp | BPF.ja, k: 1), ret])?.contains("jump past the end") == true)
        #expect(refusal([I(code: BPF.jmp | BPF.jeq | BPF.k, jt: 1, jf: 0), ret])?.contains("past the end") == true)
        #expect(refusal([I(code: BPF.alu | BPF.div | BPF.k, k: 0), ret])?.contains("division") == true)
        #expect(refusal([I(code: BPF.alu | BPF.lsh | BPF.k, k: 32), ret])?.contains("shift") == true)
        #expect(refusal([I(code: BPF.alu | BPF.mod | BPF.k, k: 3), ret])?.contains("not allowed") == true)
        #expect(refusal([I(code: BPF.st, k: 16), ret])?.contains("scratch memory") == true)
        #expect(refusal([I(code: BPF.ld | BPF.imm, k: 1)])?.contains("not a return") == true)
    }

    @Test func readsSeccompDataLittleEndianLowWordFirst() throws {
        let data = SeccompData(nr: 7, arch: 0xc000_003e, instructionPointer: 0x1122_3344_5566_7788,
                               args: [0xaaaa_bbbb_cccc_dddd, 1, 2, 3, 4, 0xffff_0000_0000_ffff])
        func load(_ offset: UInt32) throws -> UInt32 {
            try BPFInterpreter.run([I(code: BPF.ld | BPF.w | BPF.abs, k: offset), I(code: BPF.ret | BPF.a)], on: data)
        }
        #expect(try load(0) == 7)
        #expect(try load(4) == 0xc000_003e)
        #expect(try load(8) == 0x5566_7788)
        #expect(try load(12) == 0x1122_3344)
        #expect(try load(16) == 0xcccc_dddd)
        #expect(try load(20) == 0xaaaa_bbbb)
        #expect(try load(24) == 1)
        #expect(try load(56) == 0x0000_ffff)
        #expect(try load(60) == 0xffff_0000)
    }

    @Test func arithmeticJumpsAndScratchMemory() throws {
        let data = SeccompData(nr: 10)
        func eval(_ body: [BPFInstruction]) throws -> UInt32 {
            try BPFInterpreter.run([I(code: BPF.ld | BPF.w | BPF.abs, k: 0)] + body + [I(code: BPF.ret | BPF.a)], on: data)
        }
        #expect(try eval([I(code: BPF.alu | BPF.add | BPF.k, k: 5)]) == 15)
        #expect(try eval([I(code: BPF.alu | BPF.sub | BPF.k, k: 11)]) == UInt32.max)
        #expect(try eval([I(code: BPF.alu | BPF.mul | BPF.k, k: 3)]) == 30)
        #expect(try eval([I(code: BPF.alu | BPF.div | BPF.k, k: 3)]) == 3)
        #expect(try eval([I(code: BPF.alu | BPF.and | BPF.k, k: 6)]) == 2)
        #expect(try eval([I(code: BPF.alu | BPF.or | BPF.k, k: 5)]) == 15)
        #expect(try eval([I(code: BPF.alu | BPF.xor | BPF.k, k: 15)]) == 5)
        #expect(try eval([I(code: BPF.alu | BPF.lsh | BPF.k, k: 4)]) == 160)
        #expect(try eval([I(code: BPF.alu | BPF.rsh | BPF.k, k: 1)]) == 5)
        #expect(try eval([I(code: BPF.alu | BPF.neg)]) == 0 &- 10)
        // X register, scratch memory, division by a zero X ends the filter with 0.
        #expect(try eval([I(code: BPF.ldx | BPF.imm, k: 4), I(code: BPF.alu | BPF.add | BPF.x)]) == 14)
        #expect(try eval([I(code: BPF.st, k: 3), I(code: BPF.ld | BPF.imm, k: 1), I(code: BPF.ld | BPF.mem, k: 3)]) == 10)
        #expect(try eval([I(code: BPF.misc | BPF.tax), I(code: BPF.ld | BPF.imm, k: 0), I(code: BPF.misc | BPF.txa)]) == 10)
        #expect(try eval([I(code: BPF.ldx | BPF.imm, k: 0), I(code: BPF.alu | BPF.div | BPF.x)]) == 0)
        #expect(try eval([I(code: BPF.ld | BPF.w | BPF.len)]) == 64)
        // Jumps: taken and not taken, and `ja`.
        let skip = [I(code: BPF.jmp | BPF.jgt | BPF.k, jt: 1, jf: 0, k: 9), I(code: BPF.ld | BPF.imm, k: 100)]
        #expect(try eval(skip) == 10)
        let noSkip = [I(code: BPF.jmp | BPF.jge | BPF.k, jt: 1, jf: 0, k: 11), I(code: BPF.ld | BPF.imm, k: 100)]
        #expect(try eval(noSkip) == 100)
        let set = [I(code: BPF.jmp | BPF.jset | BPF.k, jt: 0, jf: 1, k: 2), I(code: BPF.ld | BPF.imm, k: 7)]
        #expect(try eval(set) == 7)
        #expect(try eval([I(code: BPF.jmp | BPF.ja, k: 1), I(code: BPF.ld | BPF.imm, k: 100)]) == 10)
    }

    @Test func actionsRoundTripAndStackAsTheKernelCombinesThem() {
        let all: [SeccompAction] = [.allow, .log, .trap, .errno(1), .errno(4095), .trace(7), .userNotify, .killThread, .killProcess]
        for a in all { #expect(SeccompAction(rawValue: a.rawValue) == a) }
        #expect(SeccompAction(rawValue: 0x0001_0000) == .killProcess)   // no such action: killed
        // Most restrictive wins; on a tie, the newer filter's data.
        #expect(SeccompAction.combine([SeccompAction.allow.rawValue, SeccompAction.trap.rawValue]) == SeccompAction.trap.rawValue)
        #expect(SeccompAction.combine([SeccompAction.log.rawValue, SeccompAction.errno(5).rawValue]) == SeccompAction.errno(5).rawValue)
        #expect(SeccompAction.combine([SeccompAction.errno(2).rawValue, SeccompAction.errno(5).rawValue]) == SeccompAction.errno(2).rawValue)
        #expect(SeccompAction.combine([SeccompAction.killThread.rawValue, SeccompAction.killProcess.rawValue]) == SeccompAction.killProcess.rawValue)
    }
}
