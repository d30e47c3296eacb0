//! Heap dissection: from a consistent image of the process (the forked
//! child's own memory, or a kernel snapshot image), the table of chunks
//! that are in use, with the logically free ones (thread caches, fastbins)
//! and the ones in probation told apart, and the address ranges that are
//! heap rather than roots.
//!
//! Every allocator structure is read through a [`MemView`] of the instant,
//! without locks.  Any inconsistency (a walk that breaks, a free list that
//! does not decode, memory the view cannot read) fails the whole
//! dissection: the caller then frees nothing.

use core::mem::offset_of;

use crate::arena::{self, Arena};
use crate::chunk::{self, Chunk, HDR, IS_MMAPPED};
use crate::heap::{self, HeapInfo, HEAP_MAX_SIZE};
use crate::tcache::{Entry, Tcache, TCACHE_MAX_BINS};
use crate::view::{prefetch, MemView};
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
    /// Lookup index: dense runs of chunks, and per granule of each run
    /// the first chunk that may hold an address in it.
    segs: MVec<Seg>,
    granules: MVec<u32>,
    /// The arenas of the instant.
    arenas: MVec<usize>,
}

#[derive(Clone, Copy)]
struct Seg {
    lo: usize,
    hi: usize,
    /// Index of the segment's first granule in `granules`.
    base: usize,
    /// The segment's granules are `1 << shift` bytes.
    shift: u32,
}

/// One index entry per granule of a segment: 4 bytes.  A granule holds
/// about four chunks of the segment's average size, at least 256 bytes
/// (so that the chunks a lookup searches share a cache line or two and a
/// lookup costs about three memory accesses, which [`Heap::prefetch_slot`]
/// and [`Heap::prefetch_chunk`] can start ahead of time) and at most 64 KiB
/// (so that a segment of a few huge chunks does not cost an entry per 256
/// bytes; and half of SEG_GAP at most, so rounding keeps segments apart).
/// For a heap of small chunks the index is 1.6% of its span.
const GRANULE_MIN_SHIFT: u32 = 8;
const GRANULE_MAX_SHIFT: u32 = 16;
const _: () = assert!(2 << GRANULE_MAX_SHIFT <= SEG_GAP);
/// Chunks further apart than this start a new segment.
const SEG_GAP: usize = 1 << 20;

impl Heap {
    pub const fn new() -> Self {
        Heap {
            chunks: MVec::new_huge(),
            flags: MVec::new_huge(),
            ranges: MVec::new(),
            segs: MVec::new(),
            granules: MVec::new_huge(),
            arenas: MVec::new(),
        }
    }

    /// Index of the in-use chunk whose user area (or one past its end)
    /// holds `addr`.
    #[inline]
    pub fn find(&self, addr: usize) -> Option<usize> {
        self.find_at(addr, self.slot(addr)?)
    }

    /// The index entry that covers `addr`, if any segment does: its
    /// segment by binary search (there are few), then the granule.
    #[inline(always)]
    pub fn slot(&self, addr: usize) -> Option<usize> {
        let segs = self.segs.as_slice();
        let g = segs.get(segs.partition_point(|g| g.hi <= addr))?;
        (addr >= g.lo).then(|| g.base + ((addr - g.lo) >> g.shift))
    }

    /// Start loading the index entry `slot` (from [`Heap::slot`]).
    #[inline(always)]
    pub fn prefetch_slot(&self, slot: usize) {
        prefetch(self.granules.as_slice().as_ptr().wrapping_add(slot));
    }

    /// Start loading the chunks that a lookup through `slot` searches, and
    /// the first one's flags.  Best after [`Heap::prefetch_slot`] had time.
    #[inline(always)]
    pub fn prefetch_chunk(&self, slot: usize) {
        let first = self.granules.as_slice()[slot] as usize;
        prefetch(self.chunks.as_slice().as_ptr().wrapping_add(first));
        prefetch(self.chunks.as_slice().as_ptr().wrapping_add(first + 4));
        prefetch(self.flags.as_slice().as_ptr().wrapping_add(first));
    }

