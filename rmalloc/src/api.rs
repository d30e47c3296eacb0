//! The allocator's public operations with glibc 2.36 semantics: the fast
//! paths through the thread cache, and the slow paths through arenas.
//!
//! These are plain Rust functions; `exports.rs` gives them their C names.
//! Keeping them separate lets the crate's own tests drive the allocator
//! in-process without replacing the test binary's `malloc`.

use crate::arena::{self, arena_for_chunk, arena_get, arena_get_retry};
use crate::chunk::{
    self, checked_request2size, chunk2mem, mem2chunk, ALIGN, IS_MMAPPED, MINSIZE, SIZE_BITS,
    SIZE_SZ,
};
use crate::error::malloc_printerr;
use crate::free::{check_pointer, int_free};
use crate::init;
use crate::malloc::int_malloc;
use crate::mmap_chunk;
use crate::options::{self, PARAMS};
use crate::os;
use crate::realloc::{int_memalign, int_realloc};
use crate::tcache::{self, csize2tidx, Entry, Tcache, TCACHE_MAX_BINS};
use crate::thread;
use crate::tls;
use crate::tls::TCACHE_DISABLED;

#[inline(always)]
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

#[inline(always)]
pub(crate) fn errno() -> i32 {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

/// The KAL hook of the allocation slow paths: one flag test on the arena
/// just taken (see `kal::on_arena`).
///
/// # Safety
/// `av` is the arena the caller just took (locked, or locks elided).
#[inline(always)]
unsafe fn kal_hook(av: *mut arena::Arena) {
    // SAFETY: arenas are never freed; the caller holds `av` (contract).
    unsafe {
        if (*av)
            .kal_pending
            .load(core::sync::atomic::Ordering::Relaxed)
        {
            crate::kal::on_arena(av);
        }
    }
}

#[cold]
fn enomem() -> *mut u8 {
    set_errno(libc::ENOMEM);
    core::ptr::null_mut()
}

/// `malloc`.
///
/// # Safety
/// Always safe to call; unsafe because it hands out raw memory.
#[inline(always)]
pub unsafe fn malloc(bytes: usize) -> *mut u8 {
    // SAFETY: a TCACHE slot above TCACHE_DISABLED is this thread's live
    // cache, and `tcache::get` takes only from a non-empty bin of it.
    unsafe {
        let Some(nb) = checked_request2size(bytes) else {
            return enomem();
        };
        let tls = tls::offset();
        let t = tls::get_at::<{ tls::TCACHE }>(tls);
        let idx = csize2tidx(nb);
        // The countdown of KAL's allocation-site sampling comes first, so
        // that every call counts; it runs out once per thread when nothing
        // samples (see `malloc_sampled`).  Bins from `tcache_bins` up stay
        // empty (nothing caches there), so the constant bound is enough.
        if tls::site_countdown(tls, nb) && t > TCACHE_DISABLED && idx < TCACHE_MAX_BINS {
            let tc = t as *mut Tcache;
            if (*tc).counts[idx] != 0 {
                return tcache::get(tc, idx);
            }
        }
        malloc_slow(bytes, nb)
    }
}

/// # Safety
/// Called by `malloc` with `nb` the checked chunk size for `bytes`.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
unsafe fn malloc_slow(bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe {
        // Both arms are tail calls, so this test is all the function does.
        // A count below zero reads above the bound as unsigned.
        if tls::get::<{ tls::SITE }>() > crate::kal::stacks::MAX_COUNTDOWN {
            return malloc_sampled(bytes, nb);
        }
        malloc_arena_out(bytes, nb)
    }
}

/// `malloc` once the thread's site countdown has run out: re-arm it, and
/// record this allocation's stack if KAL samples (see `kal::stacks::due`).
/// A sampled chunk is made at least as big as the first size the thread
/// cache does not hold, so that its `free` takes the out-of-line path,
/// which forgets the stack; the fast path of `free` then never needs to
/// look for one.  Without recording this runs once per thread (and once
/// per 16 MiB it allocates after), so it sits with the hot code.
///
/// # Safety
/// As `malloc_slow`.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
unsafe fn malloc_sampled(bytes: usize, nb: usize) -> *mut u8 {
    use crate::kal::stacks::{self, Due};
    // SAFETY: as in `malloc`.
    unsafe {
        match stacks::due() {
            Due::No => malloc_cached(bytes, nb),
            Due::Every => {
                let p = malloc_cached(bytes, nb);
                stacks::record_new(p, 0);
                p
            }
            Due::Sample => {
                let min = crate::bins::tidx2csize(PARAMS.tcache_bins());
                if nb < min {
                    let p = malloc_arena_sampled(min - SIZE_SZ, min);
                    if p.is_null() {
                        // No room for the larger chunk: serve the request
                        // as usual, unrecorded.
                        return malloc_cached(bytes, nb);
                    }
                    // The marker scans a chunk's whole usable size (which
                    // may exceed `min` by a remainder too small to split):
                    // clear what the program did not ask for, so old
                    // pointers there keep nothing alive.
                    let asked = nb - SIZE_SZ;
                    let usable = crate::chunk::usable_size(mem2chunk(p));
                    core::ptr::write_bytes(p.add(asked), 0, usable - asked);
                    stacks::record_new(p, asked);
                    p
                } else {
                    let p = malloc_arena_out(bytes, nb);
                    stacks::record_new(p, 0);
                    p
                }
            }
        }
    }
}

/// The thread cache as on the fast path, else the arena.
///
/// # Safety
/// As `malloc_slow`.
#[inline(always)]
unsafe fn malloc_cached(bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: as in `malloc`.
    unsafe {
        let t = tls::get::<{ tls::TCACHE }>();
        let idx = csize2tidx(nb);
        if t > TCACHE_DISABLED
            && idx < PARAMS.tcache_bins()
            && (*(t as *mut Tcache)).counts[idx] != 0
        {
            tcache::get(t as *mut Tcache, idx)
        } else {
            malloc_arena_out(bytes, nb)
        }
    }
}

/// # Safety
/// As `malloc_slow`.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
unsafe fn malloc_arena_out(bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { malloc_arena(bytes, nb) }
}

/// # Safety
/// As `malloc_slow`.
#[inline(always)]
unsafe fn malloc_arena(bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    let p = unsafe { malloc_in_arena::<false>(bytes, nb) };
    if p.is_null() {
        return enomem();
    }
    p
}

/// [`malloc_arena`] for a sampled chunk made large (see `malloc_sampled`):
/// the arena's fast bins stay as they are.  Null, without touching `errno`,
/// when there is no room.
///
/// # Safety
/// As `malloc_slow`.
#[cold]
#[inline(never)]
unsafe fn malloc_arena_sampled(bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { malloc_in_arena::<true>(bytes, nb) }
}

/// The arena part of `malloc`: the thread's arena, or another if it has no
/// room; null if none has.  `SAMPLED`: see [`malloc_arena_sampled`].
///
/// # Safety
/// As `malloc_slow`.
#[inline(always)]
unsafe fn malloc_in_arena<const SAMPLED: bool>(bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: `arena_get` returns the thread's arena locked (token `held`), which
    // is what `int_malloc` and the retry require; it is unlocked once.
    unsafe {
        init::ensure();
        thread::tcache_or_init();
        let (mut av, mut held) = arena_get(bytes);
        kal_hook(av);
        let mut p = if SAMPLED {
            crate::malloc::int_malloc_keep_fastbins(av, bytes, nb)
        } else {
            crate::malloc::int_malloc_inline(av, bytes, nb)
        };
        if p.is_null() {
            (av, held) = arena_get_retry(av, held, bytes);
            p = int_malloc(av, bytes, nb);
        }
        (*av).unlock(held);
        p
    }
}

/// `free`.  Preserves `errno`.
///
/// # Safety
/// `mem` must be null or a live pointer from this allocator.
#[inline(always)]
pub unsafe fn free(mem: *mut u8) {
    // SAFETY: `mem` is a live chunk of ours (contract), so its header is readable.
    unsafe {
        if mem.is_null() {
            return;
        }
        let p = mem2chunk(mem);
        let raw = chunk::size_nomask(p);
        let t = tls::get::<{ tls::TCACHE }>();
        if raw & IS_MMAPPED == 0 && t > TCACHE_DISABLED {
            let size = raw & !SIZE_BITS;
            let idx = csize2tidx(size);
            // `fast_bins` is `tcache_bins`, or 0 while KAL records every
            // allocation's stack (then `free_uncached_sited` forgets them).
            // Sampled chunks are never of a cached size (see
            // `malloc_sampled`).
            if idx < PARAMS.fast_bins() {
                return free_cached(t, p, size, idx);
            }
            // Too big for the cache (or every free diverted): straight to
            // the arena too (what `free_slow` would do, without re-deriving
            // it), forgetting its stack first while KAL records allocation
            // stacks.  (In the moment between diverting and recording, a
            // cached size goes to the arena: safe, only uncached.)
            if !crate::kal::stacks::ON.load(core::sync::atomic::Ordering::Relaxed) {
                return crate::free::free_uncached(p, size);
            }
            return free_uncached_sited(p, size);
        }
        free_slow(p, raw);
    }
}

/// The thread-cache part of `free`, for a chunk of tcache bin `idx`.
///
/// # Safety
/// `t` is this thread's live cache, `p` a live heap chunk being freed of
/// `size` bytes, `idx < tcache_bins`.
#[inline(always)]
unsafe fn free_cached(t: usize, p: chunk::ChunkPtr, size: usize, idx: usize) {
    // SAFETY: contract; once `check_pointer` passes, the chunk can go to
    // the cache or the arena.
    unsafe {
        check_pointer(p, size);
        let tc = t as *mut Tcache;
        let e = chunk2mem(p) as *mut Entry;
        if (*e).key == tcache::key() {
            tcache::check_double_free(tc, e, idx);
        }
        if ((*tc).counts[idx] as usize) < PARAMS.tcache_count() {
            tcache::put(tc, p, idx);
            return;
        }
        // Bin full: checked already, straight to the arena.
        crate::free::free_full_bin(p, size)
    }
}

/// # Safety
/// `p` is the chunk of a live pointer the program passed to `free`, and
/// `raw` its size field as read by `free`.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
unsafe fn free_slow(p: chunk::ChunkPtr, raw: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        // Both arms are tail calls, so this test is all the function does.
        if crate::kal::stacks::ON.load(core::sync::atomic::Ordering::Relaxed) {
            return free_sited(p, raw);
        }
        free_arena_out(p, raw)
    }
}

