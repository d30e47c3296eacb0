/* KAL root tests: live objects reachable ONLY from one kind of root, under
 * repeated scans, while threads mutate what they hold.  Driven by
 * tests/kal.rs; one case per process:  kal_roots CASE
 *
 * Every object is filled with a pattern (common.h fill/check_fill, its own
 * seed) and checked at the end through the root that held it.  Between scans
 * the main thread churns allocations of every size used here, so an object
 * KAL wrongly freed is quickly reused and its pattern overwritten, and the
 * final free() of such an object is a double free or a `KAL: FALSE RECLAIM`.
 *
 * The KAL interface is looked up with dlsym, so the program also runs on
 * plain glibc (it then only loops).  With KAL_TEST_REQUIRE_KAL=1 (set by the
 * driver under rmalloc) a missing interface is an immediate failure.
 *
 * Environment:
 *   KAL_TEST_ROUNDS=N       rmalloc_kal_scan_now() calls in the scan phase (30)
 *   KAL_TEST_MUTATE=0       no mutation (the driver's negative controls)
 *   KAL_TEST_DSO=PATH       kal_dso.so, for the dlopen cases
 *   KAL_TEST_SABOTAGE=1     (global cases) free a live object behind the
 *                           program's back, as a wrong reclaim would: the
 *                           harness's self-test that the checks can fail
 *   KAL_TEST_DENY_PTRACE=1  a seccomp filter makes ptrace() fail with EPERM
 *                           in every thread (and in helpers they start)
 *
 * Output (stdout): `obj GROUP I ADDR SIZE` for each object held by the root
 * under test (the driver's negative controls look for ADDR in KAL's leak
 * report), `kal-stats phase=live|end key=value...` (after the scan phase,
 * objects still held; at the end, all freed), `intact GROUP N/M`, and PASS.
 */
#include "common.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

#include "rmalloc.h" /* only for struct rmalloc_kal_stats; calls go through dlsym */

/* ------------------------------------------------------------ KAL access */

static int (*k_scan)(void);
static int (*k_stats)(struct rmalloc_kal_stats *);
static const char *(*k_mode)(void);
static unsigned long k_completed, k_discarded, k_off;
static int rounds = 30;
static int mutate = 1;

