/* Allocation across the whole life of a process: before any constructor
 * runs (.preinit_array), in constructors, in atexit handlers and destructors
 * after main returns, and while other threads are still allocating when the
 * process exits.
 * Usage: lifecycle */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>

static char *preinit_block;
static char *ctor_block;
static void *atexit_block;

static void preinit(int argc, char **argv, char **envp) {
  (void)argc;
  (void)argv;
  (void)envp;
  preinit_block = malloc(100);
  if (preinit_block)
    strcpy(preinit_block, "preinit");
  void *p = calloc(10, 10);
  free(p);
  p = memalign(64, 1000);
  free(p);
}
__attribute__((section(".preinit_array"), used)) static void (*preinit_fn)(int, char **,
                                                                          char **) = preinit;

__attribute__((constructor(101))) static void ctor(void) {
  ctor_block = realloc(NULL, 5000);
  if (ctor_block)
    strcpy(ctor_block, "ctor");
  ctor_block = realloc(ctor_block, 300000);
}

static void at_exit(void) {
  /* Runs after main returned: the allocator must still work. */
  char *p = malloc(1000);
  if (!p || !atexit_block) {
    const char msg[] = "atexit: allocator unusable\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(7);
  }
  memset(p, 1, 1000);
  free(p);
  free(atexit_block);
  free(ctor_block);
}

__attribute__((destructor)) static void dtor(void) {
  void *p = calloc(100, 100);
  if (!p)
    _exit(8);
  free(p);
}

static atomic_int started;

static void *busy(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  void *v[16] = {0};
  atomic_fetch_add(&started, 1);
  for (;;) { /* until the process exits under us */
    int i = rand_r(&seed) % 16;
    free(v[i]);
    v[i] = malloc((size_t)rand_r(&seed) % 100000);
  }
  return NULL;
}

int main(void) {
  t_start();
  CHECK(preinit_block && strcmp(preinit_block, "preinit") == 0);
  CHECK(ctor_block && strcmp(ctor_block, "ctor") == 0);
  free(preinit_block);
  atexit_block = malloc(123);
  REQUIRE(atexit_block);
  REQUIRE(atexit(at_exit) == 0);
  int r = t_finish();
  if (r != 0)
    return r;
  /* Exit while four threads are in the middle of malloc/free. */
  for (long i = 0; i < 4; i++) {
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, busy, (void *)(i + 1)) == 0);
  }
  while (atomic_load(&started) < 4)
    sched_yield();
  return 0;
}