/// `free` while KAL records allocation stacks: forget the chunk's stack,
/// then the thread cache as on the fast path, else the arena.
///
/// # Safety
/// As `free_slow`.
#[inline(never)]
unsafe fn free_sited(p: chunk::ChunkPtr, raw: usize) {
    // SAFETY: as in `free`.
    unsafe {
        let had_stack = crate::kal::stacks::on_free(chunk2mem(p));
        let t = tls::get::<{ tls::TCACHE }>();
        if raw & IS_MMAPPED == 0 && t > TCACHE_DISABLED {
            let size = raw & !SIZE_BITS;
            let idx = csize2tidx(size);
            if idx < PARAMS.tcache_bins() {
                return free_cached(t, p, size, idx);
            }
            return free_uncached_forgotten(p, size, had_stack);
        }
        free_arena_out(p, raw)
    }
}

/// `free` of a heap chunk the inlined path did not cache (too big for the
/// thread cache, which exists, or every free diverted) while KAL records
/// allocation stacks: forget its stack, then the cache or as
/// `free::free_uncached`.
///
/// # Safety
/// As `free::free_uncached`.
#[inline(never)]
unsafe fn free_uncached_sited(p: chunk::ChunkPtr, size: usize) {
    // SAFETY: forwarded contract: `chunk2mem(p)` is the pointer the program
    // passed to `free`, as `on_free` (which forgets its stack) requires.
    unsafe {
        let had_stack = crate::kal::stacks::on_free(chunk2mem(p));
        if PARAMS.fast_bins() == 0 {
            return free_diverted(p, size, had_stack);
        }
        free_uncached_forgotten(p, size, had_stack)
    }
}

