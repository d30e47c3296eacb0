/* Driver of the KAL model-based test (tests/kal_model.rs).
 *
 * Reads a command script on stdin, one command a line, and builds the object
 * graph it describes out of malloc'd nodes:
 *
 *   n I S        create node I (ids are 0, 1, 2, ... in order) of S bytes
 *   e I K J O    edge K of node I := node J plus O bytes (J = -1: null)
 *   r R I O      root R := node I plus O bytes (I = -1: null)
 *   s            scan: rmalloc_kal_scan_now(), then one result line
 *   q            quit
 *
 * Arguments: `fence` (see `use_fences` below), `nowait` (see
 * `wait_for_scanner`).
 *
 * A node is NEDGE pointer slots followed by PATTERN bytes.  O is an offset
 * into the target (0, an interior offset, or S: one past the end), all of
 * which keep the target alive under KAL's contract.  Roots live in .data,
 * .bss and an anonymous mmap (see `root_slot`).
 *
 * A node KAL has reclaimed is dead for the program: an edge or root command
 * that would write into it or link to it is skipped (a real program cannot
 * reach it; the driver can, through its hidden table).  The model in
 * kal_model.rs applies the same rule, and the result line carries the
 * number of skipped commands so the two can be compared.
 *
 * After every scan the driver prints
 *
 *   scan RET SKIPPED FLAGS
 *
 * RET is the scan's return value (1 completed, 0 discarded), FLAGS has one
 * character per created node: 'R' reclaimed (in probation), '.' not, and
 * '!' if the node's pattern bytes changed (it was really freed or reused).
 *
 * How the driver tells a reclaimed node without going through the
 * allocator: KAL holds a reclaimed heap chunk in probation with the
 * IS_MMAPPED bit (0x2) set in its size word, ((size_t *)p)[-1]; node sizes
 * stay below the mmap threshold and probation_ms is far longer than a run,
 * so nothing is freed and every node header stays readable.
 *
 * Pointer hygiene, so that the program itself holds no pointer the model
 * does not know about (a conservative scanner would keep such a node):
 * - the table of created nodes is XOR-encoded (never a valid address);
 * - node pointers are decoded only inside small noinline functions;
 * - before a scan, a noinline function zeroes 64 KiB of stack below the
 *   current frame (dead frames of earlier calls), and the scan is called
 *   right after an asm statement that zeroes the callee-saved general
 *   registers and the SSE registers (built with -fno-omit-frame-pointer, so
 *   rbp is only ever a frame pointer).
 * stdio's buffers only ever hold text. */
#define _GNU_SOURCE
#ifndef __x86_64__
#error "kal_graph.c clears x86-64 registers before each scan"
#endif
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAXN 4096
#define NEDGE 4
#define NROOT 16
#define PATTERN 0x11
#define KEY ((uintptr_t)0x5a5a5a5a5a5a5a5aull)
#define PROBATION_BIT ((size_t)2)

static uintptr_t node_enc[MAXN]; /* node pointer ^ KEY, 0 if not created */
static size_t node_size[MAXN];
static int nnodes;
static long skipped;
/* Roots 0..5 in .data (initialised, so in the file-backed page of the
 * executable's data), 6..10 in .bss (a zero-filled anonymous mapping past
 * the file's pages: node_enc and friends make .bss span several pages),
 * 11..15 in an anonymous mmap.  Slot 0 of droots is never a root slot's
 * initial value the model sees: it is cleared in main. */
#define NDATA 6
#define NBSS 5
static void *volatile droots[NDATA] = {(void *)1};
static void *volatile broots[NBSS];
static void *volatile *mroots;
static int (*scan_now)(void);
/* With the `fence` argument, a small chunk allocated right after each node
 * and kept reachable (a plain pointer in this global array), so that no
 * node is ever the chunk just below the arena's top chunk.  See
 * kal_model.rs: the engine scans the allocator's own main-arena state as a
 * root, and its `top` pointer lies inside that chunk's usable area. */
static int use_fences;
static void *volatile fences[MAXN];

