/* Shared helpers of the C test programs run by tests/c_api.rs.
 *
 * Every program calls t_start() first and returns t_finish() from main.
 * With RMALLOC_TEST_REQUIRE_RMALLOC=1 (set by the harness unless it runs
 * against glibc) t_start() insists that malloc resolves into librmalloc and
 * t_finish() runs rmalloc_check_heap(); both are found with dlsym so the same
 * binary also runs on plain glibc. */
#ifndef RMALLOC_TEST_COMMON_H
#define RMALLOC_TEST_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int t_failures;
static int t_require_rmalloc;

/* CHECK records a failure and goes on; REQUIRE stops the program. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "CHECK FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      t_failures++;                                                            \
    }                                                                          \
  } while (0)
#define CHECKF(cond, ...)                                                      \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "CHECK FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
      t_failures++;                                                            \
    }                                                                          \
  } while (0)
#define REQUIRE(cond)                                                          \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "REQUIRE FAILED %s:%d: %s (errno %d: %s)\n", __FILE__,   \
              __LINE__, #cond, errno, strerror(errno));                        \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

/* Hide values from the optimizer so that it cannot fold malloc calls. */
static inline size_t hide_size(size_t n) {
  __asm__ volatile("" : "+r"(n));
  return n;
}
static inline void *hide_ptr(void *p) {
  __asm__ volatile("" : "+r"(p));
  return p;
}

static inline int is_aligned(const void *p, size_t a) {
  return ((uintptr_t)p & (a - 1)) == 0;
}

static inline void fill(void *p, size_t n, unsigned seed) {
  unsigned char *c = p;
  for (size_t i = 0; i < n; i++)
    c[i] = (unsigned char)(seed + i * 131u + (i >> 8));
}
static inline int check_fill(const void *p, size_t n, unsigned seed) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++)
    if (c[i] != (unsigned char)(seed + i * 131u + (i >> 8)))
      return 0;
  return 1;
}

/* Name of the object that defines the function at address f ("?" if none). */
static inline const char *t_owner(void *f) {
  Dl_info info;
  if (f && dladdr(f, &info) && info.dli_fname)
    return info.dli_fname;
  return "?";
}

static inline int t_is_rmalloc(void *f) { return strstr(t_owner(f), "rmalloc") != NULL; }

/* In rmalloc mode, check that each named function resolves into rmalloc. */
#define FROM_RMALLOC(...) t_check_owned((const char *[]){__VA_ARGS__, NULL})
__attribute__((unused)) static void t_check_owned(const char **names) {
  if (!t_require_rmalloc)
    return;
  for (; *names; names++) {
    void *f = dlsym(RTLD_DEFAULT, *names);
    CHECKF(f && t_is_rmalloc(f), "%s is served by %s, not rmalloc", *names,
           f ? t_owner(f) : "nobody");
  }
}

static void t_start(void) {
  setvbuf(stdout, NULL, _IONBF, 0); /* survive abort() and ENOMEM */
  const char *req = getenv("RMALLOC_TEST_REQUIRE_RMALLOC");
  t_require_rmalloc = req && strcmp(req, "1") == 0;
  void *m = dlsym(RTLD_DEFAULT, "malloc");
  const char *(*version)(void) =
      (const char *(*)(void))dlsym(RTLD_DEFAULT, "rmalloc_version");
  printf("allocator: %s (malloc from %s)\n", version ? version() : "glibc",
         t_owner(m));
  if (t_require_rmalloc) {
    REQUIRE(version != NULL);
    REQUIRE(t_is_rmalloc(m));
    REQUIRE(t_is_rmalloc(dlsym(RTLD_DEFAULT, "free")));
    REQUIRE(t_is_rmalloc(dlsym(RTLD_DEFAULT, "calloc")));
    REQUIRE(t_is_rmalloc(dlsym(RTLD_DEFAULT, "realloc")));
  }
}

__attribute__((unused)) static int t_finish(void) {
  if (t_require_rmalloc) {
    int (*check_heap)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rmalloc_check_heap");
    CHECK(check_heap != NULL);
    if (check_heap) {
      int r = check_heap();
      CHECKF(r == 0, "rmalloc_check_heap() returned %d", r);
    }
  }
  if (t_failures) {
    printf("FAIL: %d check(s) failed\n", t_failures);
    return 1;
  }
  printf("PASS\n");
  return 0;
}

#endif