/// Every free diverted (`sites=all`, low sample rates) and its stack
/// forgotten: a cached size still goes to the cache, and through its
/// double-free check.  Out of line, to keep the sampled path's frees of
/// large chunks as short as they were (`fast_bins` is 0 only while every
/// free is diverted).
///
/// # Safety
/// As `free::free_uncached`; `had_stack` as for `free_uncached_forgotten`.
#[inline(never)]
unsafe fn free_diverted(p: chunk::ChunkPtr, size: usize, had_stack: bool) {
    // SAFETY: forwarded contract; `t` is this thread's live cache.
    unsafe {
        let idx = csize2tidx(size);
        let t = tls::get::<{ tls::TCACHE }>();
        if idx < PARAMS.tcache_bins() && t > TCACHE_DISABLED {
            return free_cached(t, p, size, idx);
        }
        free_uncached_forgotten(p, size, had_stack)
    }
}

/// The rest of [`free_uncached_sited`], once the stack is forgotten:
/// `had_stack` says whether there was one.
///
/// # Safety
/// As `free::free_uncached`.
#[inline(always)]
unsafe fn free_uncached_forgotten(p: chunk::ChunkPtr, size: usize, had_stack: bool) {
    // SAFETY: forwarded contract; the pointer is checked before the arena
    // takes the chunk.
    unsafe {
        check_pointer(p, size);
        // A sampled chunk (made large only to be seen here) leaves the
        // arena's fast bins alone, as its allocation did.
        if had_stack
            && crate::kal::stacks::sampling()
            && size == crate::bins::tidx2csize(PARAMS.tcache_bins())
            && size > PARAMS.max_fast()
        {
            return crate::free::free_sampled(p, size);
        }
        crate::free::free_full_bin(p, size)
    }
}

