//! The allocator's interface to the kernel: page size, the program break
//! for the main arena, and anonymous mappings.
//!
//! The break is moved with libc's `sbrk`, which keeps libc's cached break
//! in step with ours, so that a program's own `sbrk` calls see our heap and
//! show up to us as a break that moved (handled by the caller as a foreign
//! region, like glibc does), never as an overlap.

use core::sync::atomic::{AtomicUsize, Ordering};
use rmalloc_sys as sys;

#[link_section = ".data.hot.rmalloc"]
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
    sbrk(0).unwrap_or(0)
}

/// Move the break by `delta` bytes (negative shrinks) through libc's `sbrk`,
/// returning the old break, or `None` if the kernel refused (`RLIMIT_DATA`,
/// `RLIMIT_AS`, a mapping in the way).
///
/// libc's `sbrk` is used rather than the raw system call because libc caches
/// the break: a program's own `sbrk` computes from that cache, so moving the
/// break behind libc's back would make the program's next `sbrk` shrink it
/// onto the heap.
pub(crate) fn sbrk(delta: isize) -> Option<usize> {
    // SAFETY: sbrk only moves the data segment's end; growing hands us new
    // memory, and the callers shrink only memory they own (the top chunk's
    // tail at the end of the break).
    let old = unsafe { libc::sbrk(delta) };
    if old as isize == -1 {
        None
    } else {
        Some(old as usize)
    }
}

/// Fresh read-write anonymous memory, or `None` with the kernel's refusal.
///
/// # Safety
/// Any caller may map memory; the returned mapping is the caller's.
pub(crate) unsafe fn map_rw(len: usize) -> Option<*mut u8> {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe { sys::mmap_anon(0, len, sys::PROT_READ | sys::PROT_WRITE, 0).ok() }
}
