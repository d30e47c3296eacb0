/* Thread churn: thousands of short-lived threads (created and joined in
 * batches, some detached) each allocate and free, and free blocks that
 * earlier threads allocated.  Every block carries its owner's pattern,
 * checked by whoever frees it.
 * Usage: thread_churn [THREADS] [BATCH] */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>

enum { SLOTS = 512, PER_THREAD = 24 };

struct block {
  size_t size;
  unsigned seed;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct block *slots[SLOTS];
static atomic_int corrupt;
static atomic_int alloc_failed;
static atomic_int detached_done;

static struct block *make_block(unsigned seed, size_t size) {
  struct block *b = malloc(sizeof *b + size);
  if (!b) {
    atomic_fetch_add(&alloc_failed, 1);
    return NULL;
  }
  b->size = size;
  b->seed = seed;
  fill(b + 1, size, seed);
  return b;
}

static void drop_block(struct block *b) {
  if (!b)
    return;
  if (!check_fill(b + 1, b->size, b->seed))
    atomic_fetch_add(&corrupt, 1);
  free(b);
}

static void *churn(void *arg) {
  unsigned id = (unsigned)(uintptr_t)arg;
  unsigned seed = id * 2654435761u + 17;
  struct block *mine[PER_THREAD];
  for (int i = 0; i < PER_THREAD; i++) {
    unsigned r = rand_r(&seed);
    size_t n = (i % 8 == 7) ? 20000 + r % 200000 : r % 1500;
    mine[i] = make_block(id + (unsigned)i, n);
  }
  /* Free half of our own blocks (newest first) ... */
  for (int i = PER_THREAD - 2; i >= 0; i -= 2)
    drop_block(mine[i]);
  /* ... and trade the other half for blocks of earlier threads. */
  for (int i = 1; i < PER_THREAD; i += 2) {
    pthread_mutex_lock(&lock);
    unsigned s = rand_r(&seed) % SLOTS;
    struct block *old = slots[s];
    slots[s] = mine[i];
    pthread_mutex_unlock(&lock);
    drop_block(old);
  }
  /* Leave some memory in this thread's cache and arena on exit. */
  void *tmp = realloc(NULL, 100 + id % 900);
  if (tmp)
    free(realloc(tmp, 3000));
  return NULL;
}

static void *detached(void *arg) {
  churn(arg);
  atomic_fetch_add(&detached_done, 1);
  return NULL;
}

int main(int argc, char **argv) {
  t_start();
  int total = argc > 1 ? atoi(argv[1]) : 5000;
  int batch = argc > 2 ? atoi(argv[2]) : 50;
  pthread_t th[1024];
  REQUIRE(batch > 0 && batch <= 1024);
  int created = 0, ndetached = 0;
  while (created < total) {
    int n = total - created < batch ? total - created : batch;
    int joinable = 0;
    for (int i = 0; i < n; i++) {
      unsigned id = (unsigned)(created + i);
      if (id % 10 == 9) {
        pthread_t d;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int r = pthread_create(&d, &attr, detached, (void *)(uintptr_t)id);
        pthread_attr_destroy(&attr);
        REQUIRE(r == 0);
        ndetached++;
      } else {
        int r = pthread_create(&th[joinable], NULL, churn, (void *)(uintptr_t)id);
        if (r != 0) {
          errno = r;
          REQUIRE(r == 0);
        }
        joinable++;
      }
    }
    for (int i = 0; i < joinable; i++)
      REQUIRE(pthread_join(th[i], NULL) == 0);
    created += n;
    /* The main thread allocates between batches too. */
    struct block *b = make_block((unsigned)created, (size_t)created % 5000);
    drop_block(b);
  }
  /* Wait for the detached threads (deadlock detection is the harness's job). */
  while (atomic_load(&detached_done) < ndetached)
    sched_yield();
  for (int s = 0; s < SLOTS; s++)
    drop_block(slots[s]);
  CHECKF(atomic_load(&corrupt) == 0, "%d blocks were corrupted", atomic_load(&corrupt));
  CHECKF(atomic_load(&alloc_failed) == 0, "%d allocations failed",
         atomic_load(&alloc_failed));
  struct mallinfo2 mi = mallinfo2();
  printf("threads: %d (%d detached); arena %zu, in use %zu, mmapped %zu\n", created,
         ndetached, mi.arena, mi.uordblks, mi.hblkhd);
  return t_finish();
}