    /// [`Heap::find`] with the index entry already known.
    #[inline(always)]
    pub fn find_at(&self, addr: usize, slot: usize) -> Option<usize> {
        let c = self.chunks.as_slice();
        let granules = self.granules.as_slice();
        let first = granules[slot] as usize;
        // Chunks from the one after the next granule's entry on start
        // beyond the next granule's start, hence beyond `addr`.
        let next = granules.get(slot + 1).map_or(c.len(), |&n| n as usize + 2);
        let last = c.len().min(next.max(first));
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

    /// Build the segment and granule index over the sorted chunk table.
    pub(super) fn index(&mut self) -> bool {
        self.segs.clear();
        self.granules.clear();
        let n = self.chunks.len();
        let mut i = 0;
        while i < n {
            // A segment: chunks no more than SEG_GAP apart.
            let start = self.chunks.as_slice()[i].0;
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
            let per_chunk = (hi - start) / (j - i);
            let shift = (per_chunk.max(1).ilog2() + 2).clamp(GRANULE_MIN_SHIFT, GRANULE_MAX_SHIFT);
            let granule = 1usize << shift;
            let lo = start & !(granule - 1);
            let hi = (hi + granule - 1) & !(granule - 1);
            let base = self.granules.len();
            let n = (hi - lo) >> shift;
            if !self.granules.reserve(n)
                || !self.segs.push(Seg {
                    lo,
                    hi,
                    base,
                    shift,
                })
            {
                return false;
            }
            // granules[g] = first chunk of the segment ending after granule
            // g's start.
            let mut k = i;
            for g in 0..n {
                let start = lo + (g << shift);
                while k < j {
                    let (p, size) = self.chunks.as_slice()[k];
                    if p + size + 2 * chunk::SIZE_SZ > start {
                        break;
                    }
                    k += 1;
                }
                // The search in `find_at` needs the chunk that may cover
                // `start` from the granule before: step back one if any.
                let first = if k > i { k - 1 } else { k };
                self.granules.push(first as u32);
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

/// What the dissection reads besides the heap: the engine's own tables
/// as they were at the instant.
pub struct Tables<'a> {
    /// The registry of mmapped chunks (address -> size).
    pub mmapped: &'a AddrMap,
    /// Chunks held in probation (address -> saved word).
    pub probation: &'a AddrMap,
    /// Objects the program asked to ignore (`__lsan_ignore_object`).
    pub ignored: &'a AddrMap,
}

/// Every arena, main first, following the ring as the view sees it.
fn list_arenas(v: &mut impl MemView, out: &mut MVec<usize>) -> Result<(), DissectError> {
    out.clear();
    let start = arena::main_arena() as usize;
    let mut a = start;
    // Arenas are bounded (arena_max); a longer ring is corrupt.
    for _ in 0..1 << 16 {
        if !out.push(a) {
            return Err(DissectError::NoMemory);
        }
        let next = word(v, a + offset_of!(Arena, next))?;
        if next == 0 || next == start {
            return Ok(());
        }
        a = next;
    }
    Err(DissectError::Inconsistent)
}

/// Build `h` from the heap of the instant that `v` shows.  `slots` are the
/// stopped threads (their cache pointers).
pub fn dissect<V: MemView>(
    v: &mut V,
    h: &mut Heap,
    slots: &[Slot],
    t: &Tables,
) -> Result<(), DissectError> {
    h.chunks.clear();
    h.flags.clear();
    h.ranges.clear();
    let mut nomem = false;
    list_arenas(v, &mut h.arenas)?;
    for k in 0..h.arenas.len() {
        let av = h.arenas.as_slice()[k] as *mut Arena;
        let mut hi = 0usize;
        let mut region_start = usize::MAX;
        let is_main = av == arena::main_arena();
        let r = walk::walk_arena(v, av, &mut |a, size, kind| {
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
        });
        if r.is_err() {
            return Err(DissectError::Inconsistent);
        }
        if is_main {
            if region_start != usize::MAX {
                nomem |= !h.ranges.push((region_start, hi));
            }
        } else {
            // A non-main arena lives in its first heap; every heap of the
            // chain is a HEAP_MAX_SIZE-aligned reservation.
            let top = word(v, av as usize + offset_of!(Arena, top))?;
            let mut hp = heap::heap_for_ptr(top) as usize;
            while hp != 0 {
                nomem |= !h.ranges.push((hp, hp + HEAP_MAX_SIZE));
                hp = word(v, hp + offset_of!(HeapInfo, prev))?;
            }
        }
    }
    // Mmapped chunks, from the registry.
    let mut broken = false;
    t.mmapped.for_each(|a, size| {
        let (raw, off) = match (v.word(a + offset_of!(Chunk, size)), v.word(a)) {
            (Some(raw), Some(off)) => (raw, off),
            _ => {
                broken = true;
                return;
            }
        };
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
    // The lookup index assumes disjoint chunks; overlapping ones mean the
    // image is not a heap at rest.
    if h.chunks
        .as_slice()
        .windows(2)
        .any(|w| w[0].0 + w[0].1 > w[1].0)
    {
        return Err(DissectError::Inconsistent);
    }
    if !h.index() {
        return Err(DissectError::NoMemory);
    }
    // Held probation chunks: kept, and roots.  Tentative ones: candidates
    // whose verdict this snapshot gives.
    let mut missing = false;
    t.probation.for_each(|a, val| {
        let held = super::reclaim::value_is_held(val);
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
    t.ignored.for_each(|a, _| {
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
            exclude_tcache(v, h, s.tcache as usize)?;
        }
    }
    // Fastbins.
    for k in 0..h.arenas.len() {
        let av = h.arenas.as_slice()[k];
        exclude_fastbins(v, h, av)?;
    }
    Ok(())
}

fn word(v: &mut impl MemView, addr: usize) -> Result<usize, DissectError> {
    v.word(addr).ok_or(DissectError::Inconsistent)
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

/// Mark as logically free every chunk chained from the user pointer `e`.
fn exclude_chain(
    h: &mut Heap,
    mut e: usize,
    limit: usize,
    mut next_of: impl FnMut(usize) -> Option<usize>,
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
        e = next_of(e).ok_or(DissectError::Inconsistent)?;
        steps += 1;
    }
    Ok(())
}

/// Exclude the chunks of the thread cache at `tc`.
fn exclude_tcache(v: &mut impl MemView, h: &mut Heap, tc: usize) -> Result<(), DissectError> {
    let counts = tc + offset_of!(Tcache, counts);
    let entries = tc + offset_of!(Tcache, entries);
    for i in 0..TCACHE_MAX_BINS {
        let at = counts + i * 2;
        let count = (word(v, at & !7)? >> ((at & 7) * 8)) as u16 as usize;
        let head = word(v, entries + i * 8)?;
        // A push caught between linking the entry and counting it leaves
        // the list one longer than its count.
        exclude_chain(h, head, count + 1, |e| {
            let stored = v.word(e + offset_of!(Entry, next))?;
            Some(chunk::reveal_ptr(e as *const u8, stored as *mut u8) as usize)
        })?;
    }
    Ok(())
}

/// Exclude the chunks in the fastbins of the arena at `av`.
fn exclude_fastbins(v: &mut impl MemView, h: &mut Heap, av: usize) -> Result<(), DissectError> {
    let limit = h.chunks.len();
    let bins = av + offset_of!(Arena, fastbins);
    for b in 0..crate::bins::NFASTBINS {
        let head = word(v, bins + b * 8)?;
        let first = if head == 0 { 0 } else { head + HDR };
        exclude_chain(h, first, limit, |e| {
            let slot = e - HDR + offset_of!(Chunk, fd);
            let stored = v.word(slot)?;
            let next = chunk::reveal_ptr(slot as *const u8, stored as *mut u8) as usize;
            Some(if next == 0 { 0 } else { next + HDR })
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
            // Mostly random sizes; a dense run of the smallest chunks
            // (the most a granule can hold); and huge chunks, alone in a
            // segment and among small ones, which coarsen the granules.
            let size = match i {
                500..=560 => chunk::MINSIZE,
                1500 | 2500 => 3 << 20,
                _ => 32 + ((x >> 33) % 64) * 16,
            };
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
        // Every word around every chunk start of the dense run.
        let dense: Vec<usize> = h.chunks.as_slice()[490..580].iter().map(|c| c.0).collect();
        for c in dense {
            for a in (c - 40..c + 48).step_by(8) {
                assert_eq!(h.find(a), naive(a), "address {a:#x}");
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// `cargo test --release -p rmalloc find_speed -- --ignored --nocapture`:
    /// CPU time per lookup on a 64 MiB-like table (no assertion on time).
    #[test]
    #[ignore]
    fn find_speed() {
        let mut h = Heap::new();
        let mut x = 99usize;
        let mut rnd = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 20
        };
        let mut p = 0x5555_0000_0000usize;
        let n: usize = std::env::var("KAL_FIND_CHUNKS").map_or(360_000, |v| v.parse().unwrap());
        for _ in 0..n {
            let size = 32 + (rnd() % 64) * 16;
            h.chunks.push((p, size));
            h.flags.push(CAND);
            p += size;
        }
        assert!(h.index());
        let span = p - 0x5555_0000_0000;
        let addrs: Vec<usize> = (0..4_000_000)
            .map(|_| (0x5555_0000_0000 + (rnd() % span)) & !7)
            .collect();
        let t0 = rmalloc_sys::task::thread_cpu_ns();
        let mut found = 0usize;
        for &a in &addrs {
            found += h.find(a).is_some() as usize;
        }
        let ns = rmalloc_sys::task::thread_cpu_ns() - t0;
        println!(
            "find: {:.1} ns per lookup ({found} found)",
            ns as f64 / addrs.len() as f64
        );
        // The same lookups in batches of 32, each stage prefetched.
        let t0 = rmalloc_sys::task::thread_cpu_ns();
        let mut found = 0usize;
        for b in addrs.chunks(32) {
            let slots: Vec<usize> = b.iter().map(|&a| h.slot(a).unwrap()).collect();
            for &s in &slots {
                h.prefetch_slot(s);
            }
            for &s in &slots {
                h.prefetch_chunk(s);
            }
            for (&a, &s) in b.iter().zip(&slots) {
                found += h.find_at(a, s).is_some() as usize;
            }
        }
        let ns = rmalloc_sys::task::thread_cpu_ns() - t0;
        println!(
            "batched find: {:.1} ns per lookup ({found} found)",
            ns as f64 / addrs.len() as f64
        );
    }
}
