// seccomp(2) for Swift (Sources/HostOS/Seccomp.swift): the constants of <linux/seccomp.h> and
// <linux/audit.h>, the filter structures of <linux/filter.h>, a non-variadic wrapper around the
// system call, and accessors for the SIGSYS fields of siginfo_t (glibc defines them as macros
// into a union, which Swift does not see). Constants and wrappers only: no logic.
#ifndef CLINUX_SECCOMP_H
#define CLINUX_SECCOMP_H

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static const unsigned int CLINUX_SECCOMP_SET_MODE_FILTER = SECCOMP_SET_MODE_FILTER;
static const unsigned int CLINUX_SECCOMP_FILTER_FLAG_LOG = SECCOMP_FILTER_FLAG_LOG;
static const uint32_t CLINUX_SECCOMP_RET_KILL_PROCESS = SECCOMP_RET_KILL_PROCESS;
static const uint32_t CLINUX_SECCOMP_RET_KILL_THREAD = SECCOMP_RET_KILL_THREAD;
static const uint32_t CLINUX_SECCOMP_RET_TRAP = SECCOMP_RET_TRAP;
static const uint32_t CLINUX_SECCOMP_RET_ERRNO = SECCOMP_RET_ERRNO;
static const uint32_t CLINUX_SECCOMP_RET_LOG = SECCOMP_RET_LOG;
static const uint32_t CLINUX_SECCOMP_RET_ALLOW = SECCOMP_RET_ALLOW;
static const uint32_t CLINUX_AUDIT_ARCH_X86_64 = AUDIT_ARCH_X86_64;
// The kernel's limit on a filter's length.
static const int CLINUX_BPF_MAXINSNS = BPF_MAXINSNS;
// PR_GET_SECCOMP answers 2 for a thread running under a filter.
static const int CLINUX_SECCOMP_MODE_FILTER = SECCOMP_MODE_FILTER;

// seccomp(SECCOMP_SET_MODE_FILTER, flags, program) for the calling thread: 0, or -1 and errno.
static inline int clinux_seccomp_set_filter(unsigned int flags, const struct sock_fprog *program) {
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, program);
}

// prctl(PR_GET_SECCOMP): the calling thread's seccomp mode (0 none, 1 strict, 2 filter).
static inline int clinux_get_seccomp_mode(void) { return prctl(PR_GET_SECCOMP, 0UL, 0UL, 0UL, 0UL); }

// The SIGSYS fields a SECCOMP_RET_TRAP fills in: the refused system call's number and the
// AUDIT_ARCH_* it was made with.
static inline int clinux_siginfo_syscall(const siginfo_t *info) { return info->si_syscall; }
static inline uint32_t clinux_siginfo_arch(const siginfo_t *info) { return info->si_arch; }

#endif
