//! The engine's own memory: arrays and hash maps in private anonymous
//! mappings, never in the heap it scans, and the list of those mappings.
//!
//! Every mapping made here is recorded in [`INTERNAL`], so the root scan can
//! leave it out: the engine's tables hold addresses of unreachable chunks,
//! and scanning them as roots would keep every leak alive forever.
//!
//! Invariants: an [`MVec`] or [`AddrMap`] has one owner at a time (the
//! scanner thread, or a caller holding the lock that guards it); growth
//! moves the data to a new mapping and updates its `INTERNAL` entry.

use core::sync::atomic::{AtomicUsize, Ordering};

use rmalloc_sys as sys;

const MAX_INTERNAL: usize = 256;

/// (start, length) of every live engine mapping; (0, 0) is a free slot.
static INTERNAL: [(AtomicUsize, AtomicUsize); MAX_INTERNAL] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; MAX_INTERNAL];

/// Record a mapping of the engine; returns its slot (or `usize::MAX` when the
/// table is full, in which case the mapping is merely scanned as a root,
/// which is safe).
pub fn note_internal(start: usize, len: usize) -> usize {
    for (i, (s, l)) in INTERNAL.iter().enumerate() {
        if s.compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            l.store(len, Ordering::Release);
            return i;
        }
    }
    usize::MAX
}

pub fn forget_internal(slot: usize) {
    if let Some((s, l)) = INTERNAL.get(slot) {
        l.store(0, Ordering::Relaxed);
        s.store(0, Ordering::Release);
    }
}

/// Entry `slot` of the table: (start, length), (0, 0) when free.
#[cfg(test)]
pub fn internal_entry(slot: usize) -> (usize, usize) {
    let (s, l) = &INTERNAL[slot];
    (s.load(Ordering::Acquire), l.load(Ordering::Acquire))
}

/// The table itself: it holds the bases of the engine's mappings, and a
/// base is one past the end of whatever chunk ends right below it, so the
/// table must not be scanned as a root.
pub fn internal_table() -> (usize, usize) {
    let p = INTERNAL.as_ptr() as usize;
    (p, p + core::mem::size_of_val(&INTERNAL))
}

/// Call `f(start, end)` for every engine mapping.
pub fn for_each_internal(mut f: impl FnMut(usize, usize)) {
    for (s, l) in INTERNAL.iter() {
        let (s, l) = (s.load(Ordering::Acquire), l.load(Ordering::Acquire));
        if s != 0 && l != 0 {
            f(s, s + l);
        }
    }
}

/// Huge-page arrays ([`MVec::new_huge`]) this large ask for transparent
/// huge pages.
const HUGE: usize = 2 << 20;

/// Map `len` bytes (rounded to pages) of zeroed private memory and record it.
pub fn map(len: usize) -> Option<(*mut u8, usize, usize)> {
    let len = (len.max(1) + sys::PAGE_SIZE - 1) & !(sys::PAGE_SIZE - 1);
    // SAFETY: a fresh mapping at an address the kernel picks.
    let p = unsafe { sys::mmap_anon(0, len, sys::PROT_READ | sys::PROT_WRITE, sys::MAP_NORESERVE) }
        .ok()?;
    let slot = note_internal(p as usize, len);
    Some((p, len, slot))
}

/// Unmap what [`map`] returned.
///
/// # Safety
/// `p`/`len` must come from [`map`] and nothing may use them afterwards.
pub unsafe fn unmap(p: *mut u8, len: usize, slot: usize) {
    forget_internal(slot);
    // SAFETY: the caller gives up the mapping (function contract).
    let _ = unsafe { sys::munmap(p, len) };
}

/// A growable array of plain values in its own mapping.
pub struct MVec<T: Copy> {
    ptr: *mut T,
    cap: usize,
    len: usize,
    bytes: usize,
    slot: usize,
    huge: bool,
}

// SAFETY: the mapping is owned by the MVec; moving it between threads moves
// that ownership (callers serialise access, see the module invariants).
unsafe impl<T: Copy> Send for MVec<T> {}

