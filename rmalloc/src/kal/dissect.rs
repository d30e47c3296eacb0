//! Heap dissection: from a consistent image of the process (the forked
//! child), the table of chunks that are in use, with the logically free ones
//! (thread caches, fastbins) and the ones in probation told apart, and the
//! address ranges that are heap rather than roots.
//!
//! Runs only where nothing else mutates the heap (the snapshot child), so
//! it reads allocator structures directly, without locks.  Any
//! inconsistency (a walk that breaks, a free list that does not decode)
//! fails the whole dissection: the caller then frees nothing.

use crate::arena::{self, Arena};
use crate::chunk::{self, ChunkPtr, HDR, IS_MMAPPED};
use crate::heap::{self, HEAP_MAX_SIZE};
use crate::tcache::{Entry, Tcache, TCACHE_MAX_BINS};
use crate::walk::{self, Kind};

use super::mem::{AddrMap, MVec};
use super::stop::Slot;

/// A candidate may be reported or reclaimed if unreachable.
pub const CAND: u8 = 1;
/// Reached from a root.
pub const MARKED: u8 = 2;
/// Looks in use but sits in a thread cache or a fastbin: never a leak, and
/// its stale contents are not followed.
pub const FREEISH: u8 = 4;
/// Stands alone in its own mapping.
pub const MMAPPED: u8 = 8;
/// Reclaimed and held in probation: kept, and treated as a root.
pub const PROBATION: u8 = 16;
/// Unreachable, but reachable from another unreachable chunk.
pub const INDIRECT: u8 = 32;
/// Put in tentative probation at this very instant: a candidate whose
/// verdict decides whether it is held.
pub const TENTATIVE: u8 = 64;

pub struct Heap {
    /// (chunk address, chunk size), sorted by address after [`dissect`].
    pub chunks: MVec<(usize, usize)>,
    pub flags: MVec<u8>,
    /// Address ranges that are heap (not roots), unsorted.
    pub ranges: MVec<(usize, usize)>,
    /// Lookup index: dense runs of chunks, and per page of each run the
    /// first chunk that may hold an address in it.
    segs: MVec<Seg>,
    pages: MVec<u32>,
}

#[derive(Clone, Copy)]
struct Seg {
    lo: usize,
    hi: usize,
    /// Index of the segment's first page in `pages`.
    base: usize,
}

const PAGE_SHIFT: usize = 12;
const PAGE: usize = 1 << PAGE_SHIFT;
/// Chunks further apart than this start a new segment.
const SEG_GAP: usize = 1 << 20;

impl Heap {
    pub const fn new() -> Self {
        Heap {
            chunks: MVec::new(),
            flags: MVec::new(),
            ranges: MVec::new(),
            segs: MVec::new(),
            pages: MVec::new(),
        }
    }

    /// Index of the in-use chunk whose user area (or one past its end)
    /// holds `addr`: the segment by binary search (there are few), the page
    /// by index, then a short walk over the chunks starting in that page.
    #[inline]
    pub fn find(&self, addr: usize) -> Option<usize> {
        let segs = self.segs.as_slice();
        let s = segs.partition_point(|g| g.hi <= addr);
        let g = segs.get(s)?;
        if addr < g.lo {
            return None;
        }
        let c = self.chunks.as_slice();
        let first = self.pages.as_slice()[g.base + ((addr - g.lo) >> PAGE_SHIFT)] as usize;
        // At most a page's worth of chunks can start in this page.
        let last = c.len().min(first + PAGE / chunk::MINSIZE + 2);
        let k = c[first..last].partition_point(|&(p, _)| p + HDR <= addr);
        if k == 0 {
            return None;
        }
        let i = first + k - 1;
        let (p, size) = c[i];
        let mmapped = self.flags.as_slice()[i] & MMAPPED != 0;
        // Usable bytes reach into the next chunk's prev_size for heap chunks.
        let end = if mmapped {
            p + size
        } else {
            p + size + chunk::SIZE_SZ
        };
        (addr <= end).then_some(i)
    }

