//! Resizing and aligned allocation inside an arena (glibc's `_int_realloc`
//! and `_int_memalign`).  Both run with the arena locked.

use crate::arena::Arena;
use crate::bins::unlink_chunk;
use crate::chunk::{
    self, chunk2mem, mem2chunk, ChunkPtr, ALIGN_MASK, MINSIZE, PREV_INUSE, SIZE_SZ,
};
use crate::error::malloc_printerr;
use crate::free::int_free_locked;
use crate::malloc::int_malloc;

/// Resize heap chunk `oldp` (of `oldsize` bytes) to chunk size `nb`,
/// growing in place into top or a free neighbour when possible.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds; `oldp` (for
/// `int_realloc`) is an in-use heap chunk of `av` of size `oldsize` that the
/// caller owns.
// Inlined into its only caller, `api::realloc`: left out of line it costs
// about 2% more instructions on the realloc workload (callgrind).
#[inline(always)]
pub(crate) unsafe fn int_realloc(
    av: *mut Arena,
    oldp: ChunkPtr,
    oldsize: usize,
    nb: usize,
) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        if chunk::size_nomask(oldp) <= 2 * SIZE_SZ || oldsize >= (*av).system_mem() {
            malloc_printerr("realloc(): invalid old size");
        }
        let flag = (*av).chunk_flag();
        let next = chunk::at_offset(oldp, oldsize);
        let nextsize = chunk::size(next);
        if chunk::size_nomask(next) <= 2 * SIZE_SZ || nextsize >= (*av).system_mem() {
            malloc_printerr("realloc(): invalid next size");
        }

        let (newp, newsize);
        if oldsize >= nb {
            newp = oldp;
            newsize = oldsize;
        } else if next == (*av).top && oldsize + nextsize >= nb + MINSIZE {
            // Extend into top.
            chunk::set_head_size(oldp, nb | flag);
            let t = chunk::at_offset(oldp, nb);
            (*av).top = t;
            chunk::set_head(t, (oldsize + nextsize - nb) | PREV_INUSE);
            return chunk2mem(oldp);
        } else if next != (*av).top && !chunk::inuse(next) && oldsize + nextsize >= nb {
            // Absorb the free neighbour.
            unlink_chunk(next);
            newp = oldp;
            newsize = oldsize + nextsize;
        } else {
            let newmem = int_malloc(av, nb - ALIGN_MASK, nb);
            if newmem.is_null() {
                return core::ptr::null_mut();
            }
            let np = mem2chunk(newmem);
            if np == next {
                // The new chunk is the old one's neighbour: merge, no copy.
                newp = oldp;
                newsize = chunk::size(np) + oldsize;
            } else {
                core::ptr::copy_nonoverlapping(chunk2mem(oldp), newmem, oldsize - SIZE_SZ);
                int_free_locked(av, oldp);
                return newmem;
            }
        }

        let rsize = newsize - nb;
        if rsize < MINSIZE {
            chunk::set_head_size(newp, newsize | flag);
            chunk::set_inuse_bit_at_offset(newp, newsize);
        } else {
            let rem = chunk::at_offset(newp, nb);
            chunk::set_head_size(newp, nb | flag);
            chunk::set_head(rem, rsize | PREV_INUSE | flag);
            chunk::set_inuse_bit_at_offset(rem, rsize);
            int_free_locked(av, rem);
        }
        chunk2mem(newp)
    }
}

/// Allocate chunk size `nb` aligned to `alignment` (a power of two larger
/// than the natural alignment) by over-allocating and freeing the ends.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds; `oldp` (for
/// `int_realloc`) is an in-use heap chunk of `av` of size `oldsize` that the
/// caller owns.
#[link_section = ".text.warm.rmalloc"]
pub(crate) unsafe fn int_memalign(av: *mut Arena, alignment: usize, nb: usize) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let Some(want) = nb.checked_add(alignment + MINSIZE) else {
            return core::ptr::null_mut();
        };
        let m = int_malloc(av, want, chunk::request2size(want));
        if m.is_null() {
            return core::ptr::null_mut();
        }
        let mut p = mem2chunk(m);
        let flag = (*av).chunk_flag();
        if !(m as usize).is_multiple_of(alignment) {
            let mut brk =
                mem2chunk(((m as usize + alignment - 1) & !(alignment - 1)) as *mut u8) as usize;
            if brk - (p as usize) < MINSIZE {
                brk += alignment;
            }
            let newp = brk as ChunkPtr;
            let lead = brk - p as usize;
            let newsize = chunk::size(p) - lead;
            if chunk::is_mmapped(p) {
                chunk::set_prev_size(newp, chunk::prev_size(p) + lead);
                chunk::set_head(newp, newsize | chunk::IS_MMAPPED);
                crate::kal::mmapped_removed(p);
                crate::kal::mmapped_added(newp);
                return chunk2mem(newp);
            }
            chunk::set_head(newp, newsize | PREV_INUSE | flag);
            chunk::set_inuse_bit_at_offset(newp, newsize);
            chunk::set_head_size(p, lead | flag);
            int_free_locked(av, p);
            p = newp;
        }
        if !chunk::is_mmapped(p) {
            let size = chunk::size(p);
            if size > nb + MINSIZE {
                let rem = chunk::at_offset(p, nb);
                chunk::set_head(rem, (size - nb) | PREV_INUSE | flag);
                chunk::set_head_size(p, nb | flag);
                int_free_locked(av, rem);
            }
        }
        chunk2mem(p)
    }
}
