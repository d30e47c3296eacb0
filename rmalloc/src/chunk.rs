//! Boundary-tag chunks, laid out exactly as glibc's `struct malloc_chunk`.
//!
//! A chunk is `prev_size` (meaningful only while the previous chunk is
//! free), `size` with three flag bits, and then the user's memory.  Free
//! chunks reuse the user area for list links (`fd`, `bk`) and, in large bins,
//! for the size-ordered skip list (`fd_nextsize`, `bk_nextsize`).
//!
//! Invariants (the same as ptmalloc's, so heap images stay walkable by the
//! leak scanner and by ptmalloc-aware tools):
//! - chunk addresses and sizes are multiples of [`ALIGN`]; user pointers are
//!   `chunk + 16`; the smallest chunk is [`MINSIZE`] bytes;
//! - `PREV_INUSE` in a chunk's size says whether the chunk before it is in use;
//!   a free chunk's size is repeated in the next chunk's `prev_size` (foot);
//! - `IS_MMAPPED` chunks stand alone in their own mapping, `prev_size` holding
//!   the distance back to the mapping's start;
//! - `NON_MAIN_ARENA` marks chunks that live in a per-thread arena's heap.

pub(crate) const SIZE_SZ: usize = core::mem::size_of::<usize>();
pub(crate) const ALIGN: usize = 2 * SIZE_SZ;
pub(crate) const ALIGN_MASK: usize = ALIGN - 1;
/// Header bytes between a chunk's start and its user memory.
pub(crate) const HDR: usize = 2 * SIZE_SZ;
/// Smallest chunk: header plus room for `fd` and `bk`.
pub(crate) const MINSIZE: usize = 32;

pub(crate) const PREV_INUSE: usize = 0x1;
pub(crate) const IS_MMAPPED: usize = 0x2;
pub(crate) const NON_MAIN_ARENA: usize = 0x4;
pub(crate) const SIZE_BITS: usize = PREV_INUSE | IS_MMAPPED | NON_MAIN_ARENA;

/// Largest request accepted, as glibc: anything that would not fit in a
/// `ptrdiff_t` once padded is refused with `ENOMEM`.
pub(crate) const MAX_REQUEST: usize = (isize::MAX as usize) - MINSIZE;

#[repr(C)]
pub(crate) struct Chunk {
    pub prev_size: usize,
    pub size: usize,
    pub fd: *mut Chunk,
    pub bk: *mut Chunk,
    pub fd_nextsize: *mut Chunk,
    pub bk_nextsize: *mut Chunk,
}

pub(crate) type ChunkPtr = *mut Chunk;

/// Chunk size for a request of `req` bytes (glibc's `request2size`).
#[inline(always)]
pub(crate) const fn request2size(req: usize) -> usize {
    if req + SIZE_SZ + ALIGN_MASK < MINSIZE {
        MINSIZE
    } else {
        (req + SIZE_SZ + ALIGN_MASK) & !ALIGN_MASK
    }
}

/// `request2size` that refuses requests too large to represent.
#[inline(always)]
pub(crate) fn checked_request2size(req: usize) -> Option<usize> {
    if req > MAX_REQUEST {
        None
    } else {
        Some(request2size(req))
    }
}

#[inline(always)]
pub(crate) fn mem2chunk(mem: *mut u8) -> ChunkPtr {
    mem.wrapping_sub(HDR) as ChunkPtr
}

#[inline(always)]
pub(crate) fn chunk2mem(p: ChunkPtr) -> *mut u8 {
    (p as *mut u8).wrapping_add(HDR)
}

#[inline(always)]
pub(crate) fn aligned_ok(addr: usize) -> bool {
    addr & ALIGN_MASK == 0
}

#[inline(always)]
pub(crate) fn misaligned_chunk(p: ChunkPtr) -> bool {
    !aligned_ok(chunk2mem(p) as usize)
}

#[inline(always)]
pub(crate) fn at_offset(p: ChunkPtr, off: usize) -> ChunkPtr {
    (p as *mut u8).wrapping_add(off) as ChunkPtr
}

// Field accessors.  Every function below takes a chunk pointer that must
// point at readable (and, for setters, writable) chunk memory of at least
// the header size; callers establish that from the heap's invariants or
// after validating a user pointer.

