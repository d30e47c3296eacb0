/* Heap misuse that glibc detects and answers with a message and abort().
 * Usage: misuse CASE.  Reaching the end of main is a failure (exit 3). */
#include "common.h"

#define NOT_REACHED()                                                          \
  do {                                                                         \
    printf("misuse went undetected\n");                                        \
    return 3;                                                                  \
  } while (0)

/* The chunk header word before a user pointer.  Volatile: the corrupting
 * stores must not be optimised away or moved past the allocator call. */
static volatile size_t *size_field(void *p) { return (volatile size_t *)p - 1; }

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

  if (strcmp(c, "invalid_next_size_fast") == 0) {
    /* Cache bin full, so the chunk goes to a fastbin; the next chunk's size
     * field has been overwritten (a heap overflow). */
    void *fillers[7];
    for (int i = 0; i < 7; i++)
      REQUIRE((fillers[i] = malloc(hide_size(40))) != NULL);
    char *p = malloc(hide_size(40));
    char *next = malloc(hide_size(40));
    void *guard = malloc(hide_size(40));
    REQUIRE(p && next && guard);
    for (int i = 0; i < 7; i++)
      free(fillers[i]);
    *size_field(hide_ptr(next)) = 0x8 | 1; /* below the minimum chunk size */
    free(p);
    NOT_REACHED();
  }

  if (strcmp(c, "invalid_next_size_normal") == 0) {
    /* A chunk too big for the cache, followed by one whose size is garbage. */
    char *p = malloc(hide_size(2000));
    char *next = malloc(hide_size(2000));
    void *guard = malloc(hide_size(2000));
    REQUIRE(p && next && guard);
    *size_field(hide_ptr(next)) = ((size_t)1 << 40) | 1; /* larger than the arena */
    free(p);
    NOT_REACHED();
  }

  if (strcmp(c, "munmap_invalid_pointer") == 0) {
    /* An mmapped chunk whose header was overwritten so that it no longer
     * describes a page-aligned mapping. */
    char *p = malloc(hide_size(4 << 20));
    REQUIRE(p);
    volatile size_t *hdr = size_field(hide_ptr(p));
    hdr[-1] = 8;                 /* prev_size: offset into the mapping */
    hdr[0] = (hdr[0] & ~(size_t)7) | 2; /* keep IS_MMAPPED */
    free(p);
    NOT_REACHED();
  }

  if (strcmp(c, "corrupted_top_size") == 0) {
    /* The top chunk's size is overwritten with a huge value (the "house of
     * force"); the next allocation that splits top must notice. */
    char *p = malloc(hide_size(50000)); /* no free chunk is that big: from top */
    REQUIRE(p);
    volatile size_t *top = (volatile size_t *)(p + (*size_field(p) & ~(size_t)7) - 8);
    *top = ((size_t)-1 & ~(size_t)15) | 1;
    void *q = malloc(hide_size(60000));
    printf("malloc returned %p\n", q);
    NOT_REACHED();
  }

  fprintf(stderr, "unknown case %s\n", c);
  return 2;
}