    /// Build the segment and page index over the sorted chunk table.
    fn index(&mut self) -> bool {
        self.segs.clear();
        self.pages.clear();
        let n = self.chunks.len();
        let mut i = 0;
        while i < n {
            // A segment: chunks no more than SEG_GAP apart.
            let lo = self.chunks.as_slice()[i].0 & !(PAGE - 1);
            let mut j = i;
            let mut hi = 0;
            while j < n {
                let (p, size) = self.chunks.as_slice()[j];
                if j > i && p > hi + SEG_GAP {
                    break;
                }
                hi = hi.max(p + size + 2 * chunk::SIZE_SZ);
                j += 1;
            }
            let hi = (hi + PAGE - 1) & !(PAGE - 1);
            let base = self.pages.len();
            let npages = (hi - lo) >> PAGE_SHIFT;
            if !self.pages.reserve(npages) || !self.segs.push(Seg { lo, hi, base }) {
                return false;
            }
            // pages[k] = first chunk of the segment ending after page k's start.
            let mut k = i;
            for pg in 0..npages {
                let start = lo + (pg << PAGE_SHIFT);
                while k < j {
                    let (p, size) = self.chunks.as_slice()[k];
                    if p + size + 2 * chunk::SIZE_SZ > start {
                        break;
                    }
                    k += 1;
                }
                // The walk in `find` needs the chunk that may cover `start`
                // from the page before: step back one when possible.
                let first = if k > i { k - 1 } else { k };
                self.pages.push(first as u32);
            }
            i = j;
        }
        true
    }

