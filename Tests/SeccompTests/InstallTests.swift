import CKVM
import CLinux
import CPolicies
import HostOS
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
            guard clinux_set_no_new_privs() == 0 else { return }
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
            out["fionread"] = Self.errnoAfter(Int(clinux_ioctl_ptr(readEnd, 0x541b, &n)))
            out["fionread-high"] = Self.errnoAfter(Int(clinux_ioctl_ptr(readEnd, 0xffff_0000_0000_541b, &n)))
            out["fionbio"] = Self.errnoAfter(Int(clinux_ioctl_ptr(readEnd, 0x5421, &n)))
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

    /// The worker's own policies, in errno mode: a thread under "main" can still create a thread
    /// (glibc's clone3 gets ENOSYS and falls back to clone, which the filter lets through as a
    /// thread), and that thread, adding "vcpu", loses what only the main thread may do.
    @Test func workerPoliciesLetThreadsStartAndStackTheVCPUFilter() throws {
        let eperm = DefaultAction.errno(UInt16(EPERM))
        let main = try SeccompPolicy(parsing: stringFromStaticCString(bulkhead_policy_worker_main_text())).compile(defaultAction: eperm)
        let vcpu = try SeccompPolicy(parsing: stringFromStaticCString(bulkhead_policy_worker_vcpu_text())).compile(defaultAction: eperm)
        let kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        defer { if kvm >= 0 { close(kvm) } }
        let r = try onFilteredThread { () -> [String: Int32] in
            var out: [String: Int32] = [:]
            do { try installSeccompFilter(main.map(\.fields)) } catch { return ["main-install": -1] }
            out["openat"] = Self.errnoAfter(Int(open("/etc/hostname", O_RDONLY)))
            out["socket"] = Self.errnoAfter(Int(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)))
            if kvm >= 0 { out["main-api-version"] = clinux_ioctl(kvm, CKVM_GET_API_VERSION, 0) }
            let events = eventfd(0, Int32(EFD_CLOEXEC))
            out["eventfd"] = events >= 0 ? 0 : errno
            let inner = Mutex<[String: Int32]>([:])
            do {
                let thread = try OSThread.spawn {
                    var v: [String: Int32] = [:]
                    do { try installSeccompFilter(vcpu.map(\.fields)) } catch { v["vcpu-install"] = -1 }
                    if kvm >= 0 {
                        v["vcpu-api-version"] = Self.errnoAfter(Int(clinux_ioctl(kvm, CKVM_GET_API_VERSION, 0)))
                        v["vcpu-create-vm"] = Self.errnoAfter(Int(clinux_ioctl(kvm, CKVM_CREATE_VM, 0)))
                    }
                    var one: UInt64 = 1
                    v["vcpu-write"] = Self.errnoAfter(write(events, &one, 8))
                    v["vcpu-getpgid"] = Self.errnoAfter(Int(getpgid(0)))
                    v["vcpu-eventfd"] = Self.errnoAfter(Int(eventfd(0, 0)))
                    inner.withLock { $0 = v }
                }
                thread.join()
                out["thread"] = 0
            } catch {
                out["thread"] = -1
            }
            for (k, v) in inner.withLock({ $0 }) { out[k] = v }
            var count: UInt64 = 0
            out["read"] = Self.errnoAfter(read(events, &count, 8))
            out["count"] = Int32(count)
            close(events)
            return out
        }
        #expect(r["main-install"] == nil)
        #expect(r["openat"] == ENOENT)      // the policy's answer for glibc's overcommit probe
        #expect(r["socket"] == EPERM)
        #expect(r["eventfd"] == 0)
        #expect(r["thread"] == 0, "a thread starts under the main policy")
        #expect(r["vcpu-install"] == nil)
        #expect(r["vcpu-write"] == 0)
        #expect(r["read"] == 0 && r["count"] == 1, "the vCPU-filtered thread's eventfd write arrived")
        #expect(r["vcpu-getpgid"] == EPERM)
        #expect(r["vcpu-eventfd"] == EPERM, "a vCPU thread creates no descriptors")
        if kvm >= 0 {
            #expect(r["main-api-version"] == 12)
            #expect(r["vcpu-api-version"] == EPERM)
            #expect(r["vcpu-create-vm"] == EPERM)
        }
    }
}
