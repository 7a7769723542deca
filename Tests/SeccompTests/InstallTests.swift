import CKVM
import CPolicies
import KVM
import Seccomp
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Compiled policies installed for real, each on a thread of its own with the default action
/// `.errno(EPERM)` (a trap or kill would end the test process). no_new_privs and seccomp filters
/// are per-thread: once the thread has ended, the test process is as before.
struct InstallTests {
    /// Runs `body` on a new thread that has set no_new_privs, and returns what it returned.
    func onFilteredThread<T: Sendable>(_ body: @escaping @Sendable () -> T) throws -> T {
        let result = Mutex<T?>(nil)
        let thread = try OSThread.spawn {
            guard ckvm_set_no_new_privs() == 0 else { return }
            let r = body()
            result.withLock { $0 = r }
        }
        thread.join()
        return try #require(result.withLock { $0 })
    }

    static func errnoAfter(_ r: Int) -> Int32 { r >= 0 ? 0 : errno }

    @Test func allowedRunsForbiddenFailsIoctlByRequest() throws {
        let policy = try SeccompPolicy(parsing: """
            getpid          # allowed
            ioctl FIONREAD  # allowed request
            exit            # the thread ends
            futex           # Mutex, join
            gettid          # Mutex
            madvise         # glibc frees the stack
            rt_sigprocmask  # glibc at thread exit
            munmap          # glibc
            mmap if arg2 & 0x4 == 0 # no exec
            mprotect if arg2 & 0x4 == 0  # malloc arenas
            brk             # malloc
            """)
        let program = try policy.compile(defaultAction: .errno(UInt16(EPERM)))
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let readEnd = fds[0]
        let r = try onFilteredThread { () -> [String: Int32] in
            do { try installSeccompFilter(program.map(\.fields)) } catch { return ["install": -1] }
            var out: [String: Int32] = [:]
            out["getpid"] = Self.errnoAfter(Int(getpid()))
            out["getpgid"] = Self.errnoAfter(Int(getpgid(0)))
            var n: Int32 = 0
            out["fionread"] = Self.errnoAfter(Int(ckvm_ioctl_ptr(readEnd, 0x541b, &n)))
            out["fionread-high"] = Self.errnoAfter(Int(ckvm_ioctl_ptr(readEnd, 0xffff_0000_0000_541b, &n)))
            out["fionbio"] = Self.errnoAfter(Int(ckvm_ioctl_ptr(readEnd, 0x5421, &n)))
            let rw = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            out["mmap-rw"] = rw == MAP_FAILED ? errno : 0
            if rw != MAP_FAILED { munmap(rw, 4096) }
            let rwx = mmap(nil, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            out["mmap-rwx"] = rwx == MAP_FAILED ? errno : 0
            return out
        }
        #expect(r["install"] == nil)
        #expect(r["getpid"] == 0)
        #expect(r["getpgid"] == EPERM)
        #expect(r["fionread"] == 0)
        #expect(r["fionread-high"] == 0)
        #expect(r["fionbio"] == EPERM)
        #expect(r["mmap-rw"] == 0)
        #expect(r["mmap-rwx"] == EPERM)
    }
}