/// # Safety
/// As `free_slow`.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
unsafe fn free_arena_out(p: chunk::ChunkPtr, raw: usize) {
    // SAFETY: forwarded contract.
    unsafe { free_arena(p, raw) }
}

/// # Safety
/// As `free_slow`.
#[inline(always)]
unsafe fn free_arena(p: chunk::ChunkPtr, raw: usize) {
    // SAFETY: `p` is a live chunk being freed once (contract); a heap chunk
    // goes to its arena once `check_pointer` passes.
    unsafe {
        // The common case: a heap chunk too big for the thread's cache (which
        // exists, so initialisation is done) goes straight to its fastbin or
        // arena, which keep `errno`.  Only tail calls here, so no registers
        // are saved on the way.
        let t = tls::get::<{ tls::TCACHE }>();
        if raw & IS_MMAPPED == 0 && t > TCACHE_DISABLED {
            let size = raw & !SIZE_BITS;
            if csize2tidx(size) >= PARAMS.tcache_bins() {
                check_pointer(p, size);
                return crate::free::free_full_bin(p, size);
            }
        }
        free_rare(p, raw)
    }
}

/// The rest of `free`: mmapped chunks, a thread's first `free` (its cache
/// is created here), and anything while the cache is disabled.
///
/// # Safety
/// As `free_slow`.
#[cold]
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
unsafe fn free_rare(p: chunk::ChunkPtr, raw: usize) {
    // SAFETY: `p` is a live chunk being freed once (contract); mmapped ones are
    // unmapped, heap ones go to their own arena after `check_pointer`.
    unsafe {
        let saved = errno();
        init::ensure();
        if raw & IS_MMAPPED != 0 {
            // A chunk KAL holds in probation is restored and then freed as the
            // program asks; one KAL let go of meanwhile shows it in its header.
            if crate::kal::claim_freeing(p) || chunk::size_nomask(p) & IS_MMAPPED == 0 {
                set_errno(saved);
                return free(chunk2mem(p));
            }
            PARAMS.note_mmapped_free(raw);
            mmap_chunk::unmap_chunk(p);
        } else {
            check_pointer(p, raw & !SIZE_BITS);
            // A thread's first free creates its cache, as its first malloc would;
            // int_free then caches the chunk if there is room.
            thread::tcache_or_init();
            int_free(arena_for_chunk(p), p);
        }
        set_errno(saved);
    }
}

