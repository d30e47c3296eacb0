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


/* ---- KAL: leak detection and reclamation (configured by KAL_OPTIONS) ----
 *
 * KAL_OPTIONS is a colon-separated list of key=value pairs, in the style of
 * LSAN_OPTIONS, e.g. KAL_OPTIONS=mode=detect:interval_ms=2000:log_path=/tmp/leaks
 * See the README for every option.  KAL is off unless mode= says otherwise. */

#include <stdint.h>

/* Counters of the KAL engine.  `size` is set by the caller to
 * sizeof(struct rmalloc_kal_stats) and by the library to the number of bytes
 * it filled in, so older callers keep working when fields are added. */
struct rmalloc_kal_stats {
    uint64_t size;
    uint32_t mode;               /* 0 off, 1 detect, 2 reclaim */
    uint32_t backend;            /* 0 none, 1 fork, 2 kernel */
    uint64_t scans;              /* snapshots marked to completion */
    uint64_t scans_discarded;    /* snapshots from which nothing was concluded */
    uint64_t discarded_stop;     /* ... because a thread could not be stopped */
    uint64_t discarded_heap;     /* ... because heap metadata was mid-update or unreadable */
    uint64_t discarded_roots;    /* ... because a root source could not be read */
    uint64_t pause_ns_p50;       /* time the program's threads were stopped */
    uint64_t pause_ns_p99;
    uint64_t pause_ns_max;
    uint64_t scan_ns_last;       /* CPU time of the last scan (dissect + mark), ns */
    uint64_t bytes_scanned;      /* total bytes marked through, all scans */
    uint64_t chunks_last;        /* in-use chunks seen by the last scan */
    uint64_t unreachable_chunks; /* unreachable in the last completed scan */
    uint64_t unreachable_bytes;
    uint64_t reclaimed_chunks;   /* freed by KAL (reclaim mode), total */
    uint64_t reclaimed_bytes;
    uint64_t false_reclaims;     /* reclaimed chunks the program later freed or resized */
    uint64_t leaks_reported;     /* leaked chunks named in reports, total */
    uint64_t cost_ns_last;       /* what the last scan cost the program: pause + copy-on-write work */
    uint64_t cost_ns_total;
    uint64_t interval_ns;        /* gap from the last scan's end to the next timed one, after pacing */
};

/* Fill *out (see `size` above).  Returns 0, or -1 with errno EINVAL when out
 * is null or out->size is too small for the first two fields. */
int rmalloc_kal_stats(struct rmalloc_kal_stats *out);

/* "off", "detect" or "reclaim". */
const char *rmalloc_kal_mode(void);

/* Take one snapshot and mark it now, waiting for the result; in reclaim mode,
 * then free whatever has become due (confirm_scans, min_free_age_ms).
 * Returns 1 if the scan completed, 0 if the snapshot was discarded (see the
 * statistics for why), -1 if KAL is off. */
int rmalloc_kal_scan_now(void);

#ifdef __cplusplus
}
#endif
#endif /* RMALLOC_H */
