// Linux system calls made visible to Swift: non-variadic wrappers (ioctl, prctl, the calls glibc
// declares only under _GNU_SOURCE or not at all), and the constants of headers whose macros do
// not import. Wrappers and constants only: every decision is made in Swift (Sources/HostOS).
#ifndef CLINUX_H
#define CLINUX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/random.h>

// Non-variadic ioctl(2) wrappers: Swift cannot call a C variadic function.
int clinux_ioctl(int fd, unsigned long request, unsigned long arg);
int clinux_ioctl_ptr(int fd, unsigned long request, void *arg);

// ---- File I/O for disk back ends (Sources/HostOS/FileIO.swift) ----
// fallocate(2) mode bits: <linux/falloc.h> defines them as macros Swift's Glibc does not surface.
#include <linux/falloc.h>
static const int CLINUX_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
static const int CLINUX_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
static const int CLINUX_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;
// glibc declares fallocate(2) only under _GNU_SOURCE, which Swift's Glibc module does not set;
// this forwards to the system call unchanged (-1 and errno on failure).
#include <sys/syscall.h>
#include <unistd.h>
static inline int clinux_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return (int)syscall(SYS_fallocate, fd, mode, offset, length);
}
// pipe2(2), declared by glibc only under _GNU_SOURCE: both ends close-on-exec from the start, so
// a child another thread starts meanwhile cannot inherit them.
#include <fcntl.h>
static inline int clinux_pipe_cloexec(int fds[2]) {
    return (int)syscall(SYS_pipe2, fds, O_CLOEXEC);
}
// ---- end of file I/O ----

// ---- Processes ----
// prctl(2) is variadic; this sets the calling thread's name (the process's, for the main thread),
// as `ps` and /proc/PID/comm show it (at most 15 bytes are kept).
#include <sys/prctl.h>
static inline int clinux_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}
// The signal the calling process gets when the thread that created it exits (PR_SET_PDEATHSIG).
static inline int clinux_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0UL, 0UL, 0UL);
}
// PR_SET_NO_NEW_PRIVS / PR_GET_NO_NEW_PRIVS and PR_SET_DUMPABLE / PR_GET_DUMPABLE.
static inline int clinux_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL); }
static inline int clinux_get_no_new_privs(void) { return prctl(PR_GET_NO_NEW_PRIVS, 0UL, 0UL, 0UL, 0UL); }
static inline int clinux_set_dumpable(int on) { return prctl(PR_SET_DUMPABLE, (unsigned long)on, 0UL, 0UL, 0UL); }
static inline int clinux_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0UL, 0UL, 0UL, 0UL); }
// close_range(2) (Linux 5.9), which glibc declares only under _GNU_SOURCE.
static inline int clinux_close_range(unsigned int first, unsigned int last) {
    return (int)syscall(436 /* SYS_close_range */, first, last, 0);
}
// unshare(2), which glibc declares only under _GNU_SOURCE, and the namespace flags (<linux/sched.h>).
static inline int clinux_unshare(unsigned long flags) { return (int)syscall(SYS_unshare, flags); }
static const unsigned long CLINUX_CLONE_NEWNS = 0x00020000UL;
static const unsigned long CLINUX_CLONE_NEWCGROUP = 0x02000000UL;
static const unsigned long CLINUX_CLONE_NEWUTS = 0x04000000UL;
static const unsigned long CLINUX_CLONE_NEWIPC = 0x08000000UL;
static const unsigned long CLINUX_CLONE_NEWNET = 0x40000000UL;
static const unsigned long CLINUX_CLONE_NEWUSER = 0x10000000UL;
static const unsigned long CLINUX_CLONE_NEWPID = 0x20000000UL;
// prctl(2) with all five arguments, non-variadic (PR_CAPBSET_*, PR_CAP_AMBIENT, PR_*_SECUREBITS).
static inline int clinux_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5) {
    return prctl(option, a2, a3, a4, a5);
}
// <linux/securebits.h> builds these with function-like macros.
static const unsigned long CLINUX_SECBIT_NOROOT = 1UL << 0, CLINUX_SECBIT_NOROOT_LOCKED = 1UL << 1;
static const unsigned long CLINUX_SECBIT_NO_SETUID_FIXUP = 1UL << 2, CLINUX_SECBIT_NO_SETUID_FIXUP_LOCKED = 1UL << 3;
static const unsigned long CLINUX_SECBIT_KEEP_CAPS_LOCKED = 1UL << 5;
static const unsigned long CLINUX_SECBIT_NO_CAP_AMBIENT_RAISE = 1UL << 6, CLINUX_SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1UL << 7;
// capget(2)/capset(2) for the calling thread, _LINUX_CAPABILITY_VERSION_3: `sets` is
// {effective, permitted, inheritable} for capabilities 0-31, then the same for 32-63.
int clinux_capget(uint32_t sets[6]);
int clinux_capset(const uint32_t sets[6]);
// setgroups/setresgid/setresuid through glibc, which applies them to every thread of the process
// (the raw system calls change only the calling thread). Declared by glibc only under _GNU_SOURCE.
int clinux_setgroups_none(void);
int clinux_setresgid(uint32_t gid);
int clinux_setresuid(uint32_t uid);
int clinux_getresuid(uint32_t ids[3]);
int clinux_getresgid(uint32_t ids[3]);
// pivot_root(2) has no glibc wrapper.
static inline int clinux_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}
// statfs(2) reduced to what the jail checks: the filesystem type and the mount flags.
#include <sys/statfs.h>
static inline int clinux_statfs(const char *path, int64_t *type, int64_t *flags) {
    struct statfs s;
    int r = statfs(path, &s);
    if (r == 0) { *type = (int64_t)s.f_type; *flags = (int64_t)s.f_flags; }
    return r;
}
// signalfd(2) (not in Swift's Glibc module): a non-blocking, close-on-exec descriptor for the
// signals in `set`, and the number of the next pending one (-1: none).
#include <sys/signalfd.h>
static inline int clinux_signalfd(const sigset_t *set) { return signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK); }
static inline int clinux_signalfd_next(int fd) {
    struct signalfd_siginfo info;
    return read(fd, &info, sizeof info) == (ssize_t)sizeof info ? (int)info.ssi_signo : -1;
}
// accept4(2) with SOCK_CLOEXEC (glibc declares accept4 only under _GNU_SOURCE): the accepted
// descriptor is close-on-exec from the start, with no window in which a concurrent exec
// could inherit it.
static inline int clinux_accept_cloexec(int fd) { return (int)syscall(SYS_accept4, fd, (void *)0, (void *)0, 02000000 /* SOCK_CLOEXEC */); }
// The calling thread's own filesystem credentials (Caller in Sources/HostOS/CheckedOpen.swift): the raw
// system calls change only the calling thread, unlike glibc's setgroups, which changes every
// thread of the process. setfsuid/setfsgid return the previous value and never fail visibly.
static inline int clinux_thread_setgroups(size_t count, const uint32_t *groups) { return (int)syscall(SYS_setgroups, count, groups); }
static inline int clinux_thread_setfsuid(uint32_t uid) { return (int)syscall(SYS_setfsuid, uid); }
static inline int clinux_thread_setfsgid(uint32_t gid) { return (int)syscall(SYS_setfsgid, gid); }
// ---- end of processes ----

#endif
