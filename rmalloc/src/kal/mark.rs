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

    /// Every aligned word of [start, end) is a root.
    ///
    /// # Safety
    /// The range must be readable memory that does not change meanwhile.
    pub unsafe fn root_range(&mut self, h: &mut Heap, start: usize, end: usize) {
        let start = (start + 7) & !7;
        if end <= start {
            return;
        }
        self.scanned += (end - start) as u64;
        let mut p = start as *const usize;
        let e = end as *const usize;
        while p < e {
            // SAFETY: `p` is aligned and inside the readable range
            // (function contract).
            let v = unsafe { p.read() };
            self.consider(h, v);
            p = p.wrapping_add(1);
        }
    }

    /// Follow marked chunks until the work list is empty.
    ///
    /// # Safety
    /// The chunks of `h` must be readable and frozen.
    pub unsafe fn drain(&mut self, h: &mut Heap) {
        while let Some(i) = self.work.pop() {
            let (s, e) = h.user_area(i as usize);
            // SAFETY: in-use chunk memory of a frozen heap (contract).
            unsafe { self.root_range(h, s, e) };
        }
    }

    /// Among unmarked candidates, flag those referenced by another unmarked
    /// candidate as INDIRECT.
    ///
    /// # Safety
    /// As [`Marker::drain`].
    pub unsafe fn classify(&mut self, h: &mut Heap) {
        let n = h.chunks.len();
        for i in 0..n {
            if h.flags.as_slice()[i] & (CAND | MARKED) != CAND {
                continue;
            }
            let (s, e) = h.user_area(i);
            // SAFETY: frozen chunk memory (contract).
            unsafe { self.follow_unreached(h, i, s, e) };
            while let Some(j) = self.work.pop() {
                let (s, e) = h.user_area(j as usize);
                // SAFETY: as above.
                unsafe { self.follow_unreached(h, j as usize, s, e) };
            }
        }
    }

    /// Flag the unmarked candidates that the words of `[start, end)` (chunk
    /// `from`'s user area) point to as indirect leaks.
    ///
    /// # Safety
    /// `[start, end)` must be readable, frozen memory.
    unsafe fn follow_unreached(&mut self, h: &mut Heap, from: usize, start: usize, end: usize) {
        let mut p = start as *const usize;
        while (p as usize) + 8 <= end {
            // SAFETY: aligned word inside a frozen chunk (caller's contract).
            let v = unsafe { p.read() };
            p = p.wrapping_add(1);
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