static void kal_init(void) {
  k_scan = (int (*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_scan_now");
  k_stats = (int (*)(struct rmalloc_kal_stats *))dlsym(RTLD_DEFAULT, "rmalloc_kal_stats");
  k_mode = (const char *(*)(void))dlsym(RTLD_DEFAULT, "rmalloc_kal_mode");
  const char *req = getenv("KAL_TEST_REQUIRE_KAL");
  if (req && strcmp(req, "1") == 0) {
    const char *names[] = {"rmalloc_kal_scan_now", "rmalloc_kal_stats", "rmalloc_kal_mode"};
    void *found[] = {(void *)k_scan, (void *)k_stats, (void *)k_mode};
    for (int i = 0; i < 3; i++)
      if (!found[i]) {
        printf("FAIL: %s not exported by the preloaded library (KAL engine missing)\n", names[i]);
        fprintf(stderr, "REQUIRE FAILED: %s not exported by the preloaded library "
                        "(KAL engine missing)\n", names[i]);
        exit(1);
      }
  }
  const char *r = getenv("KAL_TEST_ROUNDS");
  if (r && atoi(r) > 0)
    rounds = atoi(r);
  const char *m = getenv("KAL_TEST_MUTATE");
  if (m && strcmp(m, "0") == 0)
    mutate = 0;
  printf("kal: mode=%s rounds=%d mutate=%d\n", k_mode ? k_mode() : "absent", rounds, mutate);
}

/* One synchronous scan (no-op without KAL). */
static int kal_scan(void) {
  if (!k_scan)
    return -2;
  int r = k_scan();
  if (r == 1)
    k_completed++;
  else if (r == 0)
    k_discarded++;
  else
    k_off++;
  return r;
}

static int kal_get(struct rmalloc_kal_stats *s) {
  memset(s, 0, sizeof *s);
  s->size = sizeof *s;
  return k_stats ? k_stats(s) : -1;
}

static void kal_print_stats(const char *phase) {
  struct rmalloc_kal_stats s;
  if (!k_stats) {
    printf("kal-stats phase=%s absent\n", phase);
    return;
  }
  int rc = kal_get(&s);
  printf("kal-stats phase=%s rc=%d mode=%u backend=%u scans=%llu scans_discarded=%llu "
         "discarded_stop=%llu discarded_heap=%llu discarded_roots=%llu chunks_last=%llu "
         "unreachable_chunks=%llu unreachable_bytes=%llu reclaimed_chunks=%llu "
         "reclaimed_bytes=%llu false_reclaims=%llu leaks_reported=%llu pause_ns_p50=%llu "
         "pause_ns_max=%llu cost_ns_last=%llu cost_ns_total=%llu interval_ns=%llu "
         "scan_now_completed=%lu scan_now_discarded=%lu scan_now_off=%lu\n",
         phase, rc, s.mode, s.backend, (unsigned long long)s.scans,
         (unsigned long long)s.scans_discarded, (unsigned long long)s.discarded_stop,
         (unsigned long long)s.discarded_heap, (unsigned long long)s.discarded_roots,
         (unsigned long long)s.chunks_last, (unsigned long long)s.unreachable_chunks,
         (unsigned long long)s.unreachable_bytes, (unsigned long long)s.reclaimed_chunks,
         (unsigned long long)s.reclaimed_bytes, (unsigned long long)s.false_reclaims,
         (unsigned long long)s.leaks_reported, (unsigned long long)s.pause_ns_p50,
         (unsigned long long)s.pause_ns_max,
         (unsigned long long)s.cost_ns_last, (unsigned long long)s.cost_ns_total,
         (unsigned long long)s.interval_ns, k_completed,
         k_discarded, k_off);
}

/* ------------------------------------------------------------ helpers */

static void nap_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Overwrite the dead stack below the caller, so stale copies of pointers
 * left by malloc, fill and printf cannot act as extra roots. */
__attribute__((noinline)) static void scrub_stack(void) {
  volatile char buf[32768];
  for (size_t i = 0; i < sizeof buf; i += 8)
    *(volatile uint64_t *)(buf + i) = 0;
  __asm__ volatile("" ::"r"(buf) : "memory");
}

static unsigned rng_next(unsigned *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static atomic_uint seed_counter = 1000;
static unsigned new_seed(void) { return atomic_fetch_add(&seed_counter, 7919); }

/* Sizes used by every group: tcache, fastbin, small, large, and one chunk
 * above the mmap threshold (a separately mmapped chunk). */
#define NSIZES 12
static const size_t sizes[NSIZES] = {24, 40, 56, 100, 264, 512, 1000, 1500, 4000, 9000, 40000, 300000};

/* Between scans: allocate, fill with a different byte and free chunks of
 * every size, so that a chunk KAL freed by mistake is reused and damaged. */
static void churn(void) {
  void *p[NSIZES * 2];
  for (int i = 0; i < NSIZES * 2; i++) {
    size_t n = sizes[i % NSIZES];
    p[i] = malloc(n);
    REQUIRE(p[i] != NULL);
    memset(p[i], 0xEE, n > 4096 ? 4096 : n);
  }
  for (int i = 0; i < NSIZES * 2; i++)
    free(p[i]);
}

/* ------------------------------------------------------------ slot groups
 * A group of objects whose pointers live in an array somewhere (a global, a
 * stack, TLS, an mmap), or in pthread keys.  `enc` stores each pointer as an
 * interior pointer or as a pointer one past the end of the chunk. */
#define MAXS 16
enum { ENC_PLAIN, ENC_INTERIOR, ENC_END };

struct slots {
  const char *name;
  int n;
  void *volatile *arr;   /* where the pointers are, or NULL: keys */
  pthread_key_t *keys;   /* pthread keys (>= 32), when arr is NULL */
  int enc;
  size_t size[MAXS];
  unsigned seed[MAXS];
  size_t off[MAXS];      /* stored value = object + off */
  unsigned rng;
  int intact;
};

static void *sl_raw(struct slots *s, int i) {
  return s->arr ? s->arr[i] : pthread_getspecific(s->keys[i]);
}
static void sl_store(struct slots *s, int i, void *v) {
  if (s->arr)
    s->arr[i] = v;
  else
    REQUIRE(pthread_setspecific(s->keys[i], v) == 0);
}
static char *sl_ptr(struct slots *s, int i) { return (char *)sl_raw(s, i) - s->off[i]; }

static void sl_new(struct slots *s, int i, size_t n) {
  char *p = malloc(n);
  REQUIRE(p != NULL);
  s->size[i] = n;
  s->seed[i] = new_seed();
  fill(p, n, s->seed[i]);
  s->off[i] = s->enc == ENC_PLAIN ? 0 : s->enc == ENC_INTERIOR ? n / 2 + 3 : malloc_usable_size(p);
  sl_store(s, i, p + s->off[i]);
}

static int sl_check(struct slots *s, int i, const char *when) {
  char *p = sl_ptr(s, i);
  int ok = check_fill(p, s->size[i], s->seed[i]);
  CHECKF(ok, "%s: group %s object %d (%zu bytes at %p) damaged: freed while live?", when,
         s->name, i, s->size[i], (void *)p);
  return ok;
}

static void sl_setup(struct slots *s, const char *name, int n) {
  s->name = name;
  s->n = n;
  s->rng = new_seed() | 1;
  for (int i = 0; i < n; i++)
    sl_new(s, i, sizes[i % NSIZES]);
}

static void sl_print(struct slots *s) {
  for (int i = 0; i < s->n; i++)
    printf("obj %s %d %p %zu\n", s->name, i, (void *)sl_ptr(s, i), s->size[i]);
}

/* One mutation: replace an object (check, free, allocate anew) or move two
 * objects between slots. */
static void sl_mutate(struct slots *s) {
  unsigned r = rng_next(&s->rng);
  int i = (int)(r % (unsigned)s->n), j = (int)((r >> 8) % (unsigned)s->n);
  if (r & 0x10000) {
    sl_check(s, i, "mutate");
    char *old = sl_ptr(s, i);
    sl_new(s, i, s->size[i]);
    free(old);
  } else if (i != j) {
    void *vi = sl_raw(s, i), *vj = sl_raw(s, j);
    size_t sz = s->size[i], of = s->off[i];
    unsigned sd = s->seed[i];
    sl_store(s, i, vj);
    s->size[i] = s->size[j], s->seed[i] = s->seed[j], s->off[i] = s->off[j];
    sl_store(s, j, vi);
    s->size[j] = sz, s->seed[j] = sd, s->off[j] = of;
  }
}

static void sl_verify_free(struct slots *s) {
  s->intact = 0;
  for (int i = 0; i < s->n; i++)
    s->intact += sl_check(s, i, "final");
  printf("intact %s %d/%d\n", s->name, s->intact, s->n);
  for (int i = 0; i < s->n; i++) {
    free(sl_ptr(s, i));
    sl_store(s, i, NULL);
  }
}

/* ------------------------------------------------------------ threads */

static atomic_int stop_flag;

/* A thread that owns a group in its own stack, TLS, dlopen TLS or keys,
 * mutates it until stop_flag, then verifies and frees it. */
enum { W_STACK, W_TLS, W_DSO_TLS, W_KEYS };
struct worker {
  pthread_t th;
  int where;
  struct slots s;
  atomic_int ready;
};

static __thread void *tls_slots[MAXS];
static pthread_key_t keys[40];
static pthread_key_t high_keys[MAXS];
static void *volatile *(*dso_tls_slots)(void);
static void *volatile *(*dso_bss_slots)(void);

static int worker_blocks_signals;

static void *worker_main(void *arg) {
  struct worker *w = arg;
  if (worker_blocks_signals) {
    sigset_t all;
    sigfillset(&all);
    REQUIRE(pthread_sigmask(SIG_BLOCK, &all, NULL) == 0);
  }
  void *volatile stack_slots[MAXS];
  memset((void *)stack_slots, 0, sizeof stack_slots);
  const char *name = "?";
  switch (w->where) {
  case W_STACK:
    w->s.arr = stack_slots, name = "worker-stack";
    break;
  case W_TLS:
    w->s.arr = (void *volatile *)tls_slots, name = "worker-tls";
    break;
  case W_DSO_TLS:
    w->s.arr = dso_tls_slots(), name = "worker-dso-tls";
    break;
  case W_KEYS:
    w->s.keys = high_keys, name = "worker-keys";
    break;
  }
  sl_setup(&w->s, name, MAXS);
  sl_print(&w->s);
  scrub_stack();
  atomic_store(&w->ready, 1);
  while (!atomic_load(&stop_flag)) {
    if (mutate)
      sl_mutate(&w->s);
    nap_us(300);
  }
  sl_verify_free(&w->s);
  return NULL;
}

static void worker_start(struct worker *w, int where) {
  memset(w, 0, sizeof *w);
  w->where = where;
  REQUIRE(pthread_create(&w->th, NULL, worker_main, w) == 0);
  while (!atomic_load(&w->ready))
    nap_us(200);
}

static void worker_join(struct worker *w) { REQUIRE(pthread_join(w->th, NULL) == 0); }

/* A thread that mutates a group it does not own the storage of (a global,
 * an mmap), without sleeping much, so that scans overlap mutations. */
static void *group_mutator(void *arg) {
  struct slots *s = arg;
  unsigned n = 0;
  while (!atomic_load(&stop_flag)) {
    sl_mutate(s);
    if (++n % 16 == 0)
      nap_us(100);
  }
  return NULL;
}

/* The scan phase: scans, churn, and mutation of a group owned by main. */
static void scan_phase(struct slots *main_group) {
  for (int r = 0; r < rounds; r++) {
    kal_scan();
    churn();
    if (main_group && mutate)
      sl_mutate(main_group);
    nap_us(1000);
  }
}

/* Run the scan phase with `s` mutated by its own thread. */
static void scan_phase_mutated(struct slots *s) {
  pthread_t th;
  atomic_store(&stop_flag, 0);
  if (mutate)
    REQUIRE(pthread_create(&th, NULL, group_mutator, s) == 0);
  scan_phase(NULL);
  atomic_store(&stop_flag, 1);
  if (mutate)
    REQUIRE(pthread_join(th, NULL) == 0);
}

/* ------------------------------------------------------------ cases */

static void *volatile g_slots[MAXS];

/* A global (interior / one past the end: the same, encoded). */
static void case_global_enc(int enc, const char *name) {
  static struct slots s;
  s.arr = g_slots;
  s.enc = enc;
  sl_setup(&s, name, MAXS);
  sl_print(&s);
  scrub_stack();
  scan_phase_mutated(&s);
  kal_print_stats("live");
  const char *sab = getenv("KAL_TEST_SABOTAGE");
  if (sab && strcmp(sab, "1") == 0) {
    /* Harness self-test: do what a wrong reclaim would do, free a live
     * object behind the program's back; the checks below must notice. */
    printf("sabotage: freeing live object %p\n", (void *)sl_ptr(&s, 0));
    free(sl_ptr(&s, 0));
    for (int i = 0; i < 4; i++)
      churn();
  }
  sl_verify_free(&s);
}

/* An anonymous mmap, private or shared (a shared mapping is not frozen by a
 * copy-on-write snapshot: the mutator keeps moving pointers inside it). */
static void case_mmap(int flags, const char *name) {
  static struct slots s;
  void *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
  REQUIRE(map != MAP_FAILED);
  s.arr = (void *volatile *)map + 17;
  sl_setup(&s, name, MAXS);
  sl_print(&s);
  scrub_stack();
  scan_phase_mutated(&s);
  kal_print_stats("live");
  sl_verify_free(&s);
  REQUIRE(munmap(map, 4096) == 0);
}

/* A worker's stack, TLS, dlopen TLS or pthread keys; for TLS, dlopen TLS
 * and keys also the main thread's own. */
static void case_worker(int where, int main_too) {
  static struct slots m;
  const char *mname = where == W_TLS ? "main-tls" : where == W_DSO_TLS ? "main-dso-tls" : "main-keys";
  if (main_too) {
    if (where == W_TLS)
      m.arr = (void *volatile *)tls_slots;
    else if (where == W_DSO_TLS)
      m.arr = dso_tls_slots();
    else
      m.keys = high_keys;
    sl_setup(&m, mname, MAXS);
    sl_print(&m);
  }
  struct worker w;
  atomic_store(&stop_flag, 0);
  worker_start(&w, where);
  scrub_stack();
  scan_phase(main_too ? &m : NULL);
  kal_print_stats("live");
  atomic_store(&stop_flag, 1);
  worker_join(&w);
  if (main_too)
    sl_verify_free(&m);
}

static void make_high_keys(void) {
  /* 40 keys: glibc keeps keys >= 32 in a second-level block that it
   * allocates with calloc, reached from the thread descriptor. */
  int n = 0;
  for (int i = 0; i < 40; i++) {
    REQUIRE(pthread_key_create(&keys[i], NULL) == 0);
    if (keys[i] >= 32 && n < MAXS)
      high_keys[n++] = keys[i];
  }
  REQUIRE(n >= 4);
  printf("keys: %d of them >= 32 (first %u)\n", n, high_keys[0]);
  if (n < MAXS) {
    /* Not enough high keys (others were taken already): more. */
    while (n < MAXS) {
      pthread_key_t k;
      REQUIRE(pthread_key_create(&k, NULL) == 0);
      if (k >= 32)
        high_keys[n++] = k;
    }
  }
}

static void load_dso(void) {
  const char *path = getenv("KAL_TEST_DSO");
  REQUIRE(path != NULL);
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
    exit(1);
  }
  dso_tls_slots = (void *volatile *(*)(void))dlsym(h, "kal_dso_tls_slots");
  dso_bss_slots = (void *volatile *(*)(void))dlsym(h, "kal_dso_bss_slots");
  REQUIRE(dso_tls_slots && dso_bss_slots);
}

/* The caller of rmalloc_kal_scan_now holds the only pointers on its stack. */
__attribute__((noinline)) static void case_own_stack(void) {
  static struct slots s;
  void *volatile local[MAXS];
  s.arr = local;
  sl_setup(&s, "own-stack", MAXS);
  sl_print(&s);
  scan_phase(&s);
  kal_print_stats("live");
  sl_verify_free(&s);
}

/* ---- a register of a busy thread.  The thread loads two pointers from
 * globals into r12 and r13, clears the globals, and spins, exchanging the
 * two registers and touching the objects, until told to stop; then it
 * stores them back.  While it spins, nothing in memory points at them. */
static void *volatile reg_slot[2];
static volatile int reg_stop;
static volatile unsigned long reg_spins;
static atomic_int reg_ready;
static size_t reg_size[2] = {40, 300000};
static unsigned reg_seed[2];

#if defined(__x86_64__)
static void *reg_thread(void *arg) {
  (void)arg;
  for (int i = 0; i < 2; i++) {
    reg_seed[i] = new_seed();
    char *p = malloc(reg_size[i]);
    REQUIRE(p != NULL);
    fill(p, reg_size[i], reg_seed[i]);
    reg_slot[i] = p;
    printf("obj register %d %p %zu\n", i, (void *)p, reg_size[i]);
  }
  scrub_stack();
  atomic_store(&reg_ready, 1);
  __asm__ volatile("mov %[s0], %%r12\n\t"
                   "mov %[s1], %%r13\n\t"
                   "movq $0, %[s0]\n\t"
                   "movq $0, %[s1]\n\t"
                   "1:\n\t"
                   "movzbl (%%r12), %%eax\n\t"
                   "movzbl (%%r13), %%eax\n\t"
                   "xchg %%r12, %%r13\n\t"
                   "addq $1, %[spins]\n\t"
                   "pause\n\t"
                   "cmpl $0, %[stop]\n\t"
                   "je 1b\n\t"
                   "mov %%r12, %[s0]\n\t"
                   "mov %%r13, %[s1]\n\t"
                   : [s0] "+m"(reg_slot[0]), [s1] "+m"(reg_slot[1]), [spins] "+m"(reg_spins)
                   : [stop] "m"(reg_stop)
                   : "rax", "r12", "r13", "memory", "cc");
  return NULL;
}

static void case_register(void) {
  pthread_t th;
  REQUIRE(pthread_create(&th, NULL, reg_thread, NULL) == 0);
  while (!atomic_load(&reg_ready))
    nap_us(200);
  scrub_stack();
  scan_phase(NULL);
  kal_print_stats("live");
  reg_stop = 1;
  REQUIRE(pthread_join(th, NULL) == 0);
  printf("register thread spins: %lu\n", reg_spins);
  CHECK(reg_spins > 0);
  /* The registers were exchanged an unknown number of times. */
  char *a = reg_slot[0], *b = reg_slot[1];
  if (malloc_usable_size(a) < malloc_usable_size(b)) {
    char *t = a;
    a = b, b = t;
  }
  /* Now a is the big one (index 1), b the small one (index 0). */
  int ok0 = check_fill(b, reg_size[0], reg_seed[0]);
  int ok1 = check_fill(a, reg_size[1], reg_seed[1]);
  CHECKF(ok0, "register object 0 (%zu bytes at %p) damaged: freed while live?", reg_size[0], (void *)b);
  CHECKF(ok1, "register object 1 (%zu bytes at %p) damaged: freed while live?", reg_size[1], (void *)a);
  printf("intact register %d/2\n", ok0 + ok1);
  free(a);
  free(b);
}

/* ---- a callee-saved register of the thread that calls scan_now: the
 * pointer lives in r13 across the call (the path down to the futex wait
 * pushes rbx, rbp, r12, r14, r15 but not r13, so the value is in no memory
 * while the scan runs). */
static void *volatile own_reg_slot;
static int (*volatile own_scan_fn)(void);
static void (*volatile own_churn_fn)(void);
static int own_reg_rounds;
static int noop_scan(void) { return -2; }

static void case_own_register(void) {
  size_t n = 5000;
  unsigned seed = new_seed();
  char *p = malloc(n);
  REQUIRE(p != NULL);
  fill(p, n, seed);
  printf("obj own-register 0 %p %zu\n", (void *)p, n);
  own_reg_slot = p;
  p = NULL;
  own_scan_fn = k_scan ? k_scan : noop_scan;
  own_churn_fn = churn;
  own_reg_rounds = rounds;
  scrub_stack();
  __asm__ volatile("mov %%rsp, %%rbx\n\t"
                   "sub $512, %%rsp\n\t" /* past the red zone */
                   "and $-16, %%rsp\n\t"
                   "mov %[slot], %%r13\n\t"
                   "movq $0, %[slot]\n\t"
                   "mov %[n], %%r12d\n\t"
                   "1:\n\t"
                   "call *%[scan]\n\t"
                   "call *%[churn]\n\t"
                   "movzbl (%%r13), %%eax\n\t"
                   "dec %%r12d\n\t"
                   "jnz 1b\n\t"
                   "mov %%r13, %[slot]\n\t"
                   "mov %%rbx, %%rsp\n\t"
                   : [slot] "+m"(own_reg_slot)
                   : [n] "m"(own_reg_rounds), [scan] "m"(own_scan_fn), [churn] "m"(own_churn_fn)
                   : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
                     "rbx", "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
                     "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
                     "xmm15");
  kal_print_stats("live");
  p = own_reg_slot;
  int ok = check_fill(p, n, seed);
  CHECKF(ok, "object held in r13 across scan_now (%zu bytes at %p) damaged: freed while live?",
         n, (void *)p);
  printf("intact own-register %d/1\n", ok);
  free(p);
}
#else
static void case_own_register(void) { printf("own_register case: x86_64 only, skipped\n"); }
static void case_register(void) { printf("register case: x86_64 only, skipped\n"); }
#endif

/* ---- a linked list and a tree: only the head / root in a global. */
struct lnode {
  struct lnode *next;
  unsigned seed, len;
  unsigned char data[];
};
static struct lnode *volatile g_head;
enum { LIST_N = 300, TREE_DEPTH = 8 };

static struct lnode *lnode_new(unsigned *rng) {
  unsigned len = 8 + rng_next(rng) % 300;
  struct lnode *n = malloc(sizeof *n + len);
  REQUIRE(n != NULL);
  n->next = NULL, n->len = len, n->seed = new_seed();
  fill(n->data, len, n->seed);
  return n;
}

static void *list_mutator(void *arg) {
  (void)arg;
  unsigned rng = 12345;
  while (!atomic_load(&stop_flag)) {
    /* unlink a node at a random position (not the head), then insert a new
     * one at another random position */
    unsigned k = 1 + rng_next(&rng) % (LIST_N - 2);
    struct lnode *prev = g_head;
    for (unsigned i = 1; i < k; i++)
      prev = prev->next;
    struct lnode *victim = prev->next;
    prev->next = victim->next;
    CHECKF(check_fill(victim->data, victim->len, victim->seed), "list node %p damaged", (void *)victim);
    free(victim);
    k = rng_next(&rng) % (LIST_N - 2);
    prev = g_head;
    for (unsigned i = 0; i < k; i++)
      prev = prev->next;
    struct lnode *n = lnode_new(&rng);
    n->next = prev->next;
    prev->next = n;
    if (rng % 8 == 0)
      nap_us(100);
  }
  return NULL;
}

static void case_list(void) {
  unsigned rng = 777;
  for (int i = 0; i < LIST_N; i++) {
    struct lnode *n = lnode_new(&rng);
    n->next = g_head;
    g_head = n;
  }
  for (struct lnode *n = g_head; n; n = n->next)
    printf("obj list %d %p %u\n", 0, (void *)n, n->len);
  scrub_stack();
  pthread_t th;
  atomic_store(&stop_flag, 0);
  if (mutate)
    REQUIRE(pthread_create(&th, NULL, list_mutator, NULL) == 0);
  scan_phase(NULL);
  atomic_store(&stop_flag, 1);
  if (mutate)
    REQUIRE(pthread_join(th, NULL) == 0);
  kal_print_stats("live");
  int count = 0, ok = 0;
  while (g_head) {
    struct lnode *n = g_head;
    count++;
    int good = check_fill(n->data, n->len, n->seed);
    CHECKF(good, "list node %d (%p, %u bytes) damaged: freed while live?", count, (void *)n, n->len);
    ok += good;
    g_head = n->next;
    free(n);
  }
  CHECKF(count == LIST_N, "list has %d nodes, expected %d", count, LIST_N);
  printf("intact list %d/%d\n", ok, count);
}

struct tnode {
  struct tnode *l, *r;
  unsigned seed, len;
  unsigned char data[];
};
static struct tnode *volatile g_root;

static struct tnode *tnode_new(unsigned *rng) {
  unsigned len = 8 + rng_next(rng) % 200;
  struct tnode *n = malloc(sizeof *n + len);
  REQUIRE(n != NULL);
  n->l = n->r = NULL, n->len = len, n->seed = new_seed();
  fill(n->data, len, n->seed);
  return n;
}

static struct tnode *tree_build(int depth, unsigned *rng) {
  if (depth == 0)
    return NULL;
  struct tnode *n = tnode_new(rng);
  n->l = tree_build(depth - 1, rng);
  n->r = tree_build(depth - 1, rng);
  return n;
}

static void tree_print(struct tnode *n) {
  if (!n)
    return;
  printf("obj tree 0 %p %u\n", (void *)n, n->len);
  tree_print(n->l);
  tree_print(n->r);
}

static void *tree_mutator(void *arg) {
  (void)arg;
  unsigned rng = 4242;
  while (!atomic_load(&stop_flag)) {
    /* walk a random path; replace the node at a random depth with a copy
     * (new chunk, new pattern), or swap a node's children */
    struct tnode *volatile *link = &g_root;
    int depth = (int)(rng_next(&rng) % TREE_DEPTH);
    for (int d = 0; d < depth && (*link)->l; d++)
      link = (rng_next(&rng) & 1) ? &(*link)->l : &(*link)->r;
    struct tnode *old = *link;
    if (rng & 0x100) {
      struct tnode *t = old->l;
      old->l = old->r;
      old->r = t;
    } else {
      CHECKF(check_fill(old->data, old->len, old->seed), "tree node %p damaged", (void *)old);
      struct tnode *n = tnode_new(&rng);
      n->l = old->l, n->r = old->r;
      *link = n;
      free(old);
    }
    if (rng % 8 == 0)
      nap_us(100);
  }
  return NULL;
}

static int tree_check_free(struct tnode *n, int *ok) {
  if (!n)
    return 0;
  int good = check_fill(n->data, n->len, n->seed);
  CHECKF(good, "tree node %p (%u bytes) damaged: freed while live?", (void *)n, n->len);
  *ok += good;
  int c = 1 + tree_check_free(n->l, ok) + tree_check_free(n->r, ok);
  free(n);
  return c;
}

static void case_tree(void) {
  unsigned rng = 999;
  g_root = tree_build(TREE_DEPTH, &rng);
  tree_print(g_root);
  scrub_stack();
  pthread_t th;
  atomic_store(&stop_flag, 0);
  if (mutate)
    REQUIRE(pthread_create(&th, NULL, tree_mutator, NULL) == 0);
  scan_phase(NULL);
  atomic_store(&stop_flag, 1);
  if (mutate)
    REQUIRE(pthread_join(th, NULL) == 0);
  kal_print_stats("live");
  int ok = 0;
  int count = tree_check_free(g_root, &ok);
  g_root = NULL;
  CHECKF(count == (1 << TREE_DEPTH) - 1, "tree has %d nodes", count);
  printf("intact tree %d/%d\n", ok, count);
}

/* ---- epoll_event.data.ptr: after epoll_ctl only the kernel holds the
 * pointer; epoll_wait hands it back.  The mutator thread takes one back
 * (eventfd made readable), checks and frees it, and registers a new one. */
enum { NEP = 8 };
static int ep_fd, ep_efd[NEP];
static size_t ep_size[NEP];
static unsigned ep_seed[NEP];
static pthread_mutex_t ep_lock = PTHREAD_MUTEX_INITIALIZER;

/* Which registration does this object belong to (by its pattern)? */
static int ep_match(void *p, const int *taken) {
  for (int i = 0; i < NEP; i++)
    if (!taken[i] && check_fill(p, ep_size[i], ep_seed[i]))
      return i;
  return -1;
}

static void ep_register(int i, int op) {
  char *p = malloc(ep_size[i]);
  REQUIRE(p != NULL);
  ep_seed[i] = new_seed();
  fill(p, ep_size[i], ep_seed[i]);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = p};
  REQUIRE(epoll_ctl(ep_fd, op, ep_efd[i], &ev) == 0);
  memset(&ev, 0, sizeof ev);
  __asm__ volatile("" ::"r"(&ev) : "memory");
}

static int ep_wait_one(struct epoll_event *ev) {
  for (;;) {
    int n = epoll_wait(ep_fd, ev, 1, 5000);
    if (n < 0 && errno == EINTR)
      continue; /* KAL's stop signal: epoll_wait is never restarted */
    return n;
  }
}

static void *ep_mutator(void *arg) {
  (void)arg;
  unsigned rng = 31337;
  while (!atomic_load(&stop_flag)) {
    int i = (int)(rng_next(&rng) % NEP);
    pthread_mutex_lock(&ep_lock);
    uint64_t one = 1;
    REQUIRE(write(ep_efd[i], &one, 8) == 8);
    struct epoll_event ev;
    int n = ep_wait_one(&ev);
    REQUIRE(n == 1);
    uint64_t v;
    REQUIRE(read(ep_efd[i], &v, 8) == 8);
    CHECKF(check_fill(ev.data.ptr, ep_size[i], ep_seed[i]),
           "epoll object %d (%p) damaged: freed while live?", i, ev.data.ptr);
    free(ev.data.ptr);
    ep_register(i, EPOLL_CTL_MOD);
    pthread_mutex_unlock(&ep_lock);
    nap_us(500);
  }
  return NULL;
}

static void case_epoll(void) {
  ep_fd = epoll_create1(EPOLL_CLOEXEC);
  REQUIRE(ep_fd >= 0);
  for (int i = 0; i < NEP; i++) {
    ep_efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    REQUIRE(ep_efd[i] >= 0);
    ep_size[i] = sizes[(i * 5) % NSIZES];
    ep_register(i, EPOLL_CTL_ADD);
  }
  scrub_stack();
  pthread_t th;
  atomic_store(&stop_flag, 0);
  if (mutate)
    REQUIRE(pthread_create(&th, NULL, ep_mutator, NULL) == 0);
  scan_phase(NULL);
  atomic_store(&stop_flag, 1);
  if (mutate)
    REQUIRE(pthread_join(th, NULL) == 0);
  kal_print_stats("live");
  /* Make all readable and collect every pointer back. */
  for (int i = 0; i < NEP; i++) {
    uint64_t one = 1;
    REQUIRE(write(ep_efd[i], &one, 8) == 8);
  }
  int taken[NEP] = {0}, got = 0, ok = 0;
  struct epoll_event evs[NEP];
  while (got < NEP) {
    int n;
    do
      n = epoll_wait(ep_fd, evs, NEP, 5000);
    while (n < 0 && errno == EINTR);
    REQUIRE(n > 0);
    for (int k = 0; k < n; k++) {
      int i = ep_match(evs[k].data.ptr, taken);
      CHECKF(i >= 0, "epoll object at %p matches no registration: freed while live?",
             evs[k].data.ptr);
      if (i >= 0) {
        taken[i] = 1;
        ok++;
      }
      free(evs[k].data.ptr);
      got++;
    }
  }
  printf("intact epoll %d/%d\n", ok, NEP);
  for (int i = 0; i < NEP; i++)
    close(ep_efd[i]);
  close(ep_fd);
}

/* Block real-time signal `sig` in this thread; the set holding it. */
static sigset_t block_signal(int sig) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  REQUIRE(pthread_sigmask(SIG_BLOCK, &set, NULL) == 0);
  return set;
}

