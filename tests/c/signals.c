/* Signal-heavy program: an interval timer fires SIGALRM as fast as the kernel
 * allows (no SA_RESTART, so blocking calls see EINTR) while several threads
 * allocate, check and free.  The handler only touches a counter: malloc is
 * not async-signal-safe and must not be called from it.  The run lasts until
 * both a fixed amount of work is done and many signals have arrived, so no
 * timing assumption is made.
 * Usage: signals [ITERATIONS] [MIN_SIGNALS] */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/time.h>
#include <time.h>

enum { THREADS = 3, LIVE = 64 };

static volatile sig_atomic_t signals_seen;
static atomic_int corrupt;
static atomic_int failed;
static long iterations = 200000;

static void on_alarm(int sig) {
  (void)sig;
  int saved = errno;
  signals_seen++;
  errno = saved;
}

static void *work(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg * 40503u + 3;
  void *p[LIVE] = {0};
  size_t sz[LIVE] = {0};
  for (long it = 0; it < iterations; it++) {
    int i = rand_r(&seed) % LIVE;
    if (p[i]) {
      if (!check_fill(p[i], sz[i] < 64 ? sz[i] : 64, (unsigned)i))
        atomic_fetch_add(&corrupt, 1);
      free(p[i]);
    }
    unsigned r = rand_r(&seed);
    sz[i] = r % 16 == 0 ? 65536 + r % 300000 : r % 2048;
    switch (r % 5) {
    case 0:
      p[i] = calloc(1, sz[i]);
      break;
    case 1:
      p[i] = memalign(64, sz[i]);
      break;
    default:
      p[i] = malloc(sz[i]);
    }
    if (!p[i]) {
      atomic_fetch_add(&failed, 1);
      sz[i] = 0;
      continue;
    }
    fill(p[i], sz[i] < 64 ? sz[i] : 64, (unsigned)i);
    if (r % 7 == 0) {
      void *q = realloc(p[i], sz[i] + 100);
      if (!q) {
        atomic_fetch_add(&failed, 1);
        continue;
      }
      p[i] = q;
    }
  }
  for (int i = 0; i < LIVE; i++)
    free(p[i]);
  return NULL;
}

int main(int argc, char **argv) {
  t_start();
  if (argc > 1)
    iterations = atol(argv[1]);
  long min_signals = argc > 2 ? atol(argv[2]) : 2000;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: interrupted syscalls fail with EINTR */
  REQUIRE(sigaction(SIGALRM, &sa, NULL) == 0);
  struct itimerval tv = {{0, 50}, {0, 50}};
  REQUIRE(setitimer(ITIMER_REAL, &tv, NULL) == 0);

  long rounds = 0, eintr = 0;
  while (rounds == 0 || signals_seen < min_signals) {
    pthread_t th[THREADS];
    for (long i = 0; i < THREADS; i++) {
      int r;
      while ((r = pthread_create(&th[i], NULL, work, (void *)(i + rounds * THREADS))) ==
             EAGAIN)
        ;
      REQUIRE(r == 0);
    }
    /* The main thread sleeps in interruptible calls meanwhile. */
    for (int k = 0; k < 50; k++) {
      struct timespec ts = {0, 200000};
      if (nanosleep(&ts, NULL) != 0 && errno == EINTR)
        eintr++;
      void *p = malloc(1000 + (size_t)k);
      REQUIRE(p);
      free(p);
    }
    for (int i = 0; i < THREADS; i++)
      REQUIRE(pthread_join(th[i], NULL) == 0);
    rounds++;
  }
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  CHECKF(atomic_load(&corrupt) == 0, "%d corrupted blocks", atomic_load(&corrupt));
  CHECKF(atomic_load(&failed) == 0, "%d allocations failed", atomic_load(&failed));
  CHECK(signals_seen >= min_signals);
  printf("rounds %ld, signals %ld, EINTR in main %ld\n", rounds, (long)signals_seen, eintr);
  return t_finish();
}
