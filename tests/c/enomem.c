/* ENOMEM under RLIMIT_AS: with the address space capped, allocate until the
 * allocator says no (NULL with errno ENOMEM, from both mmap-sized and
 * heap-sized requests and the other entry points), then free part of it and
 * check that the allocator is still fully usable.
 * Usage: enomem [HEADROOM_MB] [THREADS]
 * With THREADS > 0, that many threads exhaust the address space at the same
 * time (their arenas' heaps fail to grow), then everything is freed and each
 * thread must be able to allocate again. */
#include "common.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>

#define MAXP (1 << 20)
static void *ptrs[MAXP]; /* in .bss: mapped before the limit is set */
static int nptrs;

static size_t vm_size(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  REQUIRE(f);
  unsigned long pages = 0;
  REQUIRE(fscanf(f, "%lu", &pages) == 1);
  fclose(f);
  return pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* Allocate blocks of n bytes until failure; return how many succeeded. */
static int exhaust(size_t n, const char *what) {
  int got = 0;
  for (;;) {
    REQUIRE(nptrs < MAXP);
    errno = 0;
    void *p = malloc(hide_size(n));
    if (!p) {
      CHECKF(errno == ENOMEM, "%s: malloc(%zu) failed with errno %d, not ENOMEM", what, n,
             errno);
      break;
    }
    ptrs[nptrs++] = p;
    got++;
  }
  printf("%s: %d blocks of %zu bytes before ENOMEM\n", what, got, n);
  return got;
}

/* A new thread (which may want an arena of its own) can allocate too. */
static void *thread_alloc(void *arg) {
  (void)arg;
  void *a = malloc(hide_size(64));
  void *b = malloc(hide_size(1 << 20));
  void *c = calloc(hide_size(10), hide_size(1000));
  int ok = a && b && c;
  free(a);
  free(b);
  free(c);
  return ok ? (void *)1 : NULL;
}

enum { TMAX = 16, TBLOCKS = 1 << 16 };
static void *tblocks[TMAX][TBLOCKS];
static int tcount[TMAX];
static int tbad[TMAX];
static pthread_barrier_t tbar;
static long tgot;

static void *thread_exhaust(void *arg) {
  int id = (int)(uintptr_t)arg;
  unsigned seed = (unsigned)id + 1;
  pthread_barrier_wait(&tbar);
  for (;;) {
    if (tcount[id] == TBLOCKS)
      break;
    size_t n = (size_t)(rand_r(&seed) % 3 == 0 ? 300000 : 2000 + rand_r(&seed) % 30000);
    errno = 0;
    void *p = rand_r(&seed) % 2 ? malloc(hide_size(n)) : calloc(1, hide_size(n));
    if (!p) {
      if (errno != ENOMEM)
        tbad[id]++;
      /* Small requests may still fit somewhere: keep going until those fail too. */
      errno = 0;
      p = malloc(hide_size(64));
      if (!p) {
        if (errno != ENOMEM)
          tbad[id]++;
        break;
      }
    }
    tblocks[id][tcount[id]++] = p;
  }
  __atomic_fetch_add(&tgot, tcount[id], __ATOMIC_RELAXED);
  pthread_barrier_wait(&tbar); /* everyone is out of memory */
  for (int i = 0; i < tcount[id]; i++)
    free(tblocks[id][i]);
  tcount[id] = 0;
  pthread_barrier_wait(&tbar); /* everyone has freed */
  for (int i = 0; i < 100; i++) {
    void *p = malloc(hide_size((size_t)i * 500));
    if (!p) {
      tbad[id] += 1000;
      break;
    }
    free(p);
  }
  void *big = malloc(hide_size(1 << 20));
  if (!big)
    tbad[id] += 1000;
  free(big);
  return NULL;
}

static int threaded(size_t headroom, int n) {
  REQUIRE(n > 0 && n <= TMAX);
  REQUIRE(pthread_barrier_init(&tbar, NULL, (unsigned)n) == 0);
  /* Thread stacks are mapped before the limit is set. */
  pthread_t th[TMAX];
  size_t base = vm_size();
  struct rlimit rl = {base + headroom + (size_t)n * (9 << 20), base + headroom + (size_t)n * (9 << 20)};
  REQUIRE(setrlimit(RLIMIT_AS, &rl) == 0);
  for (int i = 0; i < n; i++)
    REQUIRE(pthread_create(&th[i], NULL, thread_exhaust, (void *)(uintptr_t)i) == 0);
  for (int i = 0; i < n; i++)
    REQUIRE(pthread_join(th[i], NULL) == 0);
  for (int i = 0; i < n; i++)
    CHECKF(tbad[i] == 0, "thread %d: %d problems (errno not ENOMEM, or no recovery)", i,
           tbad[i]);
  void *p = malloc(hide_size(1 << 20));
  CHECK(p != NULL);
  free(p);
  CHECK(tgot > n);
  printf("%d threads got %ld blocks, ran out of memory and recovered\n", n, tgot);
  return t_finish();
}

int main(int argc, char **argv) {
  t_start();
  size_t headroom = (size_t)(argc > 1 ? atoi(argv[1]) : 256) << 20;
  if (argc > 2 && atoi(argv[2]) > 0)
    return threaded(headroom, atoi(argv[2]));
  /* Warm up: make sure stdio, the main arena and the cache exist. */
  free(malloc(100));
  free(malloc(200000));
  size_t base = vm_size();
  struct rlimit rl = {base + headroom, base + headroom};
  REQUIRE(setrlimit(RLIMIT_AS, &rl) == 0);
  printf("RLIMIT_AS = %zu MB (%zu MB used at start)\n", (size_t)rl.rlim_cur >> 20,
         base >> 20);

  int large = exhaust(1 << 20, "1 MiB blocks");
  CHECK(large > 10);
  int medium = exhaust(20000, "20 KB blocks");
  int small = exhaust(64, "64 B blocks");
  CHECK(large + medium + small > 0);

  /* Every entry point reports ENOMEM now. */
  errno = 0;
  CHECK(calloc(hide_size(1), hide_size(1 << 20)) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(memalign(hide_size(4096), hide_size(1 << 20)) == NULL && errno == ENOMEM);
  void *pm = NULL;
  CHECK(posix_memalign(&pm, hide_size(4096), hide_size(1 << 20)) == ENOMEM);
  errno = 0;
  CHECK(valloc(hide_size(1 << 20)) == NULL && errno == ENOMEM);
  /* A failed realloc leaves the block alone. */
  fill(ptrs[0], 1 << 20, 5);
  errno = 0;
  void *r = realloc(ptrs[0], hide_size(64 << 20));
  CHECK(r == NULL && errno == ENOMEM);
  CHECK(check_fill(ptrs[0], 1 << 20, 5));

  /* Free every other block: the allocator must be usable again. */
  for (int i = 0; i < nptrs; i += 2) {
    free(ptrs[i]);
    ptrs[i] = NULL;
  }
  void *a = malloc(hide_size(1 << 20));
  CHECK(a != NULL);
  void *b = malloc(hide_size(64));
  CHECK(b != NULL);
  void *c = calloc(hide_size(100), hide_size(100));
  CHECK(c != NULL);
  if (c)
    for (int i = 0; i < 10000; i++)
      CHECK(((unsigned char *)c)[i] == 0);
  void *d = memalign(hide_size(4096), hide_size(100000));
  CHECK(d != NULL && is_aligned(d, 4096));
  pthread_t t;
  void *ret = NULL;
  int tr = pthread_create(&t, NULL, thread_alloc, NULL);
  CHECKF(tr == 0, "pthread_create: %d", tr);
  if (tr == 0) {
    pthread_join(t, &ret);
    CHECK(ret == (void *)1);
  }
  free(a);
  free(b);
  free(c);
  free(d);
  /* Free everything: a big block fits again. */
  for (int i = 0; i < nptrs; i++)
    free(ptrs[i]);
  nptrs = 0;
  malloc_trim(0);
  void *big = malloc(hide_size(headroom / 2));
  CHECKF(big != NULL, "malloc(%zu MB) after freeing everything", headroom / 2 >> 20);
  if (big)
    memset(big, 1, headroom / 2);
  free(big);
  /* And heap-sized requests work again too. */
  for (int i = 0; i < 10000; i++) {
    void *p = malloc(hide_size((size_t)i % 3000));
    REQUIRE(p);
    free(p);
  }
  return t_finish();
}
