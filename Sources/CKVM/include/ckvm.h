// The kernel's KVM ABI made visible to Swift: ioctl request numbers, capability and exit
// constants, kvm_run field offsets, and non-variadic wrappers around ioctl(2).
// Constants and wrappers only — every decision is made in Swift (Sources/KVM).
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/random.h>

// ioctl request numbers (function-like macros do not import into Swift).
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;

// Capabilities.
static const int CKVM_CAP_USER_MEMORY = KVM_CAP_USER_MEMORY;
static const int CKVM_CAP_SYNC_REGS = KVM_CAP_SYNC_REGS;
static const int CKVM_CAP_IMMEDIATE_EXIT = KVM_CAP_IMMEDIATE_EXIT;
static const int CKVM_CAP_NR_VCPUS = KVM_CAP_NR_VCPUS;
static const int CKVM_CAP_MAX_VCPUS = KVM_CAP_MAX_VCPUS;
static const int CKVM_CAP_SET_TSS_ADDR = KVM_CAP_SET_TSS_ADDR;
static const int CKVM_API_VERSION = KVM_API_VERSION;
static const uint64_t CKVM_SYNC_X86_REGS = KVM_SYNC_X86_REGS;
static const uint64_t CKVM_SYNC_X86_SREGS = KVM_SYNC_X86_SREGS;
static const int CKVM_MAX_CPUID_ENTRIES = 256;

// Exit reasons.
static const uint32_t CKVM_EXIT_UNKNOWN = KVM_EXIT_UNKNOWN;
static const uint32_t CKVM_EXIT_EXCEPTION = KVM_EXIT_EXCEPTION;
static const uint32_t CKVM_EXIT_IO = KVM_EXIT_IO;
static const uint32_t CKVM_EXIT_HLT = KVM_EXIT_HLT;
static const uint32_t CKVM_EXIT_MMIO = KVM_EXIT_MMIO;
static const uint32_t CKVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN;
static const uint32_t CKVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY;
static const uint32_t CKVM_EXIT_INTR = KVM_EXIT_INTR;
static const uint32_t CKVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR;
static const uint32_t CKVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT;
static const uint8_t CKVM_EXIT_IO_IN = KVM_EXIT_IO_IN;
static const uint8_t CKVM_EXIT_IO_OUT = KVM_EXIT_IO_OUT;

// struct kvm_run field offsets (the kernel ABI; read from the header, not assumed).
static const size_t CKVM_RUN_REQUEST_INTERRUPT_WINDOW = offsetof(struct kvm_run, request_interrupt_window);
static const size_t CKVM_RUN_IMMEDIATE_EXIT = offsetof(struct kvm_run, immediate_exit);
static const size_t CKVM_RUN_EXIT_REASON = offsetof(struct kvm_run, exit_reason);
static const size_t CKVM_RUN_IO_DIRECTION = offsetof(struct kvm_run, io.direction);
static const size_t CKVM_RUN_IO_SIZE = offsetof(struct kvm_run, io.size);
static const size_t CKVM_RUN_IO_PORT = offsetof(struct kvm_run, io.port);
static const size_t CKVM_RUN_IO_COUNT = offsetof(struct kvm_run, io.count);
static const size_t CKVM_RUN_IO_DATA_OFFSET = offsetof(struct kvm_run, io.data_offset);
static const size_t CKVM_RUN_MMIO_PHYS_ADDR = offsetof(struct kvm_run, mmio.phys_addr);
static const size_t CKVM_RUN_MMIO_DATA = offsetof(struct kvm_run, mmio.data);
static const size_t CKVM_RUN_MMIO_LEN = offsetof(struct kvm_run, mmio.len);
static const size_t CKVM_RUN_MMIO_IS_WRITE = offsetof(struct kvm_run, mmio.is_write);
static const size_t CKVM_RUN_FAIL_ENTRY_REASON = offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason);
static const size_t CKVM_RUN_INTERNAL_SUBERROR = offsetof(struct kvm_run, internal.suberror);
static const size_t CKVM_RUN_SYSTEM_EVENT_TYPE = offsetof(struct kvm_run, system_event.type);
static const size_t CKVM_RUN_VALID_REGS = offsetof(struct kvm_run, kvm_valid_regs);
static const size_t CKVM_RUN_DIRTY_REGS = offsetof(struct kvm_run, kvm_dirty_regs);
static const size_t CKVM_RUN_SYNC_REGS = offsetof(struct kvm_run, s.regs.regs);
static const size_t CKVM_RUN_SYNC_SREGS = offsetof(struct kvm_run, s.regs.sregs);

