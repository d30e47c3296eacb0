/* Producer/consumer: one thread allocates messages (mostly 32-512 bytes, some
 * up to 4 KiB), writes them and passes them through a bounded single-producer
 * single-consumer ring; the other thread reads and frees them.  Every block is
 * freed by a thread other than the one that allocated it, the pattern that
 * makes per-thread caches and arenas work hardest.  FIFO order keeps the
 * checksum deterministic.  With THREADS=1 one thread alternates both roles in
 * batches (a baseline without cross-thread frees). */
#include "common.h"
#include <sched.h>
#include <stdatomic.h>

#define RING 1024
#define BATCH 256

struct msg {
    uint64_t seq;
    uint32_t len;
    unsigned char data[];
};

static struct msg *ring[RING];
static _Atomic uint64_t head, tail; /* head: next to write; tail: next to read */
static struct msg *make(uint64_t *rng, uint64_t seq)
{
    uint64_t r = rng_next(rng);
    size_t n = (r % 16 == 0) ? rng_range(rng, 512, 4097) : rng_range(rng, 32, 513);
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

static uint64_t producer(uint64_t *rng, long total)
{
    for (long i = 0; i < total; i++) {
        struct msg *m = make(rng, (uint64_t)i);
        uint64_t w = atomic_load_explicit(&head, memory_order_relaxed);
        while (w - atomic_load_explicit(&tail, memory_order_acquire) >= RING)
            sched_yield();
        ring[w % RING] = m;
        atomic_store_explicit(&head, w + 1, memory_order_release);
    }
    return 0;
}

static uint64_t consumer(long total)
{
    uint64_t h = 0;
    for (long i = 0; i < total; i++) {
        uint64_t r = atomic_load_explicit(&tail, memory_order_relaxed);
        while (atomic_load_explicit(&head, memory_order_acquire) == r)
            sched_yield();
        struct msg *m = ring[r % RING];
        atomic_store_explicit(&tail, r + 1, memory_order_release);
        h = consume(h, m);
    }
    return h;
}

static uint64_t worker(int tid, int nthreads, double scale)
{
    uint64_t rng = seed_for(0);
    long total = (long)(1.5e6 * scale);
    if (nthreads == 1) {
        struct msg *batch[BATCH];
        uint64_t h = 0;
        for (long i = 0; i < total; i += BATCH) {
            int n = total - i < BATCH ? (int)(total - i) : BATCH;
            for (int b = 0; b < n; b++)
                batch[b] = make(&rng, (uint64_t)(i + b));
            for (int b = 0; b < n; b++)
                h = consume(h, batch[b]);
        }
        return h;
    }
    /* Thread 0 consumes, thread 1 produces; further threads idle. */
    if (tid == 0)
        return consumer(total);
    if (tid == 1)
        return producer(&rng, total);
    return 0;
}

int main(int argc, char **argv) { return run_workers(argc, argv, worker); }
