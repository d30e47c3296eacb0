//! The mark loop: conservative, word-aligned, transitive, with an explicit
//! work list (never recursion), over a dissected heap.
//!
//! A word keeps a chunk alive when it points anywhere into the chunk's user
//! area or exactly one past its end.  Marking starts from root ranges and
//! root values, then follows the contents of every marked chunk.  A second
//! pass over what stayed unmarked tells direct leaks (referenced by nothing
//! unreachable) from indirect ones, as LeakSanitizer does.
//!
//! Invariants: the work list holds each chunk at most once (a chunk is
//! pushed when it becomes MARKED or INDIRECT), so it is bounded by the
//! number of chunks; FREEISH chunks are never followed.

use crate::view::MemView;

use super::dissect::{Heap, CAND, FREEISH, INDIRECT, MARKED, PROBATION};
use super::mem::MVec;

pub struct Marker {
    pub work: MVec<u32>,
    /// Bytes of roots and chunks read.
    pub scanned: u64,
    lo: usize,
    hi: usize,
    pub nomem: bool,
}

impl Marker {
    pub const fn new() -> Self {
        Marker {
            work: MVec::new(),
            scanned: 0,
            lo: 0,
            hi: 0,
            nomem: false,
        }
    }

    /// Prepare for a new heap: bounds for the cheap pre-filter.
    pub fn begin(&mut self, h: &mut Heap) {
        self.work.clear();
        self.scanned = 0;
        self.nomem = false;
        let c = h.chunks.as_slice();
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
                self.nomem |= !self.work.push(i as u32);
            }
        }
    }

    #[inline(always)]
    fn consider(&mut self, h: &mut Heap, v: usize) {
        if v < self.lo || v > self.hi {
            return;
        }
        if let Some(i) = h.find(v) {
            let f = h.flags.as_slice()[i];
            if f & (MARKED | FREEISH) == 0 {
                h_mark(h, i);
                self.nomem |= !self.work.push(i as u32);
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

    /// Follow marked chunks until the work list is empty.  False when a
    /// chunk could not be read.
    pub fn drain(&mut self, v: &mut impl MemView, h: &mut Heap) -> bool {
        while let Some(i) = self.work.pop() {
            let (s, e) = h.user_area(i as usize);
            if !self.root_range(v, h, s, e) {
                return false;
            }
        }
        true
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
