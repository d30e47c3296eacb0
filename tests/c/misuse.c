/* Heap misuse that glibc detects and answers with a message and abort().
 * Usage: misuse CASE.  Reaching the end of main is a failure (exit 3). */
#include "common.h"

#define NOT_REACHED()                                                          \
  do {                                                                         \
    printf("misuse went undetected\n");                                        \
    return 3;                                                                  \
  } while (0)

static size_t *size_field(void *p) { return (size_t *)p - 1; }

int main(int argc, char **argv) {
  t_start();
  if (argc != 2) {
    fprintf(stderr, "usage: %s CASE\n", argv[0]);
    return 2;
  }
  const char *c = argv[1];
  printf("case %s\n", c);

  if (strcmp(c, "double_free_tcache") == 0) {
    /* A small chunk goes to the per-thread cache; freeing it again is caught
     * there ("free(): double free detected in tcache 2"). */
    void *keep = malloc(hide_size(40)); /* keep p away from the top chunk */
    void *p = malloc(hide_size(40));
    void *guard = malloc(hide_size(40));
    REQUIRE(keep && p && guard);
    free(p);
    free(hide_ptr(p));
    NOT_REACHED();
  }

  if (strcmp(c, "double_free_fasttop") == 0) {
    /* Fill the 48-byte cache bin (7 entries) so that p lands in a fastbin,
     * then free it again while it is the bin's top entry. */
    void *fillers[7];
    for (int i = 0; i < 7; i++)
      REQUIRE((fillers[i] = malloc(hide_size(40))) != NULL);
    void *p = malloc(hide_size(40));
    void *guard = malloc(hide_size(40));
    REQUIRE(p && guard);
    for (int i = 0; i < 7; i++)
      free(fillers[i]);
    free(p);
    free(hide_ptr(p));
    NOT_REACHED();
  }

  if (strcmp(c, "double_free_smallbin") == 0) {
    /* Too big for the cache and fastbins: the chunk after p already says
     * p is free ("double free or corruption (!prev)"). */
    void *p = malloc(hide_size(2000));
    void *guard = malloc(hide_size(2000));
    REQUIRE(p && guard);
    free(p);
    free(hide_ptr(p));
    NOT_REACHED();
  }

  if (strcmp(c, "invalid_pointer") == 0) {
    /* A pointer into the middle of a block, not 16-byte aligned as a chunk. */
    char *p = malloc(hide_size(64));
    REQUIRE(p);
    free(hide_ptr(p + 8));
    NOT_REACHED();
  }

  if (strcmp(c, "invalid_size") == 0) {
    /* The chunk's size field is overwritten with a size below the minimum. */
    char *p = malloc(hide_size(64));
    void *guard = malloc(hide_size(64));
    REQUIRE(p && guard);
    *size_field(hide_ptr(p)) = 0x10 | 1; /* 16 bytes, PREV_INUSE */
    free(p);
    NOT_REACHED();
  }

  if (strcmp(c, "invalid_size_huge") == 0) {
    /* A size so large that the chunk would wrap around the address space. */
    char *p = malloc(hide_size(64));
    void *guard = malloc(hide_size(64));
    REQUIRE(p && guard);
    *size_field(hide_ptr(p)) = (SIZE_MAX & ~(size_t)15) | 1;
    free(p);
    NOT_REACHED();
  }

  if (strcmp(c, "realloc_invalid_pointer") == 0) {
    char *p = malloc(hide_size(64));
    REQUIRE(p);
    void *q = realloc(hide_ptr(p + 8), hide_size(200));
    printf("realloc returned %p\n", q);
    NOT_REACHED();
  }

  fprintf(stderr, "unknown case %s\n", c);
  return 2;
}
