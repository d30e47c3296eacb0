/* API edge cases of the malloc family, glibc 2.36 semantics.
 * Usage: api CASE   (or: api all)  -- see the table at the end. */
#include "common.h"

#include <dirent.h>
#include <pthread.h>
#include <sys/mman.h>

#define PAGE ((size_t)sysconf(_SC_PAGESIZE))

/* glibc's usable size of a heap (not mmapped) chunk for a request of n:
 * request2size(n) = max(32, (n + 8 + 15) & ~15), usable = that - 8. */
static size_t glibc_usable(size_t n) {
  size_t c = (n + 8 + 15) & ~(size_t)15;
  if (c < 32)
    c = 32;
  return c - 8;
}

static void case_malloc_zero(void) {
  FROM_RMALLOC("malloc", "free", "malloc_usable_size");
  void *p = malloc(hide_size(0));
  void *q = malloc(hide_size(0));
  REQUIRE(p != NULL);
  REQUIRE(q != NULL);
  CHECK(p != q);
  CHECK(is_aligned(p, 16) && is_aligned(q, 16));
  CHECKF(malloc_usable_size(p) == 24, "usable %zu", malloc_usable_size(p));
  memset(p, 0x5a, malloc_usable_size(p));
  free(p);
  free(q);
  /* Many malloc(0) blocks are all distinct. */
  void *v[256];
  for (int i = 0; i < 256; i++) {
    v[i] = malloc(hide_size(0));
    REQUIRE(v[i] != NULL);
    for (int j = 0; j < i; j++)
      CHECK(v[i] != v[j]);
  }
  for (int i = 0; i < 256; i++)
    free(v[i]);
}

static void case_malloc_huge(void) {
  FROM_RMALLOC("malloc");
  static const size_t sizes[] = {SIZE_MAX,      SIZE_MAX - 1,     SIZE_MAX - 15,
                                 SIZE_MAX - 32, SIZE_MAX - 4096,  SIZE_MAX / 2 + 1,
                                 PTRDIFF_MAX,   (size_t)1 << 62, (size_t)1 << 50};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    errno = 0;
    void *p = malloc(hide_size(sizes[i]));
    CHECKF(p == NULL, "malloc(%#zx) = %p", sizes[i], p);
    CHECKF(errno == ENOMEM, "malloc(%#zx): errno %d", sizes[i], errno);
    free(p);
  }
  /* Still usable afterwards. */
  void *p = malloc(hide_size(100));
  REQUIRE(p != NULL);
  free(p);
}

static void case_calloc_overflow(void) {
  FROM_RMALLOC("calloc");
  static const size_t pairs[][2] = {{SIZE_MAX / 2 + 1, 2},
                                    {2, SIZE_MAX / 2 + 1},
                                    {(size_t)1 << 32, (size_t)1 << 32},
                                    {SIZE_MAX, SIZE_MAX},
                                    {SIZE_MAX / 16 + 1, 16},
                                    {SIZE_MAX, 1},
                                    {(size_t)1 << 31, (size_t)1 << 31}};
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    errno = 0;
    void *p = calloc(hide_size(pairs[i][0]), hide_size(pairs[i][1]));
    CHECKF(p == NULL, "calloc(%#zx, %#zx) = %p", pairs[i][0], pairs[i][1], p);
    CHECKF(errno == ENOMEM, "calloc(%#zx, %#zx): errno %d", pairs[i][0], pairs[i][1],
           errno);
    free(p);
  }
  /* calloc(0, n) and calloc(n, 0) give unique freeable blocks, like malloc(0). */
  void *a = calloc(hide_size(0), hide_size(0));
  void *b = calloc(hide_size(0), hide_size(8));
  void *c = calloc(hide_size(8), hide_size(0));
  REQUIRE(a && b && c);
  CHECK(a != b && b != c && a != c);
  free(a);
  free(b);
  free(c);
}

static void case_calloc_zeroed(void) {
  FROM_RMALLOC("calloc");
  static const size_t sizes[] = {1,     8,      24,     25,      100,     500,
                                 1000,  1032,   1040,   4000,    20000,   100000,
                                 200000, 1 << 20, 5 << 20, 12 << 20};
  enum { N = sizeof sizes / sizeof sizes[0] };
  void *v[N];
  for (int round = 0; round < 4; round++) {
    /* Dirty memory of every size class, free it, then calloc the same sizes:
     * the reused chunks must come back zeroed. */
    for (int i = 0; i < N; i++) {
      v[i] = malloc(hide_size(sizes[i]));
      REQUIRE(v[i] != NULL);
      memset(v[i], 0xA5, malloc_usable_size(v[i]));
    }
    for (int i = 0; i < N; i++)
      free(v[(i * 7 + round) % N]);
    for (int k = 0; k < N; k++) {
      int i = round % 2 ? N - 1 - k : k;
      size_t n = sizes[i];
      unsigned char *p = calloc(hide_size(1), hide_size(n));
      REQUIRE(p != NULL);
      size_t bad = 0;
      for (size_t j = 0; j < n; j++)
        bad += p[j] != 0;
      CHECKF(bad == 0, "round %d calloc(1, %zu): %zu non-zero bytes", round, n, bad);
      memset(p, 0xA5, n);
      v[i] = p;
    }
    for (int i = 0; i < N; i++)
      free(v[i]);
  }
  /* With M_PERTURB set, fresh memory is filled, yet calloc still zeroes. */
  CHECK(mallopt(M_PERTURB, 0x5a) == 1);
  for (int i = 0; i < N; i++) {
    unsigned char *p = calloc(hide_size(1), hide_size(sizes[i]));
    REQUIRE(p);
    size_t bad = 0;
    for (size_t j = 0; j < sizes[i]; j++)
      bad += p[j] != 0;
    CHECKF(bad == 0, "perturb: calloc(1, %zu): %zu non-zero bytes", sizes[i], bad);
    v[i] = p;
  }
  for (int i = 0; i < N; i++)
    free(v[i]);
  CHECK(mallopt(M_PERTURB, 0) == 1);
  /* Element-count form, and many small ones reusing per-thread-cached chunks. */
  for (int i = 0; i < 2000; i++) {
    size_t n = 1 + (size_t)(i % 97) * 3;
    unsigned char *p = malloc(hide_size(n * 4));
    REQUIRE(p);
    memset(p, 0xff, n * 4);
    free(p);
    unsigned *q = calloc(hide_size(n), sizeof(unsigned));
    REQUIRE(q);
    for (size_t j = 0; j < n; j++)
      CHECKF(q[j] == 0, "calloc(%zu, 4)[%zu] = %#x", n, j, q[j]);
    free(q);
  }
}

