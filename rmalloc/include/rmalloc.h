/* rmalloc: a glibc-compatible malloc.  Programs use <stdlib.h> and <malloc.h>
 * as with glibc; this header adds only what rmalloc has beyond glibc's API. */
#ifndef RMALLOC_H
#define RMALLOC_H

#include <stddef.h>
#include <malloc.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version string of the loaded rmalloc, e.g. "rmalloc 0.1.0". */
const char *rmalloc_version(void);

/* Walk every arena and check the heap's invariants (boundary tags, bins,
 * free-list links, top chunk).  Returns 0 when consistent; otherwise reports
 * the first problem on stderr and returns -1.  Never aborts. */
int rmalloc_check_heap(void);

#ifdef __cplusplus
}
#endif
#endif /* RMALLOC_H */
