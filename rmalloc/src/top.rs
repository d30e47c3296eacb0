//! The top chunk: growing an arena's heap when no bin can serve a request
//! (glibc's `sysmalloc`) and giving memory back from the top (`systrim`).
//!
//! The main arena grows with `brk`; when the break cannot move (a mapping
//! is in the way, `RLIMIT_DATA`) it continues in `mmap`ed regions and is
//! marked non-contiguous.  A region that does not continue the current top
//! (a foreign `sbrk`, or an mmap region) starts a new top, and the old top
//! is closed with two fenceposts and freed, as glibc does.  The regions'
//! starts are remembered so that the heap can be walked chunk by chunk.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arena::{Arena, NONCONTIGUOUS};
use crate::chunk::{self, ChunkPtr, HDR, MINSIZE, PREV_INUSE};
use crate::error::malloc_printerr;
use crate::heap;
use crate::mmap_chunk;
use crate::options::PARAMS;
use crate::os;

/// glibc's `MMAP_AS_MORECORE_SIZE`: smallest mmap region used when `brk` fails.
const MMAP_AS_MORECORE_SIZE: usize = 1024 * 1024;
pub(crate) const MAX_REGIONS: usize = 256;

/// Start addresses of the main arena's heap regions, in creation order.
#[link_section = ".bss.hot.rmalloc"]
pub(crate) static REGIONS: [AtomicUsize; MAX_REGIONS] =
    [const { AtomicUsize::new(0) }; MAX_REGIONS];
#[link_section = ".data.hot.rmalloc"]
pub(crate) static NREGIONS: AtomicUsize = AtomicUsize::new(0);
/// Where the main arena's first `brk` region started (for statistics).
#[link_section = ".data.hot.rmalloc"]
pub(crate) static SBRK_BASE: AtomicUsize = AtomicUsize::new(0);

fn note_region(start: usize) {
    let n = NREGIONS.load(Ordering::Relaxed);
    if n < MAX_REGIONS {
        REGIONS[n].store(start, Ordering::Relaxed);
    }
    NREGIONS.store(n + 1, Ordering::Release);
}

/// Split `nb` bytes off the top chunk of `av` (which must be large enough).
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk arguments are chunks of `av`.
#[inline]
pub(crate) unsafe fn split_top(av: *mut Arena, nb: usize) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let victim = (*av).top;
        let size = chunk::size(victim);
        let rem = chunk::at_offset(victim, nb);
        (*av).top = rem;
        chunk::set_head(victim, nb | PREV_INUSE | (*av).chunk_flag());
        chunk::set_head(rem, (size - nb) | PREV_INUSE);
        chunk::chunk2mem(victim)
    }
}

/// Serve `nb` bytes when the bins and top cannot: mmap a chunk for large
/// requests, else grow the arena's heap.  Caller holds the arena lock.
/// Returns null (caller sets `ENOMEM`) when the kernel refuses.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk arguments are chunks of `av`.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn sysmalloc(nb: usize, av: *mut Arena) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let mut tried_mmap = false;
        if nb >= PARAMS.mmap_threshold()
            && mmap_chunk::N_MMAPS.load(Ordering::Relaxed) < PARAMS.mmap_max()
        {
            tried_mmap = true;
            let p = mmap_chunk::map_chunk(nb);
            if !p.is_null() {
                return chunk::chunk2mem(p);
            }
        }
        let grown = if (*av).is_main() {
            grow_main(av, nb)
        } else {
            grow_heap_arena(av, nb)
        };
        if grown {
            (*av).note_system_mem();
            if chunk::size((*av).top) >= nb + MINSIZE {
                return split_top(av, nb);
            }
        }
        if !tried_mmap {
            // Last resort for any size: a chunk of its own.
            let p = mmap_chunk::map_chunk(nb);
            if !p.is_null() {
                return chunk::chunk2mem(p);
            }
        }
        core::ptr::null_mut()
    }
}

/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk arguments are chunks of `av`.
#[link_section = ".text.hot.rmalloc"]
unsafe fn grow_heap_arena(av: *mut Arena, nb: usize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let old_top = (*av).top;
        let old_size = chunk::size(old_top);
        let h = heap::heap_for_ptr(old_top as usize);
        let old_heap_size = (*h).size;
        let need = (MINSIZE + nb) as isize - old_size as isize;
        if need > 0 && heap::grow_heap(h, need) {
            (*av).add_system_mem((*h).size - old_heap_size);
            chunk::set_head(
                old_top,
                (h as usize + (*h).size - old_top as usize) | PREV_INUSE,
            );
            return true;
        }
        let nh = heap::new_heap(
            nb + MINSIZE + core::mem::size_of::<heap::HeapInfo>(),
            PARAMS.top_pad(),
        );
        if nh.is_null() {
            return false;
        }
        (*nh).ar_ptr = av;
        (*nh).prev = h;
        (*av).add_system_mem((*nh).size);
        let top = (nh as *mut u8).add(core::mem::size_of::<heap::HeapInfo>()) as ChunkPtr;
        (*av).top = top;
        chunk::set_head(
            top,
            ((*nh).size - core::mem::size_of::<heap::HeapInfo>()) | PREV_INUSE,
        );
        let left = heap::fence_old_top(old_top, old_size, chunk::NON_MAIN_ARENA);
        if left > 0 {
            crate::free::int_free_locked(av, old_top);
        }
        true
    }
}

