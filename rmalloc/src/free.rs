//! The arena free path (glibc's `_int_free`): fastbins, coalescing with the
//! neighbours, the unsorted bin, merging into top, and trimming; plus
//! `malloc_consolidate` (`unlink_chunk` is with the bins).
//!
//! Every check glibc makes on a freed chunk is made here with glibc's
//! message, so corruption and double frees abort instead of spreading.

use core::sync::atomic::Ordering;

use crate::arena::Arena;
use crate::bins::*;
use crate::chunk::{self, protect_ptr, reveal_ptr, ChunkPtr, MINSIZE, PREV_INUSE, SIZE_SZ};
use crate::error::malloc_printerr;
use crate::options::PARAMS;
use crate::tcache::{self, Tcache};
use crate::tls;
use crate::tls::TCACHE_DISABLED;
use crate::top;

/// # Safety
/// `av` is an initialised arena and `p` one of its heap chunks that the
/// caller owns (allocated, being freed exactly once); the caller holds the
/// arena lock where the name or description says so (`*_locked`, merging,
/// consolidation), and never for the lock-free fastbin push from `int_free`.
#[inline(always)]
unsafe fn free_perturb(p: *mut u8, n: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        if PARAMS.perturb_enabled() {
            let b = PARAMS.perturb_byte();
            core::ptr::write_bytes(p, b, n);
        }
    }
}

/// Free heap chunk `p` of arena `av`, taking the arena lock if the chunk
/// does not fit in the thread's cache.
///
/// # Safety
/// `av` is an initialised arena and `p` one of its heap chunks that the
/// caller owns (allocated, being freed exactly once); the caller holds the
/// arena lock where the name or description says so (`*_locked`, merging,
/// consolidation), and never for the lock-free fastbin push from `int_free`.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn int_free(av: *mut Arena, p: ChunkPtr) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let size = chunk::size(p);
        check_pointer(p, size);
        if cache(p, size) {
            return;
        }
        if size <= PARAMS.max_fast() {
            fastbin_push(av, p, size, false);
            return;
        }
        let held = (*av).lock();
        merge_chunk(av, p, size, false);
        (*av).unlock(held);
    }
}

/// `free` of heap chunk `p` (of size `size`) that does not go to the thread
/// cache (its bin is full, or it is too big for one): the caller has already
/// checked the pointer and, for a cacheable size, the cache's double-free
/// key, so go straight to the fastbin or the arena's bins without repeating
/// that work.  `errno` is preserved: only trimming the main heap through
/// libc's `sbrk` can change it, so `merge_chunk` saves it around that alone.
///
/// # Safety
/// `p` is an in-use heap chunk (not mmapped) of size `size` that the caller
/// owns and frees exactly once, and the calling thread's cache exists.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn free_full_bin(p: ChunkPtr, size: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let av = crate::arena::arena_for_chunk(p);
        if size <= PARAMS.max_fast() {
            return fastbin_push(av, p, size, false);
        }
        // Tail calls only: with one thread no lock is taken (as
        // `Arena::lock` decides), so nothing is left to do after the merge.
        if crate::arena::single_threaded() {
            return merge_chunk(av, p, size, true);
        }
        merge_chunk_locked(av, p, size)
    }
}

/// `free` of heap chunk `p` (of size `size`) too big for the thread cache,
/// whose cache exists: glibc's pointer checks, then [`free_full_bin`].
///
/// # Safety
/// As `free_full_bin`, except that the pointer is not checked yet.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn free_uncached(p: ChunkPtr, size: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        check_pointer(p, size);
        free_full_bin(p, size)
    }
}

/// `merge_chunk` of a program's `free` under the arena lock (taken here).
///
/// # Safety
/// As `merge_chunk`, without the lock held.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
unsafe fn merge_chunk_locked(av: *mut Arena, p: ChunkPtr, size: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let held = (*av).lock();
        merge_chunk(av, p, size, true);
        (*av).unlock(held);
    }
}

