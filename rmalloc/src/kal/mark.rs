//! The mark loop: conservative, word-aligned, transitive, with an explicit
//! work list (never recursion), over a dissected heap.
//!
//! A word keeps a chunk alive when it points anywhere into the chunk's user
//! area or exactly one past its end.  Marking starts from root ranges and
//! root values, then follows the contents of every marked chunk.  A second
//! pass over what stayed unmarked tells direct leaks (referenced by nothing
//! unreachable) from indirect ones, as LeakSanitizer does.
//!
//! Marked chunks are followed in address order where the graph allows:
//! the chunk table is sorted by address, and a sweep cursor moves up it.  A
//! newly marked chunk above the cursor waits in a bitmap until the sweep
//! reaches it; one at or below the cursor goes on a stack that is emptied
//! before the cursor moves on.  So one sweep follows everything, and the
//! chunks it reads are mostly read in ascending order, which keeps a
//! snapshot image's block cache (and the CPU's) useful.
//!
//! A word that may be a heap pointer is not looked up at once: it waits
//! in a small ring while its lookup's memory is prefetched in two stages
//! (index entry, then chunks and flags), because a lookup is a few
//! dependent cache misses and the CPU can wait for many at a time.  The
//! ring is emptied before the mark decides it is done, so marking is only
//! delayed, never lost.
//!
//! Invariants: each chunk is pending (bitmap) or on the stack at most once
//! (it gets there when it becomes MARKED, or INDIRECT in `classify`), so
//! both are bounded by the number of chunks; a pending bit is always above
//! the cursor; FREEISH chunks are never followed.

use crate::view::{Ahead, MemView};

use super::dissect::{Heap, CAND, FREEISH, INDIRECT, MARKED, PROBATION};
use super::mem::MVec;

/// Lookups in flight: enough to keep the CPU's line fill buffers busy.
/// A value's index entry is prefetched when it arrives, its chunks
/// `STAGE` values later, and it is looked up `RING` values later.
const RING: usize = 16;
const STAGE: usize = 8;

/// How far ahead of the chunk it follows the sweep prefetches the heap.
const SWEEP_AHEAD: usize = 2048;

pub struct Marker {
    pub work: MVec<u32>,
    /// Marked chunks above the cursor, not followed yet: one bit each.
    pending: MVec<u64>,
    /// The sweep's position in the chunk table.
    cursor: usize,
    /// Bytes of roots and chunks read.
    pub scanned: u64,
    lo: usize,
    hi: usize,
    pub nomem: bool,
    /// Values waiting for their lookup, with their index entries: those
    /// numbered `tail..head` (counted since `begin`) are in the ring.
    ring: [(usize, usize); RING],
    head: usize,
    tail: usize,
    ahead: Ahead,
}

impl Marker {
    pub const fn new() -> Self {
        Marker {
            work: MVec::new_huge(),
            pending: MVec::new_huge(),
            cursor: 0,
            scanned: 0,
            lo: 0,
            hi: 0,
            nomem: false,
            ring: [(0, 0); RING],
            head: 0,
            tail: 0,
            ahead: Ahead::new(),
        }
    }

    /// Prepare for a new heap: bounds for the cheap pre-filter.
    pub fn begin(&mut self, h: &mut Heap) {
        self.work.clear();
        self.scanned = 0;
        self.nomem = false;
        self.cursor = 0;
        self.head = 0;
        self.tail = 0;
        let c = h.chunks.as_slice();
        let words = c.len().div_ceil(64);
        self.pending.clear();
        if self.pending.reserve(words) {
            for _ in 0..words {
                self.pending.push(0);
            }
        } else {
            self.nomem = true;
        }
        if let (Some(first), Some(last)) = (c.first(), c.last()) {
            self.lo = first.0;
            self.hi = last.0 + last.1 + 16;
        } else {
            self.lo = 1;
            self.hi = 0;
        }
        // Probation chunks are roots.
        for i in 0..c.len() {
            if h.flags.as_slice()[i] & PROBATION != 0 {
                h_mark(h, i);
                self.follow_later(i);
            }
        }
    }

