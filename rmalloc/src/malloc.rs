//! The arena allocation path (glibc's `_int_malloc`): fastbins, small bins,
//! the unsorted bin sweep, best-fit large bins, the binmap scan, and top.
//!
//! Called with the arena locked.  Chunks of the exact size found on the way
//! are stashed into the calling thread's tcache, so that a burst of small
//! allocations takes the lock once.

use core::sync::atomic::Ordering;

use crate::arena::Arena;
use crate::bins::unlink_chunk;
use crate::bins::*;
use crate::chunk::{self, chunk2mem, reveal_ptr, ChunkPtr, MINSIZE, PREV_INUSE, SIZE_SZ};
use crate::error::malloc_printerr;
use crate::free::malloc_consolidate;
use crate::options::PARAMS;
use crate::tcache::{self, Tcache};
use crate::tls;
use crate::tls::TCACHE_DISABLED;
use crate::top;

/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk and size arguments are as described
/// above and belong to `av`.
#[inline(always)]
unsafe fn alloc_perturb(p: *mut u8, n: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        if PARAMS.perturb_enabled() {
            let b = PARAMS.perturb_byte();
            core::ptr::write_bytes(p, b ^ 0xff, n);
        }
    }
}

/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk and size arguments are as described
/// above and belong to `av`.
#[inline(always)]
unsafe fn fastbin_pop(av: *mut Arena, idx: usize) -> ChunkPtr {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let fb = &(*av).fastbins[idx];
        let mut v = fb.load(Ordering::Acquire);
        loop {
            if v.is_null() {
                return v;
            }
            if !chunk::aligned_ok(v as usize) {
                malloc_printerr("malloc(): unaligned fastbin chunk detected");
            }
            let next = reveal_ptr(
                core::ptr::addr_of!((*v).fd) as *const u8,
                (*v).fd as *mut u8,
            ) as ChunkPtr;
            // With one thread nobody pushes concurrently: a plain store, as
            // glibc does (it cannot become multithreaded while in malloc).
            if crate::arena::single_threaded() {
                fb.store(next, Ordering::Relaxed);
                return v;
            }
            // Only lock holders pop, so `v` cannot be popped and pushed back
            // meanwhile; a failed exchange means a `free` pushed onto the bin.
            match fb.compare_exchange_weak(v, next, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return v,
                Err(cur) => v = cur,
            }
        }
    }
}

/// Allocate `nb` (a padded chunk size) from `av`, locked.  `bytes` is the
/// user's request (for perturbing).  Spare chunks of the same size found on
/// the way go to the calling thread's cache, whatever the caller (malloc,
/// calloc, realloc, memalign), as in glibc.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk and size arguments are as described
/// above and belong to `av`.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn int_malloc(av: *mut Arena, bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { int_malloc_inline(av, bytes, nb) }
}

/// `int_malloc` compiled into its caller: `malloc`'s slow path, which runs it
/// on most calls, saves a call frame (and its register saves) that way.
///
/// # Safety
/// As `int_malloc`.
#[inline(always)]
pub(crate) unsafe fn int_malloc_inline(av: *mut Arena, bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { int_malloc_body::<true>(av, bytes, nb) }
}

/// `int_malloc` for a chunk KAL samples (see `api::malloc_sampled`): a
/// large-bin request that does not first merge the fast bins.  glibc
/// merges them before every large request to limit fragmentation; for one
/// small request made large per sample, that merge (and the sorting it
/// causes) cost 20 to 40 thousand instructions, and reshuffled the heap
/// under the program.  It still merges them when nothing else fits.
///
/// # Safety
/// As `int_malloc`.
#[inline(never)]
pub(crate) unsafe fn int_malloc_keep_fastbins(av: *mut Arena, bytes: usize, nb: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { int_malloc_body::<false>(av, bytes, nb) }
}

