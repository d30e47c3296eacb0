//! Heaps of non-main arenas: 64 MiB-aligned reservations grown and shrunk
//! in place (glibc's `heap_info`, `new_heap`, `grow_heap`, `shrink_heap`,
//! `heap_trim`).
//!
//! A heap is reserved `PROT_NONE` at a `HEAP_MAX_SIZE`-aligned address and
//! made accessible as it grows, so `ptr & !(HEAP_MAX_SIZE - 1)` finds the
//! header of the heap holding any of its chunks.  Invariants: `size` bytes
//! from the header are in use by the arena; `mprotect_size >= size` bytes
//! are readable and writable; heaps of one arena are chained through `prev`
//! from the newest (the one holding top) to the first (which holds the
//! arena itself).

use core::ptr::null_mut;

use crate::arena::Arena;
use crate::chunk::{self, ChunkPtr, HDR, MINSIZE, PREV_INUSE, SIZE_SZ};
use crate::options::PARAMS;
use crate::os;
use rmalloc_sys as sys;

pub(crate) const HEAP_MIN_SIZE: usize = 32 * 1024;
/// Twice the largest dynamic mmap threshold, as glibc on 64-bit targets.
pub(crate) const HEAP_MAX_SIZE: usize = 64 * 1024 * 1024;

#[repr(C)]
pub(crate) struct HeapInfo {
    pub ar_ptr: *mut Arena,
    pub prev: *mut HeapInfo,
    pub size: usize,
    pub mprotect_size: usize,
    pub pagesize: usize,
    /// Makes `size_of::<HeapInfo>() + 2 * SIZE_SZ` a multiple of the alignment.
    _pad: usize,
}

const _: () =
    assert!((core::mem::size_of::<HeapInfo>() + 2 * SIZE_SZ).is_multiple_of(chunk::ALIGN));

#[inline(always)]
pub(crate) fn heap_for_ptr(p: usize) -> *mut HeapInfo {
    (p & !(HEAP_MAX_SIZE - 1)) as *mut HeapInfo
}

/// Reserve a new heap and make its first `size` (+ `top_pad`) bytes usable.
///
/// # Safety
/// `h` (and chunk arguments) belong to a live non-main heap of this
/// allocator, and the caller holds the lock of the arena that owns it while
/// changing it; `new_heap` only needs the lazily initialised parameters.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn new_heap(size: usize, top_pad: usize) -> *mut HeapInfo {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let page = os::pagesize();
        let mut size = if size + top_pad < HEAP_MIN_SIZE {
            HEAP_MIN_SIZE
        } else if size + top_pad <= HEAP_MAX_SIZE {
            size + top_pad
        } else if size > HEAP_MAX_SIZE {
            return null_mut();
        } else {
            HEAP_MAX_SIZE
        };
        size = os::align_up(size, page);
        // Reserve twice the size and trim to an aligned window.
        let Ok(p1) = sys::mmap_anon(0, HEAP_MAX_SIZE << 1, sys::PROT_NONE, sys::MAP_NORESERVE)
        else {
            return null_mut();
        };
        let start = os::align_up(p1 as usize, HEAP_MAX_SIZE);
        let lead = start - p1 as usize;
        if lead > 0 {
            let _ = sys::munmap(p1, lead);
        }
        let _ = sys::munmap((start + HEAP_MAX_SIZE) as *mut u8, HEAP_MAX_SIZE - lead);
        if sys::mprotect(start as *mut u8, size, sys::PROT_READ | sys::PROT_WRITE).is_err() {
            let _ = sys::munmap(start as *mut u8, HEAP_MAX_SIZE);
            return null_mut();
        }
        let h = start as *mut HeapInfo;
        (*h).ar_ptr = null_mut();
        (*h).prev = null_mut();
        (*h).size = size;
        (*h).mprotect_size = size;
        (*h).pagesize = page;
        h
    }
}