/// Free heap chunk `p` of arena `av`, whose lock the caller holds.  Like
/// glibc, internal frees (memalign's trimmed ends, realloc's old block and
/// remainders) go to the thread's cache first too, which decides where the
/// next allocations land.
///
/// # Safety
/// `av` is an initialised arena and `p` one of its heap chunks that the
/// caller owns (allocated, being freed exactly once); the caller holds the
/// arena lock where the name or description says so (`*_locked`, merging,
/// consolidation), and never for the lock-free fastbin push from `int_free`.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn int_free_locked(av: *mut Arena, p: ChunkPtr) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let size = chunk::size(p);
        check_pointer(p, size);
        if cache(p, size) {
            return;
        }
        if size <= PARAMS.max_fast() {
            fastbin_push(av, p, size, true);
        } else {
            merge_chunk(av, p, size, false);
        }
    }
}

/// Put `p` in the calling thread's cache if it has room for its size.
///
/// # Safety
/// `av` is an initialised arena and `p` one of its heap chunks that the
/// caller owns (allocated, being freed exactly once); the caller holds the
/// arena lock where the name or description says so (`*_locked`, merging,
/// consolidation), and never for the lock-free fastbin push from `int_free`.
#[inline]
unsafe fn cache(p: ChunkPtr, size: usize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let t = tls::get::<{ tls::TCACHE }>();
        if t <= TCACHE_DISABLED {
            return false;
        }
        let tc = t as *mut Tcache;
        let idx = tcache::csize2tidx(size);
        if idx >= PARAMS.tcache_bins() {
            return false;
        }
        let e = chunk::chunk2mem(p) as *mut tcache::Entry;
        if (*e).key == tcache::key() {
            tcache::check_double_free(tc, e, idx);
        }
        if ((*tc).counts[idx] as usize) < PARAMS.tcache_count() {
            tcache::put(tc, p, idx);
            return true;
        }
        false
    }
}

/// glibc's first checks on any pointer given to `free` (address and size
/// only; nothing is dereferenced).
#[inline(always)]
pub(crate) fn check_pointer(p: ChunkPtr, size: usize) {
    if (p as usize) > size.wrapping_neg() || chunk::misaligned_chunk(p) {
        malloc_printerr("free(): invalid pointer");
    }
    if size < MINSIZE || !chunk::aligned_ok(size) {
        malloc_printerr("free(): invalid size");
    }
}

/// Push a fast chunk onto its fastbin.  Without the arena lock this is a
/// compare-and-swap loop, as in glibc, so frees of small chunks from other
/// threads do not contend with the owner's allocations.
///
/// # Safety
/// `av` is an initialised arena and `p` one of its heap chunks that the
/// caller owns (allocated, being freed exactly once); the caller holds the
/// arena lock where the name or description says so (`*_locked`, merging,
/// consolidation), and never for the lock-free fastbin push from `int_free`.
#[link_section = ".text.hot.rmalloc"]
unsafe fn fastbin_push(av: *mut Arena, p: ChunkPtr, size: usize, have_lock: bool) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let next = chunk::at_offset(p, size);
        let bad_next =
            || chunk::size_nomask(next) <= 2 * SIZE_SZ || chunk::size(next) >= (*av).system_mem();
        if bad_next() {
            // Without the lock the neighbour may be changing under us: look
            // again while holding it before calling this corruption.
            let fail = have_lock || {
                let held = (*av).lock();
                let f = bad_next();
                (*av).unlock(held);
                f
            };
            if fail {
                malloc_printerr("free(): invalid next size (fast)");
            }
        }
        free_perturb(chunk::chunk2mem(p), size - chunk::HDR);
        (*av).have_fastchunks.store(true, Ordering::Relaxed);
        let idx = fastbin_index(size);
        let fb = &(*av).fastbins[idx];
        let mut old = fb.load(Ordering::Relaxed);
        let single = crate::arena::single_threaded();
        loop {
            if old == p {
                malloc_printerr("double free or corruption (fasttop)");
            }
            (*p).fd =
                protect_ptr(core::ptr::addr_of!((*p).fd) as *const u8, old as *mut u8) as ChunkPtr;
            // With one thread nobody else touches the bin: a plain store, as
            // glibc does; otherwise a compare-and-swap against other pushers
            // (and the lock holder's pops).
            if single {
                fb.store(p, Ordering::Relaxed);
                break;
            }
            match fb.compare_exchange_weak(old, p, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(cur) => old = cur,
            }
        }
        if have_lock && !old.is_null() && fastbin_index(chunk::size(old)) != idx {
            malloc_printerr("invalid fastbin entry (free)");
        }
    }
}

