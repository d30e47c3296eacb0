/* pthread_atfork handlers that allocate, whatever their order relative to
 * the allocator's own fork handlers.  glibc takes its malloc locks inside
 * fork(), after every prepare handler and before every parent and child
 * handler, so all of these may call malloc; an allocator that registers
 * atfork handlers of its own must give the same guarantee.
 *
 * Handlers are registered three times: from .preinit_array, which runs
 * before any shared library's constructor (so before a preloaded
 * allocator's, unless the allocator initialised while the loader was still
 * at work); from a constructor(101), the earliest point for most programs;
 * and from main.  Every handler
 * allocates sizes no thread cache serves (large, mmapped, aligned, calloc,
 * realloc) and queries the heap.  A busy thread keeps the process
 * multithreaded and the arenas contended.  A hang is turned into a failure
 * by alarm().
 * Usage: fork_handlers [FORKS] */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

/* Keeps allocations from being optimised away.  The handlers' sink is written
 * only by the thread running them (forks are one at a time); the busy thread
 * has its own: had it stored into and reloaded the handlers' sink, it could
 * read back a handler's pointer (stored in between, e.g. while the busy thread
 * was preempted after a copy-on-write fault) and free it a second time. */
static void *volatile sink;
static void *volatile busy_sink;
static atomic_int stop;
static atomic_long handler_calls, busy_ops;

/* Allocate in ways a thread cache cannot serve; `k` varies the sizes. */
static void allocate_everything(int k) {
  void *a = malloc(5000 + (size_t)k);
  void *b = calloc(1, 70000);
  void *c = malloc(300000); /* mmapped */
  void *d = memalign(4096, 1000);
  if (!a || !b || !c || !d || !is_aligned(d, 4096)) {
    fprintf(stderr, "allocation in a fork handler failed\n");
    _exit(3);
  }
  a = realloc(a, 20000);
  if (!a)
    _exit(3);
  sink = a;
  struct mallinfo2 mi = mallinfo2();
  if (mi.uordblks == 0 || malloc_usable_size(b) < 70000)
    _exit(4);
  free(a);
  free(b);
  free(c);
  free(d);
  atomic_fetch_add(&handler_calls, 1);
}

static void first_prepare(void) { allocate_everything(7); }
static void first_parent(void) { allocate_everything(8); }
static void first_child(void) { allocate_everything(9); }
static void early_prepare(void) { allocate_everything(1); }
static void early_parent(void) { allocate_everything(2); }
static void early_child(void) { allocate_everything(3); }
static void late_prepare(void) { allocate_everything(4); }
static void late_parent(void) { allocate_everything(5); }
static void late_child(void) { allocate_everything(6); }

static void first(int argc, char **argv, char **envp) {
  (void)argc, (void)argv, (void)envp;
  if (pthread_atfork(first_prepare, first_parent, first_child) != 0)
    abort();
}
__attribute__((used, section(".preinit_array"))) static void (*preinit)(int, char **,
                                                                       char **) = first;

__attribute__((constructor(101))) static void early(void) {
  if (pthread_atfork(early_prepare, early_parent, early_child) != 0)
    abort();
}

static void *busy(void *arg) {
  unsigned seed = 7;
  while (!atomic_load(&stop)) {
    size_t n = rand_r(&seed) % 4 ? rand_r(&seed) % 600 : 2000 + rand_r(&seed) % 60000;
    void *p = malloc(n);
    busy_sink = p;
    free(p);
    atomic_fetch_add(&busy_ops, 1);
  }
  return arg;
}

/* 0: the child ran every child handler and allocated; else a failure. */
static int fork_once(int k) {
  long before = atomic_load(&handler_calls);
  pid_t pid = fork();
  if (pid < 0)
    return 1;
  if (pid == 0) {
    /* The three child handlers ran (after the three prepare handlers). */
    if (atomic_load(&handler_calls) != before + 6)
      _exit(5);
    allocate_everything(k);
    _exit(0);
  }
  int st;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "fork %d: child status %#x\n", k, st);
    return 1;
  }
  /* Three prepare and three parent handlers ran in the parent. */
  return atomic_load(&handler_calls) == before + 6 ? 0 : 1;
}

static void *forking_thread(void *arg) {
  return (void *)(uintptr_t)fork_once((int)(uintptr_t)arg);
}

int main(int argc, char **argv) {
  t_start();
  int forks = argc > 1 ? atoi(argv[1]) : 50;
  alarm(60); /* a deadlock kills the program instead of hanging the run */
  REQUIRE(pthread_atfork(late_prepare, late_parent, late_child) == 0);
  pthread_t t;
  REQUIRE(pthread_create(&t, NULL, busy, NULL) == 0);
  int bad = 0;
  for (int k = 0; k < forks; k++) {
    long ops = atomic_load(&busy_ops);
    while (atomic_load(&busy_ops) < ops + 100)
      sched_yield();
    if (k % 2) {
      pthread_t ft;
      void *ret;
      REQUIRE(pthread_create(&ft, NULL, forking_thread, (void *)(uintptr_t)k) == 0);
      REQUIRE(pthread_join(ft, &ret) == 0);
      bad += ret != NULL;
    } else {
      bad += fork_once(k);
    }
  }
  atomic_store(&stop, 1);
  REQUIRE(pthread_join(t, NULL) == 0);
  alarm(0);
  CHECKF(bad == 0, "%d of %d forks failed", bad, forks);
  printf("forks: %d, handler calls: %ld\n", forks, atomic_load(&handler_calls));
  return t_finish();
}
