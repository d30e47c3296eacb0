/* Probes of the allocator's configuration, for tests that set
 * GLIBC_TUNABLES / MALLOC_*_ in the environment and check the effect.
 * Usage:
 *   config heaps N      start N threads that allocate at the same time, then
 *                       print "heaps=<number of <heap> elements in malloc_info>"
 *   config heaps_mallopt N  the same after mallopt(M_ARENA_MAX, 2)
 *   config mmapped SIZE print "mmapped=<1 if two malloc(SIZE) made an mmapped
 *                       chunk>" (two, so that the second one cannot come from
 *                       the initial top chunk)
 *   config perturb      print "fresh=<first byte of a fresh malloc(300), hex>"
 *   config smoke        allocate a mix of sizes (for invalid settings) */
#include "common.h"

#include <pthread.h>

static pthread_barrier_t barrier;

static void *hold(void *arg) {
  (void)arg;
  void *p = malloc(hide_size(1000));
  pthread_barrier_wait(&barrier); /* all threads hold memory at once */
  pthread_barrier_wait(&barrier); /* main has counted the heaps */
  free(p);
  return NULL;
}

static int count_heaps(void) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  REQUIRE(f);
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
  REQUIRE(argc >= 2);
  int via_mallopt = strcmp(argv[1], "heaps_mallopt") == 0;
  if (via_mallopt)
    REQUIRE(mallopt(M_ARENA_MAX, 2) == 1);
  if (strcmp(argv[1], "heaps") == 0 || via_mallopt) {
    REQUIRE(argc == 3);
    int n = atoi(argv[2]);
    REQUIRE(n > 0 && n <= 64);
    pthread_t th[64];
    REQUIRE(pthread_barrier_init(&barrier, NULL, (unsigned)n + 1) == 0);
    for (int i = 0; i < n; i++)
      REQUIRE(pthread_create(&th[i], NULL, hold, NULL) == 0);
    pthread_barrier_wait(&barrier);
    printf("heaps=%d\n", count_heaps());
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < n; i++)
      pthread_join(th[i], NULL);
  } else if (strcmp(argv[1], "mmapped") == 0) {
    REQUIRE(argc == 3);
    size_t n = (size_t)atol(argv[2]);
    struct mallinfo2 a = mallinfo2();
    void *p = malloc(hide_size(n));
    void *q = malloc(hide_size(n));
    REQUIRE(p && q);
    struct mallinfo2 b = mallinfo2();
    printf("mmapped=%d\n", b.hblks > a.hblks);
    free(p);
    free(q);
  } else if (strcmp(argv[1], "perturb") == 0) {
    unsigned char *p = malloc(hide_size(300));
    REQUIRE(p);
    printf("fresh=%02x\n", p[0]);
    free(p);
  } else if (strcmp(argv[1], "smoke") == 0) {
    void *v[300];
    for (int i = 0; i < 300; i++) {
      size_t n = (size_t)i * i * 13;
      v[i] = i % 3 ? malloc(hide_size(n)) : calloc(1, hide_size(n));
      REQUIRE(v[i]);
      memset(v[i], 1, n);
    }
    for (int i = 0; i < 300; i++)
      free(v[i]);
  } else {
    fprintf(stderr, "unknown probe %s\n", argv[1]);
    return 2;
  }
  return t_finish();
}
