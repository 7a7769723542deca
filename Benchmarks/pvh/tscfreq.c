/*
 * tscfreq: measures the host's TSC frequency against CLOCK_MONOTONIC and prints it in Hz.
 *
 *   tscfreq [MILLISECONDS]      default 200
 *
 * Benchmarks/qemu.py converts the guest's TSC tick counts to time with it. Under KVM without
 * TSC scaling (both VMMs here) the guest's TSC runs at the host's rate; the script cross-checks
 * that against its own clock on every run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <x86intrin.h>

static unsigned long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 200;
    if (ms <= 0) ms = 200;
    /* Each end pairs a clock reading with the TSC read between two clock readings, so that a
     * preemption at either end shows up as a wide bracket; keep the narrowest of a few tries. */
    unsigned long long best_w0 = ~0ull, t0 = 0, c0 = 0;
    for (int i = 0; i < 20; i++) {
        unsigned long long a = now_ns(), c = __rdtsc(), b = now_ns();
        if (b - a < best_w0) { best_w0 = b - a; t0 = a + (b - a) / 2; c0 = c; }
    }
    struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
    unsigned long long best_w1 = ~0ull, t1 = 0, c1 = 0;
    for (int i = 0; i < 20; i++) {
        unsigned long long a = now_ns(), c = __rdtsc(), b = now_ns();
        if (b - a < best_w1) { best_w1 = b - a; t1 = a + (b - a) / 2; c1 = c; }
    }
    printf("%.0f\n", (double)(c1 - c0) * 1e9 / (double)(t1 - t0));
    return 0;
}