/// # Safety
/// As `int_malloc`.
#[inline(always)]
unsafe fn int_malloc_body<const MERGE_FASTBINS: bool>(
    av: *mut Arena,
    bytes: usize,
    nb: usize,
) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let t = tls::get::<{ tls::TCACHE }>();
        let tc = if t > TCACHE_DISABLED {
            t as *mut Tcache
        } else {
            core::ptr::null_mut()
        };
        let tc_idx = tcache::csize2tidx(nb);
        let can_stash = !tc.is_null() && tc_idx < PARAMS.tcache_bins();
        let flag = (*av).chunk_flag();

        if nb <= PARAMS.max_fast() {
            let idx = fastbin_index(nb);
            let victim = fastbin_pop(av, idx);
            if !victim.is_null() {
                if fastbin_index(chunk::size(victim)) != idx {
                    malloc_printerr("malloc(): memory corruption (fast)");
                }
                if can_stash {
                    while ((*tc).counts[tc_idx] as usize) < PARAMS.tcache_count() {
                        let t = fastbin_pop(av, idx);
                        if t.is_null() {
                            break;
                        }
                        tcache::put(tc, t, tc_idx);
                    }
                }
                let p = chunk2mem(victim);
                alloc_perturb(p, bytes);
                return p;
            }
        }

        if in_smallbin_range(nb) {
            let bin = (*av).bin_at(smallbin_index(nb));
            let victim = (*bin).bk;
            if victim != bin {
                let bck = (*victim).bk;
                if (*bck).fd != victim {
                    malloc_printerr("malloc(): smallbin double linked list corrupted");
                }
                chunk::set_inuse_bit_at_offset(victim, nb);
                (*bin).bk = bck;
                (*bck).fd = bin;
                if flag != 0 {
                    (*victim).size |= flag;
                }
                if can_stash {
                    while ((*tc).counts[tc_idx] as usize) < PARAMS.tcache_count() {
                        let t = (*bin).bk;
                        if t == bin {
                            break;
                        }
                        let b2 = (*t).bk;
                        chunk::set_inuse_bit_at_offset(t, nb);
                        if flag != 0 {
                            (*t).size |= flag;
                        }
                        (*bin).bk = b2;
                        (*b2).fd = bin;
                        tcache::put(tc, t, tc_idx);
                    }
                }
                let p = chunk2mem(victim);
                alloc_perturb(p, bytes);
                return p;
            }
        } else if MERGE_FASTBINS && (*av).have_fastchunks.load(Ordering::Relaxed) {
            malloc_consolidate(av);
        }

        let mut return_cached = false;
        let mut iters = 0usize;
        let mut unsorted_count = 0usize;
        let unsorted = (*av).unsorted();
        loop {
            let victim = (*unsorted).bk;
            if victim == unsorted {
                break;
            }
            let bck = (*victim).bk;
            let size = chunk::size(victim);
            let next = chunk::at_offset(victim, size);
            if size <= 2 * SIZE_SZ || size > (*av).system_mem() {
                malloc_printerr("malloc(): invalid size (unsorted)");
            }
            if chunk::size_nomask(next) < 2 * SIZE_SZ
                || chunk::size_nomask(next) > (*av).system_mem()
            {
                malloc_printerr("malloc(): invalid next size (unsorted)");
            }
            if chunk::prev_size(next) & !chunk::SIZE_BITS != size {
                malloc_printerr("malloc(): mismatching next->prev_size (unsorted)");
            }
            if (*bck).fd != victim || (*victim).fd != unsorted {
                malloc_printerr("malloc(): unsorted double linked list corrupted");
            }
            if chunk::prev_inuse(next) {
                malloc_printerr("malloc(): invalid next->prev_inuse (unsorted)");
            }

            // A small request and the last remainder is the only unsorted
            // chunk: split it, which keeps consecutive small allocations
            // next to each other.
            if in_smallbin_range(nb)
                && bck == unsorted
                && victim == (*av).last_remainder
                && size > nb + MINSIZE
            {
                let rsize = size - nb;
                let rem = chunk::at_offset(victim, nb);
                (*unsorted).bk = rem;
                (*unsorted).fd = rem;
                (*av).last_remainder = rem;
                (*rem).bk = unsorted;
                (*rem).fd = unsorted;
                set_split_heads(victim, nb, flag, rem, rsize);
                let p = chunk2mem(victim);
                alloc_perturb(p, bytes);
                return p;
            }

            if (*bck).fd != victim {
                malloc_printerr("malloc(): corrupted unsorted chunks 3");
            }
            (*unsorted).bk = bck;
            (*bck).fd = unsorted;

            if size == nb {
                chunk::set_inuse_bit_at_offset(victim, size);
                if flag != 0 {
                    (*victim).size |= flag;
                }
                if can_stash && ((*tc).counts[tc_idx] as usize) < PARAMS.tcache_count() {
                    tcache::put(tc, victim, tc_idx);
                    return_cached = true;
                    continue;
                }
                let p = chunk2mem(victim);
                alloc_perturb(p, bytes);
                return p;
            }

            place_in_bin(av, victim, size);

            if return_cached {
                unsorted_count += 1;
                let limit = PARAMS.tcache_unsorted_limit();
                if limit > 0 && unsorted_count > limit {
                    return tcache::get(tc, tc_idx);
                }
            }
            iters += 1;
            if iters >= MAX_ITERS {
                break;
            }
        }
        if return_cached {
            return tcache::get(tc, tc_idx);
        }
        search_bins(av, nb, bytes)
    }
}