    /// User area of chunk `i`: [start, end).
    pub fn user_area(&self, i: usize) -> (usize, usize) {
        let (p, size) = self.chunks.as_slice()[i];
        let mmapped = self.flags.as_slice()[i] & MMAPPED != 0;
        let end = if mmapped {
            p + size
        } else {
            p + size + chunk::SIZE_SZ
        };
        (p + HDR, end)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DissectError {
    /// A walk or free list did not make sense.
    Inconsistent,
    /// The engine's own memory ran out.
    NoMemory,
}

/// Build `h` from the current (frozen) heap.  `mmapped` is the registry of
/// mmapped chunks (address -> size), `probation` the chunks held in
/// probation (address -> saved word).
///
/// # Safety
/// Must run where no other thread can change the heap: the snapshot child.
pub unsafe fn dissect(
    h: &mut Heap,
    slots: &[Slot],
    mmapped: &AddrMap,
    probation: &AddrMap,
) -> Result<(), DissectError> {
    h.chunks.clear();
    h.flags.clear();
    h.ranges.clear();
    let mut nomem = false;
    let mut broken = false;
    arena::for_each_arena(|av| {
        if broken || nomem {
            return;
        }
        let mut hi = 0usize;
        let mut region_start = usize::MAX;
        let is_main = av == arena::main_arena();
        // SAFETY: the image is frozen (function contract); the walk only
        // follows boundary tags inside the arena's recorded regions.
        let r = unsafe {
            walk::walk_arena(av, &mut |p, size, kind| {
                let a = p as usize;
                if is_main {
                    // Main regions: consecutive chunks; a gap starts a new one.
                    if a != hi {
                        if region_start != usize::MAX {
                            nomem |= !h.ranges.push((region_start, hi));
                        }
                        region_start = a;
                    }
                    hi = a + size;
                }
                if kind == Kind::InUse {
                    nomem |= !h.chunks.push((a, size)) || !h.flags.push(CAND);
                }
            })
        };
        match r {
            Ok(_) => {}
            Err(_) => broken = true,
        }
        if is_main {
            if region_start != usize::MAX {
                nomem |= !h.ranges.push((region_start, hi));
            }
        } else {
            // SAFETY: a non-main arena lives in its first heap; every heap of
            // the chain is a HEAP_MAX_SIZE-aligned reservation.
            let mut hp = heap::heap_for_ptr(unsafe { (*av).top } as usize);
            while !hp.is_null() {
                nomem |= !h.ranges.push((hp as usize, hp as usize + HEAP_MAX_SIZE));
                // SAFETY: as above.
                hp = unsafe { (*hp).prev };
            }
        }
    });
    if broken {
        return Err(DissectError::Inconsistent);
    }
    // Mmapped chunks, from the registry.
    mmapped.for_each(|a, size| {
        let p = a as ChunkPtr;
        // SAFETY: registered chunks are mapped until unregistered, and the
        // registry is consistent in a frozen image.
        let (raw, off) = unsafe { (chunk::size_nomask(p), chunk::prev_size(p)) };
        if raw & IS_MMAPPED == 0 || (raw & !chunk::SIZE_BITS) != size {
            broken = true;
            return;
        }
        nomem |= !h.chunks.push((a, size)) || !h.flags.push(CAND | MMAPPED);
        nomem |= !h.ranges.push((a - off, a + size));
    });
    if broken {
        return Err(DissectError::Inconsistent);
    }
    if nomem {
        return Err(DissectError::NoMemory);
    }
    sort_by_address(h);
    if !h.index() {
        return Err(DissectError::NoMemory);
    }
    // Held probation chunks: kept, and roots.  Tentative ones: candidates
    // whose verdict this snapshot gives.
    let mut missing = false;
    probation.for_each(|a, v| {
        let held = super::reclaim::value_is_held(v);
        match h.find(a + HDR) {
            Some(i) if h.chunks.as_slice()[i].0 == a => {
                let f = &mut h.flags.as_mut_slice()[i];
                *f = if held {
                    (*f & MMAPPED) | PROBATION
                } else {
                    *f | TENTATIVE
                };
            }
            // A tentative chunk that is no chunk here is simply refuted.
            _ => missing |= held,
        }
    });
    if missing {
        return Err(DissectError::Inconsistent);
    }
    // Objects the program asked to ignore: kept, and roots.
    // SAFETY: frozen image (function contract).
    let (ignored, _) = unsafe { super::lsan::frozen() };
    ignored.for_each(|a, _| {
        if let Some(i) = h.find(a + HDR) {
            if h.chunks.as_slice()[i].0 == a {
                let f = &mut h.flags.as_mut_slice()[i];
                *f = (*f & MMAPPED) | PROBATION;
            }
        }
    });
    // Thread caches.
    for s in slots {
        if super::stop::stopped(s) && s.tcache > 1 {
            // SAFETY: a live thread's cache pointer is a heap chunk holding
            // a `Tcache`, frozen in this image.
            unsafe { exclude_tcache(h, s.tcache as *const Tcache)? };
        }
    }
    // Fastbins.
    let mut bad = false;
    arena::for_each_arena(|av| {
        if !bad {
            // SAFETY: frozen image (function contract).
            bad = unsafe { exclude_fastbins(h, av) }.is_err();
        }
    });
    if bad {
        return Err(DissectError::Inconsistent);
    }
    Ok(())
}

fn sort_by_address(h: &mut Heap) {
    // Sort the pairs, then rebuild the flags to match (the flags are a pure
    // function of what was pushed with each pair: MMAPPED or not).
    let n = h.chunks.len();
    {
        let c = h.chunks.as_mut_slice();
        let f = h.flags.as_mut_slice();
        // Encode the MMAPPED flag in the size's low bit while sorting.
        for i in 0..n {
            if f[i] & MMAPPED != 0 {
                c[i].1 |= 1;
            }
        }
        c.sort_unstable_by_key(|&(p, _)| p);
        for i in 0..n {
            f[i] = if c[i].1 & 1 != 0 {
                CAND | MMAPPED
            } else {
                CAND
            };
            c[i].1 &= !1;
        }
    }
}

/// Mark as logically free every chunk chained from `idx`'s list head.
fn exclude_chain(
    h: &mut Heap,
    mut e: usize,
    limit: usize,
    next_of: impl Fn(usize) -> usize,
) -> Result<(), DissectError> {
    let mut steps = 0;
    while e != 0 {
        if !chunk::aligned_ok(e) || steps > limit {
            return Err(DissectError::Inconsistent);
        }
        let p = e - HDR;
        match h.find(e) {
            Some(i) if h.chunks.as_slice()[i].0 == p => h.flags.as_mut_slice()[i] = FREEISH,
            _ => return Err(DissectError::Inconsistent),
        }
        e = next_of(e);
        steps += 1;
    }
    Ok(())
}

/// # Safety
/// `tc` must point to a thread cache in a frozen image.
unsafe fn exclude_tcache(h: &mut Heap, tc: *const Tcache) -> Result<(), DissectError> {
    for i in 0..TCACHE_MAX_BINS {
        // SAFETY: `tc` is a valid Tcache (function contract).
        let (head, count) = unsafe { ((*tc).entries[i] as usize, (*tc).counts[i] as usize) };
        // A push caught between linking the entry and counting it leaves
        // the list one longer than its count.
        exclude_chain(h, head, count + 1, |e| {
            let ent = e as *const Entry;
            // SAFETY: `e` was just found to be a chunk's user pointer in the
            // table, so its first word is readable.
            let stored = unsafe { (*ent).next } as *mut u8;
            chunk::reveal_ptr(e as *const u8, stored) as usize
        })?;
    }
    Ok(())
}

/// # Safety
/// `av` must be an arena in a frozen image.
unsafe fn exclude_fastbins(h: &mut Heap, av: *mut Arena) -> Result<(), DissectError> {
    let limit = h.chunks.len();
    // SAFETY: frozen image (function contract).
    let bins = unsafe { &(*av).fastbins };
    for b in bins.iter() {
        let head = b.load(core::sync::atomic::Ordering::Relaxed);
        let first = if head.is_null() {
            0
        } else {
            chunk::chunk2mem(head) as usize
        };
        exclude_chain(h, first, limit, |e| {
            let p = (e - HDR) as ChunkPtr;
            // SAFETY: `p` is a chunk in the table; its fd word is readable.
            let slot = unsafe { core::ptr::addr_of!((*p).fd) } as *const u8;
            // SAFETY: as above.
            let stored = unsafe { (*p).fd } as *mut u8;
            let next = chunk::reveal_ptr(slot, stored);
            if next.is_null() {
                0
            } else {
                chunk::chunk2mem(next as ChunkPtr) as usize
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_agrees_with_a_plain_search() {
        let mut h = Heap::new();
        let mut x = 7usize;
        let mut p = 0x10_0000usize;
        for i in 0..3_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let size = 32 + ((x >> 33) % 64) * 16;
            if i % 1000 == 999 {
                p += 8 << 20; // a gap that starts a new segment
            }
            h.chunks.push((p, size));
            h.flags
                .push(if i % 97 == 0 { CAND | MMAPPED } else { CAND });
            p += size + if (x >> 20).is_multiple_of(7) { 4096 } else { 0 };
        }
        assert!(h.index());
        let naive = |a: usize| {
            h.chunks
                .as_slice()
                .iter()
                .enumerate()
                .find_map(|(i, &(c, s))| {
                    let end = if h.flags.as_slice()[i] & MMAPPED != 0 {
                        c + s
                    } else {
                        c + s + 8
                    };
                    (c + HDR <= a && a <= end).then_some(i)
                })
        };
        let (lo, hi) = (0x10_0000 - 64, p + 64);
        let mut a = lo;
        while a < hi {
            assert_eq!(h.find(a), naive(a), "address {a:#x}");
            a += 8 + (a >> 3) % 3 * 8;
            if a % 65536 < 24 {
                a += 4096; // sample, so the naive search stays affordable
            }
        }
    }
}
