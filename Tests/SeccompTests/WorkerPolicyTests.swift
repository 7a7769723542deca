import CPolicies
import Foundation
import HostOS
import KVM
import Seccomp
import Testing

/// The worker's policy files: they parse and compile, the binary embeds them unchanged, and the
/// filters they make (main alone; main and vcpu stacked, as a vCPU thread runs) allow what the
/// worker needs and refuse what it must never do.
struct WorkerPolicyTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Sources/CPolicies/policies")

    static func file(_ name: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
    }

    static let mainText = stringFromStaticCString(bulkhead_policy_worker_main_text())
    static let vcpuText = stringFromStaticCString(bulkhead_policy_worker_vcpu_text())

    static func programs() throws -> (main: [BPFInstruction], vcpu: [BPFInstruction], mainPolicy: SeccompPolicy, vcpuPolicy: SeccompPolicy) {
        let m = try SeccompPolicy(parsing: mainText), v = try SeccompPolicy(parsing: vcpuText)
        return (try m.compile(defaultAction: .trap), try v.compile(defaultAction: .trap), m, v)
    }

    func nr(_ name: String) throws -> Int32 { Int32(try #require(SyscallTable.number(of: name))) }

    /// The action for a call on the main thread (main filter) and on a vCPU thread (both).
    func judge(_ name: String, _ args: [UInt64] = []) throws -> (main: SeccompAction, vcpu: SeccompAction) {
        let p = try Self.programs()
        let data = SeccompData(nr: try nr(name), args: args)
        return (SeccompAction(rawValue: try BPFInterpreter.run(p.main, on: data)),
                SeccompAction(rawValue: try BPFInterpreter.run(stack: [p.main, p.vcpu], on: data)))
    }

    @Test func everyPolicyFileInTheRepositoryParsesAndCompiles() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.directory.path).filter { $0.hasSuffix(".policy") }
        #expect(Set(names) == ["worker-main.policy", "worker-vcpu.policy", "witness.policy"])
        for name in names {
            let policy = try SeccompPolicy(parsing: try Self.file(name))
            #expect(!policy.rules.isEmpty, "\(name)")
            for action in [DefaultAction.trap, .log, .killProcess, .errno(1)] {
                let program = try policy.compile(defaultAction: action)
                try BPFInterpreter.validate(program)
                #expect(program.count < 512, "\(name): \(program.count) instructions")
            }
        }
    }

    @Test func theBinaryEmbedsTheFilesUnchanged() throws {
        #expect(Self.mainText == (try Self.file("worker-main.policy")))
        #expect(Self.vcpuText == (try Self.file("worker-vcpu.policy")))
        #expect(stringFromStaticCString(bulkhead_policy_witness_text()) == (try Self.file("witness.policy")))
    }

    /// The witness's allowlist is its own and narrow: it can serve and persist its state, and
    /// cannot start a process, open a socket of its own, map memory executable, or reach KVM.
    @Test func theWitnessPolicyAllowsServingAndNothingElse() throws {
        let program = try SeccompPolicy(parsing: stringFromStaticCString(bulkhead_policy_witness_text())).compile(defaultAction: .killProcess)
        func action(_ name: String, _ args: [UInt64] = []) throws -> SeccompAction {
            SeccompAction(rawValue: try BPFInterpreter.run(program, on: SeccompData(nr: try nr(name), args: args)))
        }
        for allowed in ["accept4", "recvmsg", "sendto", "openat", "renameat", "fsync", "ppoll", "exit_group"] {
            #expect(try action(allowed) == .allow, "\(allowed)")
        }
        #expect(try action("prctl", [21]) == .allow)   // PR_GET_SECCOMP
        for forbidden in ["execve", "socket", "connect", "ioctl", "clone", "clone3", "fork", "ptrace", "mount", "setuid", "kill", "bind", "listen",
                          "process_vm_writev", "unshare", "chmod", "unlink"] {
            #expect(try action(forbidden) == .killProcess, "\(forbidden)")
        }
        #expect(try action("prctl", [22]) == .killProcess)   // PR_SET_SECCOMP
        #expect(try action("mmap", [0, 4096, 3]) == .allow && (try action("mmap", [0, 4096, 5])) == .killProcess)   // never PROT_EXEC
        #expect(try action("mprotect", [0, 4096, 7]) == .killProcess)
    }

    /// A vCPU thread runs under both filters: everything the vcpu policy allows must pass the
    /// main policy too, or the vcpu rule would be dead and the thread killed.
    @Test func mainAllowsEverythingTheVCPUPolicyAllows() throws {
        let p = try Self.programs()
        for rule in p.vcpuPolicy.rules {
            var args = [UInt64](repeating: 0, count: 6)
            switch rule.kind {
            case .allow, .fail: break
            case .allowIoctl(let request): args[1] = UInt64(request)
            case .allowIf(let conditions): for c in conditions { args[c.argument] = c.value }
            }
            let data = SeccompData(nr: Int32(rule.number), args: args)
            let alone = SeccompAction(rawValue: try BPFInterpreter.run(p.vcpu, on: data))
            let stacked = SeccompAction(rawValue: try BPFInterpreter.run(stack: [p.main, p.vcpu], on: data))
            #expect(alone != .trap, "line \(rule.line)")
            #expect(stacked == alone, "vcpu line \(rule.line) (\(rule.syscall)): main says \(stacked)")
        }
    }

    @Test func kvmRequestsByRole() throws {
        for setup in ["KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_IOEVENTFD", "KVM_IRQFD",
                      "KVM_SET_CPUID2", "KVM_SET_SREGS", "KVM_SET_REGS", "KVM_CHECK_EXTENSION"] {
            let request = UInt64(try #require(IoctlTable.request(named: setup)))
            let (main, vcpu) = try judge("ioctl", [5, request])
            #expect(main == .allow, "\(setup) on the main thread")
            #expect(vcpu == .trap, "\(setup) on a vCPU thread")
        }
        for run in ["KVM_RUN", "KVM_GET_REGS", "KVM_GET_SREGS", "KVM_IRQ_LINE"] {
            let request = UInt64(try #require(IoctlTable.request(named: run)))
            #expect(try judge("ioctl", [8, request]) == (.allow, .allow), "\(run)")
        }
        // Requests the worker never makes.
        for request: UInt64 in [0x5401 /* TCGETS */, 0x5421 /* FIONBIO */, 0x4008_ae48 /* KVM_SET_IDENTITY_MAP_ADDR */,
                                0xae02 /* KVM_GET_MSR_INDEX_LIST */, 0x8004_ae98 /* KVM_GET_MP_STATE */, 0] {
            #expect(try judge("ioctl", [5, request]) == (.trap, .trap), "0x\(String(request, radix: 16))")
        }
    }

    @Test func neverExecutableMemory() throws {
        for name in ["mmap", "mprotect"] {
            #expect(try judge(name, [0, 4096, 3, 0x22]) == (.allow, .allow), "\(name) RW")
            #expect(try judge(name, [0, 4096, 0, 0x22]) == (.allow, .allow), "\(name) NONE")
            #expect(try judge(name, [0, 4096, 5, 0x22]) == (.trap, .trap), "\(name) R+X")
            #expect(try judge(name, [0, 4096, 7, 0x22]) == (.trap, .trap), "\(name) RWX")
        }
        #expect(try judge("pkey_mprotect", [0, 4096, 7]) == (.trap, .trap))
        #expect(try judge("madvise", [0, 4096, 12]) == (.trap, .trap))    // MADV_MERGEABLE: guest RAM stays out of KSM
        #expect(try judge("madvise", [0, 4096, 4]) == (.allow, .allow))   // MADV_DONTNEED
    }

    @Test func threadsButNeverProcesses() throws {
        let glibcThread: UInt64 = 0x3d0f00   // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
        #expect(try judge("clone", [glibcThread]).main == .allow)
        #expect(try judge("clone", [glibcThread]).vcpu == .trap)          // vCPU threads create no threads
        #expect(try judge("clone", [0x11]).main == .trap)                 // fork
        #expect(try judge("clone", [0x4111]).main == .trap)               // vfork
        for namespace: UInt64 in [0x20000, 0x2000000, 0x4000000, 0x8000000, 0x1000_0000, 0x2000_0000, 0x4000_0000] {
            #expect(try judge("clone", [glibcThread | namespace]).main == .trap, "0x\(String(namespace, radix: 16))")
        }
        #expect(try judge("clone3").main == .errno(38))                   // ENOSYS: glibc falls back to clone
        for name in ["fork", "vfork", "execve", "execveat", "unshare", "setns"] {
            #expect(try judge(name) == (.trap, .trap), "\(name)")
        }
    }

    @Test func nothingToOpenNothingToReachNoKernelExtras() throws {
        #expect(try judge("openat").main == .errno(2))                    // ENOENT: glibc's overcommit probe
        for name in ["open", "creat", "openat2", "open_by_handle_at", "socket", "socketpair", "connect", "bind", "listen",
                     "accept", "accept4", "ptrace", "process_vm_readv", "process_vm_writev", "kill", "tkill", "mount",
                     "umount2", "pivot_root", "chroot", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "keyctl",
                     "add_key", "request_key", "init_module", "finit_module", "kexec_load", "reboot", "setuid", "setresuid",
                     "capset", "memfd_create", "readlink", "unlink", "rename", "mknod", "ioperm", "iopl",
                     "modify_ldt", "personality", "uname", "sysinfo", "sched_setaffinity", "setrlimit", "prlimit64"] {
            #expect(try judge(name) == (.trap, .trap), "\(name)")
        }
    }

    @Test func narrowedArguments() throws {
        #expect(try judge("tgkill", [1, 2, 12]) == (.allow, .allow))        // SIGUSR2: the kick
        #expect(try judge("tgkill", [1, 2, 9]) == (.trap, .trap))           // SIGKILL
        #expect(try judge("futex", [0, 0x80]) == (.allow, .allow))          // FUTEX_WAIT_PRIVATE
        #expect(try judge("futex", [0, 0x86]) == (.allow, .allow))          // FUTEX_LOCK_PI_PRIVATE
        #expect(try judge("futex", [0, 0x8c]) == (.trap, .trap))            // FUTEX_CMP_REQUEUE_PI_PRIVATE
        #expect(try judge("futex", [0, 0x85]) == (.trap, .trap))            // FUTEX_WAKE_OP_PRIVATE
        #expect(try judge("prctl", [39]) == (.allow, .trap))                // PR_GET_NO_NEW_PRIVS
        #expect(try judge("prctl", [38]).main == .trap)                     // PR_SET_NO_NEW_PRIVS: not needed again
        #expect(try judge("prctl", [21]) == (.allow, .trap))                // PR_GET_SECCOMP: the worker's check, main thread only
        #expect(try judge("prctl", [4]).main == .trap)                      // PR_SET_DUMPABLE
        #expect(try judge("seccomp", [1, 0]) == (.allow, .trap))            // vCPU threads add their filter
        #expect(try judge("seccomp", [1, 2]).main == .allow)                // ... optionally with FLAG_LOG
        #expect(try judge("seccomp", [1, 1]).main == .trap)                 // TSYNC
        #expect(try judge("seccomp", [1, 8]).main == .trap)                 // NEW_LISTENER
        #expect(try judge("seccomp", [0, 0]).main == .trap)                 // strict mode
        #expect(try judge("fallocate", [5, 3]).main == .allow)              // punch hole
        #expect(try judge("fallocate", [5, 0]).main == .trap)               // plain allocation: the image never grows
        #expect(try judge("sendto", [7, 0, 100, 0x4040, 0, 0]).main == .allow)
        #expect(try judge("sendto", [7, 0, 100, 0x4040, 0x7fff_0000, 16]).main == .trap)   // to an address
        #expect(try judge("sendto", [7, 0, 100, 0x4040, 0, 0]).vcpu == .trap)              // no device I/O on vCPUs
        #expect(try judge("preadv").vcpu == .trap)
        #expect(try judge("fcntl", [7, 4]).main == .allow)                  // F_SETFL
        #expect(try judge("fcntl", [7, 0]).main == .trap)                   // F_DUPFD
        #expect(try judge("getsockopt", [7, 1, 3]).main == .allow)          // SO_TYPE
        #expect(try judge("getsockopt", [7, 1, 17]).main == .trap)          // SO_PEERCRED
        #expect(try judge("rt_sigaction", [12]) == (.allow, .allow))
        #expect(try judge("rt_sigaction", [31]) == (.trap, .trap))          // SIGSYS: the reporter is installed before the filter
    }

    /// What glibc does lazily, under load, on whichever thread the load lands (issue 9): a 9th
    /// thread needing a malloc arena counts CPUs (sched_getaffinity, after /sys and /proc probes
    /// answered ENOENT); past the arena cap threads share the main arena, which grows and shrinks
    /// with brk; realloc of a large block is mremap. A vCPU thread must survive all of them.
    @Test func lazyCLibraryCallsPassOnEveryThread() throws {
        #expect(try judge("sched_getaffinity", [0, 4096, 0x7f00_0000_0000]) == (.allow, .allow))
        #expect(try judge("sched_getaffinity", [1234, 128, 0x7f00_0000_0000]) == (.allow, .allow))   // pthread_getattr_np: a thread's id
        #expect(try judge("openat", [UInt64(bitPattern: -100), 0, 0x80000]) == (.errno(2), .errno(2)))
        #expect(try judge("brk", [0]) == (.allow, .allow))
        #expect(try judge("mremap", [0, 1 << 20, 2 << 20, 1]) == (.allow, .allow))        // MREMAP_MAYMOVE
        #expect(try judge("mremap", [0, 1 << 20, 2 << 20, 0]) == (.allow, .allow))
        #expect(try judge("mremap", [0, 1 << 20, 2 << 20, 3, 0x1000]) == (.trap, .trap))   // MREMAP_FIXED: an address of the caller's choosing
        #expect(try judge("mremap", [0, 1 << 20, 1 << 20, 5]) == (.trap, .trap))           // MREMAP_DONTUNMAP
        #expect(try judge("sched_setaffinity", [0, 128, 0]) == (.trap, .trap))
    }

    /// What every role needs to report a violation and end: the SIGSYS handler's two calls.
    @Test func theViolationReportCanAlwaysBeSent() throws {
        #expect(try judge("write", [3, 0, 20]) == (.allow, .allow))
        #expect(try judge("exit_group", [159]) == (.allow, .allow))
    }
}