static void case_realloc_null(void) {
  FROM_RMALLOC("realloc");
  char *p = realloc(NULL, hide_size(100));
  REQUIRE(p != NULL);
  CHECK(malloc_usable_size(p) >= 100);
  memset(p, 1, 100);
  free(p);
  /* realloc(NULL, 0) is malloc(0): a unique pointer. */
  void *z = realloc(NULL, hide_size(0));
  CHECK(z != NULL);
  free(z);
  void *big = realloc(NULL, hide_size(4 << 20));
  REQUIRE(big != NULL);
  memset(big, 2, 4 << 20);
  free(big);
}

static void case_realloc_zero(void) {
  FROM_RMALLOC("realloc", "mallinfo2");
  /* glibc 2.36: realloc(p, 0) frees p and returns NULL. */
  void *p = malloc(hide_size(100));
  REQUIRE(p);
  void *r = realloc(p, hide_size(0));
  CHECKF(r == NULL, "realloc(p, 0) = %p", r);
  free(r);
  /* If it did not free, this loop would leak about 200 MB. */
  struct mallinfo2 before = mallinfo2();
  for (int i = 0; i < 100000; i++) {
    void *q = malloc(hide_size(i % 2 ? 1000 : 2000));
    REQUIRE(q);
    void *z = realloc(q, hide_size(0));
    if (z != NULL) {
      CHECK(z == NULL);
      free(z);
      break;
    }
  }
  void *m = malloc(hide_size(1 << 20));
  REQUIRE(m);
  r = realloc(m, hide_size(0));
  CHECK(r == NULL);
  struct mallinfo2 after = mallinfo2();
  size_t grown = (after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd);
  CHECKF((long)grown < 16 << 20, "in-use memory grew by %zu bytes", grown);
}

static void case_realloc_contents(void) {
  FROM_RMALLOC("realloc");
  /* Grow one block step by step across every size class and into mmap. */
  size_t n = 1;
  unsigned char *p = malloc(hide_size(n));
  REQUIRE(p);
  fill(p, n, 7);
  while (n < (8u << 20)) {
    size_t m = n + n / 3 + 1 + (n % 13);
    unsigned char *q = realloc(p, hide_size(m));
    REQUIRE(q);
    CHECK(is_aligned(q, 16));
    CHECKF(check_fill(q, n, 7), "contents lost growing %zu -> %zu", n, m);
    CHECK(malloc_usable_size(q) >= m);
    fill(q, m, 7);
    p = q;
    n = m;
  }
  /* And shrink it back down. */
  while (n > 1) {
    size_t m = n / 2 - (n % 5);
    if ((long)m < 1)
      m = 1;
    unsigned char *q = realloc(p, hide_size(m));
    REQUIRE(q);
    CHECKF(check_fill(q, m, 7), "contents lost shrinking %zu -> %zu", n, m);
    CHECK(malloc_usable_size(q) >= m);
    p = q;
    n = m;
  }
  free(p);
  /* Grow in place with neighbours around, and many interleaved blocks. */
  enum { K = 64 };
  unsigned char *v[K];
  size_t sz[K];
  for (int i = 0; i < K; i++) {
    sz[i] = 16 + (size_t)i * 40;
    v[i] = malloc(hide_size(sz[i]));
    REQUIRE(v[i]);
    fill(v[i], sz[i], (unsigned)i);
  }
  for (int step = 0; step < 20; step++) {
    for (int i = step % 2; i < K; i += 2) {
      size_t m = (step % 3 == 2) ? sz[i] / 2 + 1 : sz[i] * 2 + 24;
      if (m > (1u << 22))
        m = 100;
      unsigned char *q = realloc(v[i], hide_size(m));
      REQUIRE(q);
      size_t keep = m < sz[i] ? m : sz[i];
      CHECKF(check_fill(q, keep, (unsigned)i), "block %d step %d", i, step);
      fill(q, m, (unsigned)i);
      v[i] = q;
      sz[i] = m;
    }
  }
  for (int i = 0; i < K; i++) {
    CHECK(check_fill(v[i], sz[i], (unsigned)i));
    free(v[i]);
  }
  /* An mmapped block shrunk to a tiny one keeps its prefix. */
  unsigned char *big = malloc(hide_size(3 << 20));
  REQUIRE(big);
  fill(big, 3 << 20, 99);
  unsigned char *small = realloc(big, hide_size(40));
  REQUIRE(small);
  CHECK(check_fill(small, 40, 99));
  free(small);
}

static void case_reallocarray(void) {
  FROM_RMALLOC("reallocarray");
  errno = 0;
  void *p = reallocarray(NULL, hide_size(SIZE_MAX / 2 + 1), hide_size(2));
  CHECK(p == NULL);
  CHECK(errno == ENOMEM);
  char *q = reallocarray(NULL, hide_size(10), hide_size(10));
  REQUIRE(q);
  CHECK(malloc_usable_size(q) >= 100);
  fill(q, 100, 3);
  errno = 0;
  void *r = reallocarray(q, hide_size((size_t)1 << 33), hide_size((size_t)1 << 33));
  CHECK(r == NULL);
  CHECK(errno == ENOMEM);
  CHECK(check_fill(q, 100, 3)); /* the old block is untouched */
  char *s = reallocarray(q, hide_size(300), hide_size(4));
  REQUIRE(s);
  CHECK(check_fill(s, 100, 3));
  free(s);
}

