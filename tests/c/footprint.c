/* Which pages of rmalloc's code does a typical program make resident?
 *
 * Runs the common paths (small and large blocks from several threads,
 * calloc, realloc, the aligned allocators, fork; with the argument "basic",
 * only malloc, calloc and free from several threads), then reads
 * /proc/self/pagemap for the library's mappings and prints the mapped
 * pages as ELF addresses of the library:
 *
 *   base 0x7f...           (load address)
 *   resident 0x3a000       (one line per mapped page of executable code)
 *   page rw-p 0x47000 1    (one line per mapped page of any mapping of the
 *                           library's, or anonymous, within 16 MiB of base;
 *                           the last field is 0 for the shared zero page, which
 *                           a read of untouched bss maps and RSS does not count:
 *                           neither a file page nor an anonymous page of ours)
 *
 * tests/c_api.rs checks that the code pages all lie in .text.hot and
 * .text.warm ("basic": in .text.hot), or in the window of rmalloc_version,
 * which the test scaffolding calls; that no unwind table page is mapped;
 * and how many writable pages are (see rmalloc/build.rs and
 * rmalloc/layout.ld). */
#include "common.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/wait.h>

static void *volatile sink;

static void *work(void *arg) {
  size_t salt = (size_t)arg;
  for (int i = 0; i < 20000; i++) {
    void *p = malloc(hide_size(16 + (i * 7 + salt) % 1000));
    sink = p;
    free(p);
  }
  void *big = malloc(hide_size(1 << 20)); /* an mmapped chunk */
  REQUIRE(big);
  memset(big, 1, 4096);
  free(big);
  return NULL;
}

int main(int argc, char **argv) {
  /* "basic": only malloc, calloc and free (from threads), as many small C
   * programs do; the rest of the common paths otherwise. */
  int basic = argc > 1 && strcmp(argv[1], "basic") == 0;
  t_start();
  pthread_t th[4];
  for (size_t i = 0; i < 4; i++)
    REQUIRE(pthread_create(&th[i], NULL, work, (void *)i) == 0);
  work((void *)9);
  for (int i = 0; i < 4; i++)
    REQUIRE(pthread_join(th[i], NULL) == 0);

  char *s = calloc(hide_size(10), 10);
  REQUIRE(s);
  free(s);
  if (basic)
    goto report;
  s = calloc(hide_size(10), 10);
  REQUIRE(s);
  for (size_t n = 200; n < 200000; n *= 3)
    REQUIRE((s = realloc(s, n)));
  free(s);
  void *a = memalign(64, hide_size(100));
  void *b = aligned_alloc(4096, hide_size(4096));
  void *c = NULL;
  REQUIRE(a && b && posix_memalign(&c, 256, hide_size(300)) == 0);
  CHECK(malloc_usable_size(a) >= 100);
  free(a);
  free(b);
  free(c);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    free(malloc(hide_size(50)));
    _exit(0);
  }
  int status;
  REQUIRE(waitpid(pid, &status, 0) == pid && WIFEXITED(status));

report:;
  Dl_info info;
  REQUIRE(dladdr((void *)malloc, &info) && info.dli_fname);
  uintptr_t base = (uintptr_t)info.dli_fbase;
  /* Collect first, print after: stdio allocates. */
  static uintptr_t pages[4096], all[4096];
  static int counted[4096];
  static char perm[4096][8];
  int npages = 0, nall = 0;
  FILE *maps = fopen("/proc/self/maps", "r");
  int pm = open("/proc/self/pagemap", O_RDONLY);
  REQUIRE(maps && pm >= 0);
  char line[4096];
  while (fgets(line, sizeof line, maps)) {
    uintptr_t lo, hi;
    char perms[8], path[3000] = "";
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %2999s", &lo, &hi, perms, path) < 3)
      continue;
    int ours = strcmp(path, info.dli_fname) == 0;
    if (lo < base || lo >= base + (16 << 20) || !(ours || path[0] == 0))
      continue;
    for (uintptr_t p = lo; p < hi && nall < 4096; p += 4096) {
      uint64_t e;
      REQUIRE(pread(pm, &e, 8, (off_t)(p / 4096 * 8)) == 8);
      if (!(e >> 63))
        continue;
      if (ours && strcmp(perms, "r-xp") == 0)
        pages[npages++] = p - base;
      memcpy(perm[nall], perms, sizeof perms);
      counted[nall] = (e >> 61 & 1) || (e >> 56 & 1); /* file page, or exclusive */
      all[nall++] = p - base;
    }
  }
  fclose(maps);
  close(pm);
  printf("base %#lx\n", (unsigned long)base);
  for (int i = 0; i < npages; i++)
    printf("resident %#lx\n", (unsigned long)pages[i]);
  for (int i = 0; i < nall; i++)
    printf("page %s %#lx %d\n", perm[i], (unsigned long)all[i], counted[i]);
  CHECK(npages > 0);
  return t_finish();
}
