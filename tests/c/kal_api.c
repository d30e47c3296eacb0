/* kal_api: LeakSanitizer's interface and KAL's own, each checked for its
 * effect.  Cases (argv[1]):
 *   ignore     an ignored dropped object is neither reported nor reclaimed,
 *              a dropped one beside it is
 *   region     an object reachable only from a registered root region stays
 *              while registered and is found once unregistered
 *   disable    no report while disabled; reported after enable
 *   recover    __lsan_do_recoverable_leak_check returns 1 with a leak, 0 without
 *   exitcode   leaks at exit end the process with KAL's exitcode
 *   defaults   kal_default_options (defined here) turns KAL on
 *   statpage   /dev/shm/kal-<pid>.stats exists with the right header, its
 *              scan counter grows, and it is gone after exit (checked by the
 *              driver)
 * Build: cc -O1 -g kal_api.c -ldl.  Prints "PASS" at the end. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rmalloc.h"

#define CHECK(c) do { if (!(c)) { printf("CHECK FAILED line %d: %s\n", __LINE__, #c); exit(1); } } while (0)

static const uintptr_t K = 0x5a5a5a5a5a5a5a5aUL;
static uintptr_t hidden[4];

static void *sym(const char *n) {
    void *p = dlsym(RTLD_DEFAULT, n);
    if (!p) { printf("missing symbol %s\n", n); exit(2); }
    return p;
}

static struct rmalloc_kal_stats st(void) {
    int (*f)(struct rmalloc_kal_stats *) = sym("kal_stats");
    struct rmalloc_kal_stats s = { .size = sizeof s };
    CHECK(f(&s) == 0);
    return s;
}

__attribute__((noinline)) static void scrub(void) {
    volatile char b[16384];
    memset((char *)b, 0, sizeof b);
    __asm__ volatile("xor %%rbx,%%rbx; xor %%r12,%%r12; xor %%r13,%%r13; xor %%r14,%%r14; xor %%r15,%%r15"
                     ::: "rbx", "r12", "r13", "r14", "r15");
}

__attribute__((noinline)) static void make(int i, size_t n) {
    char *p = malloc(n);
    memset(p, 'a' + i, n);
    hidden[i] = (uintptr_t)p ^ K;
}

__attribute__((noinline)) static void drop(size_t n) {
    char *volatile p = malloc(n);
    memset(p, 'z', n);
}

static void *reveal(int i) { return (void *)(hidden[i] ^ K); }

static void scans(int n) {
    int (*scan)(void) = sym("rmalloc_kal_scan_now");
    for (int i = 0; i < n; i++) { scrub(); scan(); }
}

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IONBF, 0);
    const char *c = argc > 1 ? argv[1] : "";
    if (!strcmp(c, "ignore")) {
        void (*ign)(const void *) = sym("__lsan_ignore_object");
        make(0, 300); make(1, 300);
        ign(reveal(0));
        scans(4);
        struct rmalloc_kal_stats s = st();
        printf("reclaimed %lu\n", (unsigned long)s.reclaimed_chunks);
        CHECK(s.reclaimed_chunks == 1);                   /* object 1 only */
        CHECK(((char *)reveal(0))[299] == 'a');           /* object 0 intact */
        free(reveal(0));
    } else if (!strcmp(c, "region")) {
        /* Object 1 is referenced only from object 0, which is referenced
         * from nowhere: registering object 0's memory as a root region
         * keeps object 1 out of the report (detect mode). */
        void (*reg)(const void *, size_t) = sym("__lsan_register_root_region");
        void (*unreg)(const void *, size_t) = sym("__lsan_unregister_root_region");
        make(0, 256);
        make(1, 200);
        *(void **)reveal(0) = reveal(1);
        reg(reveal(0), 256);
        scans(4);
        printf("reported with region %lu\n", (unsigned long)st().leaks_reported);
        CHECK(st().leaks_reported == 1);
        unreg(reveal(0), 256);
        scans(4);
        printf("reported without %lu\n", (unsigned long)st().leaks_reported);
        CHECK(st().leaks_reported == 2);
    } else if (!strcmp(c, "disable")) {
        void (*dis)(void) = sym("__lsan_disable");
        void (*en)(void) = sym("__lsan_enable");
        dis();
        make(0, 500);
        scans(4);
        CHECK(st().leaks_reported == 0 && st().reclaimed_chunks == 0);
        en();
        scans(4);
        CHECK(st().reclaimed_chunks == 1);
    } else if (!strcmp(c, "recover")) {
        int (*rec)(void) = sym("__lsan_do_recoverable_leak_check");
        scrub();
        CHECK(rec() == 0);
        make(0, 400);
        scrub();
        CHECK(rec() == 1);
    } else if (!strcmp(c, "exitcode")) {
        for (int i = 0; i < 64; i++)
            drop(400);
        scrub();
        printf("PASS\n");          /* the driver expects status 23 and this line */
        return 0;
    } else if (!strcmp(c, "unshare")) {
        /* A new user namespace needs a single-threaded process: KAL's
         * scanner steps aside, and comes back at the next allocation. */
        if (access("/proc/self/ns/user", F_OK) != 0) {
            printf("no user namespaces in this kernel\n");
            return 3;                        /* e.g. a kernel without CONFIG_USER_NS */
        }
        if (unshare(CLONE_NEWUSER) != 0) {
            printf("unshare failed: %s\n", strerror(errno));
            return errno == EINVAL ? 1 : 3;   /* 3: not permitted here */
        }
        for (int i = 0; i < 100; i++)
            drop(5000);                      /* slow-path allocations */
        int (*scan)(void) = sym("rmalloc_kal_scan_now");
        int r = scan();
        printf("scan after unshare %d\n", r);
        CHECK(r == 1);
    } else if (!strcmp(c, "slow")) {
        /* A mark that cannot finish within scan_timeout_ms is abandoned:
         * the scan is discarded and the program goes on. */
        static void **list;
        for (int i = 0; i < 300000; i++) {
            void **n = malloc(64);
            n[0] = list;
            list = n;
        }
        int (*scan)(void) = sym("rmalloc_kal_scan_now");
        int r = scan();
        printf("scan with a 1 ms budget %d, discarded %lu\n", r,
               (unsigned long)st().scans_discarded);
        CHECK(r == 0 && st().scans_discarded >= 1);
    } else if (!strcmp(c, "single")) {
        /* KAL's scanner is invisible to glibc: a single-threaded program
         * stays single-threaded for it, so malloc keeps eliding its locks. */
        extern char __libc_single_threaded;
        int (*scan)(void) = sym("rmalloc_kal_scan_now");
        CHECK(scan() == 1);             /* the scanner exists and works */
        printf("__libc_single_threaded %d\n", __libc_single_threaded);
        CHECK(__libc_single_threaded == 1);
    } else if (!strcmp(c, "defaults")) {
        const char *(*mode)(void) = sym("rmalloc_kal_mode");
        printf("mode %s\n", mode());
        CHECK(!strcmp(mode(), "detect"));
    } else if (!strcmp(c, "statpage")) {
        char path[64];
        snprintf(path, sizeof path, "/dev/shm/kal-%d.stats", getpid());
        uint64_t a[4 + 8];
        FILE *f = fopen(path, "rb");
        CHECK(f != NULL);
        CHECK(fread(a, 1, sizeof a, f) == sizeof a);
        fclose(f);
        CHECK(a[0] == 0x31544154534c414bUL);
        CHECK((uint32_t)a[1] == 1 && (uint32_t)(a[1] >> 32) == (uint32_t)getpid());
        uint64_t scans0 = a[4 + 2];
        scans(2);
        f = fopen(path, "rb");
        CHECK(f && fread(a, 1, sizeof a, f) == sizeof a);
        fclose(f);
        printf("scans %lu -> %lu\n", (unsigned long)scans0, (unsigned long)a[4 + 2]);
        CHECK(a[4 + 2] >= scans0 + 2);
        printf("statpage %s\n", path);
    } else {
        printf("unknown case\n");
        return 2;
    }
    printf("PASS\n");
    return 0;
}

/* Only the "defaults" run is built with this (KAL_API_DEFAULTS). */
#ifdef KAL_API_DEFAULTS
const char *kal_default_options(void) { return "mode=detect:leak_check_at_exit=0"; }
const char *__lsan_default_options(void) { return "detect_leaks=1:verbosity=0"; }
#endif
