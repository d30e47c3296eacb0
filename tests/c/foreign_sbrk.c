/* The program moves the break itself between allocations (as old code and
 * some runtimes do).  The allocator must notice that the break moved under
 * it, leave the program's memory alone, continue the heap past it, and keep
 * every block intact; when a mapping blocks the break, it must continue in
 * mmap regions.
 * Works the same on glibc, which handles foreign sbrk the same way. */
#include "common.h"
#include <sys/mman.h>

#define N 400

int main(void) {
  t_start();
  static char *blocks[N];
  size_t sizes[N];
  char *mine[8];
  int nmine = 0;
  for (int i = 0; i < N; i++) {
    sizes[i] = 1000 + (size_t)(i * 7919) % 60000;
    blocks[i] = malloc(sizes[i]);
    REQUIRE(blocks[i]);
    memset(blocks[i], i & 0xff, sizes[i]);
    if (i % 50 == 25 && nmine < 8) {
      /* A foreign break move: 64 KiB owned by the program. */
      char *p = sbrk(65536);
      REQUIRE(p != (void *)-1);
      memset(p, 0xee, 65536);
      mine[nmine++] = p;
    }
  }
  for (int i = 0; i < N; i += 2) {
    free(blocks[i]);
    blocks[i] = NULL;
  }
  for (int i = 0; i < N; i += 2) {
    blocks[i] = malloc(sizes[i]);
    REQUIRE(blocks[i]);
    memset(blocks[i], i & 0xff, sizes[i]);
  }
  /* Wall off the break with a mapping of the program's: growth must
   * continue in mmap regions. */
  uintptr_t end = ((uintptr_t)sbrk(0) + 4095) & ~(uintptr_t)4095;
  void *wall = mmap((void *)end, 1 << 20, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  REQUIRE(wall == (void *)end);
  CHECK(sbrk(1 << 20) == (void *)-1);
  char *more[64];
  for (int i = 0; i < 64; i++) {
    more[i] = malloc(20000);
    REQUIRE(more[i]);
    memset(more[i], 0x5a, 20000);
  }
  for (int i = 0; i < N; i++)
    for (size_t j = 0; j < sizes[i]; j += 997)
      CHECKF((unsigned char)blocks[i][j] == (i & 0xff), "block %d byte %zu", i, j);
  for (int k = 0; k < nmine; k++)
    for (size_t j = 0; j < 65536; j += 4093)
      CHECKF((unsigned char)mine[k][j] == 0xee, "program's sbrk memory %d clobbered", k);
  for (int i = 0; i < 64; i++)
    free(more[i]);
  for (int i = 0; i < N; i++)
    free(blocks[i]);
  printf("case foreign_sbrk: ok\n");
  return t_finish();
}