impl<T: Copy> MVec<T> {
    pub const fn new() -> Self {
        MVec {
            ptr: core::ptr::null_mut(),
            cap: 0,
            len: 0,
            bytes: 0,
            slot: usize::MAX,
            huge: false,
        }
    }

    /// An array read at random over a large span (the mark's tables): its
    /// mappings of 2 MiB and more ask for transparent huge pages, since on
    /// 4 KiB pages nearly every lookup would also miss the TLB.  (Not for
    /// memory filled while the program is stopped: a huge-page fault may
    /// compact memory first, which would lengthen the pause.)
    pub const fn new_huge() -> Self {
        let mut v = Self::new();
        v.huge = true;
        v
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Make room for `n` more elements; false when memory is refused.
    pub fn reserve(&mut self, n: usize) -> bool {
        let need = match self.len.checked_add(n) {
            Some(x) => x,
            None => return false,
        };
        if need <= self.cap {
            return true;
        }
        let cap = need
            .max(self.cap * 2)
            .max(4096 / core::mem::size_of::<T>().max(1));
        let Some(bytes) = cap.checked_mul(core::mem::size_of::<T>()) else {
            return false;
        };
        let Some((p, bytes, slot)) = map(bytes) else {
            return false;
        };
        if self.huge && bytes >= HUGE {
            // A hint: a kernel without transparent huge pages says no.
            // SAFETY: advice on the mapping just made.
            let _ = unsafe { sys::madvise(p, bytes, sys::MADV_HUGEPAGE) };
        }
        if !self.ptr.is_null() {
            // SAFETY: both mappings are ours and large enough for `len`
            // elements; they do not overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(self.ptr, p as *mut T, self.len);
                unmap(self.ptr as *mut u8, self.bytes, self.slot);
            }
        }
        self.ptr = p as *mut T;
        self.bytes = bytes;
        self.slot = slot;
        self.cap = bytes / core::mem::size_of::<T>().max(1);
        true
    }

    /// Append; false (and nothing stored) when memory is refused.
    pub fn push(&mut self, v: T) -> bool {
        if !self.reserve(1) {
            return false;
        }
        // SAFETY: `len < cap` after `reserve`.
        unsafe { self.ptr.add(self.len).write(v) };
        self.len += 1;
        true
    }

    /// Where the next element goes (inside the capacity after `reserve`).
    pub fn tail_ptr(&mut self) -> *mut T {
        self.ptr.wrapping_add(self.len)
    }

    /// Count `n` more elements as initialised (written through a raw
    /// pointer after `reserve`); false if there is no room.
    pub fn grow_len(&mut self, n: usize) -> bool {
        if self.len + n > self.cap {
            return false;
        }
        self.len += n;
        true
    }

    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: index `len` was initialised by `push`.
        Some(unsafe { self.ptr.add(self.len).read() })
    }

    pub fn as_slice(&self) -> &[T] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: the first `len` elements are initialised and the mapping
        // lives as long as `self`.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: as in `as_slice`, and `&mut self` gives exclusive access.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Shrink to `n` elements (no-op if already shorter).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Give the memory back.
    pub fn release(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the mapping is ours and no reference into it outlives
            // `&mut self`.
            unsafe { unmap(self.ptr as *mut u8, self.bytes, self.slot) };
        }
        *self = MVec::new();
    }
}

const EMPTY: usize = 0;
const GONE: usize = 1;

/// Open-addressing map from addresses (never 0 or 1) to a word.
pub struct AddrMap {
    slots: MVec<(usize, usize)>,
    used: usize,
    live: usize,
}

