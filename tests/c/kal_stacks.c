/* Allocation stacks (tests/kal_stacks.rs): leaks from the executable and
 * from a shared library, built with -g -O1 -fomit-frame-pointer (no frame
 * pointers, as Debian builds), so only DWARF unwinding finds the callers.
 *   Direct 2040 byte(s) in 1 object(s): exe_leak_a <- main  (KAL_STACKS_EXE_A)
 *   Direct  984 byte(s) in 3 object(s): exe_leak_b <- main  (three 328-byte blocks)
 *   Direct  504 byte(s) in 1 object(s): lib_leak_inner <- lib_leak <- main
 * and a live 1000-byte block that must not be reported.
 * Usage: kal_stacks [scan|reuse]
 *   scan:  rmalloc_kal_scan_now three times after dropping;
 *   reuse: first of all, allocate 88 bytes, free them and allocate 88
 *          bytes again (the same address, from the thread cache), and leak
 *          that: under sites=sample:2^40 only the thread's first allocation
 *          is recorded, so that leak must show no stack (scanned as in
 *          scan mode).
 *   reclaim_reuse: first of all, leak 88 bytes (recorded: the thread's first
 *          allocation under sites=sample:2^40), let KAL reclaim them, allocate
 *          88-byte blocks until one lands at the same address, and leak that
 *          one too: it must show no stack (the reclaim forgot the first's).
 *   sample: leak 16000 blocks of 64 bytes from one site, among 16000 that
 *          are freed, then scan as in scan mode: under sites=sample:N about
 *          one per N bytes allocated is recorded (tests/kal_stacks.rs).
 *   sample_tail: free 64 dirty 1 KiB blocks, then allocate and free 100000
 *          blocks of 64 bytes; those served from a larger chunk (sampled)
 *          must have the part beyond the 72 usable bytes cleared; prints
 *          "sample_tail: sampled=N dirty=M".
 *   signal: for a second, allocate and free while a 100 us interval timer's
 *          handler does too (not async-signal-safe, but programs do it):
 *          with every stack recorded, a handler that interrupts the
 *          recording must not wait for the lock its own thread holds;
 *          prints "signal: N handler allocations".
 *   quarantine: a live 200-byte block whose only pointer is XOR-hidden (site
 *          A) is reclaimed by KAL, then freed by the program (a false
 *          reclaim); then a 200-byte block from site B is leaked: with the
 *          stack known, only site A is quarantined, so B's block is
 *          reclaimed too.
 * With -DKAL_STACKS_SUPPRESS (and -rdynamic) the program suppresses its
 * library's leak through __lsan_default_suppressions. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/time.h>
#include <stdlib.h>
#include <malloc.h>
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

#ifdef KAL_STACKS_SUPPRESS
const char *__lsan_default_suppressions(void) { return "leak:libkalstk\n"; }
#endif

__attribute__((noinline)) static void reuse(void) {
  keep[6] = malloc(88); /* through a volatile: the compiler keeps the pair */
  memset(keep[6], 3, 88);
  free(keep[6]);
  keep[6] = NULL;
  keep[5] = malloc(88);
  memset(keep[5], 4, 88);
}

#define HIDE_KEY ((uintptr_t)0x5DEECE66DA5A5A5Aull)
static volatile uintptr_t hidden;

__attribute__((noinline)) static void site_a(void) {
  char *p = malloc(200);
  memset(p, 5, 200);
  hidden = (uintptr_t)p ^ HIDE_KEY;
}

__attribute__((noinline)) static void site_b(void) {
  keep[7] = malloc(200);
  memset(keep[7], 6, 200);
  keep[7] = NULL;
}

static void quarantine(void);
static void reclaim_reuse(void);

static volatile sig_atomic_t in_handler_allocs;

static void allocating_handler(int sig) {
  (void)sig;
  void *volatile p = malloc(40);
  free(p);
  in_handler_allocs++;
}

__attribute__((noinline)) static void signal_allocs(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = allocating_handler;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = {{0, 100}, {0, 100}};
  setitimer(ITIMER_REAL, &it, NULL);
  struct timeval t0, t;
  gettimeofday(&t0, NULL);
  do {
    for (int i = 0; i < 1000; i++) {
      void *volatile p = malloc(24 + i % 200);
      free(p);
    }
    gettimeofday(&t, NULL);
  } while ((t.tv_sec - t0.tv_sec) * 1000000 + (t.tv_usec - t0.tv_usec) < 1000000);
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  printf("signal: %d handler allocations\n", (int)in_handler_allocs);
}

