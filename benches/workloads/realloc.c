/* Realloc growth: the two ways programs grow buffers.
 *   - strings built by appending small pieces (1-64 bytes per realloc) up to
 *     a random final length between 256 bytes and 64 KiB;
 *   - vectors grown by doubling from 16 bytes up to 4 KiB - 4 MiB (the big ones
 *     cross the mmap threshold, where realloc can use mremap).
 * A few finished buffers stay alive at random slots so growth cannot always
 * happen at the top of the heap. */
#include "common.h"

#define LIVE 64

static uint64_t worker(int tid, int nthreads, double scale)
{
    uint64_t rng = seed_for(tid), h = 0;
    long rounds = (long)(10000 * scale / nthreads);
    unsigned char *keep[LIVE] = {0};
    size_t keep_len[LIVE] = {0};
    unsigned char piece[64];

    for (long r = 0; r < rounds; r++) {
        unsigned char *buf = NULL;
        size_t len = 0;
        if (r % 4 != 3) {
            /* string: append 1..64 bytes at a time */
            size_t target = rng_log(&rng, 256, 64 << 10);
            while (len < target) {
                size_t add = rng_range(&rng, 1, 65);
                memset(piece, (int)(len & 0xff), add);
                buf = xrealloc(buf, len + add + 1);
                memcpy(buf + len, piece, add);
                len += add;
                buf[len] = 0;
            }
        } else {
            /* vector: double the capacity, fill the new half */
            size_t target = rng_log(&rng, 4 << 10, 4 << 20), cap = 16;
            buf = xmalloc(cap);
            fill(buf, cap, (uint64_t)r);
            while (cap < target) {
                buf = xrealloc(buf, cap * 2);
                fill(buf + cap, cap, (uint64_t)cap);
                cap *= 2;
            }
            len = cap;
        }
        h = probe(h, buf, len);
        size_t k = rng_next(&rng) % LIVE;
        if (keep[k]) {
            h = probe(h, keep[k], keep_len[k]);
            free(keep[k]);
        }
        keep[k] = buf;
        keep_len[k] = len;
    }
    for (int k = 0; k < LIVE; k++)
        if (keep[k]) {
            h = probe(h, keep[k], keep_len[k]);
            free(keep[k]);
        }
    return h;
}

int main(int argc, char **argv) { return run_workers(argc, argv, worker); }