/// `calloc`.  Like glibc's, it goes straight to the arena (not the thread
/// cache) and skips clearing memory that is fresh from the kernel.
///
/// # Safety
/// Always safe to call.
#[link_section = ".text.hot.rmalloc"]
pub unsafe fn calloc(n: usize, size: usize) -> *mut u8 {
    // SAFETY: the arena is used only while locked; `mem` is a fresh chunk of at
    // least `bytes` (mmapped) or `csz - SIZE_SZ` usable bytes to clear.
    unsafe {
        let Some(bytes) = n.checked_mul(size) else {
            return enomem();
        };
        let Some(nb) = checked_request2size(bytes) else {
            return enomem();
        };
        init::ensure();
        thread::tcache_or_init();
        let (mut av, mut held) = arena_get(bytes);
        kal_hook(av);
        let (mut oldtop, mut fresh_from) = fresh_memory(av);
        let mut mem = int_malloc(av, bytes, nb);
        if mem.is_null() {
            (av, held) = arena_get_retry(av, held, bytes);
            (oldtop, fresh_from) = fresh_memory(av);
            mem = int_malloc(av, bytes, nb);
        }
        (*av).unlock(held);
        if mem.is_null() {
            return enomem();
        }
        let p = mem2chunk(mem);
        let perturb = PARAMS.perturb_enabled();
        if chunk::is_mmapped(p) {
            // Fresh mappings are already zero.
            if perturb {
                core::ptr::write_bytes(mem, 0, bytes);
            }
            return mem;
        }
        let mut csz = chunk::size(p);
        if !perturb && p == oldtop && (p as usize) + csz > fresh_from {
            csz = fresh_from - p as usize;
        }
        core::ptr::write_bytes(mem, 0, csz - SIZE_SZ);
        mem
    }
}

/// The top chunk of `av` (locked) and the address from which the memory
/// beyond it has never been handed out since the kernel supplied it (so is
/// still zero).  Conservative: without a single contiguous main heap, only
/// the top chunk's end counts as fresh.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds.
unsafe fn fresh_memory(av: *mut arena::Arena) -> (chunk::ChunkPtr, usize) {
    // SAFETY: `av` is locked (contract), so its top and accounting are stable;
    // a non-main top lies in a heap whose header `heap_for_ptr` finds.
    unsafe {
        let top = (*av).top;
        let end = top as usize + chunk::size(top);
        if (*av).is_main() {
            if (*av).contiguous()
                && crate::top::NREGIONS.load(core::sync::atomic::Ordering::Relaxed) == 1
            {
                let base = crate::top::SBRK_BASE.load(core::sync::atomic::Ordering::Relaxed);
                return (top, end.max(base + (*av).max_system_mem));
            }
            (top, end)
        } else {
            let h = crate::heap::heap_for_ptr(top as usize);
            (top, end.max(h as usize + (*h).mprotect_size))
        }
    }
}

