/* leaky_server: a server-like program with a slow leak, for `make demo` and
 * the leak-injected RSS tests (tests/kal_rss.rs).
 *
 * It handles REQUESTS simulated requests, the way a small HTTP/RPC server
 * would: read a request into a buffer (0.5-16 KiB), parse a few header strings
 * out of it, look up or create a session in a bounded session table (evicting
 * old sessions; a session's history grows by 64-512 bytes per request up to
 * 4 KiB), build a response by appending to a growing buffer, then free
 * the temporaries.  A bug leaks LEAK_PER_MILLE of the request buffers: the
 * pointer is simply dropped, so the memory is unreachable, the kind of leak a
 * leak scanner can find and reclaim.
 *
 * THREADS=0 handles everything on the main thread.  THREADS=N>0 is the
 * multi-threaded variant: the main thread plays the I/O thread (it allocates
 * each request's job and buffer and "reads" the request into it) and hands the
 * job through a bounded shared queue to N workers; each worker has its own
 * session table and frees (or leaks) the buffers the I/O thread allocated.
 *
 * Every request's work depends only on its number, and the checksum combines
 * per-request results order-independently, so every allocator and every THREADS
 * value prints the same checksum (and the same leaked byte count).
 *
 * At each tenth of the run it prints a progress line with throughput and
 * resident memory (read from /proc/self/statm); then a summary line, and, when
 * the malloc in use exports rmalloc_kal_stats (looked up with dlsym, so the
 * same binary runs on glibc), a `kal` line with the leak scanner's counters.
 *
 * SCAN_EVERY>0 calls rmalloc_kal_scan_now() (if exported) every SCAN_EVERY
 * requests, from the main thread: this makes the number of scans independent
 * of scheduling, which the RSS tests rely on.
 *
 *   usage: leaky_server [REQUESTS] [LEAK_PER_MILLE] [THREADS] [SCAN_EVERY]
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "rmalloc.h"

#define SESSIONS 4096
#define TICKS 10
#define QUEUE 256
#define MAX_THREADS 64

struct session {
    uint64_t id;
    size_t hist_len;
    char *history; /* grows with each request, trimmed when large */
    char name[48];
};

/* One request as the I/O thread hands it to a worker. */
struct job {
    long n;
    uint64_t rng;
    size_t len;
    unsigned char *req;
};

/* What one handler (the main thread, or a worker) owns and has counted. */
struct worker {
    pthread_t thread;
    struct session **table; /* SESSIONS slots, calloc'ed */
    uint64_t sum;
    size_t leaked;
    long handled;
};

static long leak_per_mille = 20;

/* The shared queue between the I/O thread and the workers. */
static struct job *queue[QUEUE];
static unsigned q_head, q_tail; /* q_tail - q_head jobs are queued */
static int q_closed;
static long q_done;
static int idle_workers, producer_waiting, drainer_waiting;
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_nonempty = PTHREAD_COND_INITIALIZER;
static pthread_cond_t q_nonfull = PTHREAD_COND_INITIALIZER;
static pthread_cond_t q_progress = PTHREAD_COND_INITIALIZER;

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t next(uint64_t *rng)
{
    uint64_t x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    return x * 0x2545F4914F6CDD1DULL;
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

/* The I/O part: allocate the job and its buffer and "read" the request. */
static struct job *receive(long n)
{
    struct job *j = xmalloc(sizeof *j);
    j->n = n;
    j->rng = mix((uint64_t)n) | 1;
    j->len = 512 + next(&j->rng) % (16 << 10);
    j->req = xmalloc(j->len);
    memset(j->req, 'a' + (int)(n % 26), j->len);
    for (size_t i = 0; i < j->len; i += 61)
        j->req[i] = (unsigned char)('A' + (n + i) % 26);
    return j;
}

/* One request; adds its result to w->sum.  A fraction of the request buffers
 * is dropped without free(): the leak. */
static void handle(struct worker *w, struct job *j)
{
    long n = j->n;
    uint64_t *rng = &j->rng;
    unsigned char *req = j->req;
    size_t len = j->len;

    /* parse: a handful of small header strings copied out of the request */
    int nhdr = 4 + (int)(next(rng) % 9);
    char *hdr[12];
    for (int h = 0; h < nhdr; h++) {
        size_t hl = 16 + next(rng) % 112;
        hdr[h] = xmalloc(hl + 1);
        memcpy(hdr[h], req + (h * 97) % (len - hl), hl);
        hdr[h][hl] = 0;
    }

    /* session lookup: replace a different session in the same slot */
    uint64_t id = next(rng) % (SESSIONS + SESSIONS / 4);
    struct session **slot = &w->table[id % SESSIONS];
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
        snprintf((*slot)->name, sizeof(*slot)->name, "session-%llu", (unsigned long long)id);
    }
    struct session *s = *slot;
    size_t add = 64 + next(rng) % 448;
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
    int pieces = 8 + (int)(next(rng) % 64);
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
    uint64_t sum = rlen * 31 + (unsigned char)resp[rlen / 2] + (unsigned char)s->history[s->hist_len - 1];

    free(resp);
    for (int h = 0; h < nhdr; h++)
        free(hdr[h]);
    if ((long)(mix((uint64_t)n ^ 0x5EED) % 1000) < leak_per_mille)
        w->leaked += len; /* the bug: the request buffer is never freed */
    else
        free(req);
    j->req = NULL;
    free(j);
    w->sum += mix((uint64_t)n ^ sum);
    w->handled++;
}

