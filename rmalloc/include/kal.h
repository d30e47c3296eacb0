/* kal.h: KAL, rmalloc's leak detection and reclamation, for programs that
 * want to steer it.  The same calls exist under LeakSanitizer's names
 * (__lsan_do_leak_check, ...), so code annotated for LeakSanitizer works
 * unchanged; these are KAL's names for them.  Settings: KAL_OPTIONS (see the
 * README), or a `const char *kal_default_options(void)` the program defines. */
#ifndef KAL_H
#define KAL_H

#include <stddef.h>
#include <rmalloc.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A full leak check and report now, once per process; with the exitcode
 * option set, leaks end the process with that status. */
void kal_do_leak_check(void);

/* A full leak check and report now; returns 1 if leaks were found. */
int kal_do_recoverable_leak_check(void);

/* Never report or reclaim the object starting at p; it counts as reachable. */
void kal_ignore_object(const void *p);

/* Treat [p, p + size) as a root; unregister with the same p and size. */
void kal_register_root_region(const void *p, size_t size);
void kal_unregister_root_region(const void *p, size_t size);

/* Hold reports and reclaim back until the matching kal_enable (nests).
 * Unlike LeakSanitizer's __lsan_disable, this is process-wide and does not
 * tag the allocations made meanwhile. */
void kal_disable(void);
void kal_enable(void);

/* The statistics (same as rmalloc_kal_stats). */
int kal_stats(struct rmalloc_kal_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* KAL_H */
