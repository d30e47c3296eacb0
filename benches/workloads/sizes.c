/* Many-size-class churn: cycle through about 300 distinct request sizes
 * (16 B-1 KiB in 16 B steps, to 8 KiB in 64 B steps, to 64 KiB in 512 B steps)
 * in a scrambled order, keeping a FIFO window of live blocks, so consecutive
 * requests rarely share a size and every size class, thread-cache bin and
 * small-bin is visited over and over with its cached blocks gone cold.  A
 * per-step random nudge within the class step keeps sizes off exact class
 * boundaries.  Total work is split between threads. */
#include "common.h"

#define WINDOW 2048

static size_t sizes[512];
static int nsizes;

static void make_sizes(void)
{
    nsizes = 0;
    for (size_t s = 16; s <= 1024; s += 16)
        sizes[nsizes++] = s;
    for (size_t s = 1024 + 64; s <= 8192; s += 64)
        sizes[nsizes++] = s;
    for (size_t s = 8192 + 512; s <= 65536; s += 512)
        sizes[nsizes++] = s;
}

static uint64_t worker(int tid, int nthreads, double scale)
{
    uint64_t rng = seed_for(tid), h = 0;
    long iters = (long)(3e6 * scale / nthreads);
    unsigned char **win = xcalloc(WINDOW, sizeof *win);
    size_t *len = xcalloc(WINDOW, sizeof *len);
    long stride = 97; /* coprime with nsizes: visits every class once per cycle */
    while (nsizes % stride == 0)
        stride += 2;
    long cls = tid;
    for (long i = 0; i < iters; i++) {
        size_t k = (size_t)i % WINDOW;
        if (win[k]) {
            h = probe(h, win[k], len[k]);
            free(win[k]);
        }
        cls = (cls + stride) % nsizes;
        size_t step = cls < 64 ? 16 : cls < 176 ? 64 : 512;
        size_t n = sizes[cls] - rng_range(&rng, 0, step);
        win[k] = xmalloc(n);
        len[k] = n;
        /* Touch the ends and one byte per 4 KiB (large blocks stay cheap). */
        for (size_t off = 0; off < n; off += 4096)
            win[k][off] = (unsigned char)(i + off);
        win[k][n / 2] = (unsigned char)(cls);
        win[k][n - 1] = (unsigned char)(n);
    }
    for (size_t k = 0; k < WINDOW; k++)
        if (win[k]) {
            h = probe(h, win[k], len[k]);
            free(win[k]);
        }
    free(win);
    free(len);
    return h;
}

int main(int argc, char **argv)
{
    make_sizes();
    return run_workers(argc, argv, worker);
}