/// The rest of `int_malloc` once the fastbins, the exact small bin and the
/// unsorted bin could not serve `nb`: best fit in the request's large bin,
/// then the binmap scan, then top.  Out of line, so that the large-bin
/// index is computed here and not (speculatively) on every `int_malloc`.
///
/// # Safety
/// As `int_malloc`.
#[inline(never)]
#[link_section = ".text.hot.rmalloc"]
unsafe fn search_bins(av: *mut Arena, nb: usize, bytes: usize) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let mut idx = if in_smallbin_range(nb) {
            smallbin_index(nb)
        } else {
            largebin_index(nb)
        };

        // Best fit from the request's own large bin.
        if !in_smallbin_range(nb) {
            let bin = (*av).bin_at(idx);
            let mut victim = (*bin).fd;
            if victim != bin && chunk::size_nomask(victim) >= nb {
                victim = (*victim).bk_nextsize;
                while chunk::size(victim) < nb {
                    victim = (*victim).bk_nextsize;
                }
                // Prefer a second chunk of the same size: the first carries
                // the skip-list links.
                if victim != (*bin).bk
                    && chunk::size_nomask(victim) == chunk::size_nomask((*victim).fd)
                {
                    victim = (*victim).fd;
                }
                let size = chunk::size(victim);
                unlink_chunk(victim);
                return finish_split(av, victim, size, nb, bytes, false);
            }
        }

        // Scan the binmap for the smallest non-empty larger bin.
        idx += 1;
        let mut bin = (*av).bin_at(idx);
        let mut block = idx2block(idx);
        let mut map = (*av).binmap[block];
        let mut bit = idx2bit(idx);
        loop {
            if bit > map || bit == 0 {
                loop {
                    block += 1;
                    if block >= BINMAPSIZE {
                        return use_top(av, nb, bytes);
                    }
                    map = (*av).binmap[block];
                    if map != 0 {
                        break;
                    }
                }
                bin = (*av).bin_at(block << BINMAPSHIFT);
                bit = 1;
            }
            while bit & map == 0 {
                bin = next_bin(bin);
                bit <<= 1;
            }
            let victim = (*bin).bk;
            if victim == bin {
                // Stale bit: clear it and move on.
                map &= !bit;
                (*av).binmap[block] = map;
                bin = next_bin(bin);
                bit <<= 1;
                continue;
            }
            let size = chunk::size(victim);
            unlink_chunk(victim);
            return finish_split(av, victim, size, nb, bytes, true);
        }
    }
}

#[inline(always)]
fn next_bin(b: ChunkPtr) -> ChunkPtr {
    (b as *mut u8).wrapping_add(2 * core::mem::size_of::<usize>()) as ChunkPtr
}

/// Serve the request from top; or, if fast chunks are pending, consolidate
/// them and search again; or grow the heap.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk and size arguments are as described
/// above and belong to `av`.
unsafe fn use_top(av: *mut Arena, nb: usize, bytes: usize) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let victim = (*av).top;
        let size = chunk::size(victim);
        if size > (*av).system_mem() {
            malloc_printerr("malloc(): corrupted top size");
        }
        if size >= nb + MINSIZE {
            let p = top::split_top(av, nb);
            alloc_perturb(p, bytes);
            return p;
        }
        if (*av).have_fastchunks.load(Ordering::Relaxed) {
            // Freed fast chunks may coalesce into something that fits.
            malloc_consolidate(av);
            return int_malloc(av, bytes, nb);
        }
        let p = top::sysmalloc(nb, av);
        if !p.is_null() {
            alloc_perturb(p, bytes);
        }
        p
    }
}

