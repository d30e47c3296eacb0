/* kal_heap HEAP_MIB SCANS: KAL's snapshot pause and scan rate on a heap of
 * HEAP_MIB MiB of live, linked objects.
 *
 * Builds objects of 32-1024 bytes (mostly small, like a real heap) until their
 * usable sizes add up to HEAP_MIB MiB, every page touched.  Each object points
 * to the next one (one long list, so the mark needs its work list, not
 * recursion) and to a random earlier one (a graph); the rest of it is
 * non-pointer data.  The head of the list is in a global.  Then it calls
 * rmalloc_kal_scan_now() SCANS times and, after each call, reads
 * rmalloc_kal_stats(): the call's wall time, the mark time of that scan
 * (scan_ns_last) and the bytes it marked through (the bytes_scanned delta).
 * Between scans it writes one word in every 64th object, so copy-on-write
 * snapshots pay for what a running program would make them pay.
 *
 * Output (one line each):
 *   heap objects=N usable_mib=X rss_mib=Y build_s=Z
 *   scan i ret=R call_ms=A mark_ms=B marked_mib=C rate_gbs=D
 *   result scans=... completed=... pause_p50_us= pause_p99_us= pause_max_us=
 *          mark_ms_median= rate_gbs_median= call_ms_median= backend=...
 * or `unavailable ...` when the malloc in use has no KAL (or KAL is off). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rmalloc.h"

struct node {
    struct node *next;
    struct node *other;
    uint64_t data[];
};

struct node *volatile head; /* the root */

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t next(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DULL;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double rss_mib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (double)sysconf(_SC_PAGESIZE) / (1 << 20);
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    long heap_mib = argc > 1 ? atol(argv[1]) : 64;
    int scans = argc > 2 ? atoi(argv[2]) : 10;
    if (heap_mib <= 0 || scans <= 0 || scans > 1000) {
        fprintf(stderr, "usage: kal_heap HEAP_MIB SCANS(1..1000)\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int (*scan_now)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_scan_now");
    int (*stats)(struct rmalloc_kal_stats *) =
        (int (*)(struct rmalloc_kal_stats *))dlsym(RTLD_DEFAULT, "rmalloc_kal_stats");
    const char *(*mode)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_mode");
    if (!scan_now || !stats || !mode) {
        printf("unavailable: this malloc does not export the KAL interface\n");
        return 0;
    }
    if (strcmp(mode(), "off") == 0) {
        printf("unavailable: KAL is off (KAL_OPTIONS not set, or refused: see stderr)\n");
        return 0;
    }

    /* Build the heap.  An index of every 64th node (malloc'ed, so it is part
     * of the heap too) drives the random links and the writes between scans. */
    size_t target = (size_t)heap_mib << 20, total = 0, count = 0;
    size_t idx_cap = target / (64 * 32) + 16, idx_len = 0;
    struct node **idx = malloc(idx_cap * sizeof *idx);
    if (!idx)
        return 2;
    total += malloc_usable_size(idx);
    double t0 = now();
    struct node *tail = NULL;
    while (total < target) {
        uint64_t r = next();
        size_t size = (r & 7) == 0 ? 256 + (r >> 8) % 769 : 32 + (r >> 8) % 161;
        struct node *n = malloc(size);
        if (!n) {
            fprintf(stderr, "out of memory\n");
            return 2;
        }
        size_t usable = malloc_usable_size(n);
        size_t words = (usable - sizeof *n) / sizeof(uint64_t);
        for (size_t i = 0; i < words; i++)
            n->data[i] = (r + i) & 0x00FF00FF00FF00FFULL; /* never a heap address */
        n->next = NULL;
        n->other = idx_len ? idx[next() % idx_len] : NULL;
        if (tail)
            tail->next = n;
        else
            head = n;
        tail = n;
        if (count % 64 == 0 && idx_len < idx_cap)
            idx[idx_len++] = n;
        total += usable;
        count++;
    }
    double build = now() - t0;
    printf("heap objects=%zu usable_mib=%.1f rss_mib=%.1f build_s=%.2f\n", count, total / 1048576.0, rss_mib(),
           build);

    double *call_ms = calloc((size_t)scans, sizeof(double));
    double *mark_ms = calloc((size_t)scans, sizeof(double));
    double *rate = calloc((size_t)scans, sizeof(double));
    if (!call_ms || !mark_ms || !rate)
        return 2;
    int completed = 0;
    struct rmalloc_kal_stats before, after;
    memset(&before, 0, sizeof before);
    before.size = sizeof before;
    if (stats(&before) != 0)
        return 2;
    for (int s = 0; s < scans; s++) {
        for (size_t i = 0; i < idx_len; i++)
            idx[i]->data[0] ^= (uint64_t)s; /* dirty the pages, as a running program would */
        double c0 = now();
        int ret = scan_now();
        double c1 = now();
        memset(&after, 0, sizeof after);
        after.size = sizeof after;
        if (stats(&after) != 0)
            return 2;
        double marked = (double)(after.bytes_scanned - before.bytes_scanned);
        double mark_s = after.scan_ns_last / 1e9;
        call_ms[s] = (c1 - c0) * 1e3;
        printf("scan %d ret=%d call_ms=%.1f mark_ms=%.1f marked_mib=%.1f rate_gbs=%.2f\n", s + 1, ret, call_ms[s],
               mark_s * 1e3, marked / 1048576.0, mark_s > 0 ? marked / mark_s / 1e9 : 0.0);
        if (ret == 1) {
            mark_ms[completed] = mark_s * 1e3;
            rate[completed] = mark_s > 0 ? marked / mark_s / 1e9 : 0.0;
            completed++;
        }
        before = after;
    }
    static const char *const backends[] = {"none", "fork", "kernel"};
    printf("result heap_mib=%ld scans=%d completed=%d discarded=%llu pause_p50_us=%.0f pause_p99_us=%.0f "
           "pause_max_us=%.0f mark_ms_median=%.1f rate_gbs_median=%.2f call_ms_median=%.1f "
           "unreachable_chunks=%llu backend=%s\n",
           heap_mib, scans, completed, (unsigned long long)after.scans_discarded, after.pause_ns_p50 / 1e3,
           after.pause_ns_p99 / 1e3, after.pause_ns_max / 1e3, median(mark_ms, completed), median(rate, completed),
           median(call_ms, scans), (unsigned long long)after.unreachable_chunks,
           after.backend < 3 ? backends[after.backend] : "?");
    /* Keep everything alive to the end. */
    return head == NULL;
}