    /// Queue marked chunk `i` to be followed: in the sweep if it is ahead
    /// of the cursor, else on the stack.
    #[inline(always)]
    fn follow_later(&mut self, i: usize) {
        if i > self.cursor {
            if let Some(w) = self.pending.as_mut_slice().get_mut(i / 64) {
                *w |= 1 << (i % 64);
                return;
            }
        }
        self.nomem |= !self.work.push(i as u32);
    }

    /// The lowest pending chunk at or above the cursor, taken off the bitmap.
    fn next_pending(&mut self) -> Option<usize> {
        let words = self.pending.as_mut_slice();
        let mut k = self.cursor / 64;
        while k < words.len() {
            let w = words[k];
            if w != 0 {
                let bit = w.trailing_zeros() as usize;
                words[k] = w & (w - 1);
                return Some(k * 64 + bit);
            }
            k += 1;
        }
        None
    }

    /// Queue `v` for a lookup if it may point into the heap.  Each new
    /// value moves the pipeline on: the value `STAGE` places back gets its
    /// chunks prefetched, and the oldest of a full ring is looked up.
    #[inline(always)]
    fn consider(&mut self, h: &mut Heap, v: usize) {
        if v < self.lo || v > self.hi {
            return;
        }
        if let Some(slot) = h.slot(v) {
            h.prefetch_slot(slot);
            if self.head - self.tail == RING {
                let oldest = self.ring[self.tail % RING];
                self.tail += 1;
                self.finish(h, oldest);
            }
            self.ring[self.head % RING] = (v, slot);
            self.head += 1;
            if self.head - self.tail > STAGE {
                h.prefetch_chunk(self.ring[(self.head - 1 - STAGE) % RING].1);
            }
        }
    }

    /// Look up every queued value.
    fn flush(&mut self, h: &mut Heap) {
        for k in self.tail.max(self.head.saturating_sub(STAGE))..self.head {
            h.prefetch_chunk(self.ring[k % RING].1);
        }
        while self.tail < self.head {
            let e = self.ring[self.tail % RING];
            self.tail += 1;
            self.finish(h, e);
        }
    }

    /// The lookup of `v`, whose index entry is `slot`: mark and queue the
    /// chunk it reaches.
    #[inline(always)]
    fn finish(&mut self, h: &mut Heap, (v, slot): (usize, usize)) {
        if let Some(i) = h.find_at(v, slot) {
            let f = h.flags.as_slice()[i];
            if f & (MARKED | FREEISH) == 0 {
                h_mark(h, i);
                self.follow_later(i);
            }
        }
    }

    /// A single root value (a register, a kernel-held pointer).
    pub fn root_value(&mut self, h: &mut Heap, v: usize) {
        self.consider(h, v);
    }

    /// Every word of `words` (memory of the engine's own, such as a copy
    /// of a shared mapping) is a root.
    pub fn root_words(&mut self, h: &mut Heap, words: &[usize]) {
        self.scanned += (words.len() * 8) as u64;
        for &v in words {
            self.consider(h, v);
        }
    }

    /// Every aligned word of [start, end), read through `v`, is a root.
    /// False when `v` could not read all of it.
    pub fn root_range(
        &mut self,
        v: &mut impl MemView,
        h: &mut Heap,
        start: usize,
        end: usize,
    ) -> bool {
        let start = (start + 7) & !7;
        let end = end & !7;
        if end <= start {
            return true;
        }
        v.words(start, end, &mut |w| self.root_words(h, w))
    }

    /// Follow marked chunks until nothing is left: the stack first, then
    /// the next pending chunk of the sweep.  False when a chunk could not
    /// be read.
    pub fn drain(&mut self, v: &mut impl MemView, h: &mut Heap) -> bool {
        loop {
            let i = match self.work.pop() {
                Some(i) => i as usize,
                None => match self.next_pending() {
                    Some(i) => {
                        self.cursor = i;
                        i
                    }
                    None if self.head > self.tail => {
                        // What the ring marks is more to follow.
                        self.flush(h);
                        continue;
                    }
                    None => return true,
                },
            };
            let (s, e) = h.user_area(i);
            // The sweep moves up through the heap: start loading what it
            // reads next.
            if i == self.cursor {
                self.ahead.at(v, s, SWEEP_AHEAD);
            }
            if !self.root_range(v, h, s, e) {
                return false;
            }
        }
    }

