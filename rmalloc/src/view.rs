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
}