/* A filled object of `size` bytes, announced as object `i` of `kind`. */
static char *root_object(const char *kind, int i, size_t size, unsigned seed) {
  char *p = malloc(size);
  REQUIRE(p != NULL);
  fill(p, size, seed);
  printf("obj %s %d %p %zu\n", kind, i, (void *)p, size);
  return p;
}

/* The next `sig` of `set` (blocked), waited for up to 10 s. */
static siginfo_t take_signal(const sigset_t *set, int sig) {
  siginfo_t si;
  struct timespec to = {10, 0};
  int r;
  do
    r = sigtimedwait(set, &si, &to);
  while (r < 0 && errno == EINTR);
  REQUIRE(r == sig);
  return si;
}

/* ---- a POSIX timer's sigev_value: timer_create with SIGEV_THREAD_ID to
 * the main thread (signal blocked there), so only the kernel holds the
 * pointer until the timer fires and sigtimedwait returns si_value. */
enum { NTIMERS = 6 };
static timer_t tm_id[NTIMERS];
static size_t tm_size[NTIMERS];
static unsigned tm_seed[NTIMERS];

static void case_timer(void) {
  int sig = SIGRTMIN + 4;
  sigset_t set = block_signal(sig);
  for (int i = 0; i < NTIMERS; i++) {
    tm_size[i] = sizes[(i * 7 + 1) % NSIZES];
    tm_seed[i] = new_seed();
    char *p = root_object("timer", i, tm_size[i], tm_seed[i]);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID | SIGEV_SIGNAL;
    ev.sigev_signo = sig;
    ev.sigev_value.sival_ptr = p;
    ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    REQUIRE(timer_create(CLOCK_MONOTONIC, &ev, &tm_id[i]) == 0);
    memset(&ev, 0, sizeof ev);
    __asm__ volatile("" ::"r"(&ev) : "memory");
  }
  scrub_stack();
  scan_phase(NULL);
  kal_print_stats("live");
  /* Fire them all and take each pointer back from the queued signals. */
  struct itimerspec its = {{0, 0}, {0, 1000000}};
  for (int i = 0; i < NTIMERS; i++)
    REQUIRE(timer_settime(tm_id[i], 0, &its, NULL) == 0);
  int ok = 0;
  for (int got = 0; got < NTIMERS; got++) {
    siginfo_t si = take_signal(&set, sig);
    int i = -1;
    for (int k = 0; k < NTIMERS; k++)
      if ((intptr_t)tm_id[k] == (intptr_t)si.si_timerid)
        i = k;
    REQUIRE(i >= 0);
    char *p = si.si_value.sival_ptr;
    int good = check_fill(p, tm_size[i], tm_seed[i]);
    CHECKF(good, "timer %d object (%zu bytes at %p) damaged: freed while live?", i, tm_size[i],
           (void *)p);
    ok += good;
    free(p);
  }
  for (int i = 0; i < NTIMERS; i++)
    REQUIRE(timer_delete(tm_id[i]) == 0);
  printf("intact timer %d/%d\n", ok, NTIMERS);
}

