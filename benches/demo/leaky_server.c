/* leaky_server: a server-like program with a slow leak, for `make demo`.
 *
 * It handles REQUESTS simulated requests, the way a small HTTP/RPC server
 * would: read a request into a buffer (0.5-16 KiB), parse a few header strings
 * out of it, look up or create a session in a bounded session table (evicting
 * old sessions), build a response by appending to a growing buffer, then free
 * the temporaries.  A bug leaks LEAK_PER_MILLE of the request buffers: the
 * pointer is simply dropped, so the memory is unreachable, the kind of leak a
 * leak scanner can find and reclaim.
 *
 * Every TICKS-th part of the run it prints a progress line with throughput and
 * resident memory; the last line is a summary.  Output other than timings and
 * RSS is deterministic (the checksum depends only on the work done).
 *
 *   usage: leaky_server [REQUESTS] [LEAK_PER_MILLE]
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SESSIONS 4096
#define TICKS 10

struct session {
    uint64_t id;
    size_t hist_len;
    char *history; /* grows with each request, trimmed when large */
    char name[48];
};

static struct session *table[SESSIONS];
static uint64_t rng = 0x243F6A8885A308D3ULL;

static uint64_t next(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DULL;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
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

/* One request; returns a checksum of the response.  `leak` drops the buffer. */
static uint64_t handle(long n, int leak, size_t *leaked)
{
    size_t len = 512 + next() % (16 << 10);
    unsigned char *req = xmalloc(len);
    memset(req, 'a' + (int)(n % 26), len); /* "read" the request */
    for (size_t i = 0; i < len; i += 61)
        req[i] = (unsigned char)('A' + (n + i) % 26);

    /* parse: a handful of small header strings copied out of the request */
    int nhdr = 4 + (int)(next() % 9);
    char *hdr[12];
    for (int h = 0; h < nhdr; h++) {
        size_t hl = 16 + next() % 112;
        hdr[h] = xmalloc(hl + 1);
        memcpy(hdr[h], req + (h * 97) % (len - hl), hl);
        hdr[h][hl] = 0;
    }

    /* session lookup: replace a different session in the same slot */
    uint64_t id = next() % (SESSIONS * 3);
    struct session **slot = &table[id % SESSIONS];
    if (*slot && (*slot)->id != id) {
        free((*slot)->history);
        free(*slot);
        *slot = NULL;
    }
    if (!*slot) {
        *slot = xmalloc(sizeof **slot);
        (*slot)->id = id;
        (*slot)->hist_len = 0;
        (*slot)->history = NULL;
        snprintf((*slot)->name, sizeof (*slot)->name, "session-%llu", (unsigned long long)id);
    }
    struct session *s = *slot;
    size_t add = 16 + next() % 48;
    if (s->hist_len + add > 4096)
        s->hist_len = 0;
    s->history = realloc(s->history, s->hist_len + add);
    if (!s->history)
        exit(2);
    memset(s->history + s->hist_len, (int)(n & 0xff), add);
    s->hist_len += add;

    /* response: appended piece by piece to a growing buffer */
    size_t cap = 256, rlen = 0;
    char *resp = xmalloc(cap);
    int pieces = 8 + (int)(next() % 64);
    for (int p = 0; p < pieces; p++) {
        const char *src = hdr[p % nhdr];
        size_t pl = strlen(src);
        if (rlen + pl + 1 > cap) {
            while (rlen + pl + 1 > cap)
                cap *= 2;
            resp = realloc(resp, cap);
            if (!resp)
                exit(2);
        }
        memcpy(resp + rlen, src, pl);
        rlen += pl;
    }
    uint64_t sum = rlen * 31 + (unsigned char)resp[rlen / 2] + s->history[s->hist_len - 1];

    free(resp);
    for (int h = 0; h < nhdr; h++)
        free(hdr[h]);
    if (leak)
        *leaked += len; /* the bug: the request buffer is never freed */
    else
        free(req);
    return sum;
}

int main(int argc, char **argv)
{
    long requests = argc > 1 ? atol(argv[1]) : 2000000;
    long leak_per_mille = argc > 2 ? atol(argv[2]) : 20;
    setvbuf(stdout, NULL, _IOLBF, 0);

    Dl_info info;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    printf("malloc from %s\n", m && dladdr(m, &info) && info.dli_fname ? info.dli_fname : "?");
    printf("handling %ld requests, leaking %ld per mille of request buffers\n", requests, leak_per_mille);

    double start = now(), last = start, peak = 0;
    size_t leaked = 0;
    uint64_t checksum = 0;
    long done = 0;
    for (int tick = 1; tick <= TICKS; tick++) {
        long until = requests * tick / TICKS;
        for (; done < until; done++)
            checksum = checksum * 1099511628211ULL + handle(done, (long)(next() % 1000) < leak_per_mille, &leaked);
        double t = now(), rss = rss_mib();
        peak = rss > peak ? rss : peak;
        printf("tick %2d  t=%6.2fs  %9.0f req/s  rss=%7.1f MiB  leaked=%7.1f MiB\n", tick, t - start,
               (requests / TICKS) / (t - last), rss, leaked / 1048576.0);
        last = t;
    }
    double elapsed = now() - start;
    printf("summary requests=%ld seconds=%.3f rate=%.0f final_rss_mib=%.1f leaked_mib=%.1f checksum=%016llx\n",
           requests, elapsed, requests / elapsed, rss_mib(), leaked / 1048576.0, (unsigned long long)checksum);
    return 0;
}
