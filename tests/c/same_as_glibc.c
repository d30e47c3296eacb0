/* A deterministic single-threaded allocation history whose every observable
 * result is printed: where each block lands relative to the first one, its
 * usable size, mallinfo2, malloc_info and malloc_stats.  The harness runs it
 * under glibc and under rmalloc and requires identical output: rmalloc keeps
 * ptmalloc's placement policy (tcache, fastbins, unsorted, best-fit bins,
 * top splitting), not just its API.
 *
 * Sizes stay below the mmap threshold so that no address depends on where
 * the kernel puts a mapping.  (No common.h: this program must behave the
 * same whatever allocator it finds, so it never asks which one it is.) */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 256
#define STEPS 6000

static uint64_t rng = 0x2545F4914F6CDD1DULL;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static size_t pick_size(void) {
  switch (next() % 8) {
  case 0: case 1: case 2: return 1 + next() % 128;
  case 3: case 4: return 128 + next() % 1024;
  case 5: return 1024 + next() % 4096;
  case 6: return 4096 + next() % 16384;
  default: return 16384 + next() % 49152;
  }
}

int main(void) {
  static char *slot[SLOTS];
  char *base = malloc(1);
  printf("start usable=%zu\n", malloc_usable_size(base));
  for (int i = 0; i < STEPS; i++) {
    int k = (int)(next() % SLOTS);
    unsigned op = (unsigned)(next() % 10);
    if (slot[k] && op < 4) {
      free(slot[k]);
      slot[k] = NULL;
      continue;
    }
    size_t n = pick_size();
    if (slot[k] && op < 7) {
      slot[k] = realloc(slot[k], n);
    } else {
      free(slot[k]);
      if (op == 7)
        slot[k] = calloc(1, n);
      else if (op == 8)
        slot[k] = memalign((size_t)64 << (next() % 6), n);
      else
        slot[k] = malloc(n);
    }
    if (!slot[k]) {
      printf("step %d: allocation of %zu failed\n", i, n);
      return 1;
    }
    memset(slot[k], i & 0xff, n);
    printf("%d %td %zu\n", i, slot[k] - base, malloc_usable_size(slot[k]));
  }
  struct mallinfo2 mi = mallinfo2();
  printf("mallinfo2 arena=%zu ordblks=%zu smblks=%zu hblks=%zu hblkhd=%zu "
         "fsmblks=%zu uordblks=%zu fordblks=%zu keepcost=%zu\n",
         mi.arena, mi.ordblks, mi.smblks, mi.hblks, mi.hblkhd, mi.fsmblks,
         mi.uordblks, mi.fordblks, mi.keepcost);
  fflush(stdout);
  malloc_info(0, stdout);
  malloc_stats();
  printf("trim=%d\n", malloc_trim(0));
  for (int k = 0; k < SLOTS; k++)
    free(slot[k]);
  free(base);
  malloc_stats();
  return 0;
}