/// `realloc`.
///
/// # Safety
/// `old` must be null or a live pointer from this allocator.
#[link_section = ".text.warm.rmalloc"]
pub unsafe fn realloc(old: *mut u8, bytes: usize) -> *mut u8 {
    // SAFETY: `old` is live (contract): its header is readable, and a move copies
    // at most its usable bytes before freeing it.
    unsafe {
        if bytes == 0 && !old.is_null() {
            free(old);
            return core::ptr::null_mut();
        }
        if old.is_null() {
            return malloc(bytes);
        }
        let oldp = mem2chunk(old);
        if chunk::is_mmapped(oldp) {
            // A chunk KAL had reclaimed is restored before it is resized.
            crate::kal::claim_freeing(oldp);
        }
        let oldsize = chunk::size(oldp);
        if (oldp as usize) > oldsize.wrapping_neg() || chunk::misaligned_chunk(oldp) {
            malloc_printerr("realloc(): invalid pointer");
        }
        let Some(nb) = checked_request2size(bytes) else {
            return enomem();
        };
        init::ensure();
        if chunk::is_mmapped(oldp) {
            let np = mmap_chunk::remap_chunk(oldp, nb);
            if !np.is_null() {
                return chunk2mem(np);
            }
            if oldsize - SIZE_SZ >= nb {
                return old;
            }
            let newmem = malloc(bytes);
            if newmem.is_null() {
                return newmem;
            }
            core::ptr::copy_nonoverlapping(old, newmem, oldsize - chunk::HDR);
            mmap_chunk::unmap_chunk(oldp);
            return newmem;
        }
        let av = arena_for_chunk(oldp);
        let held = (*av).lock();
        let newp = int_realloc(av, oldp, oldsize, nb);
        (*av).unlock(held);
        if !newp.is_null() {
            return newp;
        }
        // The arena is exhausted: try elsewhere and move.
        let newmem = malloc(bytes);
        if !newmem.is_null() {
            core::ptr::copy_nonoverlapping(old, newmem, oldsize - SIZE_SZ);
            int_free(av, oldp);
        }
        newmem
    }
}

/// `reallocarray`.
///
/// # Safety
/// As `realloc`.
pub unsafe fn reallocarray(old: *mut u8, n: usize, size: usize) -> *mut u8 {
    // SAFETY: forwarded to `realloc` under the same contract.
    unsafe {
        match n.checked_mul(size) {
            Some(b) => realloc(old, b),
            None => enomem(),
        }
    }
}

/// `memalign` (also `aligned_alloc`, as in glibc 2.36).
///
/// # Safety
/// Always safe to call.
#[link_section = ".text.warm.rmalloc"]
pub unsafe fn memalign(alignment: usize, bytes: usize) -> *mut u8 {
    // SAFETY: `int_memalign` runs on the arena locked by `arena_get`(_retry),
    // which is unlocked once.
    unsafe {
        if alignment <= ALIGN {
            return malloc(bytes);
        }
        let mut alignment = core::cmp::max(alignment, MINSIZE);
        if alignment > usize::MAX / 2 + 1 {
            set_errno(libc::EINVAL);
            return core::ptr::null_mut();
        }
        if !alignment.is_power_of_two() {
            alignment = alignment.next_power_of_two();
        }
        let Some(nb) = checked_request2size(bytes) else {
            return enomem();
        };
        if nb > usize::MAX - alignment - MINSIZE {
            return enomem();
        }
        init::ensure();
        let (mut av, mut held) = arena_get(bytes + alignment + MINSIZE);
        kal_hook(av);
        let mut p = int_memalign(av, alignment, nb);
        if p.is_null() {
            (av, held) = arena_get_retry(av, held, bytes);
            p = int_memalign(av, alignment, nb);
        }
        (*av).unlock(held);
        if p.is_null() {
            return enomem();
        }
        p
    }
}

/// `posix_memalign`: returns 0, `EINVAL` or `ENOMEM`.
///
/// # Safety
/// `out` must be valid for writing a pointer.
#[link_section = ".text.warm.rmalloc"]
pub unsafe fn posix_memalign(out: *mut *mut u8, alignment: usize, bytes: usize) -> i32 {
    // SAFETY: `out` is writable (contract).
    unsafe {
        let w = core::mem::size_of::<usize>();
        if !alignment.is_multiple_of(w) || !(alignment / w).is_power_of_two() {
            return libc::EINVAL;
        }
        let m = memalign(alignment, bytes);
        if m.is_null() {
            return libc::ENOMEM;
        }
        *out = m;
        0
    }
}