#define BATCH 16

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct job *batch[BATCH];
    int got = 0;
    for (;;) {
        pthread_mutex_lock(&q_lock);
        if (got) {
            q_done += got;
            if (drainer_waiting)
                pthread_cond_signal(&q_progress);
        }
        while (q_head == q_tail && !q_closed) {
            idle_workers++;
            pthread_cond_wait(&q_nonempty, &q_lock);
            idle_workers--;
        }
        got = 0;
        while (q_head != q_tail && got < BATCH) {
            batch[got++] = queue[q_head % QUEUE];
            queue[q_head % QUEUE] = NULL;
            q_head++;
        }
        if (got && producer_waiting)
            pthread_cond_signal(&q_nonfull);
        pthread_mutex_unlock(&q_lock);
        if (!got)
            return NULL;
        for (int i = 0; i < got; i++) {
            handle(w, batch[i]);
            batch[i] = NULL;
        }
    }
}

/* Hand `n` jobs to the workers at once (one lock round trip per batch). */
static void enqueue(struct job **jobs, int n)
{
    pthread_mutex_lock(&q_lock);
    for (int i = 0; i < n; i++) {
        while (q_tail - q_head == QUEUE) {
            producer_waiting = 1;
            if (idle_workers)
                pthread_cond_broadcast(&q_nonempty);
            pthread_cond_wait(&q_nonfull, &q_lock);
            producer_waiting = 0;
        }
        queue[q_tail % QUEUE] = jobs[i];
        jobs[i] = NULL;
        q_tail++;
    }
    if (idle_workers)
        pthread_cond_signal(&q_nonempty);
    pthread_mutex_unlock(&q_lock);
}

/* Wait until the workers have handled `count` requests. */
static void drain(long count)
{
    pthread_mutex_lock(&q_lock);
    pthread_cond_broadcast(&q_nonempty);
    drainer_waiting = 1;
    while (q_done < count)
        pthread_cond_wait(&q_progress, &q_lock);
    drainer_waiting = 0;
    pthread_mutex_unlock(&q_lock);
}

static void print_kal_stats(void)
{
    int (*stats)(struct rmalloc_kal_stats *) =
        (int (*)(struct rmalloc_kal_stats *))dlsym(RTLD_DEFAULT, "rmalloc_kal_stats");
    if (!stats) {
        printf("kal unavailable (rmalloc_kal_stats not exported by this malloc)\n");
        return;
    }
    struct rmalloc_kal_stats k;
    memset(&k, 0, sizeof k);
    k.size = sizeof k;
    if (stats(&k) != 0) {
        printf("kal error (rmalloc_kal_stats failed)\n");
        return;
    }
    static const char *const modes[] = {"off", "detect", "reclaim"};
    static const char *const backends[] = {"none", "fork", "kernel"};
    printf("kal mode=%s backend=%s scans=%llu discarded=%llu discarded_stop=%llu discarded_heap=%llu discarded_roots=%llu "
           "pause_p50_us=%.0f pause_p99_us=%.0f pause_max_us=%.0f scan_last_ms=%.1f "
           "scanned_mib=%.1f chunks_last=%llu unreachable_chunks=%llu unreachable_mib=%.1f "
           "reclaimed_chunks=%llu reclaimed_mib=%.1f false_reclaims=%llu leaks_reported=%llu\n",
           k.mode < 3 ? modes[k.mode] : "?", k.backend < 3 ? backends[k.backend] : "?",
           (unsigned long long)k.scans, (unsigned long long)k.scans_discarded,
           (unsigned long long)k.discarded_stop, (unsigned long long)k.discarded_heap,
           (unsigned long long)k.discarded_roots, k.pause_ns_p50 / 1e3, k.pause_ns_p99 / 1e3,
           k.pause_ns_max / 1e3, k.scan_ns_last / 1e6, k.bytes_scanned / 1048576.0,
           (unsigned long long)k.chunks_last, (unsigned long long)k.unreachable_chunks,
           k.unreachable_bytes / 1048576.0, (unsigned long long)k.reclaimed_chunks,
           k.reclaimed_bytes / 1048576.0, (unsigned long long)k.false_reclaims,
           (unsigned long long)k.leaks_reported);
}