static void case_posix_memalign(void) {
  FROM_RMALLOC("posix_memalign");
  for (size_t a = sizeof(void *); a <= ((size_t)1 << 22); a <<= 1) {
    size_t sizes[] = {0, 1, a - 1, a, a + 1, 3 * a + 5, 100000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      void *p = (void *)1;
      errno = 4321;
      int r = posix_memalign(&p, hide_size(a), hide_size(sizes[k]));
      CHECKF(r == 0, "posix_memalign(%zu, %zu) = %d", a, sizes[k], r);
      CHECK(errno == 4321);
      if (r)
        continue;
      CHECKF(p != NULL && is_aligned(p, a), "align %zu: %p", a, p);
      CHECK(malloc_usable_size(p) >= sizes[k]);
      memset(p, 0x11, sizes[k]);
      free(p);
    }
  }
  /* Invalid alignments: EINVAL returned, errno left alone, *memptr untouched. */
  static const size_t bad[] = {0, 1, 2, 4, 3, 12, 24, 48, 100, 4095, SIZE_MAX,
                               SIZE_MAX / 2 + 3};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    void *p = (void *)0x1234;
    errno = 4321;
    int r = posix_memalign(&p, hide_size(bad[k]), hide_size(64));
    CHECKF(r == EINVAL, "posix_memalign(align %zu) = %d", bad[k], r);
    CHECKF(errno == 4321, "posix_memalign(align %zu) set errno %d", bad[k], errno);
    CHECK(p == (void *)0x1234);
  }
  /* Impossible size: ENOMEM returned, *memptr untouched. */
  void *p = (void *)0x1234;
  int r = posix_memalign(&p, hide_size(64), hide_size(SIZE_MAX - 100));
  CHECKF(r == ENOMEM, "posix_memalign(64, SIZE_MAX-100) = %d", r);
  CHECK(p == (void *)0x1234);
}

static void case_memalign(void) {
  FROM_RMALLOC("memalign");
  for (size_t a = 1; a <= ((size_t)1 << 22); a <<= 1) {
    void *p = memalign(hide_size(a), hide_size(a * 3 + 7));
    REQUIRE(p);
    CHECKF(is_aligned(p, a < 16 ? 16 : a), "memalign(%zu): %p", a, p);
    CHECK(malloc_usable_size(p) >= a * 3 + 7);
    memset(p, 0x22, a * 3 + 7);
    free(p);
  }
  /* Non-power-of-two alignments are rounded up to the next power of two. */
  static const size_t odd[][2] = {{24, 32}, {48, 64}, {100, 128}, {1000, 1024},
                                  {3000, 4096}, {4097, 8192}, {65537, 131072}};
  for (size_t k = 0; k < sizeof odd / sizeof odd[0]; k++) {
    for (int rep = 0; rep < 8; rep++) {
      void *p = memalign(hide_size(odd[k][0]), hide_size(50 + rep * 16));
      REQUIRE(p);
      CHECKF(is_aligned(p, odd[k][1]), "memalign(%zu) = %p, want %zu-aligned", odd[k][0],
             p, odd[k][1]);
      free(p);
    }
  }
  void *z = memalign(hide_size(0), hide_size(10));
  CHECK(z != NULL && is_aligned(z, 16));
  free(z);
  errno = 0;
  void *p = memalign(hide_size(SIZE_MAX / 2 + 2), hide_size(10));
  CHECK(p == NULL);
  CHECK(errno == EINVAL);
  errno = 0;
  p = memalign(hide_size(64), hide_size(SIZE_MAX - 100));
  CHECK(p == NULL);
  CHECK(errno == ENOMEM);
}

static void case_aligned_alloc(void) {
  FROM_RMALLOC("aligned_alloc");
  /* In glibc 2.36 aligned_alloc is memalign: no size-multiple requirement,
   * non-power-of-two alignments rounded up. */
  for (size_t a = 1; a <= ((size_t)1 << 20); a <<= 1) {
    void *p = aligned_alloc(hide_size(a), hide_size(a * 4));
    REQUIRE(p);
    CHECK(is_aligned(p, a < 16 ? 16 : a));
    free(p);
    p = aligned_alloc(hide_size(a), hide_size(a + 3));
    REQUIRE(p);
    CHECK(is_aligned(p, a < 16 ? 16 : a));
    CHECK(malloc_usable_size(p) >= a + 3);
    free(p);
  }
  void *p = aligned_alloc(hide_size(24), hide_size(100));
  CHECK(p != NULL && is_aligned(p, 32));
  free(p);
  p = aligned_alloc(hide_size(4096), hide_size(1));
  CHECK(p != NULL && is_aligned(p, 4096));
  free(p);
  errno = 0;
  p = aligned_alloc(hide_size(SIZE_MAX / 2 + 2), hide_size(10));
  CHECK(p == NULL && errno == EINVAL);
  errno = 0;
  p = aligned_alloc(hide_size(16), hide_size(SIZE_MAX - 100));
  CHECK(p == NULL && errno == ENOMEM);
}

static void case_valloc(void) {
  FROM_RMALLOC("valloc");
  size_t sizes[] = {0, 1, 100, PAGE - 1, PAGE, PAGE + 1, 10 * PAGE, 1 << 20};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    void *p = valloc(hide_size(sizes[k]));
    REQUIRE(p);
    CHECKF(is_aligned(p, PAGE), "valloc(%zu) = %p", sizes[k], p);
    CHECK(malloc_usable_size(p) >= sizes[k]);
    memset(p, 0x33, sizes[k]);
    free(p);
  }
  errno = 0;
  void *p = valloc(hide_size(SIZE_MAX - 100));
  CHECK(p == NULL && errno == ENOMEM);
}

static void case_pvalloc(void) {
  FROM_RMALLOC("pvalloc");
  size_t pg = PAGE;
  size_t sizes[] = {0, 1, 100, pg - 1, pg, pg + 1, 10 * pg + 3, 1 << 20};
  /* Note: glibc 2.36 rounds with the mask -(pagesize - 1), so pvalloc(0)
   * yields a page-aligned block with only the minimum usable size (24), not
   * a whole page; a whole page is accepted too.  From 1 byte up the block
   * covers the size rounded up to whole pages. */
  void *z = pvalloc(hide_size(0));
  REQUIRE(z);
  CHECK(is_aligned(z, pg));
  CHECK(malloc_usable_size(z) >= 24);
  free(z);
  for (size_t k = 1; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t want = (sizes[k] + pg - 1) / pg * pg;
    unsigned char *p = pvalloc(hide_size(sizes[k]));
    REQUIRE(p);
    CHECKF(is_aligned(p, pg), "pvalloc(%zu) = %p", sizes[k], (void *)p);
    CHECKF(malloc_usable_size(p) >= want, "pvalloc(%zu): usable %zu < %zu", sizes[k],
           malloc_usable_size(p), want);
    memset(p, 0x44, want); /* the whole rounded-up size is ours */
    free(p);
  }
  errno = 0;
  void *p = pvalloc(hide_size(SIZE_MAX - 100));
  CHECK(p == NULL && errno == ENOMEM);
}

