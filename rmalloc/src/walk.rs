//! Walking an arena's heap chunk by chunk, using only the boundary tags.
//!
//! The main arena's memory is the list of regions recorded by `top.rs`;
//! a non-main arena's is its chain of heaps.  Within a region, chunks follow
//! each other by size until the arena's top chunk or a fencepost (a chunk
//! smaller than `MINSIZE`, which ends a region that was left behind).
//! Caller holds the arena lock, so the tags are stable.

use core::sync::atomic::Ordering;

use crate::arena::Arena;
use crate::chunk::{self, ChunkPtr, MINSIZE};
use crate::heap;
use crate::top::{MAX_REGIONS, NREGIONS, REGIONS};

/// What the walker reports for each chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// In use, or held in a fastbin or a thread cache (those look in use).
    InUse,
    Free,
    Top,
}

/// A region could not be walked: the chunk at `at` has an impossible size.
#[derive(Debug)]
pub(crate) struct Broken {
    pub at: usize,
    pub why: &'static str,
}

/// Call `f(chunk, size, kind)` for every chunk of `av`.  Regions whose start
/// could not be recorded (more than `MAX_REGIONS`) are skipped; the return
/// value says whether the walk was complete.
///
/// # Safety
/// `av` is an initialised arena whose lock the caller holds; the heap is
/// only read.
pub(crate) unsafe fn walk_arena(
    av: *mut Arena,
    f: &mut dyn FnMut(ChunkPtr, usize, Kind),
) -> Result<bool, Broken> {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let top = (*av).top;
        if (*av).is_main() {
            let n = NREGIONS.load(Ordering::Acquire);
            for r in REGIONS.iter().take(n.min(MAX_REGIONS)) {
                walk_region(r.load(Ordering::Relaxed) as ChunkPtr, usize::MAX, top, f)?;
            }
            Ok(n <= MAX_REGIONS)
        } else {
            let mut h = heap::heap_for_ptr(top as usize);
            while !h.is_null() {
                let end = h as usize + (*h).size;
                walk_region(heap::first_chunk(h), end, top, f)?;
                h = (*h).prev;
            }
            Ok(true)
        }
    }
}

/// # Safety
/// `av` is an initialised arena whose lock the caller holds; the heap is
/// only read.
unsafe fn walk_region(
    mut p: ChunkPtr,
    end: usize,
    top: ChunkPtr,
    f: &mut dyn FnMut(ChunkPtr, usize, Kind),
) -> Result<(), Broken> {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        loop {
            if p == top {
                f(p, chunk::size(p), Kind::Top);
                return Ok(());
            }
            let size = chunk::size(p);
            if size < MINSIZE {
                // Fencepost: the region ends here.
                return Ok(());
            }
            if !chunk::aligned_ok(size) || (p as usize).checked_add(size).is_none_or(|e| e > end) {
                return Err(Broken {
                    at: p as usize,
                    why: "chunk size runs past its region",
                });
            }
            let next = chunk::at_offset(p, size);
            let kind = if chunk::prev_inuse(next) {
                Kind::InUse
            } else {
                Kind::Free
            };
            f(p, size, kind);
            p = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;

    #[test]
    fn walk_finds_every_live_block_of_a_thread_arena() {
        // A fresh thread works in an arena of its own once the main arena is
        // taken, so the walk sees exactly what this thread allocated.
        std::thread::spawn(|| {
            // SAFETY: blocks are freed once, after the walk.
            unsafe {
                let blocks: Vec<*mut u8> = (0..50).map(|i| api::malloc(2000 + i * 16)).collect();
                let a = crate::arena::arena_for_chunk(chunk::mem2chunk(blocks[0]));
                (*a).mutex.lock();
                let mut seen = Vec::new();
                let mut tops = 0;
                let complete = walk_arena(a, &mut |p, _size, kind| match kind {
                    Kind::InUse => seen.push(chunk::chunk2mem(p)),
                    Kind::Top => tops += 1,
                    Kind::Free => {}
                })
                .expect("heap walk failed");
                (*a).mutex.unlock();
                assert!(complete);
                assert_eq!(tops, 1);
                for b in &blocks {
                    assert!(seen.contains(b), "block {:p} not found by the walk", b);
                }
                for b in blocks {
                    api::free(b);
                }
            }
        })
        .join()
        .unwrap();
    }
}