/* ---- the value of a queued real-time signal: sent to the main thread
 * with pthread_sigqueue while it blocks the signal, so only the kernel's
 * signal queue holds the pointer until sigtimedwait returns it.  No
 * interface shows a queued value to user space; the kernel backend reads
 * it from the image's record of kernel-held roots. */
enum { NSIGQ = 6 };
static size_t sq_size[NSIGQ];
static unsigned sq_seed[NSIGQ];

static void case_sigqueue(void) {
  int sig = SIGRTMIN + 5;
  sigset_t set = block_signal(sig);
  for (int i = 0; i < NSIGQ; i++) {
    sq_size[i] = sizes[(i * 5 + 2) % NSIZES];
    sq_seed[i] = new_seed();
    char *p = root_object("sigqueue", i, sq_size[i], sq_seed[i]);
    union sigval v = {.sival_ptr = p};
    REQUIRE(pthread_sigqueue(pthread_self(), sig, v) == 0);
    v.sival_ptr = NULL;
    __asm__ volatile("" ::"r"(&v) : "memory");
  }
  scrub_stack();
  scan_phase(NULL);
  kal_print_stats("live");
  /* Real-time signals are dequeued in the order they were sent. */
  int ok = 0;
  for (int i = 0; i < NSIGQ; i++) {
    siginfo_t si = take_signal(&set, sig);
    char *p = si.si_value.sival_ptr;
    int good = check_fill(p, sq_size[i], sq_seed[i]);
    CHECKF(good, "queued signal %d object (%zu bytes at %p) damaged: freed while live?", i,
           sq_size[i], (void *)p);
    ok += good;
    free(p);
  }
  printf("intact sigqueue %d/%d\n", ok, NSIGQ);
}