static void case_usable_size(void) {
  FROM_RMALLOC("malloc_usable_size");
  CHECK(malloc_usable_size(NULL) == 0);
  for (size_t n = 0; n < 70000; n += (n < 2100 ? 1 : 997)) {
    void *p = malloc(hide_size(n));
    REQUIRE(p);
    size_t u = malloc_usable_size(p);
    CHECKF(u >= n, "malloc(%zu): usable %zu", n, u);
    CHECKF(u == glibc_usable(n), "malloc(%zu): usable %zu, glibc gives %zu", n, u,
           glibc_usable(n));
    memset(p, 0x55, u); /* all of the usable size is writable */
    free(p);
  }
  /* mmapped blocks: usable is at least the request and the block is page-based. */
  size_t big[] = {1 << 20, (1 << 20) + 1, 5000000};
  for (size_t k = 0; k < 3; k++) {
    void *p = malloc(hide_size(big[k]));
    REQUIRE(p);
    size_t u = malloc_usable_size(p);
    CHECK(u >= big[k] && u < big[k] + PAGE + 32);
    memset(p, 0x55, u);
    free(p);
  }
}

static void case_free_null_errno(void) {
  FROM_RMALLOC("free");
  free(NULL);
  errno = EBADF;
  free(NULL);
  CHECK(errno == EBADF);
  size_t sizes[] = {1, 100, 1000, 5000, 100000, 1 << 20, 16 << 20};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    void *p = malloc(hide_size(sizes[k]));
    REQUIRE(p);
    errno = EBADF;
    free(p);
    CHECKF(errno == EBADF, "free of a %zu-byte block changed errno to %d", sizes[k], errno);
  }
  /* Freeing enough to trigger a trim of the top chunk keeps errno too. */
  void *v[64];
  for (int i = 0; i < 64; i++)
    REQUIRE((v[i] = malloc(hide_size(60000))) != NULL);
  for (int i = 63; i >= 0; i--) {
    errno = ENOENT;
    free(v[i]);
    CHECK(errno == ENOENT);
  }
}

static void case_cfree(void) {
  void (*f)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
  if (!f) /* glibc keeps cfree only as a compat symbol */
    f = (void (*)(void *))dlvsym(RTLD_DEFAULT, "cfree", "GLIBC_2.2.5");
  REQUIRE(f != NULL);
  if (t_require_rmalloc)
    CHECKF(t_is_rmalloc((void *)f), "cfree comes from %s", t_owner((void *)f));
  for (int i = 0; i < 1000; i++) {
    void *p = malloc(hide_size((size_t)i * 7));
    REQUIRE(p);
    f(p);
  }
  f(NULL);
}

static void case_mallopt(void) {
  FROM_RMALLOC("mallopt");
  CHECK(mallopt(M_MXFAST, 64) == 1);
  CHECK(mallopt(M_MXFAST, 0) == 1);
  CHECK(mallopt(M_MXFAST, 160) == 1);
  CHECK(mallopt(M_MXFAST, 161) == 0);
  CHECK(mallopt(M_MXFAST, 100000) == 0);
  CHECK(mallopt(M_MXFAST, -1) == 0);
  CHECK(mallopt(M_MXFAST, 128) == 1);
  CHECK(mallopt(M_TRIM_THRESHOLD, 256 * 1024) == 1);
  CHECK(mallopt(M_TOP_PAD, 64 * 1024) == 1);
  CHECK(mallopt(M_MMAP_THRESHOLD, 256 * 1024) == 1);
  CHECK(mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1);
  /* glibc 2.36 no longer refuses large thresholds through mallopt. */
  CHECK(mallopt(M_MMAP_THRESHOLD, 64 * 1024 * 1024) == 1);
  CHECK(mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1);
  /* Only M_MXFAST validates its value; other parameters, even unknown
   * ones and negative values, answer 1. */
  CHECK(mallopt(12345, 1) == 1);
  CHECK(mallopt(M_ARENA_MAX, 0) == 1);
  CHECK(mallopt(M_TOP_PAD, -1) == 1);
  CHECK(mallopt(M_TOP_PAD, 0) == 1);
  CHECK(mallopt(M_MMAP_MAX, 1000) == 1);
  CHECK(mallopt(M_ARENA_TEST, 4) == 1);
  CHECK(mallopt(M_ARENA_MAX, 4) == 1);
  CHECK(mallopt(M_PERTURB, 0) == 1);
  CHECK(mallopt(M_CHECK_ACTION, 3) == 1);
  /* Everything still works after retuning (and with mmap disabled). */
  CHECK(mallopt(M_MMAP_MAX, 0) == 1);
  void *p = malloc(hide_size(4 << 20));
  REQUIRE(p);
  memset(p, 1, 4 << 20);
  free(p);
  CHECK(mallopt(M_MMAP_MAX, 65536) == 1);
  /* M_PERTURB fills freshly allocated memory with the complement. */
  CHECK(mallopt(M_PERTURB, 0x5a) == 1);
  unsigned char *q = malloc(hide_size(200));
  REQUIRE(q);
  CHECKF(q[0] == (0x5a ^ 0xff) && q[199] == (0x5a ^ 0xff), "perturb: %#x %#x", q[0],
         q[199]);
  free(q);
  CHECK(mallopt(M_PERTURB, 0) == 1);
  void *v[100];
  for (int i = 0; i < 100; i++)
    REQUIRE((v[i] = malloc(hide_size((size_t)i * 50))) != NULL);
  for (int i = 0; i < 100; i++)
    free(v[i]);
}

