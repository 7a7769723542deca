import CLinux
import Synchronization
import Testing
@testable import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// `installSeccompFilter` on its own, with a small hand-assembled program (KVM does not depend on
/// the Seccomp compiler; SeccompTests installs compiled policies). Every filter goes on a thread
/// of its own, which sets no_new_privs for itself first: both are per-thread, so the rest of the
/// test process is unaffected once the thread has ended.
struct SeccompInstallTests {
    typealias Instruction = (code: UInt16, jt: UInt8, jf: UInt8, k: UInt32)

    static let ldAbs: UInt16 = 0x20, jeq: UInt16 = 0x15, ret: UInt16 = 0x06, ja: UInt16 = 0x05
    static let fionread: UInt32 = 0x541b, fionbio: UInt32 = 0x5421

    /// Allows everything except getpgid (EPERM) and ioctl requests other than FIONREAD (EPERM).
    static let program: [Instruction] = [
        (ldAbs, 0, 0, 4),                                   // 0: A = arch
        (jeq, 1, 0, CLINUX_AUDIT_ARCH_X86_64),                // 1: x86_64? skip the kill
        (ret, 0, 0, CLINUX_SECCOMP_RET_KILL_PROCESS),         // 2
        (ldAbs, 0, 0, 0),                                   // 3: A = nr
        (jeq, 0, 1, UInt32(SYS_getpgid)),                   // 4
        (ret, 0, 0, CLINUX_SECCOMP_RET_ERRNO | UInt32(EPERM)),// 5
        (jeq, 0, 3, UInt32(SYS_ioctl)),                     // 6: not ioctl: to 10
        (ldAbs, 0, 0, 24),                                  // 7: A = low word of args[1]
        (jeq, 1, 0, fionread),                              // 8: FIONREAD: to 10
        (ret, 0, 0, CLINUX_SECCOMP_RET_ERRNO | UInt32(EPERM)),// 9
        (ret, 0, 0, CLINUX_SECCOMP_RET_ALLOW),                // 10
    ]

    /// Runs `body` on a new thread and returns what it returned.
    func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) throws -> T {
        let result = Mutex<T?>(nil)
        let thread = try OSThread.spawn { let r = body(); result.withLock { $0 = r } }
        thread.join()
        return try #require(result.withLock { $0 })
    }

    @Test func refusedWithoutNoNewPrivileges() throws {
        let outcome = try onThread { () -> String in
            // Another test's thread may not leak no_new_privs here, but be sure what is checked.
            guard clinux_get_no_new_privs() == 0 else { return "skip" }
            do { try installSeccompFilter(Self.program); return "installed" } catch { return "\(error)" }
        }
        if outcome != "skip" {
            #expect(outcome == SeccompInstallError.noNewPrivilegesNotSet.description)
        }
    }

    @Test func badLengthsAndMalformedProgramsAreRefused() throws {
        let outcomes = try onThread { () -> [String] in
            guard clinux_set_no_new_privs() == 0 else { return ["prctl failed"] }
            var out: [String] = []
            do { try installSeccompFilter([]) } catch { out.append("\(error)") }
            do { try installSeccompFilter(Array(repeating: (Self.ret, 0, 0, CLINUX_SECCOMP_RET_ALLOW), count: 4097)) } catch { out.append("\(error)") }
            // A jump past the end: the kernel's checker refuses it (EINVAL).
            do { try installSeccompFilter([(Self.ja, 0, 0, 5), (Self.ret, 0, 0, CLINUX_SECCOMP_RET_ALLOW)]) } catch { out.append("\(error)") }
            out.append(isUnderSeccompFilter() ? "filtered" : "not filtered")
            return out
        }
        #expect(outcomes.count == 4, "\(outcomes)")
        #expect(outcomes.first == SeccompInstallError.badLength(0).description)
        #expect(outcomes.dropFirst().first == SeccompInstallError.badLength(4097).description)
        #expect(outcomes.dropFirst(2).first == SeccompInstallError.system(SystemError("seccomp(SECCOMP_SET_MODE_FILTER)", errno: EINVAL)).description)
        #expect(outcomes.last == "not filtered")
    }

    @Test func theFilterBindsItsThreadOnly() throws {
        var pipeFDs: [Int32] = [0, 0]
        #expect(pipe(&pipeFDs) == 0)
        defer { close(pipeFDs[0]); close(pipeFDs[1]) }
        let readEnd = pipeFDs[0]
        let results = try onThread { () -> [String: Int32] in
            guard clinux_set_no_new_privs() == 0 else { return [:] }
            var r: [String: Int32] = ["before": isUnderSeccompFilter() ? 1 : 0]
            do { try installSeccompFilter(Self.program) } catch { return [:] }
            r["after"] = isUnderSeccompFilter() ? 1 : 0
            r["getpid"] = getpid() > 0 ? 0 : errno
            r["getpgid"] = getpgid(0) >= 0 ? 0 : errno
            var available: Int32 = -1
            r["fionread"] = clinux_ioctl_ptr(readEnd, UInt(Self.fionread), &available) == 0 ? 0 : errno
            var on: Int32 = 0
            r["fionbio"] = clinux_ioctl_ptr(readEnd, UInt(Self.fionbio), &on) == 0 ? 0 : errno
            // The same low 32 bits with high bits set is the same request to the kernel.
            r["fionread-high"] = clinux_ioctl_ptr(readEnd, UInt(Self.fionread) | 0xffff_ffff_0000_0000, &available) == 0 ? 0 : errno
            return r
        }
        #expect(results["before"] == 0)
        #expect(results["after"] == 1)
        #expect(results["getpid"] == 0)
        #expect(results["getpgid"] == EPERM)
        #expect(results["fionread"] == 0)
        #expect(results["fionbio"] == EPERM)
        #expect(results["fionread-high"] == 0)
        // This thread was never filtered.
        #expect(!isUnderSeccompFilter())
        #expect(getpgid(0) > 0)
    }
}