/* ---- an alternate signal stack that is a heap chunk: only the kernel's
 * sigaltstack setting points at it.  Signals delivered on it during the
 * scans use its top; the pattern is checked in its bottom quarter. */
enum { ALT_SIZE = 65536, ALT_CHECK = 16384 };
static volatile sig_atomic_t alt_hits;
static unsigned alt_seed[2];
static atomic_int alt_ready, alt_go;

static void on_usr1(int sig) {
  (void)sig;
  volatile char buf[256];
  buf[0] = 1;
  (void)buf[0];
  alt_hits++;
}

static void alt_install(int who) {
  char *p = malloc(ALT_SIZE);
  REQUIRE(p != NULL);
  alt_seed[who] = new_seed();
  fill(p, ALT_CHECK, alt_seed[who]);
  printf("obj altstack %d %p %d\n", who, (void *)p, ALT_SIZE);
  stack_t ss = {.ss_sp = p, .ss_size = ALT_SIZE, .ss_flags = 0};
  REQUIRE(sigaltstack(&ss, NULL) == 0);
  memset(&ss, 0, sizeof ss);
  __asm__ volatile("" ::"r"(&ss) : "memory");
}

static int alt_check_remove(int who) {
  stack_t old;
  REQUIRE(sigaltstack(NULL, &old) == 0);
  int good = check_fill(old.ss_sp, ALT_CHECK, alt_seed[who]);
  CHECKF(good, "alternate signal stack %d (%p) damaged: freed while live?", who, old.ss_sp);
  stack_t off = {.ss_flags = SS_DISABLE};
  REQUIRE(sigaltstack(&off, NULL) == 0);
  free(old.ss_sp);
  return good;
}