static void case_mallinfo(void) {
  FROM_RMALLOC("mallinfo", "mallinfo2");
  struct mallinfo2 a = mallinfo2();
  CHECK(a.arena == a.uordblks + a.fordblks);
  CHECK(a.keepcost <= a.fordblks);
  enum { N = 100 };
  void *v[N];
  for (int i = 0; i < N; i++)
    REQUIRE((v[i] = malloc(hide_size(1000))) != NULL);
  struct mallinfo2 b = mallinfo2();
  CHECKF(b.uordblks >= a.uordblks + N * 1000, "uordblks %zu -> %zu", a.uordblks,
         b.uordblks);
  CHECK(b.arena >= b.uordblks);
  CHECK(b.arena == b.uordblks + b.fordblks);
  CHECK(b.keepcost <= b.fordblks);
  /* An mmapped block shows in hblks/hblkhd, not in arena. */
  void *big = malloc(hide_size(8 << 20));
  REQUIRE(big);
  struct mallinfo2 c = mallinfo2();
  CHECKF(c.hblks == b.hblks + 1, "hblks %zu -> %zu", b.hblks, c.hblks);
  CHECKF(c.hblkhd >= b.hblkhd + (8 << 20), "hblkhd %zu -> %zu", b.hblkhd, c.hblkhd);
  CHECK(c.arena == b.arena);
  free(big);
  struct mallinfo2 d = mallinfo2();
  CHECK(d.hblks == b.hblks && d.hblkhd == b.hblkhd);
  for (int i = 0; i < N; i++)
    free(v[i]);
  struct mallinfo2 e = mallinfo2();
  CHECKF(e.uordblks < b.uordblks, "uordblks %zu after free (was %zu)", e.uordblks,
         b.uordblks);
  CHECK(e.arena == e.uordblks + e.fordblks);
  /* The int version reports the same kind of numbers. */
  void *w = malloc(hide_size(50000));
  REQUIRE(w);
  struct mallinfo m = mallinfo();
  CHECK(m.arena > 0 && m.uordblks >= 50000);
  CHECK(m.arena == m.uordblks + m.fordblks);
  free(w);
  struct mallinfo m2 = mallinfo();
  CHECK(m2.uordblks < m.uordblks);
}

static void case_malloc_trim(void) {
  FROM_RMALLOC("malloc_trim", "mallinfo2");
  enum { N = 1000 };
  static void *v[N];
  struct mallinfo2 a = mallinfo2();
  for (int i = 0; i < N; i++)
    REQUIRE((v[i] = malloc(hide_size(10000))) != NULL);
  struct mallinfo2 peak = mallinfo2();
  CHECKF(peak.arena >= N * 10000, "arena %zu -> %zu", a.arena, peak.arena);
  for (int i = N - 1; i >= 0; i--)
    free(v[i]);
  int r = malloc_trim(0);
  CHECKF(r == 0 || r == 1, "malloc_trim(0) = %d", r);
  r = malloc_trim(1 << 20);
  CHECKF(r == 0 || r == 1, "malloc_trim(1M) = %d", r);
  /* The freed memory went back to the system: the top chunk was trimmed. */
  struct mallinfo2 b = mallinfo2();
  CHECKF(b.arena < peak.arena / 2, "arena %zu after freeing everything (peak %zu)",
         b.arena, peak.arena);
  /* Memory in the middle of the heap, held by a live block above it. */
  for (int i = 0; i < N; i++)
    REQUIRE((v[i] = malloc(hide_size(10000))) != NULL);
  for (int i = 0; i < N - 1; i++)
    free(v[i]);
  r = malloc_trim(0);
  CHECKF(r == 1, "malloc_trim(0) with 10 MB free inside the heap = %d", r);
  free(v[N - 1]);
  void *p = malloc(hide_size(1000));
  REQUIRE(p);
  free(p);
}

static void case_malloc_stats(void) {
  FROM_RMALLOC("malloc_stats");
  void *p = malloc(hide_size(12345));
  REQUIRE(p);
  malloc_stats(); /* the harness checks stderr */
  free(p);
}

static void case_malloc_info(void) {
  FROM_RMALLOC("malloc_info");
  void *v[50];
  for (int i = 0; i < 50; i++)
    REQUIRE((v[i] = malloc(hide_size((size_t)i * 100 + 1))) != NULL);
  for (int i = 0; i < 50; i += 2)
    free(v[i]);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  REQUIRE(f);
  errno = 0;
  CHECK(malloc_info(0, f) == 0);
  fclose(f);
  REQUIRE(buf);
  CHECKF(strncmp(buf, "<malloc version=", 16) == 0, "malloc_info starts: %.40s", buf);
  CHECK(strstr(buf, "</malloc>") != NULL);
  CHECK(strstr(buf, "<heap nr=\"0\">") != NULL);
  CHECK(strstr(buf, "<system type=\"current\" size=\"") != NULL);
  CHECK(strstr(buf, "<total type=\"mmap\" count=\"") != NULL);
  CHECK(strstr(buf, "<aspace type=\"total\" size=\"") != NULL);
  /* glibc lists the free chunks it counts: with 25 blocks freed in the
   * middle of the heap, the main heap's <sizes> is not empty. */
  char *sizes = strstr(buf, "<sizes>");
  char *end = sizes ? strstr(sizes, "</sizes>") : NULL;
  CHECK(sizes && end);
  if (sizes && end) {
    char *entry = strstr(sizes, "<size ");
    char *unsorted = strstr(sizes, "<unsorted ");
    CHECKF((entry && entry < end) || (unsorted && unsorted < end),
           "heap 0 has free chunks but <sizes> lists none");
  }
  fputs(buf, stdout);
  free(buf);
  FILE *g = tmpfile();
  REQUIRE(g);
  /* Unknown options: glibc returns EINVAL (not -1) and leaves errno alone. */
  errno = 0;
  int r = malloc_info(1, g);
  CHECKF(r == EINVAL, "malloc_info(1, fp) = %d", r);
  CHECK(errno == 0);
  CHECK(ftell(g) == 0);
  fclose(g);
  for (int i = 1; i < 50; i += 2)
    free(v[i]);
}

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);

static void *sym(const char *name, int required_in_glibc) {
  void *f = dlsym(RTLD_DEFAULT, name);
  if (t_require_rmalloc) {
    CHECKF(f != NULL, "%s missing", name);
    if (f)
      CHECKF(t_is_rmalloc(f), "%s comes from %s", name, t_owner(f));
  } else if (required_in_glibc) {
    CHECKF(f != NULL, "%s missing", name);
  }
  return f;
}