// Doorbells and interrupts: ioeventfd / irqfd (KVM_CAP_IOEVENTFD, KVM_CAP_IRQFD).
static const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long CKVM_IRQFD = KVM_IRQFD;
static const int CKVM_CAP_IOEVENTFD = KVM_CAP_IOEVENTFD;
static const int CKVM_CAP_IRQFD = KVM_CAP_IRQFD;
static const uint32_t CKVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;
static const uint32_t CKVM_IOEVENTFD_FLAG_DEASSIGN = KVM_IOEVENTFD_FLAG_DEASSIGN;

// Interrupt controllers and timers for Linux guests.
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const int CKVM_CAP_IRQCHIP = KVM_CAP_IRQCHIP;
static const int CKVM_CAP_PIT2 = KVM_CAP_PIT2;

// Non-variadic ioctl(2) wrappers: Swift cannot call a C variadic function.
int ckvm_ioctl(int fd, unsigned long request, unsigned long arg);
int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg);

// ---- File I/O for disk back ends (Sources/KVM/FileIO.swift) ----
// fallocate(2) mode bits: <linux/falloc.h> defines them as macros Swift's Glibc does not surface.
#include <linux/falloc.h>
static const int CKVM_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
static const int CKVM_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
static const int CKVM_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;
// glibc declares fallocate(2) only under _GNU_SOURCE, which Swift's Glibc module does not set;
// this forwards to the system call unchanged (-1 and errno on failure).
#include <sys/syscall.h>
#include <unistd.h>
static inline int ckvm_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return (int)syscall(SYS_fallocate, fd, mode, offset, length);
}
// pipe2(2), declared by glibc only under _GNU_SOURCE: both ends close-on-exec from the start, so
// a child another thread starts meanwhile cannot inherit them.
#include <fcntl.h>
static inline int ckvm_pipe_cloexec(int fds[2]) {
    return (int)syscall(SYS_pipe2, fds, O_CLOEXEC);
}
// ---- end of file I/O ----

