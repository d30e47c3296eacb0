//! The allocator's interface to the kernel: page size, the program break
//! for the main arena, and anonymous mappings.
//!
//! `brk` is driven through the raw system call with the allocator's own view
//! of the current break, so that a program's own `sbrk` calls show up as a
//! break that moved under us (handled by the caller as a foreign region,
//! like glibc does), never as silent overlap.

use core::sync::atomic::{AtomicUsize, Ordering};
use rmalloc_sys as sys;

static PAGESIZE: AtomicUsize = AtomicUsize::new(0);

#[inline]
pub(crate) fn pagesize() -> usize {
    let p = PAGESIZE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: getauxval only reads the auxiliary vector.
    let mut p = unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize;
    if p == 0 || !p.is_power_of_two() {
        p = sys::PAGE_SIZE;
    }
    PAGESIZE.store(p, Ordering::Relaxed);
    p
}

#[inline(always)]
pub(crate) const fn align_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

#[inline(always)]
pub(crate) const fn align_down(x: usize, a: usize) -> usize {
    x & !(a - 1)
}

/// Current program break.
pub(crate) fn current_brk() -> usize {
    // SAFETY: brk(0) only queries.
    unsafe { sys::brk(0) }
}

/// Move the break from `cur` by `delta` (positive grows).  Returns the old
/// break on success, `None` if the kernel refused (e.g. `RLIMIT_DATA`,
/// `RLIMIT_AS`, or a mapping in the way).
pub(crate) unsafe fn sbrk_from(cur: usize, delta: isize) -> Option<usize> {
    let want = (cur as isize).checked_add(delta)? as usize;
    let got = sys::brk(want);
    if got == want {
        Some(cur)
    } else {
        None
    }
}

/// Fresh read-write anonymous memory, or `None` with the kernel's refusal.
pub(crate) unsafe fn map_rw(len: usize) -> Option<*mut u8> {
    sys::mmap_anon(0, len, sys::PROT_READ | sys::PROT_WRITE, 0).ok()
}