static void *alt_thread(void *arg) {
  (void)arg;
  alt_install(1);
  scrub_stack();
  atomic_store(&alt_ready, 1);
  while (!atomic_load(&alt_go))
    nap_us(300);
  return (void *)(intptr_t)alt_check_remove(1);
}

static void case_altstack(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_ONSTACK | SA_RESTART;
  REQUIRE(sigaction(SIGUSR1, &sa, NULL) == 0);
  alt_install(0);
  pthread_t th;
  REQUIRE(pthread_create(&th, NULL, alt_thread, NULL) == 0);
  while (!atomic_load(&alt_ready))
    nap_us(200);
  scrub_stack();
  for (int r = 0; r < rounds; r++) {
    kal_scan();
    churn();
    if (mutate) {
      raise(SIGUSR1);
      pthread_kill(th, SIGUSR1);
    }
    nap_us(1000);
  }
  kal_print_stats("live");
  atomic_store(&alt_go, 1);
  void *res;
  REQUIRE(pthread_join(th, &res) == 0);
  int ok = alt_check_remove(0) + (int)(intptr_t)res;
  printf("altstack signals handled: %d\n", (int)alt_hits);
  printf("intact altstack %d/2\n", ok);
}

/* ---- objects the program really drops.  The driver expects them found
 * (detect) or freed (reclaim): mallinfo2's in-use bytes must fall by at
 * least their size in reclaim mode. */
enum { NDROP = 64 };
static void *volatile g_drop[NDROP];

__attribute__((noinline)) static size_t drop_make(void) {
  size_t bytes = 0;
  for (int i = 0; i < NDROP; i++) {
    size_t n = i < 48 ? 72 : i < 60 ? 5000 : i < 63 ? 40 : 200000;
    g_drop[i] = malloc(n);
    REQUIRE(g_drop[i] != NULL);
    memset(g_drop[i], 0x5A, n);
    bytes += malloc_usable_size(g_drop[i]);
  }
  /* three of them form a chain: 60 -> 61 -> 62 (indirect leaks) */
  *(void **)g_drop[60] = g_drop[61];
  *(void **)g_drop[61] = g_drop[62];
  *(void **)g_drop[62] = NULL;
  return bytes;
}

static void *volatile g_guard[2];