// ---- Processes ----
// prctl(2) is variadic; this sets the calling thread's name (the process's, for the main thread),
// as `ps` and /proc/PID/comm show it (at most 15 bytes are kept).
#include <sys/prctl.h>
static inline int ckvm_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}
// The signal the calling process gets when the thread that created it exits (PR_SET_PDEATHSIG).
static inline int ckvm_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0UL, 0UL, 0UL);
}
// PR_SET_NO_NEW_PRIVS / PR_GET_NO_NEW_PRIVS and PR_SET_DUMPABLE / PR_GET_DUMPABLE.
static inline int ckvm_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL); }
static inline int ckvm_get_no_new_privs(void) { return prctl(PR_GET_NO_NEW_PRIVS, 0UL, 0UL, 0UL, 0UL); }
static inline int ckvm_set_dumpable(int on) { return prctl(PR_SET_DUMPABLE, (unsigned long)on, 0UL, 0UL, 0UL); }
static inline int ckvm_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0UL, 0UL, 0UL, 0UL); }
// close_range(2) (Linux 5.9), which glibc declares only under _GNU_SOURCE.
static inline int ckvm_close_range(unsigned int first, unsigned int last) {
    return (int)syscall(436 /* SYS_close_range */, first, last, 0);
}
// unshare(2), which glibc declares only under _GNU_SOURCE, and the namespace flags (<linux/sched.h>).
static inline int ckvm_unshare(unsigned long flags) { return (int)syscall(SYS_unshare, flags); }
static const unsigned long CKVM_CLONE_NEWNS = 0x00020000UL;
static const unsigned long CKVM_CLONE_NEWCGROUP = 0x02000000UL;
static const unsigned long CKVM_CLONE_NEWUTS = 0x04000000UL;
static const unsigned long CKVM_CLONE_NEWIPC = 0x08000000UL;
static const unsigned long CKVM_CLONE_NEWNET = 0x40000000UL;
static const unsigned long CKVM_CLONE_NEWUSER = 0x10000000UL;
static const unsigned long CKVM_CLONE_NEWPID = 0x20000000UL;
// prctl(2) with all five arguments, non-variadic (PR_CAPBSET_*, PR_CAP_AMBIENT, PR_*_SECUREBITS).
static inline int ckvm_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5) {
    return prctl(option, a2, a3, a4, a5);
}
// <linux/securebits.h> builds these with function-like macros.
static const unsigned long CKVM_SECBIT_NOROOT = 1UL << 0, CKVM_SECBIT_NOROOT_LOCKED = 1UL << 1;
static const unsigned long CKVM_SECBIT_NO_SETUID_FIXUP = 1UL << 2, CKVM_SECBIT_NO_SETUID_FIXUP_LOCKED = 1UL << 3;
static const unsigned long CKVM_SECBIT_KEEP_CAPS_LOCKED = 1UL << 5;
static const unsigned long CKVM_SECBIT_NO_CAP_AMBIENT_RAISE = 1UL << 6, CKVM_SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1UL << 7;
// capget(2)/capset(2) for the calling thread, _LINUX_CAPABILITY_VERSION_3: `sets` is
// {effective, permitted, inheritable} for capabilities 0-31, then the same for 32-63.
int ckvm_capget(uint32_t sets[6]);
int ckvm_capset(const uint32_t sets[6]);
// setgroups/setresgid/setresuid through glibc, which applies them to every thread of the process
// (the raw system calls change only the calling thread). Declared by glibc only under _GNU_SOURCE.
int ckvm_setgroups_none(void);
int ckvm_setresgid(uint32_t gid);
int ckvm_setresuid(uint32_t uid);
int ckvm_getresuid(uint32_t ids[3]);
int ckvm_getresgid(uint32_t ids[3]);
// pivot_root(2) has no glibc wrapper.
static inline int ckvm_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}
// statfs(2) reduced to what the jail checks: the filesystem type and the mount flags.
#include <sys/statfs.h>
static inline int ckvm_statfs(const char *path, int64_t *type, int64_t *flags) {
    struct statfs s;
    int r = statfs(path, &s);
    if (r == 0) { *type = (int64_t)s.f_type; *flags = (int64_t)s.f_flags; }
    return r;
}
// signalfd(2) (not in Swift's Glibc module): a non-blocking, close-on-exec descriptor for the
// signals in `set`, and the number of the next pending one (-1: none).
#include <sys/signalfd.h>
static inline int ckvm_signalfd(const sigset_t *set) { return signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK); }
static inline int ckvm_signalfd_next(int fd) {
    struct signalfd_siginfo info;
    return read(fd, &info, sizeof info) == (ssize_t)sizeof info ? (int)info.ssi_signo : -1;
}
// accept4(2) with SOCK_CLOEXEC (glibc declares accept4 only under _GNU_SOURCE): the accepted
// descriptor is close-on-exec from the start, with no window in which a concurrent exec
// could inherit it.
static inline int ckvm_accept_cloexec(int fd) { return (int)syscall(SYS_accept4, fd, (void *)0, (void *)0, 02000000 /* SOCK_CLOEXEC */); }
// The calling thread's own filesystem credentials (Caller in Sources/KVM/Caller.swift): the raw
// system calls change only the calling thread, unlike glibc's setgroups, which changes every
// thread of the process. setfsuid/setfsgid return the previous value and never fail visibly.
static inline int ckvm_thread_setgroups(size_t count, const uint32_t *groups) { return (int)syscall(SYS_setgroups, count, groups); }
static inline int ckvm_thread_setfsuid(uint32_t uid) { return (int)syscall(SYS_setfsuid, uid); }
static inline int ckvm_thread_setfsgid(uint32_t gid) { return (int)syscall(SYS_setfsgid, gid); }
// ---- end of processes ----

#endif
