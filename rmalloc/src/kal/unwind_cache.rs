//! A cache of call-frame rows by address, shared by all threads: running
//! an FDE's instructions up to an address is linear in the function's
//! size, and allocation sites repeat.
//!
//! Direct-mapped, each entry under a sequence lock: a writer makes the
//! sequence odd, writes, and makes it even again; a reader copies the
//! entry and keeps the copy only if the sequence was even and unchanged
//! around the copy.  A writer that finds an entry busy just does not
//! cache; a reader that loses a race recomputes.  No thread ever waits.
//!
//! Entries are tagged with the object's load bias too, so a library
//! unloaded and another loaded at the same address does not reuse rows.

use core::cell::UnsafeCell;
use core::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};

use super::super::cfi::Row;
use super::super::modules::Module;

const ENTRIES: usize = 1024;

struct Entry {
    seq: AtomicU32,
    pc: AtomicUsize,
    base: AtomicUsize,
    row: UnsafeCell<core::mem::MaybeUninit<Row>>,
}

// SAFETY: `row` is only written by the holder of the odd sequence number
// and only read through volatile copies validated by the sequence (torn
// copies are discarded, never used).
unsafe impl Sync for Entry {}

static CACHE: [Entry; ENTRIES] = [const {
    Entry {
        seq: AtomicU32::new(0),
        pc: AtomicUsize::new(0),
        base: AtomicUsize::new(0),
        row: UnsafeCell::new(core::mem::MaybeUninit::uninit()),
    }
}; ENTRIES];

fn index(pc: usize) -> usize {
    (pc.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) & (ENTRIES - 1)
}

/// The row for `pc` in `m`: from the cache, else computed by `compute`
/// (and cached).
pub fn row(m: &Module, pc: usize, compute: fn(&Module, usize) -> Option<Row>) -> Option<Row> {
    let e = &CACHE[index(pc)];
    let s1 = e.seq.load(Ordering::Acquire);
    if s1 & 1 == 0
        && s1 != 0
        && e.pc.load(Ordering::Relaxed) == pc
        && e.base.load(Ordering::Relaxed) == m.base
    {
        // SAFETY: a volatile copy of plain data; it is used only if the
        // sequence shows no writer ran meanwhile (then it was initialised
        // by the writer that made the sequence even and non-zero).
        let copy = unsafe { core::ptr::read_volatile(e.row.get()) };
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) == s1 {
            // SAFETY: see above: validated, hence initialised and whole.
            return Some(unsafe { copy.assume_init() });
        }
    }
    let r = compute(m, pc)?;
    if s1 & 1 == 0
        && e.seq
            .compare_exchange(s1, s1.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    {
        fence(Ordering::Release);
        e.pc.store(pc, Ordering::Relaxed);
        e.base.store(m.base, Ordering::Relaxed);
        // SAFETY: this thread holds the entry (odd sequence).
        unsafe { core::ptr::write_volatile(e.row.get(), core::mem::MaybeUninit::new(r)) };
        let next = s1.wrapping_add(2);
        e.seq
            .store(if next == 0 { 2 } else { next }, Ordering::Release);
    }
    Some(r)
}