/// Grow `h` by at least `diff` bytes.  Returns false when the heap is full
/// or the kernel refuses the memory.
///
/// # Safety
/// `h` (and chunk arguments) belong to a live non-main heap of this
/// allocator, and the caller holds the lock of the arena that owns it while
/// changing it; `new_heap` only needs the lazily initialised parameters.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn grow_heap(h: *mut HeapInfo, diff: isize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let page = (*h).pagesize;
        let diff = os::align_up(diff as usize, page);
        let new_size = (*h).size + diff;
        if new_size > HEAP_MAX_SIZE {
            return false;
        }
        if new_size > (*h).mprotect_size {
            let at = (h as *mut u8).add((*h).mprotect_size);
            if sys::mprotect(
                at,
                new_size - (*h).mprotect_size,
                sys::PROT_READ | sys::PROT_WRITE,
            )
            .is_err()
            {
                return false;
            }
            (*h).mprotect_size = new_size;
        }
        (*h).size = new_size;
        true
    }
}

/// Give the last `diff` bytes of `h` back to the kernel (they stay mapped).
///
/// # Safety
/// `h` (and chunk arguments) belong to a live non-main heap of this
/// allocator, and the caller holds the lock of the arena that owns it while
/// changing it; `new_heap` only needs the lazily initialised parameters.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn shrink_heap(h: *mut HeapInfo, diff: usize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let new_size = (*h).size as isize - diff as isize;
        if new_size < core::mem::size_of::<HeapInfo>() as isize {
            return false;
        }
        let _ = sys::madvise(
            (h as *mut u8).add(new_size as usize),
            diff,
            sys::MADV_DONTNEED,
        );
        (*h).size = new_size as usize;
        true
    }
}

/// # Safety
/// `h` (and chunk arguments) belong to a live non-main heap of this
/// allocator, and the caller holds the lock of the arena that owns it while
/// changing it; `new_heap` only needs the lazily initialised parameters.
unsafe fn delete_heap(h: *mut HeapInfo) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let _ = sys::munmap(h as *mut u8, HEAP_MAX_SIZE);
    }
}

/// First chunk of a heap: after the header, and after the arena in the
/// arena's first heap.
///
/// # Safety
/// `h` (and chunk arguments) belong to a live non-main heap of this
/// allocator, and the caller holds the lock of the arena that owns it while
/// changing it; `new_heap` only needs the lazily initialised parameters.
pub(crate) unsafe fn first_chunk(h: *mut HeapInfo) -> ChunkPtr {
    // SAFETY: the caller upholds the contract under `# Safety`.
    first_chunk_of(h as usize, unsafe { (*h).ar_ptr } as usize) as ChunkPtr
}

/// [`first_chunk`] of the heap at `h` whose header names arena `ar_ptr`:
/// address arithmetic only, for walks that read the heap through a view.
pub(crate) fn first_chunk_of(h: usize, ar_ptr: usize) -> usize {
    let mut p = h + core::mem::size_of::<HeapInfo>();
    if p == ar_ptr {
        p += core::mem::size_of::<Arena>();
        let mis = (p + chunk::HDR) & chunk::ALIGN_MASK;
        if mis > 0 {
            p += chunk::ALIGN - mis;
        }
    }
    p
}