__attribute__((noinline)) static void sample_tail(void) {
  void *dirty[64];
  for (int i = 0; i < 64; i++) {
    dirty[i] = malloc(1048);
    memset(dirty[i], 0xAA, 1048);
  }
  for (int i = 0; i < 64; i++)
    free(dirty[i]);
  int sampled = 0, bad = 0;
  for (int i = 0; i < 100000; i++) {
    unsigned char *p = malloc(64);
    size_t n = malloc_usable_size(p);
    if (n > 1000) {
      sampled++;
      for (size_t j = 72; j < n; j++)
        if (p[j]) {
          bad++;
          break;
        }
    }
    free(p);
  }
  printf("sample_tail: sampled=%d dirty=%d\n", sampled, bad);
}

/* The leaked blocks link to each other only through their first word,
 * XOR-hidden, so each is a direct leak of its own. */
__attribute__((noinline)) static void sample_leaks(void) {
  for (int i = 0; i < 16000; i++) {
    char *p = malloc(64);
    memset(p, 8, 64);
    free(malloc(64));
    keep[0] = p;
  }
  keep[0] = NULL;
}

__attribute__((noinline)) static void scrub(void) {
  volatile char buf[16384];
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc > 1 && !strcmp(argv[1], "reuse"))
    reuse();
  if (argc > 1 && !strcmp(argv[1], "reclaim_reuse") && rmalloc_kal_scan_now)
    reclaim_reuse();
  if (argc > 1 && !strcmp(argv[1], "sample"))
    sample_leaks();
  if (argc > 1 && !strcmp(argv[1], "sample_tail"))
    sample_tail();
  if (argc > 1 && !strcmp(argv[1], "signal"))
    signal_allocs();
  exe_leak_a();
  for (int i = 0; i < three; i++) /* one call site: one stack */
    exe_leak_b(i);
  keep[4] = lib_leak(504);
  live = malloc(1000);

  for (int i = 0; i < 8; i++)
    keep[i] = NULL;
  scrub();
  /* reuse: scan before exit, not only at it: the exit path's frames may
   * hold a stale copy of the reused block's address (a conservative root,
   * as for LeakSanitizer), which would hide its leak from the exit check. */
  if (argc > 1 &&
      (!strcmp(argv[1], "scan") || !strcmp(argv[1], "reuse") || !strcmp(argv[1], "sample")) &&
      rmalloc_kal_scan_now) {
    for (int i = 0; i < 3; i++)
      rmalloc_kal_scan_now();
    malloc_stats(); /* KAL's block: what was reclaimed */
  }
  if (argc > 1 && !strcmp(argv[1], "quarantine") && rmalloc_kal_scan_now)
    quarantine();
  printf("stacks: done\n");
  return 0;
}

__attribute__((noinline)) static void quarantine(void) {
  site_a();
  scrub();
  for (int i = 0; i < 4; i++)
    rmalloc_kal_scan_now();
  free((void *)(hidden ^ HIDE_KEY)); /* the false reclaim */
  site_b();
  scrub();
  for (int i = 0; i < 4; i++)
    rmalloc_kal_scan_now();
}

__attribute__((noinline)) static void leak_first(void) {
  keep[6] = malloc(88);
  memset(keep[6], 7, 88);
  hidden = (uintptr_t)keep[6] ^ HIDE_KEY;
  keep[6] = NULL;
}

/* Allocate 88-byte blocks until one lands where the reclaimed one was, and
 * leak it (in a function of its own, so that no register of the caller
 * keeps it during the scans that follow). */
__attribute__((noinline)) static void leak_at_reclaimed_address(void) {
  static void *tries[64];
  void *again = NULL;
  for (int i = 0; i < 64 && !again; i++) {
    tries[i] = malloc(88);
    if ((uintptr_t)tries[i] == (hidden ^ HIDE_KEY)) {
      again = tries[i];
      tries[i] = NULL;
    }
  }
  for (int i = 0; i < 64; i++) {
    free(tries[i]);
    tries[i] = NULL;
  }
  printf("reclaim_reuse: address %s\n", again ? "reused" : "not reused");
  if (again)
    memset(again, 8, 88);
}

__attribute__((noinline)) static void reclaim_reuse(void) {
  leak_first();
  scrub();
  for (int i = 0; i < 4; i++)
    rmalloc_kal_scan_now();
  /* The reclaim frees at arena boundaries: the allocations in here drain it. */
  leak_at_reclaimed_address();
  scrub();
  for (int i = 0; i < 4; i++)
    rmalloc_kal_scan_now();
}
