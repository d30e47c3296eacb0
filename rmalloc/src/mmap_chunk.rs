//! Chunks that stand alone in their own `mmap` (requests at or above the
//! mmap threshold), and the process-wide counters for them.
//!
//! Invariants: such a chunk has `IS_MMAPPED` set, `prev_size` is the offset
//! from the mapping start to the chunk (non-zero only after `memalign`), and
//! `prev_size + size` is the page-multiple length of the mapping.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::chunk::{self, ChunkPtr, IS_MMAPPED, SIZE_SZ};
use crate::error::malloc_printerr;
use crate::os;
use rmalloc_sys as sys;

#[link_section = ".data.hot.rmalloc"]
pub(crate) static N_MMAPS: AtomicUsize = AtomicUsize::new(0);
#[link_section = ".data.hot.rmalloc"]
pub(crate) static MAX_N_MMAPS: AtomicUsize = AtomicUsize::new(0);
#[link_section = ".data.hot.rmalloc"]
pub(crate) static MMAPPED_MEM: AtomicUsize = AtomicUsize::new(0);
#[link_section = ".data.hot.rmalloc"]
pub(crate) static MAX_MMAPPED_MEM: AtomicUsize = AtomicUsize::new(0);

fn account(delta_maps: isize, delta_bytes: isize) {
    let n =
        (N_MMAPS.fetch_add(delta_maps as usize, Ordering::Relaxed) as isize + delta_maps) as usize;
    MAX_N_MMAPS.fetch_max(n, Ordering::Relaxed);
    let b = (MMAPPED_MEM.fetch_add(delta_bytes as usize, Ordering::Relaxed) as isize + delta_bytes)
        as usize;
    MAX_MMAPPED_MEM.fetch_max(b, Ordering::Relaxed);
}

/// Map a chunk of at least `nb` bytes.  Null when the kernel refuses.
///
/// # Safety
/// Any `nb`; the chunk returned (if not null) is the caller's, to be
/// released only with `unmap_chunk` or resized with `remap_chunk`.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn map_chunk(nb: usize) -> ChunkPtr {
    // SAFETY: `map_rw` has no precondition; `mm` is a fresh mapping of
    // `size` bytes (more than a header), so `p`'s header is in bounds.
    unsafe {
        let page = os::pagesize();
        let Some(need) = nb.checked_add(SIZE_SZ + page - 1) else {
            return core::ptr::null_mut();
        };
        let size = os::align_down(need, page);
        let Some(mm) = os::map_rw(size) else {
            return core::ptr::null_mut();
        };
        let p = mm as ChunkPtr;
        chunk::set_prev_size(p, 0);
        chunk::set_head(p, size | IS_MMAPPED);
        account(1, size as isize);
        crate::kal::mmapped_added(p);
        p
    }
}

/// The mapping behind mmapped chunk `p`, validated: (start, length).
///
/// # Safety
/// `p` is a chunk whose header is readable (a pointer the program passed
/// in, with `IS_MMAPPED` set).
unsafe fn mapping_of(p: ChunkPtr, what: &str) -> (usize, usize) {
    // SAFETY: reading `p`'s header is allowed by the contract; a layout that
    // is not a page-aligned mapping aborts.
    unsafe {
        let page = os::pagesize();
        let off = chunk::prev_size(p);
        let size = chunk::size(p);
        let block = (p as usize).wrapping_sub(off);
        let total = off.wrapping_add(size);
        if (block | total) & (page - 1) != 0 || total < size || chunk::misaligned_chunk(p) {
            malloc_printerr(what);
        }
        (block, total)
    }
}

/// # Safety
/// `p` is an mmapped chunk the caller owns and will not use again.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn unmap_chunk(p: ChunkPtr) {
    // SAFETY: `mapping_of` checked that [block, block + total) is `p`'s own
    // page-aligned mapping, which the caller no longer uses.
    unsafe {
        let (block, total) = mapping_of(p, "munmap_chunk(): invalid pointer");
        crate::kal::mmapped_removed(p);
        account(-1, -(total as isize));
        let _ = sys::munmap(block as *mut u8, total);
    }
}

/// Resize mmapped chunk `p` to hold `nb` bytes with `mremap`; null if the
/// kernel cannot.
///
/// # Safety
/// `p` is an mmapped chunk the caller owns; if the result is non-null it
/// replaces `p`, which must not be used again.
pub(crate) unsafe fn remap_chunk(p: ChunkPtr, nb: usize) -> ChunkPtr {
    // SAFETY: [block, block + total) is `p`'s own mapping (checked); after
    // `mremap` the chunk header sits at `off` inside the `new_size` bytes.
    unsafe {
        let page = os::pagesize();
        let (block, total) = mapping_of(p, "mremap_chunk(): invalid pointer");
        let off = chunk::prev_size(p);
        let Some(need) = nb.checked_add(off + SIZE_SZ + page - 1) else {
            return core::ptr::null_mut();
        };
        let new_size = os::align_down(need, page);
        if new_size == total {
            return p;
        }
        crate::kal::mmapped_removed(p);
        let Ok(cp) = sys::mremap(block as *mut u8, total, new_size, sys::MREMAP_MAYMOVE) else {
            crate::kal::mmapped_added(p);
            return core::ptr::null_mut();
        };
        let np = cp.add(off) as ChunkPtr;
        chunk::set_head(np, (new_size - off) | IS_MMAPPED);
        account(0, new_size as isize - total as isize);
        crate::kal::mmapped_added(np);
        np
    }
}