#[inline]
fn hash(k: usize) -> usize {
    (k >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7
}

impl AddrMap {
    pub const fn new() -> Self {
        AddrMap {
            slots: MVec::new(),
            used: 0,
            live: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }

    fn find(&self, k: usize) -> Option<usize> {
        let s = self.slots.as_slice();
        if s.is_empty() {
            return None;
        }
        let mask = s.len() - 1;
        let mut i = hash(k) & mask;
        loop {
            match s[i].0 {
                EMPTY => return None,
                x if x == k => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub fn get(&self, k: usize) -> Option<usize> {
        self.find(k).map(|i| self.slots.as_slice()[i].1)
    }

    fn grow(&mut self) -> bool {
        // At least a page of slots: sampled sites keep few live per shard.
        let n = (self.live * 4)
            .max(4096 / core::mem::size_of::<(usize, usize)>())
            .next_power_of_two();
        let mut fresh = MVec::new();
        if !fresh.reserve(n) {
            return false;
        }
        for _ in 0..n {
            fresh.push((EMPTY, 0));
        }
        let mut old = core::mem::replace(&mut self.slots, fresh);
        self.used = 0;
        self.live = 0;
        for &(k, v) in old.as_slice() {
            if k > GONE {
                self.insert(k, v);
            }
        }
        old.release();
        true
    }

    /// Insert or replace; false when memory is refused.
    pub fn insert(&mut self, k: usize, v: usize) -> bool {
        debug_assert!(k > GONE);
        if let Some(i) = self.find(k) {
            self.slots.as_mut_slice()[i].1 = v;
            return true;
        }
        if (self.used + 1) * 2 > self.slots.len() && !self.grow() {
            return false;
        }
        let s = self.slots.as_mut_slice();
        let mask = s.len() - 1;
        let mut i = hash(k) & mask;
        while s[i].0 > GONE {
            i = (i + 1) & mask;
        }
        if s[i].0 == EMPTY {
            self.used += 1;
        }
        s[i] = (k, v);
        self.live += 1;
        true
    }

    pub fn remove(&mut self, k: usize) -> Option<usize> {
        let i = self.find(k)?;
        let s = self.slots.as_mut_slice();
        let v = s[i].1;
        s[i] = (GONE, 0);
        self.live -= 1;
        Some(v)
    }

    /// Make this map a copy of `other` (one block copy); false when memory
    /// is refused (and this map is then empty).
    pub fn copy_from(&mut self, other: &AddrMap) -> bool {
        self.slots.clear();
        let src = other.slots.as_slice();
        if !self.slots.reserve(src.len()) {
            self.used = 0;
            self.live = 0;
            return false;
        }
        // SAFETY: `reserve` made room for `src.len()` elements; the two
        // maps' storage are different mappings.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), self.slots.tail_ptr(), src.len()) };
        self.slots.grow_len(src.len());
        self.used = other.used;
        self.live = other.live;
        true
    }

    pub fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        for &(k, v) in self.slots.as_slice() {
            if k > GONE {
                f(k, v);
            }
        }
    }

    pub fn clear(&mut self) {
        for e in self.slots.as_mut_slice() {
            *e = (EMPTY, 0);
        }
        self.used = 0;
        self.live = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mvec_grows_and_is_recorded() {
        let mut v: MVec<u64> = MVec::new();
        for i in 0..100_000u64 {
            assert!(v.push(i));
        }
        assert_eq!(v.len(), 100_000);
        assert_eq!(v.as_slice()[99_999], 99_999);
        let p = v.as_slice().as_ptr() as usize;
        let entry = internal_entry(v.slot);
        assert_eq!(entry, (p, v.bytes), "the mapping is listed as internal");
        let slot = v.slot;
        v.release();
        // (Tests running meanwhile may map memory at the same address and
        // reuse the slot, but not with this very entry.)
        assert_ne!(internal_entry(slot), entry);
    }

    #[test]
    fn addr_map_model() {
        let mut m = AddrMap::new();
        let mut model = std::collections::HashMap::new();
        let mut x = 12345usize;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = ((x >> 20) % 5000 + 2) * 16;
            if x & 3 == 0 {
                assert_eq!(m.remove(k), model.remove(&k));
            } else {
                assert!(m.insert(k, x));
                model.insert(k, x);
            }
            assert_eq!(m.len(), model.len());
        }
        for (&k, &v) in &model {
            assert_eq!(m.get(k), Some(v));
        }
        let mut n = 0;
        m.for_each(|_, _| n += 1);
        assert_eq!(n, model.len());
    }
}