/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk arguments are chunks of `av`.
unsafe fn grow_main(av: *mut Arena, nb: usize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let page = os::pagesize();
        let old_top = (*av).top;
        let old_size = chunk::size(old_top);
        let old_end = old_top as usize + old_size;
        let first = old_size == 0;

        // Try to continue the current brk region.
        if (*av).contiguous() {
            let cur = os::current_brk();
            if !first && cur < old_end {
                malloc_printerr("break adjusted to free malloc space");
            }
            if !first && cur == old_end {
                let size = os::align_up(nb + PARAMS.top_pad() + MINSIZE - old_size, page);
                match os::sbrk(size as isize) {
                    Some(old) if old == cur => {
                        (*av).add_system_mem(size);
                        chunk::set_head(old_top, (old_size + size) | PREV_INUSE);
                        return true;
                    }
                    // Another thread of the program moved the break meanwhile:
                    // what we got is a region of its own.
                    Some(old) => {
                        start_brk_region(av, old, size, old_top, old_size);
                        return true;
                    }
                    None => {}
                }
            } else {
                // First region, or the program moved the break: start a new
                // region at the current break, ending on a page boundary.
                let start = os::align_up(cur, chunk::ALIGN);
                let size = os::align_up(start + nb + PARAMS.top_pad() + MINSIZE, page) - cur;
                if let Some(old) = os::sbrk(size as isize) {
                    start_brk_region(av, old, size, old_top, old_size);
                    return true;
                }
            }
        }
        // The break cannot move: continue in an mmap region.
        let len = os::align_up(
            core::cmp::max(nb + MINSIZE + HDR, MMAP_AS_MORECORE_SIZE),
            page,
        );
        let Some(m) = os::map_rw(len) else {
            return false;
        };
        (*av).flags |= NONCONTIGUOUS;
        (*av).add_system_mem(len);
        new_region(av, m as usize, m as usize + len, old_top, old_size);
        true
    }
}

/// `[old, old + size)` came from `sbrk` and does not continue the top.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk arguments are chunks of `av`.
unsafe fn start_brk_region(
    av: *mut Arena,
    old: usize,
    size: usize,
    old_top: ChunkPtr,
    old_size: usize,
) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        if SBRK_BASE.load(Ordering::Relaxed) == 0 {
            SBRK_BASE.store(old, Ordering::Relaxed);
        }
        (*av).add_system_mem(size);
        new_region(
            av,
            os::align_up(old, chunk::ALIGN),
            old + size,
            old_top,
            old_size,
        );
    }
}

/// Make `[start, end)` the new top, closing the old top with fenceposts.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk arguments are chunks of `av`.
unsafe fn new_region(av: *mut Arena, start: usize, end: usize, old_top: ChunkPtr, old_size: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        note_region(start);
        let top = start as ChunkPtr;
        (*av).top = top;
        chunk::set_head(top, (end - start) | PREV_INUSE);
        if old_size != 0 {
            // Two HDR-sized fenceposts end the old region; what is left of the
            // old top becomes an ordinary free chunk.
            let sz = (old_size - 2 * HDR) & !chunk::ALIGN_MASK;
            chunk::set_head(old_top, sz | PREV_INUSE);
            chunk::set_head(chunk::at_offset(old_top, sz), HDR | PREV_INUSE);
            chunk::set_head(chunk::at_offset(old_top, sz + HDR), HDR | PREV_INUSE);
            if sz >= MINSIZE {
                crate::free::int_free_locked(av, old_top);
            }
        }
    }
}

/// Give back top memory above `pad` to the kernel.  Caller holds the lock.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds (or the
/// process is single-threaded); chunk arguments are chunks of `av`.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn systrim(av: *mut Arena, pad: usize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        if !(*av).is_main() {
            return heap::heap_trim(heap::heap_for_ptr((*av).top as usize), pad);
        }
        let page = os::pagesize();
        let top = (*av).top;
        let top_size = chunk::size(top);
        let top_area = top_size as isize - MINSIZE as isize - 1;
        if top_area <= pad as isize {
            return false;
        }
        let extra = os::align_down(top_area as usize - pad, page);
        if extra == 0 {
            return false;
        }
        // Only a top that ends at the break can give memory back through it.
        if os::current_brk() != top as usize + top_size || os::sbrk(-(extra as isize)).is_none() {
            return false;
        }
        (*av).sub_system_mem(extra);
        chunk::set_head(top, (top_size - extra) | PREV_INUSE);
        true
    }
}
