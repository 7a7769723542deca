// timeline: when a VMM's guest reaches two points, and when the VMM exits, on one clock.
//
//   timeline FIRST RESTART LOG -- CMD [ARGS...]
//
// Runs CMD with standard output and error on a pipe (standard input /dev/null), copies what it
// prints to LOG, and prints one line:
//   timeline: first-ms F restart-ms R exit-ms E status S
// F: CLOCK_MONOTONIC milliseconds from just before fork to the moment the first line containing
// FIRST is read; R: the same for RESTART; E: to waitpid's return; -1 where a pattern never came.
// S: the exit status (128 + N for a signal). Built statically by Tests/LinuxEnvironment/
// outer-machine.sh for Benchmarks/linux_boot.py (issue 10).
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        fprintf(stderr, "usage: timeline FIRST RESTART LOG -- CMD [ARGS...]\n");
        return 2;
    }
    const char *first = argv[1], *restart = argv[2];
    FILE *log = fopen(argv[3], "w");
    int fds[2];
    if (!log || pipe(fds) != 0) { perror("timeline"); return 2; }
    double start = now_ms(), first_at = -1, restart_at = -1;
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0); dup2(fds[1], 1); dup2(fds[1], 2);
        close(fds[0]); close(fds[1]);
        execvp(argv[5], argv + 5);
        perror("exec");
        _exit(127);
    }
    close(fds[1]);
    char line[4096];
    size_t used = 0;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) {
        double t = now_ms();
        fwrite(buf, 1, (size_t)n, log);
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == '\n' || used + 1 >= sizeof line) {
                line[used] = 0;
                if (first_at < 0 && strstr(line, first)) first_at = t - start;
                if (restart_at < 0 && strstr(line, restart)) restart_at = t - start;
                used = 0;
            } else {
                line[used++] = buf[i];
            }
        }
    }
    int status = 0;
    waitpid(pid, &status, 0);
    double exit_at = now_ms() - start;
    fclose(log);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("timeline: first-ms %.1f restart-ms %.1f exit-ms %.1f status %d\n", first_at, restart_at, exit_at, code);
    return 0;
}