static void case_aliases(void) {
  malloc_fn m = (malloc_fn)sym("__libc_malloc", 1);
  free_fn fr = (free_fn)sym("__libc_free", 1);
  void *(*c)(size_t, size_t) = (void *(*)(size_t, size_t))sym("__libc_calloc", 1);
  void *(*r)(void *, size_t) = (void *(*)(void *, size_t))sym("__libc_realloc", 1);
  void *(*ma)(size_t, size_t) = (void *(*)(size_t, size_t))sym("__libc_memalign", 1);
  malloc_fn va = (malloc_fn)sym("__libc_valloc", 1);
  malloc_fn pv = (malloc_fn)sym("__libc_pvalloc", 1);
  struct mallinfo (*mi)(void) = (struct mallinfo(*)(void))sym("__libc_mallinfo", 1);
  int (*mo)(int, int) = (int (*)(int, int))sym("__libc_mallopt", 1);
  /* glibc itself does not export __posix_memalign; rmalloc must. */
  int (*pm)(void **, size_t, size_t) =
      (int (*)(void **, size_t, size_t))sym("__posix_memalign", 0);
  if (!(m && fr && c && r && ma && va && pv && mi && mo))
    return;
  /* Mix the aliases with the plain names: they share one heap. */
  char *p = m(100);
  REQUIRE(p);
  fill(p, 100, 1);
  p = r(p, 5000);
  REQUIRE(p);
  CHECK(check_fill(p, 100, 1));
  free(p);
  unsigned char *z = c(10, 10);
  REQUIRE(z);
  for (int i = 0; i < 100; i++)
    CHECK(z[i] == 0);
  fr(z);
  void *a = ma(256, 10);
  CHECK(a && is_aligned(a, 256));
  fr(a);
  a = va(10);
  CHECK(a && is_aligned(a, PAGE));
  free(a);
  a = pv(10);
  CHECK(a && is_aligned(a, PAGE) && malloc_usable_size(a) >= PAGE);
  fr(a);
  CHECK(mo(M_MXFAST, 64) == 1);
  CHECK(mo(M_MXFAST, 100000) == 0);
  void *hold = malloc(30000);
  REQUIRE(hold);
  struct mallinfo info = mi();
  CHECK(info.uordblks >= 30000);
  free(hold);
  p = malloc(10);
  REQUIRE(p);
  fr(p);
  if (pm) {
    void *q = NULL;
    CHECK(pm(&q, 64, 100) == 0 && is_aligned(q, 64));
    free(q);
    CHECK(pm(&q, 3, 100) == EINVAL);
  }
}

static void *tls_thread(void *arg) {
  static __thread char tls_buf[64];
  snprintf(tls_buf, sizeof tls_buf, "thread %ld", (long)(uintptr_t)arg);
  char *s = strdup(tls_buf);
  return s;
}

static void case_dynamic_mmap_threshold(void) {
  /* glibc starts with a 128 KiB mmap threshold and raises it to the size of
   * an mmapped chunk when that chunk is freed (up to 32 MiB). */
  FROM_RMALLOC("malloc", "free", "mallinfo2");
  struct mallinfo2 a = mallinfo2();
  void *p = malloc(hide_size(300000));
  REQUIRE(p);
  struct mallinfo2 b = mallinfo2();
  CHECKF(b.hblks == a.hblks + 1, "300000 bytes not mmapped at first (hblks %zu -> %zu)",
         a.hblks, b.hblks);
  free(p);
  /* The threshold is now above 300000: the same request comes from the heap. */
  void *q = malloc(hide_size(300000));
  void *q2 = malloc(hide_size(300000));
  REQUIRE(q && q2);
  struct mallinfo2 c = mallinfo2();
  CHECKF(c.hblks == a.hblks, "300000 bytes still mmapped after the threshold rose (hblks %zu)",
         c.hblks);
  free(q);
  free(q2);
  /* Bigger requests are still mmapped. */
  void *r = malloc(hide_size(4 << 20));
  REQUIRE(r);
  struct mallinfo2 d = mallinfo2();
  CHECK(d.hblks == a.hblks + 1);
  free(r);
  /* Chunks above the 32 MiB maximum do not move the threshold further:
   * 40 MiB, freed, leaves 33 MiB requests mmapped. */
  void *h = malloc(hide_size(40 << 20));
  REQUIRE(h);
  free(h);
  void *h2 = malloc(hide_size(33 << 20));
  REQUIRE(h2);
  struct mallinfo2 e = mallinfo2();
  CHECKF(e.hblks == a.hblks + 1, "33 MiB not mmapped after freeing 40 MiB (hblks %zu)",
         e.hblks);
  free(h2);
  /* Setting M_MMAP_THRESHOLD turns the dynamic adjustment off. */
  CHECK(mallopt(M_MMAP_THRESHOLD, 256 * 1024) == 1);
  void *m = malloc(hide_size(1 << 20));
  REQUIRE(m);
  free(m);
  void *m1 = malloc(hide_size(600000));
  void *m2 = malloc(hide_size(600000));
  REQUIRE(m1 && m2);
  struct mallinfo2 f = mallinfo2();
  CHECKF(f.hblks == a.hblks + 2, "600000 bytes not mmapped with a fixed threshold (hblks %zu)",
         f.hblks);
  free(m1);
  free(m2);
}

/* glibc's chunk header, just before the user pointer. */
static size_t chunk_size_field(const void *mem) { return ((const size_t *)mem)[-1]; }
static size_t chunk_prev_size(const void *mem) { return ((const size_t *)mem)[-2]; }
#define PREV_INUSE 1
#define IS_MMAPPED 2
#define NON_MAIN_ARENA 4
#define CHUNK_SIZE(mem) (chunk_size_field(mem) & ~(size_t)7)

static void *thread_chunk_flags(void *arg) {
  (void)arg;
  void *p = malloc(hide_size(100));
  if (!p)
    return NULL;
  size_t f = chunk_size_field(p);
  free(p);
  return (void *)(uintptr_t)(f | 0x100000); /* non-zero marker */
}

