/* fork() while other threads hammer malloc/free: every child must be able to
 * allocate (from every size class, and from a new thread) and exit normally.
 * A child that hangs is reported after a generous wait and killed.
 * Usage: fork_threads [FORKS] */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

enum { WORKERS = 4, SLOTS = 64 };

static atomic_int stop;
static atomic_long worker_ops;

/* Cross-thread hand-off: a block put here by one worker is freed by another. */
static pthread_mutex_t xlock = PTHREAD_MUTEX_INITIALIZER;
static void *xslot[SLOTS];

static size_t pick_size(unsigned *seed) {
  unsigned r = rand_r(seed);
  switch (r % 8) {
  case 0:
    return r % 24;
  case 1:
  case 2:
  case 3:
    return r % 512;
  case 4:
  case 5:
    return r % 4096;
  case 6:
    return r % 70000;
  default:
    return 100000 + r % 400000; /* mmap territory */
  }
}

static void *worker(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg * 7919u + 1;
  void *mine[32] = {0};
  while (!atomic_load(&stop)) {
    int i = rand_r(&seed) % 32;
    free(mine[i]);
    size_t n = pick_size(&seed);
    mine[i] = rand_r(&seed) % 4 ? malloc(n) : calloc(1, n);
    if (!mine[i]) {
      fprintf(stderr, "worker: allocation of %zu failed\n", n);
      exit(1);
    }
    memset(mine[i], 0x77, n < 256 ? n : 256);
    if (rand_r(&seed) % 8 == 0) {
      pthread_mutex_lock(&xlock);
      int s = rand_r(&seed) % SLOTS;
      void *old = xslot[s];
      xslot[s] = mine[i];
      pthread_mutex_unlock(&xlock);
      mine[i] = NULL;
      free(old);
    }
    if (rand_r(&seed) % 16 == 0) {
      void *r = realloc(mine[(i + 1) % 32], pick_size(&seed) + 1);
      if (!r)
        exit(1);
      mine[(i + 1) % 32] = r;
    }
    atomic_fetch_add(&worker_ops, 1);
  }
  for (int i = 0; i < 32; i++)
    free(mine[i]);
  return NULL;
}

static void *child_thread(void *arg) {
  for (int i = 0; i < 1000; i++) {
    void *p = malloc((size_t)(i * 37) % 3000);
    if (!p)
      return NULL;
    free(p);
  }
  return arg;
}

static int child_main(int k) {
  /* Exercise every path in the child: cache, bins, top, mmap, memalign,
   * realloc, a thread of its own, and blocks inherited from the parent. */
  void *v[200];
  for (int i = 0; i < 200; i++) {
    size_t n = (size_t)(i * 131 + k) % (i % 10 == 9 ? 300000 : 2000);
    v[i] = (i % 3) ? malloc(n) : calloc(1, n);
    if (!v[i])
      return 10;
    memset(v[i], i, n);
  }
  for (int i = 0; i < 200; i += 2)
    free(v[i]);
  for (int i = 1; i < 200; i += 2) {
    v[i] = realloc(v[i], 5000);
    if (!v[i])
      return 11;
  }
  void *a = memalign(4096, 10000);
  if (!a || !is_aligned(a, 4096))
    return 12;
  free(a);
  pthread_t t;
  if (pthread_create(&t, NULL, child_thread, (void *)1) != 0)
    return 13;
  void *ret;
  pthread_join(t, &ret);
  if (ret != (void *)1)
    return 14;
  for (int i = 1; i < 200; i += 2)
    free(v[i]);
  /* Free blocks that were allocated by the parent's threads before fork. */
  for (int s = 0; s < SLOTS; s++) {
    free(xslot[s]);
    xslot[s] = NULL;
  }
  /* A grandchild, forked from the child's own second thread's heap state. */
  if (k % 10 == 0) {
    pid_t g = fork();
    if (g < 0)
      return 16;
    if (g == 0) {
      void *p = malloc(12345);
      _exit(p ? 0 : 1);
    }
    int st;
    if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
      return 17;
  }
  if (t_require_rmalloc) {
    int (*check_heap)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rmalloc_check_heap");
    if (!check_heap || check_heap() != 0)
      return 15;
  }
  return 0;
}

/* Wait for pid for up to 30 s (deadlock detection only). */
static int wait_child(pid_t pid, int *status) {
  for (int i = 0; i < 30000; i++) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid)
      return 1;
    if (r < 0 && errno != EINTR)
      return -1;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

/* One fork: 0 = child exited 0, 1 = child failed, 2 = child hung. */
static int fork_once(int k) {
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0)
    exit(child_main(k)); /* exit(), not _exit(): run the atexit handlers */
  int status = 0;
  int r = wait_child(pid, &status);
  if (r == 0) {
    fprintf(stderr, "fork %d: child %d still running after 30 s: deadlock\n", k, pid);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 2;
  }
  REQUIRE(r == 1);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "fork %d: child failed: %s %d\n", k, WIFEXITED(status) ? "exit" : "signal",
            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    return 1;
  }
  return 0;
}

static void *forking_thread(void *arg) {
  return (void *)(uintptr_t)fork_once((int)(uintptr_t)arg);
}

int main(int argc, char **argv) {
  t_start();
  int forks = argc > 1 ? atoi(argv[1]) : 100;
  pthread_t th[WORKERS];
  for (long i = 0; i < WORKERS; i++)
    REQUIRE(pthread_create(&th[i], NULL, worker, (void *)i) == 0);
  int hung = 0, bad = 0;
  for (int k = 0; k < forks && !hung; k++) {
    /* Let the workers get going between forks. */
    long ops = atomic_load(&worker_ops);
    while (atomic_load(&worker_ops) < ops + 200)
      sched_yield();
    int r;
    if (k % 4 == 3) { /* fork from a thread other than the main one */
      pthread_t ft;
      void *ret;
      REQUIRE(pthread_create(&ft, NULL, forking_thread, (void *)(uintptr_t)k) == 0);
      REQUIRE(pthread_join(ft, &ret) == 0);
      r = (int)(uintptr_t)ret;
    } else {
      r = fork_once(k);
    }
    bad += r == 1;
    hung += r == 2;
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < WORKERS; i++)
    pthread_join(th[i], NULL);
  for (int s = 0; s < SLOTS; s++)
    free(xslot[s]);
  CHECK(hung == 0);
  CHECK(bad == 0);
  printf("forks: %d, worker operations: %ld\n", forks, atomic_load(&worker_ops));
  return t_finish();
}
