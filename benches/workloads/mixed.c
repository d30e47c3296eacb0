/* Mixed sizes: mostly small and medium blocks (up to a few KiB), some larger
 * ones (8-64 KiB) and a rare few above glibc's initial mmap threshold
 * (128-512 KiB), a tenth of them from calloc.  A table of live blocks is
 * churned in random order, with periodic phases that free most of the table at
 * once and refill it (a program moving from one task to the next). */
#include "common.h"

#define SLOTS 4096

static size_t pick_size(uint64_t *rng)
{
    uint64_t r = rng_next(rng) % 1000;
    if (r < 600)
        return rng_range(rng, 16, 257);
    if (r < 900)
        return rng_range(rng, 257, 2049);
    if (r < 980)
        return rng_range(rng, 2049, 8193);
    if (r < 998)
        return rng_range(rng, 8193, 65537);
    return rng_range(rng, 128 << 10, 512 << 10);
}

static uint64_t worker(int tid, int nthreads, double scale)
{
    uint64_t rng = seed_for(tid), h = 0;
    long iters = (long)(3e6 * scale / nthreads);
    unsigned char **slot = xcalloc(SLOTS, sizeof *slot);
    size_t *len = xcalloc(SLOTS, sizeof *len);

    for (long i = 0; i < iters; i++) {
        size_t k = rng_next(&rng) % SLOTS;
        if (slot[k]) {
            h = probe(h, slot[k], len[k]);
            free(slot[k]);
        }
        size_t n = pick_size(&rng);
        if (rng_next(&rng) % 10 == 0) {
            slot[k] = xcalloc(1, n);
            h = mix(h, slot[k][n / 3]); /* must read as zero */
        } else {
            slot[k] = xmalloc(n);
        }
        fill(slot[k], n, (uint64_t)i);
        len[k] = n;

        if (i % 500000 == 499999) /* phase change: drop three quarters */
            for (size_t j = 0; j < SLOTS; j++)
                if (slot[j] && (j & 3) != 0) {
                    h = probe(h, slot[j], len[j]);
                    free(slot[j]);
                    slot[j] = NULL;
                }
    }
    for (size_t k = 0; k < SLOTS; k++)
        if (slot[k]) {
            h = probe(h, slot[k], len[k]);
            free(slot[k]);
        }
    free(slot);
    free(len);
    return h;
}

int main(int argc, char **argv) { return run_workers(argc, argv, worker); }
