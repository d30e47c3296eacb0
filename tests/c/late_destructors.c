/* Thread-specific-data destructors that allocate in every destructor round,
 * including the last one, which runs after an allocator's own thread-exit
 * destructor if that one sits on a lower key.  glibc releases a thread's
 * arena after every destructor has run, so an exiting thread's arena goes
 * back to the free list and the next thread takes it over: threads that
 * run one after another share one arena besides the main one, however many
 * there are.  A late allocation must not re-attach the exiting thread to an
 * arena for good, or every later thread needs a new one.
 * Usage: late_destructors [SEQUENTIAL] [BATCHES] */
#include "common.h"

#include <limits.h>
#include <pthread.h>

enum { BATCH = 10 };

static pthread_key_t key;
static __thread int rounds;

static void destructor(void *v) {
  free(v);
  rounds++;
  void *p = malloc(hide_size(100 + (size_t)rounds * 1000));
  if (!p)
    abort();
  memset(p, rounds, 100);
  if (rounds < PTHREAD_DESTRUCTOR_ITERATIONS)
    pthread_setspecific(key, p);
  else
    free(p);
}

static void *thread_main(void *arg) {
  void *p = malloc(hide_size(3000));
  if (!p)
    abort();
  free(p);
  if (pthread_setspecific(key, malloc(hide_size(64))) != 0)
    abort();
  return arg;
}

/* Arenas in use: the number of <heap> elements malloc_info reports. */
static int arenas(void) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  REQUIRE(f != NULL);
  REQUIRE(malloc_info(0, f) == 0);
  fclose(f);
  int n = 0;
  for (char *s = buf; (s = strstr(s, "<heap nr=")) != NULL; s++)
    n++;
  free(buf);
  return n;
}

int main(int argc, char **argv) {
  t_start();
  int sequential = argc > 1 ? atoi(argv[1]) : 150;
  int batches = argc > 2 ? atoi(argv[2]) : 15;
  /* Allocate first: a lazily initialised allocator creates its own key on
   * its first call, so this key gets a higher index and its destructor runs
   * after the allocator's in every round. */
  free(malloc(hide_size(10)));
  REQUIRE(pthread_key_create(&key, destructor) == 0);
  for (int i = 0; i < sequential; i++) {
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, thread_main, NULL) == 0);
    REQUIRE(pthread_join(t, NULL) == 0);
  }
  /* One after another: the main arena and one arena handed from thread to
   * thread. */
  int after_sequential = arenas();
  CHECKF(after_sequential == 2, "%d arenas after %d threads in turn", after_sequential,
         sequential);
  for (int b = 0; b < batches; b++) {
    pthread_t t[BATCH];
    for (int i = 0; i < BATCH; i++)
      REQUIRE(pthread_create(&t[i], NULL, thread_main, NULL) == 0);
    for (int i = 0; i < BATCH; i++)
      REQUIRE(pthread_join(t[i], NULL) == 0);
  }
  /* At most one arena per concurrently live thread. */
  int after_batches = arenas();
  CHECKF(after_batches <= BATCH + 1, "%d arenas after batches of %d threads", after_batches,
         BATCH);
  printf("threads: %d, arenas: %d then %d\n", sequential + batches * BATCH, after_sequential,
         after_batches);
  return t_finish();
}