static void case_chunk_layout(void) {
  /* Boundary tags as glibc lays them out (heap tools rely on this). */
  FROM_RMALLOC("malloc", "free");
  void *p = malloc(hide_size(100));
  REQUIRE(p);
  CHECKF(CHUNK_SIZE(p) == 112, "malloc(100): chunk size %zu", CHUNK_SIZE(p));
  CHECKF((chunk_size_field(p) & (IS_MMAPPED | NON_MAIN_ARENA)) == 0,
         "malloc(100) in the main thread: size field %#zx", chunk_size_field(p));
  CHECK(malloc_usable_size(p) == CHUNK_SIZE(p) - 8);
  /* Two blocks carved from the top one after the other are adjacent, and
   * the second one's PREV_INUSE tells that the first is in use. */
  char *a = malloc(hide_size(5000));
  char *b = malloc(hide_size(6000));
  char *guard = malloc(hide_size(7000));
  REQUIRE(a && b && guard);
  CHECKF(b == a + CHUNK_SIZE(a), "a=%p (chunk %zu), b=%p", (void *)a, CHUNK_SIZE(a),
         (void *)b);
  CHECK(CHUNK_SIZE(a) == 5008 && CHUNK_SIZE(b) == 6016);
  CHECK(chunk_size_field(b) & PREV_INUSE);
  /* Freeing a (too big for the cache and fastbins) clears b's PREV_INUSE
   * and stores a's size in b's prev_size. */
  size_t asz = CHUNK_SIZE(a);
  free(a);
  CHECKF((chunk_size_field(b) & PREV_INUSE) == 0, "b's size field %#zx after free(a)",
         chunk_size_field(b));
  CHECKF(chunk_prev_size(b) == asz, "b's prev_size %zu, want %zu", chunk_prev_size(b), asz);
  free(b);
  free(guard);
  free(p);
  /* An mmapped chunk: IS_MMAPPED, page-sized, prev_size 0. */
  char *m = malloc(hide_size(8 << 20));
  REQUIRE(m);
  CHECKF(chunk_size_field(m) & IS_MMAPPED, "8 MiB block size field %#zx", chunk_size_field(m));
  CHECK(CHUNK_SIZE(m) >= (8 << 20) + 16 && CHUNK_SIZE(m) % PAGE == 0);
  CHECK(chunk_prev_size(m) == 0);
  CHECK(malloc_usable_size(m) == CHUNK_SIZE(m) - 16);
  free(m);
  /* A second thread allocates from its own arena: NON_MAIN_ARENA. */
  pthread_t t;
  void *ret = NULL;
  REQUIRE(pthread_create(&t, NULL, thread_chunk_flags, NULL) == 0);
  REQUIRE(pthread_join(t, &ret) == 0);
  size_t f = (size_t)(uintptr_t)ret & 0xfffff;
  CHECK(ret != NULL);
  CHECKF(f & NON_MAIN_ARENA, "a thread's chunk size field %#zx", f);
  CHECK((f & ~(size_t)7) == 112);
}

static pthread_key_t dtor_key_early, dtor_key_late;
static int dtor_calls[2];
static pthread_mutex_t dtor_lock = PTHREAD_MUTEX_INITIALIZER;

/* Runs at thread exit, possibly after the allocator's own per-thread
 * cleanup: free the value, allocate again and re-arm once more. */
static void tls_dtor(void *v) {
  size_t *blk = v;
  int which = (int)blk[0];
  int round = (int)blk[1];
  free(blk);
  void *tmp = malloc(hide_size(64 + (size_t)round * 100));
  if (tmp) {
    memset(tmp, 1, 64);
    free(tmp);
  }
  pthread_mutex_lock(&dtor_lock);
  dtor_calls[which]++;
  pthread_mutex_unlock(&dtor_lock);
  if (round < 2) {
    size_t *again = malloc(hide_size(48));
    if (again) {
      again[0] = (size_t)which;
      again[1] = (size_t)round + 1;
      pthread_setspecific(which ? dtor_key_late : dtor_key_early, again);
    }
  }
}

static void *tls_dtor_thread(void *arg) {
  int both = arg != NULL;
  /* Use the allocator first so that its per-thread state exists. */
  void *v[20];
  for (int i = 0; i < 20; i++)
    v[i] = malloc(hide_size((size_t)i * 30));
  for (int i = 0; i < 20; i++)
    free(v[i]);
  size_t *a = malloc(hide_size(48));
  if (!a)
    return NULL;
  a[0] = 0, a[1] = 0;
  pthread_setspecific(dtor_key_early, a);
  if (both) {
    size_t *b = malloc(hide_size(48));
    if (!b)
      return NULL;
    b[0] = 1, b[1] = 0;
    pthread_setspecific(dtor_key_late, b);
  }
  return (void *)1;
}

static void case_thread_exit_destructors(void) {
  /* malloc and free from TLS destructors that run during thread exit. */
  FROM_RMALLOC("malloc", "free");
  REQUIRE(pthread_key_create(&dtor_key_early, tls_dtor) == 0);
  /* A thread makes the allocator set up its own per-thread state... */
  pthread_t t;
  REQUIRE(pthread_create(&t, NULL, tls_dtor_thread, NULL) == 0);
  REQUIRE(pthread_join(t, NULL) == 0);
  /* ...so a key created now may run its destructor after the allocator's. */
  REQUIRE(pthread_key_create(&dtor_key_late, tls_dtor) == 0);
  for (int i = 0; i < 200; i++) {
    void *ret = NULL;
    REQUIRE(pthread_create(&t, NULL, tls_dtor_thread, (void *)1) == 0);
    REQUIRE(pthread_join(t, &ret) == 0);
    CHECK(ret == (void *)1);
  }
  pthread_mutex_lock(&dtor_lock);
  CHECKF(dtor_calls[0] == 201 * 3, "early key destructor ran %d times", dtor_calls[0]);
  CHECKF(dtor_calls[1] == 200 * 3, "late key destructor ran %d times", dtor_calls[1]);
  pthread_mutex_unlock(&dtor_lock);
}

