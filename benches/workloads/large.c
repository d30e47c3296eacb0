/* Large blocks: 128 KiB - 8 MiB (log-uniform), around and above glibc's mmap
 * threshold (128 KiB initially, adapting up to 32 MiB).  Each block is touched
 * once per page, as a program filling a buffer would, so the cost of fresh
 * pages (mmap + page faults) versus reused heap memory shows up, and so does
 * how much memory the allocator keeps.  A few blocks are live at a time; an
 * eighth come from calloc. */
#include "common.h"

#define LIVE 8
#define PAGE 4096

static void touch(unsigned char *p, size_t n, uint64_t tag)
{
    for (size_t off = 0; off < n; off += PAGE)
        memset(p + off, (int)(tag & 0xff), n - off < 64 ? n - off : 64);
    p[n - 1] = (unsigned char)tag;
}

static uint64_t check(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t off = 0; off < n; off += 16 * PAGE)
        h = mix(h, p[off]);
    return mix(h, p[n - 1]);
}

static uint64_t worker(int tid, int nthreads, double scale)
{
    uint64_t rng = seed_for(tid), h = 0;
    long iters = (long)(2000 * scale / nthreads);
    unsigned char *slot[LIVE] = {0};
    size_t len[LIVE] = {0};

    for (long i = 0; i < iters; i++) {
        size_t k = rng_next(&rng) % LIVE;
        if (slot[k]) {
            h = check(h, slot[k], len[k]);
            free(slot[k]);
        }
        size_t n = rng_log(&rng, 128 << 10, 8 << 20);
        if (rng_next(&rng) % 8 == 0) {
            slot[k] = xcalloc(n, 1);
            h = mix(h, slot[k][n / 2]); /* must read as zero */
        } else {
            slot[k] = xmalloc(n);
        }
        touch(slot[k], n, (uint64_t)i);
        len[k] = n;
    }
    for (int k = 0; k < LIVE; k++)
        if (slot[k]) {
            h = check(h, slot[k], len[k]);
            free(slot[k]);
        }
    return h;
}

int main(int argc, char **argv) { return run_workers(argc, argv, worker); }
