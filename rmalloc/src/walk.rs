//! Walking an arena's heap chunk by chunk, using only the boundary tags.
//!
//! The main arena's memory is the list of regions recorded by `top.rs`;
//! a non-main arena's is its chain of heaps.  Within a region, chunks follow
//! each other by size until the arena's top chunk or a fencepost (a chunk
//! smaller than `MINSIZE`, which ends a region that was left behind).
//! Everything is read through a [`MemView`]: in place (the caller holds the
//! arena lock, so the tags are stable) or out of a snapshot image.

use core::mem::{offset_of, size_of};

use crate::arena::{self, Arena};
use crate::chunk::{self, Chunk, MINSIZE, PREV_INUSE, SIZE_BITS};
use crate::heap::{self, HeapInfo};
use crate::top::{MAX_REGIONS, NREGIONS, REGIONS};
use crate::view::{Ahead, MemView};

/// What the walker reports for each chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// In use, or held in a fastbin or a thread cache (those look in use).
    InUse,
    Free,
    Top,
}

/// A region could not be walked: the chunk at `at` has an impossible size,
/// or the view could not read it.
#[derive(Debug)]
pub(crate) struct Broken {
    pub at: usize,
    pub why: &'static str,
}

fn read(v: &mut impl MemView, addr: usize) -> Result<usize, Broken> {
    v.word(addr).ok_or(Broken {
        at: addr,
        why: "memory the view cannot read",
    })
}

/// Call `f(chunk, size, kind)` for every chunk of `av`, reading through
/// `v`.  Regions whose start could not be recorded (more than
/// `MAX_REGIONS`) are skipped; the return value says whether the walk was
/// complete.
pub(crate) fn walk_arena(
    v: &mut impl MemView,
    av: *mut Arena,
    f: &mut dyn FnMut(usize, usize, Kind),
) -> Result<bool, Broken> {
    let top = read(v, av as usize + offset_of!(Arena, top))?;
    if av == arena::main_arena() {
        let n = read(v, &NREGIONS as *const _ as usize)?;
        for i in 0..n.min(MAX_REGIONS) {
            let r = read(v, REGIONS.as_ptr() as usize + i * size_of::<usize>())?;
            walk_region(v, r, usize::MAX, top, f)?;
        }
        Ok(n <= MAX_REGIONS)
    } else {
        let mut h = heap::heap_for_ptr(top) as usize;
        while h != 0 {
            let end = h.wrapping_add(read(v, h + offset_of!(HeapInfo, size))?);
            let ar_ptr = read(v, h + offset_of!(HeapInfo, ar_ptr))?;
            walk_region(v, heap::first_chunk_of(h, ar_ptr), end, top, f)?;
            h = read(v, h + offset_of!(HeapInfo, prev))?;
        }
        Ok(true)
    }
}

/// How far ahead of a walk its memory is prefetched.
const WALK_AHEAD: usize = 4096;

fn walk_region(
    v: &mut impl MemView,
    mut p: usize,
    end: usize,
    top: usize,
    f: &mut dyn FnMut(usize, usize, Kind),
) -> Result<(), Broken> {
    let size_at = |p: usize| p + offset_of!(Chunk, size);
    // The walk is a chain of dependent loads through ascending addresses:
    // ask for the memory ahead of it before it is needed.
    let mut ahead = Ahead::new();
    loop {
        ahead.at(v, p, WALK_AHEAD);
        let size = read(v, size_at(p))? & !SIZE_BITS;
        if p == top {
            f(p, size, Kind::Top);
            return Ok(());
        }
        if size < MINSIZE {
            // Fencepost: the region ends here.
            return Ok(());
        }
        if !chunk::aligned_ok(size) || p.checked_add(size).is_none_or(|e| e > end) {
            return Err(Broken {
                at: p,
                why: "chunk size runs past its region",
            });
        }
        let next = p + size;
        let kind = if read(v, size_at(next))? & PREV_INUSE != 0 {
            Kind::InUse
        } else {
            Kind::Free
        };
        f(p, size, kind);
        p = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;
    use crate::view::Live;

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
                let complete = walk_arena(&mut Live::new(), a, &mut |p, _size, kind| match kind {
                    Kind::InUse => seen.push(chunk::chunk2mem(p as chunk::ChunkPtr)),
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