static void *volatile *root_slot(int r) {
  return r < NDATA          ? &droots[r]
         : r < NDATA + NBSS ? &broots[r - NDATA]
                            : &mroots[r - NDATA - NBSS];
}

__attribute__((noinline)) static int is_reclaimed(int i) {
  size_t *p = (size_t *)(node_enc[i] ^ KEY);
  return (p[-1] & PROBATION_BIT) != 0;
}

__attribute__((noinline)) static int pattern_intact(int i) {
  unsigned char *p = (unsigned char *)(node_enc[i] ^ KEY);
  for (size_t b = NEDGE * sizeof(void *); b < node_size[i]; b++)
    if (p[b] != PATTERN)
      return 0;
  return 1;
}

__attribute__((noinline)) static void create(int i, size_t s) {
  unsigned char *p = malloc(s);
  if (!p) {
    fprintf(stderr, "kal_graph: malloc(%zu) failed\n", s);
    exit(2);
  }
  memset(p, 0, NEDGE * sizeof(void *));
  memset(p + NEDGE * sizeof(void *), PATTERN, s - NEDGE * sizeof(void *));
  node_enc[i] = (uintptr_t)p ^ KEY;
  node_size[i] = s;
  if (use_fences && !(fences[i] = malloc(16))) {
    fprintf(stderr, "kal_graph: malloc(16) failed\n");
    exit(2);
  }
}

/* The address a command names: node j plus off bytes, or null. */
__attribute__((noinline)) static void *target(int j, size_t off) {
  if (j < 0)
    return NULL;
  return (unsigned char *)(node_enc[j] ^ KEY) + off;
}

__attribute__((noinline)) static void set_edge(int i, int k, int j,
                                               size_t off) {
  void *volatile *slot = (void *volatile *)(node_enc[i] ^ KEY);
  slot[k] = target(j, off);
}

__attribute__((noinline)) static void set_root(int r, int j, size_t off) {
  *root_slot(r) = target(j, off);
}

/* Zero the stack below the caller's frame: what dead frames left there. */
__attribute__((noinline)) static void scrub_stack(void) {
  unsigned char buf[65536];
  memset(buf, 0, sizeof buf);
  __asm__ volatile("" : : "r"(buf) : "memory");
}

__attribute__((noinline)) static int do_scan(void) {
  scrub_stack();
  __asm__ volatile("xor %%ebx, %%ebx\n\t"
                   "xor %%r12d, %%r12d\n\t"
                   "xor %%r13d, %%r13d\n\t"
                   "xor %%r14d, %%r14d\n\t"
                   "xor %%r15d, %%r15d\n\t"
                   "pxor %%xmm0, %%xmm0\n\t"
                   "pxor %%xmm1, %%xmm1\n\t"
                   "pxor %%xmm2, %%xmm2\n\t"
                   "pxor %%xmm3, %%xmm3\n\t"
                   "pxor %%xmm4, %%xmm4\n\t"
                   "pxor %%xmm5, %%xmm5\n\t"
                   "pxor %%xmm6, %%xmm6\n\t"
                   "pxor %%xmm7, %%xmm7\n\t"
                   "pxor %%xmm8, %%xmm8\n\t"
                   "pxor %%xmm9, %%xmm9\n\t"
                   "pxor %%xmm10, %%xmm10\n\t"
                   "pxor %%xmm11, %%xmm11\n\t"
                   "pxor %%xmm12, %%xmm12\n\t"
                   "pxor %%xmm13, %%xmm13\n\t"
                   "pxor %%xmm14, %%xmm14\n\t"
                   "pxor %%xmm15, %%xmm15\n\t"
                   :
                   :
                   : "rbx", "r12", "r13", "r14", "r15", "xmm0", "xmm1",
                     "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                     "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
                     "xmm15", "memory");
  return scan_now();
}

static void report(int ret) {
  printf("scan %d %ld ", ret, skipped);
  for (int i = 0; i < nnodes; i++)
    putchar(!pattern_intact(i) ? '!' : is_reclaimed(i) ? 'R' : '.');
  putchar('\n');
  fflush(stdout);
}