/// `valloc`.
///
/// # Safety
/// Always safe to call.
pub unsafe fn valloc(bytes: usize) -> *mut u8 {
    // SAFETY: `memalign` has no precondition.
    unsafe { memalign(os::pagesize(), bytes) }
}

/// `pvalloc`, including glibc 2.36's rounding (`& -(pagesize - 1)`).
///
/// # Safety
/// Always safe to call.
pub unsafe fn pvalloc(bytes: usize) -> *mut u8 {
    // SAFETY: `memalign` has no precondition.
    unsafe {
        let ps = os::pagesize();
        let Some(r) = bytes.checked_add(ps - 1) else {
            return enomem();
        };
        memalign(ps, r & (ps - 1).wrapping_neg())
    }
}

/// `malloc_usable_size`.
///
/// # Safety
/// `mem` must be null or a live pointer from this allocator.
pub unsafe fn usable_size(mem: *mut u8) -> usize {
    // SAFETY: `mem` is null or live (contract), so its header is readable.
    unsafe {
        if mem.is_null() {
            return 0;
        }
        let p = mem2chunk(mem);
        if chunk::is_mmapped(p) {
            crate::kal::claim(p);
        }
        if chunk::is_mmapped(p) || chunk::inuse(p) {
            chunk::usable_size(p)
        } else {
            0
        }
    }
}

/// `mallopt`: consolidates the main arena first, as glibc does before any
/// change of the fastbin limit.
pub fn mallopt(param: i32, value: i32) -> i32 {
    init::ensure();
    let m = arena::main_arena();
    // SAFETY: the main arena is initialised; we hold its lock while
    // consolidating and changing parameters.
    unsafe {
        let held = (*m).lock();
        crate::free::malloc_consolidate(m);
        let r = options::mallopt(param, value);
        (*m).unlock(held);
        r
    }
}

/// `malloc_trim`: consolidate, release whole free pages inside free chunks,
/// and shrink the main heap's top.  Returns 1 if memory was released.
pub fn malloc_trim(pad: usize) -> i32 {
    init::ensure();
    let mut result = 0;
    arena::for_each_arena(|a| {
        // SAFETY: arenas are valid forever; we hold the lock while trimming.
        unsafe {
            let held = (*a).lock();
            result |= trim_arena(a, pad);
            (*a).unlock(held);
        }
    });
    result
}

/// # Safety
/// `av` is an initialised arena whose lock the caller holds.
unsafe fn trim_arena(av: *mut arena::Arena, pad: usize) -> i32 {
    // SAFETY: `av` is locked (contract): its bins are stable, and the pages
    // advised away lie wholly inside free chunks, past their headers.
    unsafe {
        crate::free::malloc_consolidate(av);
        let ps = os::pagesize();
        let psindex = crate::bins::bin_index(ps);
        let mut result = 0;
        for i in 1..crate::bins::NBINS {
            if i != 1 && i < psindex {
                continue;
            }
            let bin = (*av).bin_at(i);
            let mut p = (*bin).bk;
            while p != bin {
                let size = chunk::size(p);
                let hdr = core::mem::size_of::<chunk::Chunk>();
                if size > ps - 1 + hdr {
                    let paligned = os::align_up(p as usize + hdr, ps);
                    let left = size - (paligned - p as usize);
                    if left > ps - 1 {
                        let _ = rmalloc_sys::madvise(
                            paligned as *mut u8,
                            left & !(ps - 1),
                            rmalloc_sys::MADV_DONTNEED,
                        );
                        result = 1;
                    }
                }
                p = (*p).bk;
            }
        }
        if (*av).is_main() && crate::top::systrim(av, pad) {
            result = 1;
        }
        result
    }
}