int main(int argc, char **argv)
{
    long requests = argc > 1 ? atol(argv[1]) : 2000000;
    leak_per_mille = argc > 2 ? atol(argv[2]) : 20;
    int threads = argc > 3 ? atoi(argv[3]) : 0;
    long scan_every = argc > 4 ? atol(argv[4]) : 0;
    if (threads < 0 || threads > MAX_THREADS || requests < TICKS) {
        fprintf(stderr, "usage: leaky_server [REQUESTS>=%d] [LEAK_PER_MILLE] [THREADS 0..%d] [SCAN_EVERY]\n",
                TICKS, MAX_THREADS);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    Dl_info info;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    printf("malloc from %s\n", m && dladdr(m, &info) && info.dli_fname ? info.dli_fname : "?");
    int (*scan_now)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_scan_now");
    const char *(*kal_mode)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_mode");
    printf("kal_mode %s\n", kal_mode ? kal_mode() : "unavailable");
    printf("handling %ld requests, leaking %ld per mille of request buffers, %s\n", requests,
           leak_per_mille, threads ? "1 I/O thread + workers" : "single-threaded");
    if (threads)
        printf("workers %d\n", threads);

    int handlers = threads ? threads : 1;
    struct worker *workers = calloc((size_t)handlers, sizeof *workers);
    if (!workers)
        return 2;
    for (int i = 0; i < handlers; i++) {
        workers[i].table = calloc(SESSIONS, sizeof *workers[i].table);
        if (!workers[i].table)
            return 2;
    }
    for (int i = 0; i < threads; i++)
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }

    double start = now(), last = start, peak = 0;
    long done = 0, scans = 0, scans_done = 0;
    for (int tick = 1; tick <= TICKS; tick++) {
        long until = requests * tick / TICKS;
        struct job *pending[BATCH];
        int npending = 0;
        for (; done < until; done++) {
            struct job *j = receive(done);
            if (!threads) {
                handle(&workers[0], j);
            } else {
                pending[npending++] = j;
                if (npending == BATCH || done + 1 == until) {
                    enqueue(pending, npending);
                    npending = 0;
                }
            }
            if (scan_every > 0 && scan_now && (done + 1) % scan_every == 0) {
                scans++;
                scans_done += scan_now() == 1;
            }
        }
        if (threads)
            drain(until);
        size_t leaked = 0;
        for (int i = 0; i < handlers; i++)
            leaked += workers[i].leaked;
        double t = now(), rss = rss_mib();
        peak = rss > peak ? rss : peak;
        printf("tick %2d  t=%6.2fs  %9.0f req/s  rss=%7.1f MiB  leaked=%7.1f MiB", tick, t - start,
               (requests / TICKS) / (t - last), rss, leaked / 1048576.0);
        /* KAL's reclaimed total so far, where the malloc has KAL. */
        int (*kal_stats)(struct rmalloc_kal_stats *) =
            (int (*)(struct rmalloc_kal_stats *))dlsym(RTLD_DEFAULT, "rmalloc_kal_stats");
        struct rmalloc_kal_stats ks = {.size = sizeof ks};
        if (kal_stats && kal_stats(&ks) == 0)
            printf("  reclaimed=%7.1f MiB", ks.reclaimed_bytes / 1048576.0);
        printf("\n");
        last = t;
    }
    double elapsed = now() - start;

    pthread_mutex_lock(&q_lock);
    q_closed = 1;
    pthread_cond_broadcast(&q_nonempty);
    pthread_mutex_unlock(&q_lock);
    uint64_t checksum = 0;
    size_t leaked = 0;
    long handled = 0;
    for (int i = 0; i < handlers; i++) {
        if (threads)
            pthread_join(workers[i].thread, NULL);
        checksum += workers[i].sum;
        leaked += workers[i].leaked;
        handled += workers[i].handled;
    }
    if (scan_every > 0)
        printf("explicit scans %ld (completed %ld)\n", scans, scans_done);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        ru.ru_maxrss = 0;
    printf("summary requests=%ld seconds=%.3f rate=%.0f peak_rss_mib=%.1f maxrss_mib=%.1f final_rss_mib=%.1f "
           "leaked_mib=%.1f handled=%ld checksum=%016llx\n",
           requests, elapsed, requests / elapsed, peak, ru.ru_maxrss / 1024.0, rss_mib(), leaked / 1048576.0,
           handled, (unsigned long long)checksum);
    print_kal_stats();
    return 0;
}
