/* Multithreaded use of the whole API at once: worker threads allocate with
 * every entry point, realloc and free blocks that other threads allocated
 * (so frees cross arenas), while a monitor thread keeps calling the
 * whole-heap functions (mallinfo2, malloc_info, malloc_trim, malloc_stats,
 * mallopt).  Every block carries a pattern checked when it is freed; a
 * deadlock is caught by the harness's timeout.
 * Usage: mt_stress [THREADS] [OPS_PER_THREAD] */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>

enum { SHARED = 1024 };

struct blk {
  size_t size;
  size_t align;
  unsigned seed;
};

static pthread_mutex_t locks[16];
static struct blk *shared[SHARED];
static atomic_int corrupt, failed, misaligned, done;

static struct blk *new_block(unsigned *seed) {
  unsigned r = rand_r(seed);
  size_t n = r % 10 == 0 ? 50000 + r % 400000 : r % 3000;
  size_t align = 16;
  struct blk *b;
  void *p = NULL;
  switch (r % 6) {
  case 0:
    b = calloc(1, sizeof *b + n);
    if (b) {
      const unsigned char *z = (const unsigned char *)(b + 1);
      for (size_t k = 0; k < n; k += (k < 4096 ? 1 : 4093))
        if (z[k]) {
          atomic_fetch_add(&corrupt, 1);
          break;
        }
    }
    break;
  case 1:
    align = (size_t)64 << (r % 7);
    b = memalign(align, sizeof *b + n);
    break;
  case 2:
    align = (size_t)32 << (r % 5);
    b = posix_memalign(&p, align, sizeof *b + n) == 0 ? p : NULL;
    break;
  case 3:
    b = realloc(NULL, sizeof *b + n);
    break;
  default:
    b = malloc(sizeof *b + n);
  }
  if (!b) {
    atomic_fetch_add(&failed, 1);
    return NULL;
  }
  if (!is_aligned(b, align))
    atomic_fetch_add(&misaligned, 1);
  if (malloc_usable_size(b) < sizeof *b + n)
    atomic_fetch_add(&corrupt, 1);
  b->size = n;
  b->align = align;
  b->seed = r;
  fill(b + 1, n, r);
  return b;
}

static void check_block(struct blk *b) {
  if (b && !check_fill(b + 1, b->size, b->seed))
    atomic_fetch_add(&corrupt, 1);
}

static long ops = 10000;

static void *worker(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg * 977u + 5;
  for (long i = 0; i < ops; i++) {
    unsigned s = rand_r(&seed) % SHARED;
    pthread_mutex_t *l = &locks[s % 16];
    unsigned action = rand_r(&seed) % 4;
    pthread_mutex_lock(l);
    struct blk *b = shared[s];
    if (b && action == 0) {
      /* realloc someone else's block, keeping the pattern's prefix */
      check_block(b);
      size_t n = (size_t)rand_r(&seed) % (b->size * 2 + 100);
      size_t keep = n < b->size ? n : b->size;
      struct blk *nb = realloc(b, sizeof *b + n);
      if (!nb) {
        atomic_fetch_add(&failed, 1);
      } else {
        if (!check_fill(nb + 1, keep, nb->seed))
          atomic_fetch_add(&corrupt, 1);
        nb->size = n;
        fill(nb + 1, n, nb->seed);
        shared[s] = nb;
      }
      pthread_mutex_unlock(l);
      continue;
    }
    shared[s] = NULL;
    pthread_mutex_unlock(l);
    check_block(b);
    free(b);
    if (action != 1) {
      struct blk *nb = new_block(&seed);
      pthread_mutex_lock(l);
      struct blk *old = shared[s];
      shared[s] = nb;
      pthread_mutex_unlock(l);
      check_block(old);
      free(old);
    }
  }
  atomic_fetch_add(&done, 1);
  return NULL;
}

static void *monitor(void *arg) {
  int nthreads = (int)(uintptr_t)arg;
  int round = 0;
  while (atomic_load(&done) < nthreads) {
    /* uordblks is derived as arena - fordblks, so only relations between
     * independently computed fields can fail: free bytes found in the bins
     * and top cannot exceed the heap, nor fast-bin bytes the free bytes, nor
     * the top chunk (keepcost) the free bytes; mmapped bytes and blocks are
     * zero together. */
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks > mi.arena || mi.fsmblks > mi.fordblks || mi.keepcost > mi.fordblks ||
        (mi.hblks == 0) != (mi.hblkhd == 0) || mi.ordblks == 0)
      atomic_fetch_add(&corrupt, 1000000);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f) {
      if (malloc_info(0, f) != 0)
        atomic_fetch_add(&failed, 1);
      fclose(f);
      free(buf);
    }
    if (round % 16 == 0)
      malloc_trim((size_t)round * 1000);
    if (round % 64 == 0)
      malloc_stats(); /* stderr stays the harness's: an abort message shows */
    if (round % 8 == 0)
      mallopt(M_TRIM_THRESHOLD, 128 * 1024 + round % 3 * 65536);
    round++;
    sched_yield();
  }
  return (void *)(uintptr_t)round;
}

int main(int argc, char **argv) {
  t_start();
  int nthreads = argc > 1 ? atoi(argv[1]) : 6;
  if (argc > 2)
    ops = atol(argv[2]);
  REQUIRE(nthreads > 0 && nthreads <= 64);
  for (int i = 0; i < 16; i++)
    pthread_mutex_init(&locks[i], NULL);
  pthread_t th[64], mon;
  for (long i = 0; i < nthreads; i++)
    REQUIRE(pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i) == 0);
  REQUIRE(pthread_create(&mon, NULL, monitor, (void *)(uintptr_t)nthreads) == 0);
  for (int i = 0; i < nthreads; i++)
    REQUIRE(pthread_join(th[i], NULL) == 0);
  void *rounds;
  REQUIRE(pthread_join(mon, &rounds) == 0);
  for (int s = 0; s < SHARED; s++) {
    check_block(shared[s]);
    free(shared[s]);
  }
  CHECKF(atomic_load(&corrupt) == 0, "corruption count %d", atomic_load(&corrupt));
  CHECKF(atomic_load(&failed) == 0, "%d failed calls", atomic_load(&failed));
  CHECKF(atomic_load(&misaligned) == 0, "%d misaligned blocks", atomic_load(&misaligned));
  printf("threads %d x %ld ops, monitor rounds %lu\n", nthreads, ops,
         (unsigned long)(uintptr_t)rounds);
  return t_finish();
}
