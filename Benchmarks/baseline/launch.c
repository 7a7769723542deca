/*
 * launch: starts one program and reports when it started, when it ended and its peak RSS.
 *
 *   launch PROGRAM [ARGS...]
 *
 * Reads CLOCK_MONOTONIC right before posix_spawn and right after wait4 returns, and prints to
 * stderr, after the child's own output:
 *
 *   launch: spawn-ns T0 exit-ns T1 status S maxrss-kib R
 *
 * S is the wait status decoded (exit status, or 128+signal). R is the child's ru_maxrss.
 * The child inherits stdin/stdout/stderr.
 *
 * Why this exists instead of os.posix_spawn + os.wait4 in Benchmarks/run.py: at execve the
 * kernel folds the *old* address space's RSS high-water mark into the process's maxrss
 * (exec_mmap -> setmax_mm_hiwater_rss). A child spawned by Python starts with Python's
 * address space (shared under vfork, copied under fork), so its ru_maxrss is never below the
 * Python interpreter's own RSS (~10 MB or more) and says nothing about the child. This
 * launcher is linked statically and stays a few hundred KiB, far below anything measured.
 * The same launcher starts Bulkhead and the C baseline, so the spawn cost is the same for both.
 *
 * Built by Benchmarks/run.py (`cc -O2 -static`, falling back to a dynamic link).
 */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("usage: launch PROGRAM [ARGS...]\n", stderr);
        return 64;
    }
    pid_t pid;
    unsigned long long t0 = now_ns();
    int err = posix_spawn(&pid, argv[1], NULL, NULL, argv + 1, environ);
    if (err != 0) {
        fprintf(stderr, "launch: cannot start %s: error %d\n", argv[1], err);
        return 71;
    }
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid) {
        perror("launch: wait4");
        return 71;
    }
    unsigned long long t1 = now_ns();
    int status = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 255;
    fprintf(stderr, "launch: spawn-ns %llu exit-ns %llu status %d maxrss-kib %ld\n", t0, t1, status,
            ru.ru_maxrss);
    return 0;
}