/// Coalesce `p` with free neighbours and put the result in the unsorted bin
/// or top; then consolidate and trim if the freed block is large.  With
/// `keep_errno` (a `free` of the program's), `errno` is saved and restored
/// around trimming, the one step that can set it (libc's `sbrk`).
///
/// # Safety
/// `av` is an initialised arena and `p` one of its heap chunks that the
/// caller owns (allocated, being freed exactly once); the caller holds the
/// arena lock where the name or description says so (`*_locked`, merging,
/// consolidation), and never for the lock-free fastbin push from `int_free`.
#[link_section = ".text.hot.rmalloc"]
unsafe fn merge_chunk(av: *mut Arena, p: ChunkPtr, size: usize, keep_errno: bool) {
    // SAFETY: forwarded contract.
    unsafe { merge_body::<true>(av, p, size, keep_errno) }
}

/// `free` of a chunk KAL sampled (see `api::malloc_sampled`), whose
/// pointer the caller checked: merged like any other, but, like its
/// allocation, it does not make the arena merge its fast bins (glibc does
/// after freeing 64 KiB or more, which a sampled chunk next to the top
/// reaches at once).
///
/// # Safety
/// As `free_full_bin`, for a chunk bigger than the fast bins take.
#[cold]
#[inline(never)]
pub(crate) unsafe fn free_sampled(p: ChunkPtr, size: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let av = crate::arena::arena_for_chunk(p);
        let held = (*av).lock();
        merge_body::<false>(av, p, size, true);
        (*av).unlock(held);
    }
}

/// # Safety
/// As `merge_chunk`.
#[inline(always)]
unsafe fn merge_body<const MERGE_FASTBINS: bool>(
    av: *mut Arena,
    p: ChunkPtr,
    size: usize,
    keep_errno: bool,
) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let next = chunk::at_offset(p, size);
        if p == (*av).top {
            malloc_printerr("double free or corruption (top)");
        }
        if (*av).contiguous()
            && (*av).is_main()
            && (next as usize) >= (*av).top as usize + chunk::size((*av).top)
        {
            malloc_printerr("double free or corruption (out)");
        }
        if !chunk::prev_inuse(next) {
            malloc_printerr("double free or corruption (!prev)");
        }
        let nextsize = chunk::size(next);
        if chunk::size_nomask(next) <= 2 * SIZE_SZ || nextsize >= (*av).system_mem() {
            malloc_printerr("free(): invalid next size (normal)");
        }
        free_perturb(chunk::chunk2mem(p), size - chunk::HDR);

        let size = coalesce(av, p, size, next, nextsize, Check::Strict);
        if size >= FASTBIN_CONSOLIDATION_THRESHOLD {
            if MERGE_FASTBINS && (*av).have_fastchunks.load(Ordering::Relaxed) {
                malloc_consolidate(av);
            }
            if !(*av).is_main() || chunk::size((*av).top) >= PARAMS.trim_threshold() {
                if keep_errno {
                    let saved = crate::api::errno();
                    top::systrim(av, PARAMS.top_pad());
                    crate::api::set_errno(saved);
                } else {
                    top::systrim(av, PARAMS.top_pad());
                }
            }
        }
    }
}

