/* A small shared object that kal_roots.c dlopen()s.  Its TLS is dynamic TLS:
 * glibc allocates each thread's block with malloc on the thread's first
 * access and reaches it only from the thread's DTV, itself hanging off the
 * thread control block.  Its .bss is writable data of a dlopen'ed object.
 * Some of the test's objects are held only there.  Built with -fPIC -shared
 * by tests/kal.rs. */
#include <stddef.h>

#define DSO_SLOTS 16

static __thread void *dso_tls[DSO_SLOTS];
static void *dso_bss[DSO_SLOTS];

/* The calling thread's TLS slots, and the module's .bss slots. */
void *volatile *kal_dso_tls_slots(void) { return (void *volatile *)dso_tls; }
void *volatile *kal_dso_bss_slots(void) { return (void *volatile *)dso_bss; }
