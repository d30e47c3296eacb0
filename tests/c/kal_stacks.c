/* Allocation stacks (tests/kal_stacks.rs): leaks from the executable and
 * from a shared library, built with -g -O1 -fomit-frame-pointer (no frame
 * pointers, as Debian builds), so only DWARF unwinding finds the callers.
 *   Direct 2040 byte(s) in 1 object(s): exe_leak_a <- main  (KAL_STACKS_EXE_A)
 *   Direct  984 byte(s) in 3 object(s): exe_leak_b <- main  (three 328-byte blocks)
 *   Direct  504 byte(s) in 1 object(s): lib_leak_inner <- lib_leak <- main
 * and a live 1000-byte block that must not be reported.
 * Usage: kal_stacks [scan]  (scan: rmalloc_kal_scan_now after dropping) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *lib_leak(size_t n);
int rmalloc_kal_scan_now(void) __attribute__((weak));

static void *volatile keep[8];
static void *volatile live;
static volatile int three = 3;

__attribute__((noinline)) static void exe_leak_a(void) {
  keep[0] = malloc(2040); /* KAL_STACKS_EXE_A */
  memset(keep[0], 1, 2040);
}

__attribute__((noinline)) static void exe_leak_b(int i) {
  keep[1 + i] = malloc(328); /* KAL_STACKS_EXE_B */
  memset(keep[1 + i], 2, 328);
}

__attribute__((noinline)) static void scrub(void) {
  volatile char buf[16384];
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  exe_leak_a();
  for (int i = 0; i < three; i++) /* one call site: one stack */
    exe_leak_b(i);
  keep[4] = lib_leak(504);
  live = malloc(1000);
  for (int i = 0; i < 8; i++)
    keep[i] = NULL;
  scrub();
  if (argc > 1 && !strcmp(argv[1], "scan") && rmalloc_kal_scan_now)
    for (int i = 0; i < 3; i++)
      rmalloc_kal_scan_now();
  printf("stacks: done\n");
  return 0;
}