/// Take `nb` bytes from the unlinked free chunk `victim` of `size` bytes;
/// a remainder of at least MINSIZE goes to the unsorted bin.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk and size arguments are as described
/// above and belong to `av`.
unsafe fn finish_split(
    av: *mut Arena,
    victim: ChunkPtr,
    size: usize,
    nb: usize,
    bytes: usize,
    set_last: bool,
) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let flag = (*av).chunk_flag();
        let rsize = size - nb;
        if rsize < MINSIZE {
            chunk::set_inuse_bit_at_offset(victim, size);
            if flag != 0 {
                (*victim).size |= flag;
            }
        } else {
            let rem = chunk::at_offset(victim, nb);
            let bck = (*av).unsorted();
            let fwd = (*bck).fd;
            if (*fwd).bk != bck {
                malloc_printerr("malloc(): corrupted unsorted chunks");
            }
            (*rem).bk = bck;
            (*rem).fd = fwd;
            (*bck).fd = rem;
            (*fwd).bk = rem;
            if set_last && in_smallbin_range(nb) {
                (*av).last_remainder = rem;
            }
            set_split_heads(victim, nb, flag, rem, rsize);
        }
        let p = chunk2mem(victim);
        alloc_perturb(p, bytes);
        p
    }
}

/// Headers of a split: `victim` keeps `nb` bytes and is in use; `rem`, the
/// free rest of `rsize` bytes, is already linked into the unsorted bin.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk and size arguments are as described
/// above and belong to `av`.
#[inline(always)]
unsafe fn set_split_heads(victim: ChunkPtr, nb: usize, flag: usize, rem: ChunkPtr, rsize: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        if !in_smallbin_range(rsize) {
            (*rem).fd_nextsize = core::ptr::null_mut();
            (*rem).bk_nextsize = core::ptr::null_mut();
        }
        chunk::set_head(victim, nb | PREV_INUSE | flag);
        chunk::set_head(rem, rsize | PREV_INUSE);
        chunk::set_foot(rem, rsize);
    }
}

/// Put a free chunk taken off the unsorted list into its small or large
/// bin; large bins stay sorted by size with a skip list over distinct sizes.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk and size arguments are as described
/// above and belong to `av`.
#[link_section = ".text.hot.rmalloc"]
unsafe fn place_in_bin(av: *mut Arena, victim: ChunkPtr, size: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let vidx;
        let mut bck;
        let mut fwd;
        if in_smallbin_range(size) {
            vidx = smallbin_index(size);
            bck = (*av).bin_at(vidx);
            fwd = (*bck).fd;
        } else {
            vidx = largebin_index(size);
            bck = (*av).bin_at(vidx);
            fwd = (*bck).fd;
            if fwd != bck {
                // Compare with PREV_INUSE set: binned chunks always have it.
                let s = size | PREV_INUSE;
                if s < chunk::size_nomask((*bck).bk) {
                    fwd = bck;
                    bck = (*bck).bk;
                    (*victim).fd_nextsize = (*fwd).fd;
                    (*victim).bk_nextsize = (*(*fwd).fd).bk_nextsize;
                    (*(*fwd).fd).bk_nextsize = victim;
                    (*(*victim).bk_nextsize).fd_nextsize = victim;
                } else {
                    while s < chunk::size_nomask(fwd) {
                        fwd = (*fwd).fd_nextsize;
                    }
                    if s == chunk::size_nomask(fwd) {
                        fwd = (*fwd).fd;
                    } else {
                        (*victim).fd_nextsize = fwd;
                        (*victim).bk_nextsize = (*fwd).bk_nextsize;
                        if (*(*fwd).bk_nextsize).fd_nextsize != fwd {
                            malloc_printerr(
                                "malloc(): largebin double linked list corrupted (nextsize)",
                            );
                        }
                        (*fwd).bk_nextsize = victim;
                        (*(*victim).bk_nextsize).fd_nextsize = victim;
                    }
                    bck = (*fwd).bk;
                    if (*bck).fd != fwd {
                        malloc_printerr("malloc(): largebin double linked list corrupted (bk)");
                    }
                }
            } else {
                (*victim).fd_nextsize = victim;
                (*victim).bk_nextsize = victim;
            }
        }
        (*av).mark_bin(vidx);
        (*victim).bk = bck;
        (*victim).fd = fwd;
        (*fwd).bk = victim;
        (*bck).fd = victim;
    }
}
