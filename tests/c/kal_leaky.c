/* A program that leaks a known set of objects, for KAL's report format
 * (tests/kal.rs).  The same source is built with clang -fsanitize=leak when
 * clang is installed, so the two reports can be compared line by line.
 *
 * Leaks, all with sizes whose usable size equals the requested size on
 * glibc's chunk layout (n + 8 a multiple of 16), so LeakSanitizer's
 * requested sizes and KAL's usable sizes agree:
 *   Direct   4088 byte(s) in 1 object(s)    (one block)
 *   Direct     72 byte(s) in 3 object(s)    (three 24-byte blocks)
 *   Direct     56 byte(s) in 1 object(s)    (the head of a small tree)
 *   Indirect   80 byte(s) in 2 object(s)    (its two 40-byte children)
 *   SUMMARY: 4296 byte(s) leaked in 7 allocation(s)
 * Usage: kal_leaky [scan]   (scan: also call rmalloc_kal_scan_now 3 times) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile keep[8];

__attribute__((noinline)) static void leak_big(void) {
  keep[0] = malloc(4088);
  memset(keep[0], 1, 4088);
}

__attribute__((noinline)) static void leak_small(void) {
  for (int i = 0; i < 3; i++) {
    keep[1 + i] = malloc(24);
    memset(keep[1 + i], 2, 24);
  }
}

__attribute__((noinline)) static void leak_tree(void) {
  void **head = malloc(56);
  memset(head, 0, 56);
  for (int i = 0; i < 2; i++) {
    head[i] = malloc(40); /* one call site: one LeakSanitizer group */
    memset(head[i], 3 + i, 40);
  }
  keep[4] = head;
}

__attribute__((noinline)) static void drop_all(void) {
  for (int i = 0; i < 8; i++)
    keep[i] = NULL;
}

__attribute__((noinline)) static void scrub(void) {
  volatile char buf[16384];
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  leak_big();
  leak_small();
  leak_tree();
  /* a live object that must not be reported */
  static void *volatile live;
  live = malloc(1000);
  memset(live, 5, 1000);
  drop_all();
  scrub();
  if (argc > 1 && strcmp(argv[1], "scan") == 0) {
    int (*scan)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_scan_now");
    for (int i = 0; i < 3 && scan; i++)
      printf("scan %d: %d\n", i, scan());
  }
  printf("leaky: done\n");
  return 0;
}
