/*
 * balloon: applies real memory pressure to the machine for bench/pressure.sh (issue 17).
 *
 *   cc -O2 -o /tmp/balloon bench/balloon.c
 *   balloon SIZE_MIB HOLD_SECONDS [STEP_MIB]
 *   balloon leave:MIB HOLD_SECONDS [STEP_MIB]
 *
 * The second form takes memory until the machine has at most MIB MiB available (MemAvailable), then holds: the
 * kernel's estimate moves as page cache is evicted, so a size computed in advance over- or undershoots.
 *
 * Maps SIZE_MIB MiB of anonymous memory and touches it STEP_MIB at a time (default: a twentieth), spread over
 * about 0.2 s so the other process sees memory go away gradually, as it would on a real machine. Prints
 * "balloon: holding N MiB" on stdout once every page is resident, holds for HOLD_SECONDS (fractions allowed),
 * unmaps and prints "balloon: released". SIGTERM or SIGINT releases at once. It never maps more than SIZE_MIB:
 * one mapping of exactly that size, and nothing else is allocated after it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void sleep_seconds(double s)
{
    if (s <= 0) return;
    struct timespec t = { (time_t)s, (long)((s - (time_t)s) * 1e9) };
    nanosleep(&t, NULL); /* a signal cuts it short: the callers check stop_requested */
}

static int parse_positive(const char *text, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || v <= 0) return 0;
    *out = v;
    return 1;
}

/* MemAvailable in MiB, or -1. */
static long mem_available_mib(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %ld kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb / 1024;
}

int main(int argc, char **argv)
{
    long size_mib, step_mib, leave_mib = -1;
    char *end;
    if (argc >= 2 && strncmp(argv[1], "leave:", 6) == 0) {
        if (!parse_positive(argv[1] + 6, &leave_mib) || (size_mib = mem_available_mib()) <= 0) {
            fprintf(stderr, "balloon: '%s' needs a positive number of MiB and a readable /proc/meminfo\n", argv[1]);
            return 2;
        }
    }
    if (argc < 3 || argc > 4 || (leave_mib < 0 && !parse_positive(argv[1], &size_mib))) {
        fprintf(stderr, "usage: balloon SIZE_MIB|leave:MIB HOLD_SECONDS [STEP_MIB]\n");
        return 2;
    }
    double hold = strtod(argv[2], &end);
    if (*end || !(hold >= 0)) {
        fprintf(stderr, "balloon: HOLD_SECONDS '%s' is not a number of seconds >= 0\n", argv[2]);
        return 2;
    }
    step_mib = leave_mib >= 0 ? 64 : size_mib >= 20 ? size_mib / 20 : 1;
    if (argc == 4 && !parse_positive(argv[3], &step_mib)) {
        fprintf(stderr, "balloon: STEP_MIB '%s' is not a positive number of MiB\n", argv[3]);
        return 2;
    }
    if (step_mib > size_mib) step_mib = size_mib;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    size_t bytes = (size_t)size_mib << 20;
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "balloon: cannot map %ld MiB: %s\n", size_mib, strerror(errno));
        return 1;
    }

    /* Grow over about 0.2 s: one step, then a pause, so the pressure builds as a real allocation's would. */
    long steps = (size_mib + step_mib - 1) / step_mib;
    double pause = 0.2 / steps;
    size_t done = 0;
    for (long i = 0; i < steps && !stop_requested; i++) {
        if (leave_mib >= 0 && mem_available_mib() <= leave_mib) break;
        size_t n = (size_t)step_mib << 20;
        if (n > bytes - done) n = bytes - done;
        memset(p + done, 0x5a, n); /* non-zero: every page is really written, none shared with the zero page */
        done += n;
        if (i + 1 < steps && leave_mib < 0) sleep_seconds(pause);
    }

    if (!stop_requested) {
        printf("balloon: holding %ld MiB (MemAvailable %ld MiB)\n", (long)(done >> 20), mem_available_mib());
        fflush(stdout);
        double until = now_seconds() + hold;
        while (!stop_requested) {
            double left = until - now_seconds();
            if (left <= 0) break;
            sleep_seconds(left < 0.01 ? left : 0.01);
        }
    }

    munmap(p, bytes);
    printf("balloon: released\n");
    fflush(stdout);
    return 0;
}