static void case_dropped(void) {
  /* Live guards around the dropped objects: an mmapped chunk mapped before
   * them and a heap chunk allocated after them, so that no dropped object
   * borders the top chunk or the next mapping (case dropped_last does). */
  g_guard[0] = malloc(300000);
  size_t before = mallinfo2().uordblks + mallinfo2().hblkhd;
  size_t bytes = drop_make();
  size_t with = mallinfo2().uordblks + mallinfo2().hblkhd;
  g_guard[1] = malloc(64);
  REQUIRE(g_guard[0] && g_guard[1]);
  for (int i = 0; i < NDROP; i++)
    printf("obj dropped %d %p %zu\n", i, g_drop[i], malloc_usable_size(g_drop[i]));
  for (int i = 0; i < NDROP; i++)
    g_drop[i] = NULL;
  scrub_stack();
  printf("dropped objects=%d bytes=%zu\n", NDROP, bytes);
  scan_phase(NULL);
  /* a slow-path malloc also drains what is due */
  for (int i = 0; i < 8; i++)
    free(malloc(100000));
  kal_print_stats("live");
  size_t after = mallinfo2().uordblks + mallinfo2().hblkhd;
  printf("in-use bytes: before=%zu with=%zu after=%zu released=%zd\n", before, with, after,
         (ssize_t)with - (ssize_t)after);
  free(g_guard[0]);
  free(g_guard[1]);
}

/* ---- a thread that blocks every signal (a signal-based stop cannot stop
 * it) holds objects on its stack, while the main thread drops 64 objects.
 * With stop=signal every snapshot must be discarded and nothing freed, not
 * even the dropped objects; with stop=ptrace the scans complete. */
static void case_blocked_signals(void) {
  worker_blocks_signals = 1;
  struct worker w;
  atomic_store(&stop_flag, 0);
  worker_start(&w, W_STACK);
  size_t bytes = drop_make();
  for (int i = 0; i < NDROP; i++)
    g_drop[i] = NULL;
  scrub_stack();
  printf("dropped objects=%d bytes=%zu\n", NDROP, bytes);
  scan_phase(NULL);
  kal_print_stats("live");
  atomic_store(&stop_flag, 1);
  worker_join(&w);
}

/* ---- the most recent allocations dropped: heap chunks of which the last
 * borders the top chunk, and mmapped chunks of which the first borders the
 * mapping above it.  Pointers to the top chunk or to that mapping are not
 * pointers to these objects (the top chunk's header lies in the usable size
 * of the chunk below it; a mapping's base is one past the end of the
 * mmapped chunk below it). */
static void *volatile g_last[8];
static void *volatile g_last_anchor;

__attribute__((noinline)) static void last_make(void) {
  /* A live mmapped chunk first, so that the first dropped one borders a
   * mapping of the allocator's.  Without it, that neighbour is whatever the
   * process mapped before, such as the main thread's static TLS block,
   * whose base the loader legitimately points to: one past the end of the
   * dropped chunk, which then stays alive as it must (seen in the guest). */
  g_last_anchor = malloc(200000);
  REQUIRE(g_last_anchor != NULL);
  for (int i = 0; i < 8; i++) {
    g_last[i] = malloc(i < 4 ? 200000 : 100000);
    REQUIRE(g_last[i] != NULL);
    memset(g_last[i], 0x6B, 100000);
  }
  for (int i = 0; i < 8; i++)
    printf("obj last %d %p %zu\n", i, g_last[i], malloc_usable_size(g_last[i]));
}

static void case_dropped_last(void) {
  last_make();
  for (int i = 0; i < 8; i++)
    g_last[i] = NULL;
  scrub_stack();
  for (int r = 0; r < 4; r++)
    kal_scan();
  kal_print_stats("live");
}

/* ---- a false reclaim: pointers hidden XOR-encoded, so KAL cannot see
 * them; once KAL has reclaimed them, the program decodes them, frees one and
 * reallocs the other.  The program must keep running correctly, and KAL
 * must report the false reclaim. */
#define HIDE_KEY ((uintptr_t)0x5DEECE66DA5A5A5Aull)
static volatile uintptr_t g_hidden[2];
static size_t hid_size[2] = {4000, 200};
static unsigned hid_seed[2];

__attribute__((noinline)) static void hide_make(void) {
  for (int i = 0; i < 2; i++) {
    char *p = malloc(hid_size[i]);
    REQUIRE(p != NULL);
    hid_seed[i] = new_seed();
    fill(p, hid_size[i], hid_seed[i]);
    g_hidden[i] = (uintptr_t)p ^ HIDE_KEY;
  }
}

static void case_false_reclaim(void) {
  struct rmalloc_kal_stats s0, s;
  kal_get(&s0);
  hide_make();
  /* a live chunk after them, so that neither borders the top chunk */
  static void *volatile guard;
  guard = malloc(64);
  scrub_stack();
  int scans = 0, reclaimed = 0;
  for (; scans < rounds * 4; scans++) {
    kal_scan();
    nap_us(1000);
    if (k_stats && kal_get(&s) == 0 && s.reclaimed_chunks >= s0.reclaimed_chunks + 2) {
      reclaimed = 1;
      break;
    }
    if (!k_scan && scans > rounds)
      break;
  }
  printf("hidden objects %s after %d scans\n", reclaimed ? "reclaimed" : "not reclaimed", scans);
  kal_print_stats("live");
  char *p = (char *)(g_hidden[0] ^ HIDE_KEY);
  char *q = (char *)(g_hidden[1] ^ HIDE_KEY);
  printf("hidden 0 %p %zu\nhidden 1 %p %zu\n", (void *)p, hid_size[0], (void *)q, hid_size[1]);
  /* The program does not know; it frees and resizes as it always would. */
  printf("pattern of hidden 0 after reclaim: %s\n",
         check_fill(p, hid_size[0], hid_seed[0]) ? "intact" : "damaged");
  free(p);
  char *q2 = realloc(q, 8000);
  REQUIRE(q2 != NULL);
  memset(q2, 0x33, 8000);
  /* keep working: allocations of the same sizes, checked */
  for (int i = 0; i < 2000; i++) {
    size_t n = (size_t)(16 + (i * 37) % 5000);
    char *a = malloc(n);
    REQUIRE(a != NULL);
    fill(a, n, (unsigned)i);
    CHECK(check_fill(a, n, (unsigned)i));
    free(a);
  }
  for (int i = 0; i < 8000; i++)
    if ((unsigned char)q2[i] != 0x33) {
      CHECKF(0, "realloc'ed block damaged at %d", i);
      break;
    }
  free(q2);
  free(guard);
  printf("program kept running after the false reclaim\n");
}

/* ---- a small deterministic workload, for the bad-input tests. */
static void case_basic(void) {
  unsigned rng = 1;
  unsigned long sum = 0;
  struct lnode *head = NULL;
  for (int i = 0; i < 20000; i++) {
    struct lnode *n = lnode_new(&rng);
    n->next = head;
    head = n;
    if (i % 3 == 0) {
      struct lnode *v = head;
      head = v->next;
      sum += v->len;
      free(v);
    }
  }
  for (int r = 0; r < 5; r++) {
    kal_scan();
    nap_us(2000);
  }
  while (head) {
    struct lnode *n = head;
    CHECK(check_fill(n->data, n->len, n->seed));
    sum = sum * 31 + n->len;
    head = n->next;
    free(n);
  }
  printf("checksum %lu\n", sum);
}

