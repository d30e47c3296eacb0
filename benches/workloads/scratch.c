/* Cache-scratch (after Hoard's cache-scratch benchmark): passive false
 * sharing.  The main thread allocates one small object per worker, back to
 * back, so neighbouring workers' objects share cache lines, and hands one to
 * each worker.  Each worker frees the object it was given, then repeatedly
 * allocates a small object, writes every byte of it many times, reads it
 * back and frees it.  An allocator that hands the freed object (or its cache
 * line) back to the worker makes the workers write to the same cache line
 * from different cores: the run then takes many times longer than one whose
 * per-thread heaps keep them apart.  Pure computation otherwise, so the time
 * is mostly cache-line traffic.  Worker 0's result is the first in the
 * checksum, and the checksum depends only on values written. */
#include "common.h"

#define MAXT 64
#define OBJ 8

struct job {
    int tid;
    long objects, writes;
    unsigned char *given;
    uint64_t result;
};

static void *scratch(void *p)
{
    struct job *j = p;
    uint64_t h = 0;
    h = mix(h, j->given[0]);
    free(j->given);
    for (long i = 0; i < j->objects; i++) {
        volatile unsigned char *o = xmalloc(OBJ);
        for (int b = 0; b < OBJ; b++)
            o[b] = (unsigned char)b;
        for (long w = 0; w < j->writes; w++)
            for (int b = 0; b < OBJ; b++)
                o[b] = (unsigned char)(o[b] + w + b + j->tid);
        uint64_t v = 0;
        for (int b = 0; b < OBJ; b++)
            v = v << 8 | o[b];
        h = mix(h, v);
        free((void *)o);
    }
    j->result = h;
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
    struct job jobs[MAXT];
    pthread_t th[MAXT];
    for (int i = 0; i < nthreads; i++) {
        jobs[i] = (struct job){i, (long)(20000 * scale), 2000, xmalloc(OBJ), 0};
        memset(jobs[i].given, i + 1, OBJ);
    }
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&th[i], NULL, scratch, &jobs[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    uint64_t h = 0xCBF29CE484222325ULL;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        h = mix(h, jobs[i].result);
    }
    printf("threads=%d scale=%g checksum=%016llx\n", nthreads, scale, (unsigned long long)h);
    return 0;
}
