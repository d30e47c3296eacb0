//! Reading the process's memory through a view: in place, or out of an
//! image of one instant (KAL's kernel snapshot).
//!
//! The heap walker and KAL's dissection and mark are written against
//! [`MemView`], so one piece of code reads the heap in place (under the
//! arena lock, or inside a frozen fork child) and out of a `kal_snapshot`
//! image read with `pread`.  A view answers `None` (or `false`) for memory
//! it cannot read; callers treat that as "this walk proves nothing".

/// Word-granular read access to the process's memory as one view sees it.
pub(crate) trait MemView {
    /// The aligned word at `addr`, or `None` when it cannot be read.
    fn word(&mut self, addr: usize) -> Option<usize>;

    /// Call `f` on the aligned words of `[start, end)` (both 8-aligned), in
    /// address order, in one or more pieces.  False when some part could
    /// not be read (`f` may have seen the part before it).
    fn words(&mut self, start: usize, end: usize, f: &mut impl FnMut(&[usize])) -> bool;

    /// A hint that `addr` will be read soon.  Views that read memory in
    /// place pass it to the CPU; the others ignore it.
    #[inline(always)]
    fn prefetch(&mut self, addr: usize) {
        let _ = addr;
    }
}

/// Ask the CPU to start loading the cache line at `p`: a hint that never
/// faults, whatever `p` is.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault,
    // even for an invalid address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches the memory a reader moving up through addresses will read
/// next: every cache line up to a distance ahead of it, each line once.
/// (One prefetch per step would miss lines whenever a step is longer than
/// a line.)
pub(crate) struct Ahead {
    next: usize,
}

impl Ahead {
    const LINE: usize = 64;

    pub(crate) const fn new() -> Ahead {
        Ahead { next: 0 }
    }

    /// The reader is at `at` and will read up to `at + distance` soon.
    #[inline(always)]
    pub(crate) fn at(&mut self, v: &mut impl MemView, at: usize, distance: usize) {
        let end = at.saturating_add(distance);
        // After a jump (or at the start) begin at the reader's position.
        if self.next < at || self.next > end {
            self.next = at & !(Self::LINE - 1);
        }
        while self.next < end {
            v.prefetch(self.next);
            match self.next.checked_add(Self::LINE) {
                Some(n) => self.next = n,
                None => break, // the top of the address space
            }
        }
    }
}

/// This process's own memory, read in place.
pub(crate) struct Live(());

impl Live {
    /// # Safety
    /// Every address the view is asked for must be mapped and readable, and
    /// must not change while it is read: the caller holds the locks that
    /// guard it, or runs in a frozen image (the snapshot child).
    pub(crate) const unsafe fn new() -> Live {
        Live(())
    }
}

impl MemView for Live {
    #[inline(always)]
    fn word(&mut self, addr: usize) -> Option<usize> {
        // SAFETY: readable and stable memory (contract of `Live::new`).
        Some(unsafe { (addr as *const usize).read() })
    }

    #[inline(always)]
    fn words(&mut self, start: usize, end: usize, f: &mut impl FnMut(&[usize])) -> bool {
        if end > start {
            // SAFETY: as above; `start` is aligned and the range is in bounds.
            f(unsafe { core::slice::from_raw_parts(start as *const usize, (end - start) / 8) });
        }
        true
    }

    #[inline(always)]
    fn prefetch(&mut self, addr: usize) {
        prefetch(addr as *const u8);
    }
}