/* ------------------------------------------------------------ ptrace denied */

static void deny_ptrace(void) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ptrace, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
  REQUIRE(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  REQUIRE(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) == 0);
  errno = 0;
  long r = syscall(SYS_ptrace, -1L, 0L, 0L, 0L); /* invalid request: EIO unless filtered */
  REQUIRE(r == -1 && errno == EPERM);
  printf("ptrace denied by seccomp\n");
}

/* ------------------------------------------------------------ main */

/* pacing: 64 MiB in 4 KiB blocks, rewritten (one word a page) while the
 * scanner's timer runs (the driver sets interval_ms): every snapshot then
 * costs the program a copy-on-write fault per page, which KAL must measure
 * and pace by.  The scans measured are timer-driven.  One scan_now after
 * the set-up (whose own writes into pages shared with a snapshot cost as
 * much, and under emulation held the next timed scan off for minutes)
 * starts the pacing afresh: the program waits for it and then sleeps while
 * its cost is measured, so it costs little, and the next timed scan
 * follows within a second or two.  The rewriting
 * goes on until KAL_TEST_PACING_SCANS (1) scans completed during it, then
 * 2 s more so that the last one's cost is measured (at most 1.2 s after
 * it), or 60 s in all (slow machines, emulators: then "reached at -1"
 * fails the driver's check, not a timeout).  Each pass is followed by
 * a sleep as long as itself: the scan runs at background priority, and on
 * a machine whose other CPUs are busy (tests run side by side in a 2-vCPU
 * emulator) a program that never sleeps would starve it. */
static void case_pacing(void) {
  enum { N = 16384 };
  /* On the heap, not in bss: a large bss would move the other cases'
   * globals into its anonymous part, which use_globals=0 does not cover. */
  char **blk = malloc(N * sizeof *blk);
  REQUIRE(blk);
  for (int i = 0; i < N; i++) {
    blk[i] = malloc(4000);
    REQUIRE(blk[i]);
    memset(blk[i], i, 4000);
  }
  struct timespec s0t, s1t;
  clock_gettime(CLOCK_MONOTONIC, &s0t);
  int scanned = kal_scan();
  clock_gettime(CLOCK_MONOTONIC, &s1t);
  printf("pacing: set up, scan_now %d in %ld ms\n", scanned,
         (s1t.tv_sec - s0t.tv_sec) * 1000 + (s1t.tv_nsec - s0t.tv_nsec) / 1000000);
  /* Idle while that scan's cost is measured (up to 1.2 s after it):
   * the first rewriting pass after a snapshot takes a fault per page even
   * once it is gone (fork leaves the pages write-protected), which would
   * be charged to it and, under emulation, hold the next timed scan off
   * for minutes. */
  usleep(1500000);
  const char *w = getenv("KAL_TEST_PACING_SCANS");
  unsigned long want = w && atoi(w) > 0 ? (unsigned long)atoi(w) : 1;
  struct rmalloc_kal_stats s0, s;
  kal_get(&s0);
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long done_ms = -1, ms;
  unsigned long passes = 0;
  do {
    struct timespec p0, p1;
    clock_gettime(CLOCK_MONOTONIC, &p0);
    for (int i = 0; i < N; i++)
      blk[i][passes % 4000]++;
    passes++;
    clock_gettime(CLOCK_MONOTONIC, &p1);
    long pass_ns = (p1.tv_sec - p0.tv_sec) * 1000000000L + (p1.tv_nsec - p0.tv_nsec);
    struct timespec nap = {pass_ns / 1000000000L, pass_ns % 1000000000L};
    nanosleep(&nap, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t);
    ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
    if (done_ms < 0 && kal_get(&s) == 0 && s.scans - s0.scans >= want)
      done_ms = ms;
  } while ((done_ms < 0 || ms < done_ms + 2000) && ms < 60000);
  printf("pacing: %lu passes in %ld ms, %lu scans wanted, reached at %ld ms, %lu scans before, "
         "%lu ns cost before\n",
         passes, ms, want, done_ms, (unsigned long)s0.scans, (unsigned long)s0.cost_ns_total);
  kal_print_stats("live");
  for (int i = 0; i < N; i++)
    free(blk[i]);
  free(blk);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: kal_roots CASE\n");
    return 2;
  }
  const char *deny = getenv("KAL_TEST_DENY_PTRACE");
  if (deny && strcmp(deny, "1") == 0)
    deny_ptrace();
  t_start();
  kal_init();
  const char *c = argv[1];
  if (!strcmp(c, "global"))
    case_global_enc(ENC_PLAIN, "global");
  else if (!strcmp(c, "interior"))
    case_global_enc(ENC_INTERIOR, "interior");
  else if (!strcmp(c, "one_past_end"))
    case_global_enc(ENC_END, "one-past-end");
  else if (!strcmp(c, "dso_global")) {
    load_dso();
    static struct slots s;
    s.arr = dso_bss_slots();
    sl_setup(&s, "dso-bss", MAXS);
    sl_print(&s);
    scrub_stack();
    scan_phase_mutated(&s);
    kal_print_stats("live");
    sl_verify_free(&s);
  } else if (!strcmp(c, "mmap_private"))
    case_mmap(MAP_PRIVATE, "mmap-private");
  else if (!strcmp(c, "mmap_shared"))
    case_mmap(MAP_SHARED, "mmap-shared");
  else if (!strcmp(c, "thread_stack"))
    case_worker(W_STACK, 0);
  else if (!strcmp(c, "own_stack"))
    case_own_stack();
  else if (!strcmp(c, "tls"))
    case_worker(W_TLS, 1);
  else if (!strcmp(c, "tls_dlopen")) {
    load_dso();
    case_worker(W_DSO_TLS, 1);
  } else if (!strcmp(c, "pthread_key")) {
    make_high_keys();
    case_worker(W_KEYS, 1);
  } else if (!strcmp(c, "register"))
    case_register();
  else if (!strcmp(c, "own_register"))
    case_own_register();
  else if (!strcmp(c, "list"))
    case_list();
  else if (!strcmp(c, "tree"))
    case_tree();
  else if (!strcmp(c, "epoll"))
    case_epoll();
  else if (!strcmp(c, "timer"))
    case_timer();
  else if (!strcmp(c, "altstack"))
    case_altstack();
  else if (!strcmp(c, "sigqueue"))
    case_sigqueue();
  else if (!strcmp(c, "dropped"))
    case_dropped();
  else if (!strcmp(c, "blocked_signals"))
    case_blocked_signals();
  else if (!strcmp(c, "dropped_last"))
    case_dropped_last();
  else if (!strcmp(c, "false_reclaim"))
    case_false_reclaim();
  else if (!strcmp(c, "basic"))
    case_basic();
  else if (!strcmp(c, "pacing"))
    case_pacing();
  else {
    fprintf(stderr, "unknown case %s\n", c);
    return 2;
  }
  /* After everything was freed normally: a few more scans, nothing to find. */
  for (int r = 0; r < 3; r++)
    kal_scan();
  kal_print_stats("end");
  printf("case %s: done\n", c);
  return t_finish();
}
