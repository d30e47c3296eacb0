/* kal_writer HEAP_MIB SECONDS: what KAL's scans cost a program that keeps
 * rewriting a large heap.
 *
 * Builds HEAP_MIB MiB of 240-byte objects (each pointing to the one before,
 * so the mark has a real graph to follow), then for SECONDS seconds adds 1 to
 * a random word of a random object, as fast as it can.  Every snapshot that
 * lives while it runs costs it a copy-on-write fault per page it writes
 * first, which is what KAL's pacing (max_overhead) measures and limits.
 *
 * Output (one line):
 *   result mops=M sys_s=S user_s=U minflt=F scans=N cost_ms=C interval_ms=I
 * mops: millions of writes per second; sys_s/user_s/minflt: this process's
 * (getrusage, so without the fork backend's snapshot children); scans, cost
 * and the last interval from rmalloc_kal_stats() (0 when KAL is absent). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "rmalloc.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double secs(struct timeval tv)
{
    return tv.tv_sec + tv.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    long heap_mib = argc > 1 ? atol(argv[1]) : 256;
    double run_s = argc > 2 ? atof(argv[2]) : 10;
    if (heap_mib <= 0 || run_s <= 0) {
        fprintf(stderr, "usage: kal_writer HEAP_MIB SECONDS\n");
        return 2;
    }
    size_t n = (size_t)heap_mib * (1 << 20) / 256;
    void **obj = malloc(n * sizeof *obj);
    if (!obj)
        return 2;
    for (size_t i = 0; i < n; i++) {
        uint64_t *o = malloc(240);
        if (!o)
            return 2;
        memset(o, 0, 240);
        o[0] = (uintptr_t)(i ? obj[i - 1] : NULL);
        obj[i] = o;
    }
    uint64_t x = 88172645463325252ULL, ops = 0;
    double t0 = now(), t;
    while ((t = now()) - t0 < run_s) {
        for (int k = 0; k < 100000; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((uint64_t *)obj[x % n])[1 + (x >> 40) % 29] += 1;
        }
        ops += 100000;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    struct rmalloc_kal_stats s;
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    int (*stats)(struct rmalloc_kal_stats *) =
        (int (*)(struct rmalloc_kal_stats *))dlsym(RTLD_DEFAULT, "rmalloc_kal_stats");
    if (stats)
        stats(&s);
    printf("result mops=%.3f sys_s=%.2f user_s=%.2f minflt=%ld scans=%llu cost_ms=%.1f "
           "interval_ms=%.0f\n",
           ops / (t - t0) / 1e6, secs(ru.ru_stime), secs(ru.ru_utime), ru.ru_minflt,
           (unsigned long long)s.scans, s.cost_ns_total / 1e6, s.interval_ns / 1e6);
    return 0;
}