static void case_safe_linking(void) {
  /* Free-list links stored in freed chunks are not plain addresses
   * (glibc's safe-linking, or something stronger): neither the cache's nor
   * a fastbin's link in a freed block equals the neighbour's address. */
  FROM_RMALLOC("malloc", "free");
  char *a = malloc(hide_size(40));
  char *b = malloc(hide_size(40));
  REQUIRE(a && b);
  free(a);
  free(b); /* cache bin: b -> a */
  size_t link = *(volatile size_t *)hide_ptr(b);
  CHECKF(link != (size_t)a && link != (size_t)(a - 16), "cache link in a freed block is %#zx, a=%p",
         link, (void *)a);
  /* Fill the cache bin of another size, then two chunks go to a fastbin. */
  void *fill[7];
  for (int i = 0; i < 7; i++)
    REQUIRE((fill[i] = malloc(hide_size(56))) != NULL);
  char *c = malloc(hide_size(56));
  char *d = malloc(hide_size(56));
  void *guard = malloc(hide_size(56));
  REQUIRE(c && d && guard);
  for (int i = 0; i < 7; i++)
    free(fill[i]);
  free(c);
  free(d); /* fastbin: d -> c */
  link = *(volatile size_t *)hide_ptr(d);
  CHECKF(link != (size_t)c && link != (size_t)(c - 16), "fastbin link is %#zx, c=%p", link,
         (void *)c);
  free(guard);
}

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

static void case_libc_interop(void) {
  /* Memory that glibc allocates internally is freed by the program with
   * free(), and glibc frees memory the program allocated: one heap. */
  FROM_RMALLOC("malloc", "free");
  char *s = strdup("hello, allocator");
  REQUIRE(s);
  CHECK(strcmp(s, "hello, allocator") == 0);
  free(s);
  char *a = NULL;
  CHECK(asprintf(&a, "%s-%d-%0500d", "x", 42, 7) > 500);
  REQUIRE(a);
  CHECK(strncmp(a, "x-42-", 5) == 0);
  free(a);
  /* getline grows a buffer we allocated ourselves with realloc. */
  char *line = malloc(2);
  size_t cap = 2;
  REQUIRE(line);
  FILE *f = tmpfile();
  REQUIRE(f);
  for (int i = 0; i < 100; i++)
    fprintf(f, "line %d %0*d\n", i, i * 37, 0);
  rewind(f);
  int lines = 0;
  while (getline(&line, &cap, f) > 0)
    lines++;
  CHECK(lines == 100);
  free(line);
  fclose(f);
  char *rp = realpath("/proc/self/exe", NULL);
  CHECK(rp != NULL);
  free(rp);
  struct dirent **names = NULL;
  int n = scandir("/proc/self/fd", &names, NULL, alphasort);
  CHECK(n > 0);
  for (int i = 0; i < n; i++)
    free(names[i]);
  free(names);
  /* Threads get their TLS blocks from the allocator (via the dynamic
   * loader) and free them on exit; strings cross threads. */
  for (long i = 0; i < 50; i++) {
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, tls_thread, (void *)(uintptr_t)i) == 0);
    void *ret = NULL;
    REQUIRE(pthread_join(t, &ret) == 0);
    char want[64];
    snprintf(want, sizeof want, "thread %ld", i);
    CHECK(ret && strcmp(ret, want) == 0);
    free(ret);
  }
  /* dlopen/dlerror allocate inside the loader and libc. */
  void *h = dlopen("libm.so.6", RTLD_NOW);
  CHECK(h != NULL);
  if (h) {
    CHECK(dlsym(h, "cos") != NULL);
    dlclose(h);
  }
  CHECK(dlopen("/nonexistent/libnothing.so", RTLD_NOW) == NULL);
  const char *err = dlerror();
  CHECK(err != NULL && strstr(err, "libnothing") != NULL);
  /* qsort of a large array allocates a temporary buffer. */
  enum { Q = 100000 };
  int *arr = malloc(Q * sizeof(int));
  REQUIRE(arr);
  for (int i = 0; i < Q; i++)
    arr[i] = (i * 7919) % Q;
  qsort(arr, Q, sizeof(int), cmp_int);
  for (int i = 0; i < Q; i++)
    CHECK(arr[i] == i);
  free(arr);
  /* open_memstream buffers belong to the caller. */
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  REQUIRE(m);
  for (int i = 0; i < 10000; i++)
    fprintf(m, "%d,", i);
  fclose(m);
  CHECK(len > 40000 && buf && strncmp(buf, "0,1,2,", 6) == 0);
  free(buf);
}

struct api_case {
  const char *name;
  void (*fn)(void);
};
static const struct api_case cases[] = {
    {"malloc_zero", case_malloc_zero},
    {"malloc_huge", case_malloc_huge},
    {"calloc_overflow", case_calloc_overflow},
    {"calloc_zeroed", case_calloc_zeroed},
    {"realloc_null", case_realloc_null},
    {"realloc_zero", case_realloc_zero},
    {"realloc_contents", case_realloc_contents},
    {"reallocarray", case_reallocarray},
    {"posix_memalign", case_posix_memalign},
    {"memalign", case_memalign},
    {"aligned_alloc", case_aligned_alloc},
    {"valloc", case_valloc},
    {"pvalloc", case_pvalloc},
    {"usable_size", case_usable_size},
    {"free_null_errno", case_free_null_errno},
    {"cfree", case_cfree},
    {"mallopt", case_mallopt},
    {"mallinfo", case_mallinfo},
    {"malloc_trim", case_malloc_trim},
    {"malloc_stats", case_malloc_stats},
    {"malloc_info", case_malloc_info},
    {"aliases", case_aliases},
    {"libc_interop", case_libc_interop},
    {"dynamic_mmap_threshold", case_dynamic_mmap_threshold},
    {"chunk_layout", case_chunk_layout},
    {"thread_exit_destructors", case_thread_exit_destructors},
    {"safe_linking", case_safe_linking},
};

int main(int argc, char **argv) {
  t_start();
  if (argc != 2) {
    fprintf(stderr, "usage: %s CASE|all\n", argv[0]);
    return 2;
  }
  int ran = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (strcmp(argv[1], "all") == 0 || strcmp(argv[1], cases[i].name) == 0) {
      int before = t_failures;
      cases[i].fn();
      printf("case %s: %s\n", cases[i].name, t_failures == before ? "ok" : "FAILED");
      ran++;
    }
  }
  if (!ran) {
    fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
  }
  return t_finish();
}