/// Move every fastbin chunk, coalesced with its neighbours, into the
/// unsorted bin (or top).  Caller holds the arena lock.
///
/// # Safety
/// `av` is an initialised arena and `p` one of its heap chunks that the
/// caller owns (allocated, being freed exactly once); the caller holds the
/// arena lock where the name or description says so (`*_locked`, merging,
/// consolidation), and never for the lock-free fastbin push from `int_free`.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn malloc_consolidate(av: *mut Arena) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        (*av).have_fastchunks.store(false, Ordering::Relaxed);
        for idx in 0..NFASTBINS {
            let mut p = (*av).fastbins[idx].swap(core::ptr::null_mut(), Ordering::Acquire);
            while !p.is_null() {
                if !chunk::aligned_ok(p as usize) {
                    malloc_printerr("malloc_consolidate(): unaligned fastbin chunk detected");
                }
                if fastbin_index(chunk::size(p)) != idx {
                    malloc_printerr("malloc_consolidate(): invalid chunk size");
                }
                let nextp = reveal_ptr(
                    core::ptr::addr_of!((*p).fd) as *const u8,
                    (*p).fd as *mut u8,
                ) as ChunkPtr;
                let size = chunk::size(p);
                let next = chunk::at_offset(p, size);
                coalesce(av, p, size, next, chunk::size(next), Check::Fastbins);
                p = nextp;
            }
        }
    }
}

/// Which of glibc's messages a failed check reports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// `free`: also verifies the unsorted list's head.
    Strict,
    /// `malloc_consolidate`.
    Fastbins,
}

/// Merge free chunk `p` (`size` bytes, followed by `next` of `nextsize`)
/// with its free neighbours, then put the result at the head of the unsorted
/// bin, or make it the new top if it touches top.  Returns the merged size.
///
/// # Safety
/// `av` is an initialised arena and `p` one of its heap chunks that the
/// caller owns (allocated, being freed exactly once); the caller holds the
/// arena lock where the name or description says so (`*_locked`, merging,
/// consolidation), and never for the lock-free fastbin push from `int_free`.
// Inlined into each caller: out of line it costs `free` a call (+0.2-0.4%
// instructions on the small and mixed workloads).
#[inline(always)]
unsafe fn coalesce(
    av: *mut Arena,
    mut p: ChunkPtr,
    mut size: usize,
    next: ChunkPtr,
    nextsize: usize,
    check: Check,
) -> usize {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        if !chunk::prev_inuse(p) {
            let prevsize = chunk::prev_size(p);
            size += prevsize;
            p = chunk::at_offset(p, 0usize.wrapping_sub(prevsize));
            if chunk::size(p) != prevsize {
                malloc_printerr(match check {
                    Check::Strict => "corrupted size vs. prev_size while consolidating",
                    Check::Fastbins => "corrupted size vs. prev_size in fastbins",
                });
            }
            unlink_chunk(p);
        }
        if next == (*av).top {
            size += nextsize;
            chunk::set_head(p, size | PREV_INUSE);
            (*av).top = p;
            return size;
        }
        if !chunk::inuse_bit_at_offset(next, nextsize) {
            unlink_chunk(next);
            size += nextsize;
        } else {
            chunk::clear_inuse_bit_at_offset(next, 0);
        }
        let bck = (*av).unsorted();
        let fwd = (*bck).fd;
        if check == Check::Strict && (*fwd).bk != bck {
            malloc_printerr("free(): corrupted unsorted chunks");
        }
        (*p).fd = fwd;
        (*p).bk = bck;
        if !in_smallbin_range(size) {
            (*p).fd_nextsize = core::ptr::null_mut();
            (*p).bk_nextsize = core::ptr::null_mut();
        }
        (*bck).fd = p;
        (*fwd).bk = p;
        chunk::set_head(p, size | PREV_INUSE);
        chunk::set_foot(p, size);
        size
    }
}
