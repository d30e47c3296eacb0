/* Shared helpers for the allocation workloads.
 *
 * Every workload is a whole program: `prog THREADS SCALE`.  It does a fixed,
 * seeded amount of work (SCALE multiplies it; the runner's quick mode passes a
 * small one), touches the memory it allocates, and prints one deterministic
 * line `checksum=<hex>` derived from the contents it read back.  Nothing in the
 * output depends on addresses or timing, so every correct allocator prints the
 * same line and a broken one (overlapping blocks, lost contents) does not.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* xorshift64*: tiny, fast, and the same sequence on every allocator. */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi). */
static inline uint64_t rng_range(uint64_t *s, uint64_t lo, uint64_t hi)
{
    return lo + rng_next(s) % (hi - lo);
}

/* Roughly log-uniform in [lo, hi): small sizes as common as large ones per octave. */
static inline uint64_t rng_log(uint64_t *s, uint64_t lo, uint64_t hi)
{
    uint64_t span = hi / lo, octaves = 0;
    while ((1ULL << (octaves + 1)) <= span)
        octaves++;
    uint64_t base = lo << rng_range(s, 0, octaves + 1);
    uint64_t top = base * 2 < hi ? base * 2 : hi;
    return base < top ? rng_range(s, base, top) : base;
}

static inline uint64_t seed_for(int tid)
{
    return 0x9E3779B97F4A7C15ULL * (uint64_t)(tid + 1) ^ 0xD1B54A32D192ED03ULL;
}

/* Order-dependent mixing step (FNV-1a style on 64-bit words). */
static inline uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v;
    h *= 0x100000001B3ULL;
    return h ^ (h >> 29);
}

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "malloc(%zu) failed\n", n);
        exit(2);
    }
    return p;
}

static inline void *xcalloc(size_t n, size_t m)
{
    void *p = calloc(n, m);
    if (!p) {
        fprintf(stderr, "calloc(%zu, %zu) failed\n", n, m);
        exit(2);
    }
    return p;
}

static inline void *xrealloc(void *old, size_t n)
{
    void *p = realloc(old, n);
    if (!p) {
        fprintf(stderr, "realloc(%zu) failed\n", n);
        exit(2);
    }
    return p;
}

/* Fill a block with a byte derived from its tag and fold three probes of a block
 * filled that way into a checksum: clobbered or overlapping blocks change it. */
static inline void fill(unsigned char *p, size_t n, uint64_t tag)
{
    memset(p, (int)(tag & 0xff), n);
}

static inline uint64_t probe(uint64_t h, const unsigned char *p, size_t n)
{
    return mix(h, (uint64_t)p[0] | (uint64_t)p[n / 2] << 8 | (uint64_t)p[n - 1] << 16 | (uint64_t)n << 24);
}

typedef uint64_t (*worker_fn)(int tid, int nthreads, double scale);

struct worker_arg {
    worker_fn fn;
    int tid, nthreads;
    double scale;
    uint64_t result;
};

static void *worker_trampoline(void *p)
{
    struct worker_arg *a = p;
    a->result = a->fn(a->tid, a->nthreads, a->scale);
    return NULL;
}

/* Parse `THREADS SCALE`, run the worker on that many threads (the main thread
 * is thread 0), combine the per-thread results in thread order, print them. */
__attribute__((unused)) static int run_workers(int argc, char **argv, worker_fn fn)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 1;
    double scale = argc > 2 ? atof(argv[2]) : 1.0;
    if (nthreads < 1 || nthreads > 64 || !(scale > 0)) {
        fprintf(stderr, "usage: %s THREADS SCALE\n", argv[0]);
        return 2;
    }
    struct worker_arg args[64];
    pthread_t th[64];
    for (int i = 0; i < nthreads; i++)
        args[i] = (struct worker_arg){fn, i, nthreads, scale, 0};
    for (int i = 1; i < nthreads; i++)
        if (pthread_create(&th[i], NULL, worker_trampoline, &args[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    worker_trampoline(&args[0]);
    uint64_t h = 0xCBF29CE484222325ULL;
    for (int i = 0; i < nthreads; i++) {
        if (i > 0)
            pthread_join(th[i], NULL);
        h = mix(h, args[i].result);
    }
    printf("threads=%d scale=%g checksum=%016llx\n", nthreads, scale, (unsigned long long)h);
    return 0;
}

#endif