/// Trim the arena's newest heap(s): delete heaps that are entirely free top
/// space, then shrink the last one.  Caller holds the arena lock.
///
/// # Safety
/// `h` (and chunk arguments) belong to a live non-main heap of this
/// allocator, and the caller holds the lock of the arena that owns it while
/// changing it; `new_heap` only needs the lazily initialised parameters.
pub(crate) unsafe fn heap_trim(mut h: *mut HeapInfo, pad: usize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let a = (*h).ar_ptr;
        let page = (*h).pagesize;
        let mut top = (*a).top;
        // Delete whole heaps while top is the only chunk in the newest one.
        while top == first_chunk(h) && !(*h).prev.is_null() {
            let prev_heap = (*h).prev;
            // The previous heap ends with two fenceposts: a HDR-sized chunk and a
            // zero-sized header; before them is that heap's old top remainder.
            let fence =
                (prev_heap as *mut u8).add((*prev_heap).size - (MINSIZE - 2 * SIZE_SZ)) as ChunkPtr;
            if chunk::size_nomask(fence) != PREV_INUSE {
                break;
            }
            let mut p = chunk::prev_chunk(fence);
            let mut new_size = chunk::size(p) + (MINSIZE - 2 * SIZE_SZ);
            if !chunk::prev_inuse(p) {
                new_size += chunk::prev_size(p);
            }
            if new_size + (HEAP_MAX_SIZE - (*prev_heap).size)
                < PARAMS.trim_threshold() + MINSIZE + page
            {
                break;
            }
            (*a).sub_system_mem((*h).size);
            delete_heap(h);
            h = prev_heap;
            if !chunk::prev_inuse(p) {
                p = chunk::prev_chunk(p);
                crate::bins::unlink_chunk(p);
            }
            (*a).top = p;
            top = p;
            chunk::set_head(top, new_size | PREV_INUSE);
        }
        let top_size = chunk::size(top);
        if top_size < PARAMS.trim_threshold() {
            return false;
        }
        let top_area = top_size as isize - MINSIZE as isize - 1;
        if top_area < 0 || top_area as usize <= pad {
            return false;
        }
        let extra = os::align_down(top_area as usize - pad, page);
        if extra == 0 || !shrink_heap(h, extra) {
            return false;
        }
        (*a).sub_system_mem(extra);
        chunk::set_head(top, (top_size - extra) | PREV_INUSE);
        true
    }
}

/// Write the two fenceposts that end a heap whose top chunk (at `old_top`
/// with `old_size` bytes) is being abandoned, and return how much of it is
/// left as a freeable chunk (0 if none).
///
/// # Safety
/// `h` (and chunk arguments) belong to a live non-main heap of this
/// allocator, and the caller holds the lock of the arena that owns it while
/// changing it; `new_heap` only needs the lazily initialised parameters.
pub(crate) unsafe fn fence_old_top(old_top: ChunkPtr, old_size: usize, flag: usize) -> usize {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let sz = (old_size - MINSIZE) & !chunk::ALIGN_MASK;
        chunk::set_head(chunk::at_offset(old_top, sz + HDR), PREV_INUSE);
        if sz >= MINSIZE {
            chunk::set_head(chunk::at_offset(old_top, sz), HDR | PREV_INUSE);
            chunk::set_foot(chunk::at_offset(old_top, sz), HDR);
            chunk::set_head(old_top, sz | PREV_INUSE | flag);
            sz
        } else {
            chunk::set_head(old_top, (sz + HDR) | PREV_INUSE | flag);
            chunk::set_foot(old_top, sz + HDR);
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heaps_are_aligned_grow_and_shrink() {
        // SAFETY: the heap is private to this test and deleted at the end;
        // only its accessible part is written.
        unsafe {
            let h = new_heap(100_000, 0);
            assert!(!h.is_null());
            assert_eq!(h as usize % HEAP_MAX_SIZE, 0);
            assert_eq!((*h).size % os::pagesize(), 0);
            assert!((*h).size >= 100_000);
            let inside = h as usize + (*h).size - 1;
            assert_eq!(heap_for_ptr(inside), h);
            let before = (*h).size;
            assert!(grow_heap(h, 1 << 20));
            assert!((*h).size >= before + (1 << 20));
            // The new part is writable.
            ((h as usize + (*h).size - 8) as *mut u64).write(42);
            assert!(!grow_heap(h, HEAP_MAX_SIZE as isize));
            assert!(shrink_heap(h, 1 << 20));
            assert_eq!((*h).size, before);
            assert!((*h).mprotect_size >= before + (1 << 20));
            assert!(new_heap(HEAP_MAX_SIZE + 1, 0).is_null());
            delete_heap(h);
        }
    }
}