/* Read a small /proc file into buf (no malloc).  Returns its length or -1. */
static int read_small(const char *path, char *buf, int cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  int n = (int)read(fd, buf, cap - 1);
  close(fd);
  if (n >= 0)
    buf[n] = 0;
  return n;
}

/* Work around a lost-wakeup race in the engine (reported with this test):
 * the scanner thread reads the request counter only once it runs, so a
 * rmalloc_kal_scan_now() issued before the new thread first ran is taken
 * for already handled, and the call waits for the next periodic scan
 * (interval_ms, here an hour) until its 120 s timeout, then returns -1.
 * Wait until the thread named kal-scanner sleeps (state S: its futex wait,
 * which comes after that read).  Raw system calls only: nothing here may
 * allocate.  Without the `nowait` argument only. */
static int wait_for_scanner(void) {
  static char dents[8192];
  char path[96], buf[512];
  for (int tries = 0; tries < 5000; tries++) {
    int dfd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
      return 0;
    long n = syscall(SYS_getdents64, dfd, dents, sizeof dents);
    close(dfd);
    for (long off = 0; off < n;) {
      unsigned short reclen = *(unsigned short *)(dents + off + 16);
      const char *name = dents + off + 19;
      off += reclen;
      if (name[0] < '0' || name[0] > '9')
        continue;
      snprintf(path, sizeof path, "/proc/self/task/%s/comm", name);
      if (read_small(path, buf, sizeof buf) <= 0 ||
          strcmp(buf, "kal-scanner\n") != 0)
        continue;
      snprintf(path, sizeof path, "/proc/self/task/%s/stat", name);
      char *paren = read_small(path, buf, sizeof buf) > 0 ? strrchr(buf, ')')
                                                          : NULL;
      if (paren && paren[1] == ' ' && paren[2] == 'S')
        return 1;
    }
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  return 0;
}

static int bad(const char *line) {
  fprintf(stderr, "kal_graph: bad command: %s", line);
  return 2;
}

int main(int argc, char **argv) {
  int wait = 1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "fence") == 0)
      use_fences = 1;
    else if (strcmp(argv[i], "nowait") == 0)
      wait = 0;
  }
  const char *(*mode)(void) =
      (const char *(*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_mode");
  scan_now = (int (*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_scan_now");
  if (!mode || !scan_now) {
    printf("nokal\n");
    return 0;
  }
  if (wait && !wait_for_scanner()) {
    printf("no kal-scanner thread\n");
    return 2;
  }
  printf("mode %s\n", mode());
  fflush(stdout);
  void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    perror("mmap");
    return 2;
  }
  mroots = m;
  droots[0] = NULL;

  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    int a, b, c;
    long s;
    switch (line[0]) {
    case 'n':
      if (sscanf(line + 1, "%d %ld", &a, &s) != 2 || a != nnodes ||
          a >= MAXN || s < (long)(NEDGE * sizeof(void *)) || s > 65536)
        return bad(line);
      create(a, (size_t)s);
      nnodes++;
      break;
    case 'e':
      if (sscanf(line + 1, "%d %d %d %ld", &a, &b, &c, &s) != 4 || a < 0 ||
          a >= nnodes || b < 0 || b >= NEDGE || c < -1 || c >= nnodes ||
          s < 0 || (c >= 0 && (size_t)s > node_size[c]))
        return bad(line);
      if (is_reclaimed(a) || (c >= 0 && is_reclaimed(c)))
        skipped++;
      else
        set_edge(a, b, c, (size_t)s);
      break;
    case 'r':
      if (sscanf(line + 1, "%d %d %ld", &a, &c, &s) != 3 || a < 0 ||
          a >= NROOT || c < -1 || c >= nnodes || s < 0 ||
          (c >= 0 && (size_t)s > node_size[c]))
        return bad(line);
      if (c >= 0 && is_reclaimed(c))
        skipped++;
      else
        set_root(a, c, (size_t)s);
      break;
    case 's':
      report(do_scan());
      break;
    case 'q':
      return 0;
    default:
      return bad(line);
    }
  }
  return 0;
}
