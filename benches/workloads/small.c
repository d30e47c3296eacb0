/* Small-object churn: 16-128 byte blocks, the bread and butter of C/C++ and
 * interpreter heaps.  Two patterns per thread:
 *   - steady state: a table of live objects, each step frees a random one and
 *     allocates a replacement of a random size (random-order frees);
 *   - bursts: every so often allocate a run of objects and free them in
 *     reverse (LIFO, like a parser's temporaries).
 * Total work is split between threads, so 1 and 2 threads do the same work. */
#include "common.h"

#define SLOTS 16384
#define BURST 2048

static uint64_t worker(int tid, int nthreads, double scale)
{
    uint64_t rng = seed_for(tid), h = 0;
    long iters = (long)(16e6 * scale / nthreads);
    unsigned char **slot = xcalloc(SLOTS, sizeof *slot);
    unsigned char *burst[BURST];
    unsigned short len[SLOTS];

    for (long i = 0; i < iters; i++) {
        uint64_t r = rng_next(&rng);
        size_t k = r % SLOTS;
        if (slot[k]) {
            h = probe(h, slot[k], len[k]);
            free(slot[k]);
        }
        size_t n = 16 + (r >> 40) % 113;
        slot[k] = xmalloc(n);
        len[k] = (unsigned short)n;
        fill(slot[k], n, r >> 16);

        if ((i & 0xffff) == 0xffff) {
            for (int b = 0; b < BURST; b++) {
                size_t m = rng_range(&rng, 16, 129);
                burst[b] = xmalloc(m);
                fill(burst[b], m, (uint64_t)b + (uint64_t)i);
                burst[b][m - 1] = (unsigned char)m;
            }
            for (int b = BURST - 1; b >= 0; b--) {
                h = mix(h, burst[b][0]);
                free(burst[b]);
            }
            i += BURST;
        }
    }
    for (size_t k = 0; k < SLOTS; k++)
        if (slot[k]) {
            h = probe(h, slot[k], len[k]);
            free(slot[k]);
        }
    free(slot);
    return h;
}

int main(int argc, char **argv) { return run_workers(argc, argv, worker); }