/// # Safety
/// `p` points to a chunk header of this allocator (or a bin header, for
/// `fd`/`bk` only), and every byte read or written (this header, the
/// successor's header, the footer) lies in memory the allocator owns.
#[inline(always)]
pub(crate) unsafe fn size_nomask(p: ChunkPtr) -> usize {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { (*p).size }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn size(p: ChunkPtr) -> usize {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { (*p).size & !SIZE_BITS }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn prev_size(p: ChunkPtr) -> usize {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { (*p).prev_size }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn set_prev_size(p: ChunkPtr, sz: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        (*p).prev_size = sz;
    }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn prev_inuse(p: ChunkPtr) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { (*p).size & PREV_INUSE != 0 }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn is_mmapped(p: ChunkPtr) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { (*p).size & IS_MMAPPED != 0 }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn is_main_arena(p: ChunkPtr) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { (*p).size & NON_MAIN_ARENA == 0 }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn next_chunk(p: ChunkPtr) -> ChunkPtr {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { at_offset(p, size(p)) }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn prev_chunk(p: ChunkPtr) -> ChunkPtr {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { (p as *mut u8).wrapping_sub(prev_size(p)) as ChunkPtr }
}

/// Is the chunk in use?  Its own bit lives in the next chunk's header.
///
/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn inuse(p: ChunkPtr) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { prev_inuse(next_chunk(p)) }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn inuse_bit_at_offset(p: ChunkPtr, off: usize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { prev_inuse(at_offset(p, off)) }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn set_inuse_bit_at_offset(p: ChunkPtr, off: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        (*at_offset(p, off)).size |= PREV_INUSE;
    }
}

/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn clear_inuse_bit_at_offset(p: ChunkPtr, off: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        (*at_offset(p, off)).size &= !PREV_INUSE;
    }
}

/// Set the whole size field, flags included.
///
/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn set_head(p: ChunkPtr, v: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        (*p).size = v;
    }
}

/// Set the size, keeping the `PREV_INUSE` bit.
///
/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn set_head_size(p: ChunkPtr, v: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        (*p).size = ((*p).size & PREV_INUSE) | v;
    }
}

/// Write the boundary tag (foot) of a free chunk of size `s`.
///
/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn set_foot(p: ChunkPtr, s: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        (*at_offset(p, s)).prev_size = s;
    }
}

/// Usable bytes of an in-use chunk (glibc's `malloc_usable_size` rule).
///
/// # Safety
/// As for [`size_nomask`]: a chunk header the allocator owns.
#[inline(always)]
pub(crate) unsafe fn usable_size(p: ChunkPtr) -> usize {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let sz = size(p);
        if is_mmapped(p) {
            sz - HDR
        } else {
            sz - SIZE_SZ
        }
    }
}

/// Safe-linking: single-linked free-list pointers are stored mangled with
/// the address of the slot that holds them (ASLR bits), so an overwrite
/// with a plain address or a partial overwrite decodes to garbage that the
/// alignment checks catch.
#[inline(always)]
pub(crate) fn protect_ptr(slot: *const u8, ptr: *mut u8) -> *mut u8 {
    (((slot as usize) >> 12) ^ (ptr as usize)) as *mut u8
}

#[inline(always)]
pub(crate) fn reveal_ptr(slot: *const u8, stored: *mut u8) -> *mut u8 {
    protect_ptr(slot, stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_sizes_follow_glibc() {
        assert_eq!(request2size(0), 32);
        assert_eq!(request2size(24), 32);
        assert_eq!(request2size(25), 48);
        assert_eq!(request2size(40), 48);
        assert_eq!(request2size(1000), 1008);
        assert_eq!(checked_request2size(usize::MAX), None);
        assert_eq!(checked_request2size(MAX_REQUEST + 1), None);
        assert!(checked_request2size(MAX_REQUEST).is_some());
    }

    #[test]
    fn safe_linking_round_trips_and_scrambles() {
        let slot = 0x5555_5555_0010usize as *const u8;
        let p = 0x5555_5555_2000usize as *mut u8;
        let s = protect_ptr(slot, p);
        assert_ne!(s, p);
        assert_eq!(reveal_ptr(slot, s), p);
        assert_eq!(
            reveal_ptr(slot, core::ptr::null_mut()),
            protect_ptr(slot, core::ptr::null_mut())
        );
    }
}
