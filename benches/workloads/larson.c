/* Larson-style server simulation (after Larson & Krishnan, "Memory allocation
 * for long-running server applications", and the larson benchmark of Hoard and
 * mimalloc-bench).  Each of THREADS "connections" owns a table of live blocks
 * (16 B-1 KiB, a few up to 4 KiB).  In every round one thread per table
 * replaces random slots (frees the old block, allocates one of a random size,
 * writes it); at the end of the round the threads exit with their blocks still
 * live and the next round's threads take the tables over rotated by one, so
 * most blocks are freed by a different thread, and later than their allocating
 * thread's exit.  The random stream and the checksum belong to the table, not
 * to the thread, so the output does not depend on scheduling. */
#include "common.h"

#define SLOTS 4096
#define ROUNDS 16
#define MAXT 64

struct table {
    unsigned char *slot[SLOTS];
    unsigned short len[SLOTS];
    uint64_t rng, h;
};

static struct table tables[MAXT];
static long steps_per_round;

static size_t pick_size(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    return (r % 32 == 0) ? rng_range(rng, 1024, 4097) : rng_log(rng, 16, 1025);
}

static void *round_thread(void *p)
{
    struct table *t = p;
    for (long i = 0; i < steps_per_round; i++) {
        uint64_t r = rng_next(&t->rng);
        size_t k = r % SLOTS;
        if (t->slot[k]) {
            t->h = probe(t->h, t->slot[k], t->len[k]);
            free(t->slot[k]);
        }
        size_t n = pick_size(&t->rng);
        t->slot[k] = xmalloc(n);
        t->len[k] = (unsigned short)n;
        fill(t->slot[k], n, r >> 20);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 1;
    double scale = argc > 2 ? atof(argv[2]) : 1.0;
    if (nthreads < 1 || nthreads > MAXT || !(scale > 0)) {
        fprintf(stderr, "usage: %s THREADS SCALE\n", argv[0]);
        return 2;
    }
    steps_per_round = (long)(6e6 * scale / nthreads / ROUNDS);
    for (int i = 0; i < nthreads; i++) {
        struct table *t = &tables[i];
        t->rng = seed_for(i);
        t->h = 0;
        for (size_t k = 0; k < SLOTS; k++) {
            size_t n = pick_size(&t->rng);
            t->slot[k] = xmalloc(n);
            t->len[k] = (unsigned short)n;
            fill(t->slot[k], n, k);
        }
    }
    pthread_t th[MAXT];
    for (int round = 0; round < ROUNDS; round++) {
        /* Thread i of this round serves table (i + round) % nthreads. */
        for (int i = 0; i < nthreads; i++)
            if (pthread_create(&th[i], NULL, round_thread, &tables[(i + round) % nthreads]) != 0) {
                fprintf(stderr, "pthread_create failed\n");
                return 2;
            }
        for (int i = 0; i < nthreads; i++)
            pthread_join(th[i], NULL);
    }
    uint64_t h = 0xCBF29CE484222325ULL;
    for (int i = 0; i < nthreads; i++) {
        struct table *t = &tables[i];
        for (size_t k = 0; k < SLOTS; k++) {
            t->h = probe(t->h, t->slot[k], t->len[k]);
            free(t->slot[k]);
        }
        h = mix(h, t->h);
    }
    printf("threads=%d scale=%g checksum=%016llx\n", nthreads, scale, (unsigned long long)h);
    return 0;
}
