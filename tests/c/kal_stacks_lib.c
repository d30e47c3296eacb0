/* The shared-library half of kal_stacks.c: leaks from inside a DSO built
 * with -g -O1 -fomit-frame-pointer. */
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) void *lib_leak_inner(size_t n) {
  void *p = malloc(n); /* KAL_STACKS_LIB_LINE */
  memset(p, 7, n);
  return p;
}

__attribute__((noinline)) void *lib_leak(size_t n) {
  void *p = lib_leak_inner(n);
  __asm__ volatile("" ::: "memory"); /* no tail call */
  return p;
}
