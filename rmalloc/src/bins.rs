//! Size classes: fastbins, small bins, large bins, the unsorted bin and the
//! binmap, with glibc's index functions for 64-bit targets.
//!
//! Bin headers are two-pointer pairs inside the arena that double as fake
//! chunks: `bin_at(i)` points 16 bytes before the pair, so a header's `fd` and
//! `bk` are the pair and the circular lists need no special cases.  Only
//! `fd`/`bk` of a bin header may be touched.

use crate::chunk::{request2size, ChunkPtr, SIZE_SZ};

pub(crate) const NBINS: usize = 128;
pub(crate) const NSMALLBINS: usize = 64;
pub(crate) const SMALLBIN_WIDTH: usize = 16;
pub(crate) const MIN_LARGE_SIZE: usize = NSMALLBINS * SMALLBIN_WIDTH;
pub(crate) const BINMAPSHIFT: usize = 5;
pub(crate) const BINMAPSIZE: usize = NBINS >> BINMAPSHIFT;
/// Largest `M_MXFAST` value accepted.
pub(crate) const MAX_FAST_SIZE: usize = 80 * SIZE_SZ / 4;
pub(crate) const NFASTBINS: usize = fastbin_index(request2size(MAX_FAST_SIZE)) + 1;
/// Freeing a chunk this large (after coalescing) consolidates fastbins and
/// considers trimming.
pub(crate) const FASTBIN_CONSOLIDATION_THRESHOLD: usize = 65536;
/// Upper bound on unsorted chunks processed by one `malloc` call.
pub(crate) const MAX_ITERS: usize = 10000;

#[inline(always)]
pub(crate) const fn fastbin_index(sz: usize) -> usize {
    (sz >> 4) - 2
}

#[inline(always)]
pub(crate) const fn in_smallbin_range(sz: usize) -> bool {
    sz < MIN_LARGE_SIZE
}

#[inline(always)]
pub(crate) const fn smallbin_index(sz: usize) -> usize {
    sz >> 4
}

#[inline(always)]
pub(crate) const fn largebin_index(sz: usize) -> usize {
    if (sz >> 6) <= 48 {
        48 + (sz >> 6)
    } else if (sz >> 9) <= 20 {
        91 + (sz >> 9)
    } else if (sz >> 12) <= 10 {
        110 + (sz >> 12)
    } else if (sz >> 15) <= 4 {
        119 + (sz >> 15)
    } else if (sz >> 18) <= 2 {
        124 + (sz >> 18)
    } else {
        126
    }
}

#[inline(always)]
pub(crate) const fn bin_index(sz: usize) -> usize {
    if in_smallbin_range(sz) {
        smallbin_index(sz)
    } else {
        largebin_index(sz)
    }
}

#[inline(always)]
pub(crate) const fn idx2block(i: usize) -> usize {
    i >> BINMAPSHIFT
}

#[inline(always)]
pub(crate) const fn idx2bit(i: usize) -> u32 {
    1u32 << (i & ((1 << BINMAPSHIFT) - 1))
}

/// Number of thread-cache size classes (one per 16 bytes up to 1032).
pub(crate) const TCACHE_MAX_BINS: usize = 64;

/// Cache bin for chunk size `sz` (only meaningful for sizes >= crate::chunk::MINSIZE).
#[inline(always)]
pub(crate) const fn csize2tidx(sz: usize) -> usize {
    sz.wrapping_sub(crate::chunk::MINSIZE)
        .div_ceil(crate::chunk::ALIGN)
}

/// Chunk size of cache bin `idx` (the inverse of [`csize2tidx`]).
#[inline(always)]
pub(crate) const fn tidx2csize(idx: usize) -> usize {
    idx * crate::chunk::ALIGN + crate::chunk::MINSIZE
}

/// Largest request served by cache bin `idx` (glibc's `tidx2usize`).
#[inline(always)]
pub(crate) const fn tidx2usize(idx: usize) -> usize {
    idx * crate::chunk::ALIGN + crate::chunk::MINSIZE - crate::chunk::SIZE_SZ
}

/// Remove free chunk `p` from its (small or large) bin.
///
/// # Safety
/// `p` is a free chunk linked into one of its arena's bins, and the caller
/// holds that arena's lock.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn unlink_chunk(p: ChunkPtr) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        if crate::chunk::size(p) != crate::chunk::prev_size(crate::chunk::next_chunk(p)) {
            crate::error::malloc_printerr("corrupted size vs. prev_size");
        }
        let fd = (*p).fd;
        let bk = (*p).bk;
        if (*fd).bk != p || (*bk).fd != p {
            crate::error::malloc_printerr("corrupted double-linked list");
        }
        (*fd).bk = bk;
        (*bk).fd = fd;
        if !in_smallbin_range(crate::chunk::size_nomask(p)) && !(*p).fd_nextsize.is_null() {
            if (*(*p).fd_nextsize).bk_nextsize != p || (*(*p).bk_nextsize).fd_nextsize != p {
                crate::error::malloc_printerr("corrupted double-linked list (not small)");
            }
            if (*fd).fd_nextsize.is_null() {
                if (*p).fd_nextsize == p {
                    (*fd).fd_nextsize = fd;
                    (*fd).bk_nextsize = fd;
                } else {
                    (*fd).fd_nextsize = (*p).fd_nextsize;
                    (*fd).bk_nextsize = (*p).bk_nextsize;
                    (*(*p).fd_nextsize).bk_nextsize = fd;
                    (*(*p).bk_nextsize).fd_nextsize = fd;
                }
            } else {
                (*(*p).fd_nextsize).bk_nextsize = (*p).bk_nextsize;
                (*(*p).bk_nextsize).fd_nextsize = (*p).fd_nextsize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_glibc_tables() {
        assert_eq!(NFASTBINS, 10);
        assert_eq!(fastbin_index(32), 0);
        assert_eq!(fastbin_index(128), 6);
        assert_eq!(smallbin_index(32), 2);
        assert_eq!(smallbin_index(1008), 63);
        assert!(!in_smallbin_range(1024));
        assert_eq!(largebin_index(1024), 64);
        assert_eq!(largebin_index(3072), 96);
        assert_eq!(largebin_index(1 << 20), 126);
        // Large bins are monotone in size and stay below NBINS.
        let mut last = 0;
        let mut sz = 1024;
        while sz < (1 << 24) {
            let i = largebin_index(sz);
            assert!(i >= last && i < NBINS - 1);
            last = i;
            sz += 16;
        }
    }
}