    /// Among unmarked candidates, flag those referenced by another unmarked
    /// candidate as INDIRECT.  False when a chunk could not be read.
    pub fn classify(&mut self, v: &mut impl MemView, h: &mut Heap) -> bool {
        let n = h.chunks.len();
        for i in 0..n {
            if h.flags.as_slice()[i] & (CAND | MARKED) != CAND {
                continue;
            }
            let mut next = Some(i);
            while let Some(from) = next {
                let (s, e) = h.user_area(from);
                let (s, e) = ((s + 7) & !7, e & !7);
                if e > s && !v.words(s, e, &mut |w| self.follow_unreached(h, from, w)) {
                    return false;
                }
                next = self.work.pop().map(|j| j as usize);
            }
        }
        true
    }

    /// Flag the unmarked candidates that `words` (from chunk `from`'s user
    /// area) point to as indirect leaks.
    fn follow_unreached(&mut self, h: &mut Heap, from: usize, words: &[usize]) {
        for &v in words {
            if v < self.lo || v > self.hi {
                continue;
            }
            if let Some(j) = h.find(v) {
                let f = h.flags.as_slice()[j];
                if j != from && f & (CAND | MARKED | INDIRECT) == CAND {
                    h_set(h, j, INDIRECT);
                    self.nomem |= !self.work.push(j as u32);
                }
            }
        }
    }
}

#[inline(always)]
fn h_mark(h: &mut Heap, i: usize) {
    h_set(h, i, MARKED);
}

#[inline(always)]
fn h_set(h: &mut Heap, i: usize, bit: u8) {
    h.flags.as_mut_slice()[i] |= bit;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// Memory made of a map from word address to value (0 elsewhere).
    struct Words(HashMap<usize, usize>);

    impl MemView for Words {
        fn word(&mut self, addr: usize) -> Option<usize> {
            Some(*self.0.get(&addr).unwrap_or(&0))
        }
        fn words(&mut self, start: usize, end: usize, f: &mut impl FnMut(&[usize])) -> bool {
            let w: Vec<usize> = (start..end)
                .step_by(8)
                .map(|a| self.word(a).unwrap())
                .collect();
            f(&w);
            true
        }
    }

    #[test]
    fn one_sweep_marks_exactly_what_is_reachable() {
        let mut x = 12345usize;
        let mut rnd = move |n: usize| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for round in 0..20 {
            let n = 50 + rnd(400);
            let mut h = Heap::new();
            let base = 0x10_0000;
            for i in 0..n {
                h.chunks.push((base + i * 64, 64));
                h.flags.push(CAND);
            }
            assert!(h.index());
            // Edges in both directions; pointers land anywhere in the user
            // area or one past its end.
            let mut mem = HashMap::new();
            let mut edges = vec![Vec::new(); n];
            for (i, out) in edges.iter_mut().enumerate() {
                for k in 0..rnd(3) {
                    let j = rnd(n);
                    let target = base + j * 64 + 16 + 8 * rnd(7);
                    mem.insert(base + i * 64 + 16 + 8 * k, target);
                    out.push(j);
                }
            }
            let roots: Vec<usize> = (0..1 + rnd(3)).map(|_| rnd(n)).collect();
            let mut want = HashSet::new();
            let mut stack = roots.clone();
            while let Some(i) = stack.pop() {
                if want.insert(i) {
                    stack.extend(&edges[i]);
                }
            }
            let mut m = Marker::new();
            m.begin(&mut h);
            for &r in &roots {
                m.root_value(&mut h, base + r * 64 + 16);
            }
            let mut v = Words(mem);
            assert!(m.drain(&mut v, &mut h));
            assert!(!m.nomem);
            let got: HashSet<usize> = (0..n)
                .filter(|&i| h.flags.as_slice()[i] & MARKED != 0)
                .collect();
            assert_eq!(got, want, "round {round}");
        }
    }
}
