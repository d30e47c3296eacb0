/* Cross-thread frees at scale: THREADS/2 producer threads allocate messages
 * (mostly 16-256 B, some up to 2 KiB), write them and deal them round-robin to
 * the other THREADS/2 (rounded up) consumer threads, which read and free them.
 * Every block is freed by another thread, from many threads to many threads at
 * once, so remote frees pile up on every arena/heap/page (what mimalloc's
 * delayed frees and jemalloc's tcache flushes address).  Each (producer,
 * consumer) pair has its own single-producer single-consumer ring, and each
 * pair's messages are hashed in FIFO order, so the checksum does not depend on
 * scheduling.  With THREADS=1 one thread makes and frees batches (baseline). */
#include "common.h"
#include <sched.h>
#include <stdatomic.h>

#define RING 256
#define MAXP 32

struct msg {
    uint64_t seq;
    uint32_t len;
    unsigned char data[];
};

struct ring {
    _Alignas(64) _Atomic uint64_t head; /* next to write (producer) */
    _Alignas(64) _Atomic uint64_t tail; /* next to read (consumer) */
    _Alignas(64) struct msg *slot[RING];
};

static struct ring rings[MAXP][MAXP]; /* [producer][consumer] */

static struct msg *make(uint64_t *rng, uint64_t seq)
{
    uint64_t r = rng_next(rng);
    size_t n = (r % 16 == 0) ? rng_range(rng, 256, 2049) : rng_range(rng, 16, 257);
    struct msg *m = xmalloc(sizeof *m + n);
    m->seq = seq;
    m->len = (uint32_t)n;
    fill(m->data, n, r >> 8);
    return m;
}

static uint64_t consume(uint64_t h, struct msg *m)
{
    h = mix(h, m->seq);
    h = probe(h, m->data, m->len);
    free(m);
    return h;
}

/* Messages producer p deals to consumer c out of its `per` messages. */
static long share(long per, int c, int ncons)
{
    return per / ncons + (c < per % ncons);
}

static uint64_t worker(int tid, int nthreads, double scale)
{
    long total = (long)(6e6 * scale);
    if (nthreads == 1) {
        uint64_t rng = seed_for(0), h = 0;
        struct msg *batch[RING];
        for (long i = 0; i < total; i += RING) {
            int n = total - i < RING ? (int)(total - i) : RING;
            for (int b = 0; b < n; b++)
                batch[b] = make(&rng, (uint64_t)(i + b));
            for (int b = 0; b < n; b++)
                h = consume(h, batch[b]);
        }
        return h;
    }
    int nprod = nthreads / 2, ncons = nthreads - nprod;
    if (nprod > MAXP || ncons > MAXP)
        exit(2);
    long per = total / nprod;
    if (tid < nprod) {
        uint64_t rng = seed_for(tid);
        for (long i = 0; i < per; i++) {
            struct ring *q = &rings[tid][i % ncons];
            struct msg *m = make(&rng, (uint64_t)i);
            uint64_t w = atomic_load_explicit(&q->head, memory_order_relaxed);
            while (w - atomic_load_explicit(&q->tail, memory_order_acquire) >= RING)
                sched_yield();
            q->slot[w % RING] = m;
            atomic_store_explicit(&q->head, w + 1, memory_order_release);
        }
        return 0;
    }
    int c = tid - nprod;
    uint64_t h[MAXP] = {0};
    long left[MAXP], remaining = 0;
    for (int p = 0; p < nprod; p++)
        remaining += left[p] = share(per, c, ncons);
    while (remaining > 0) {
        int got = 0;
        for (int p = 0; p < nprod; p++) {
            struct ring *q = &rings[p][c];
            uint64_t r = atomic_load_explicit(&q->tail, memory_order_relaxed);
            uint64_t w = atomic_load_explicit(&q->head, memory_order_acquire);
            for (; r != w; r++, got++, left[p]--, remaining--) {
                h[p] = consume(h[p], q->slot[r % RING]);
                atomic_store_explicit(&q->tail, r + 1, memory_order_release);
            }
        }
        if (!got)
            sched_yield();
    }
    uint64_t all = 0;
    for (int p = 0; p < nprod; p++)
        all = mix(all, h[p]);
    return all;
}

int main(int argc, char **argv) { return run_workers(argc, argv, worker); }
