//! LeakSanitizer's programming interface, with the same meaning where KAL
//! can give it: objects to ignore, extra root regions, leak checks on
//! demand, and a switch to hold reports and reclaim off.
//!
//! Ignored objects and root regions live in the engine's own memory under
//! one lock; the snapshot child reads them frozen (the lock must have been
//! free at the instant, which the stop checks).
//!
//! Differences from LeakSanitizer: `__lsan_disable` holds back reports and
//! reclaim process-wide while any disable is open (LeakSanitizer instead
//! ignores the objects a thread allocates meanwhile, which would need a tag
//! on every allocation); an ignored address stays ignored after the object
//! is freed.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

use crate::chunk::HDR;
use crate::lock::Mutex;

use super::mem::{AddrMap, MVec};

struct Shared<T>(UnsafeCell<T>);
// SAFETY: only accessed with LOCK held, or in the frozen snapshot child.
unsafe impl<T> Sync for Shared<T> {}

static LOCK: Mutex = Mutex::new();
static IGNORED: Shared<AddrMap> = Shared(UnsafeCell::new(AddrMap::new()));
static REGIONS: Shared<MVec<(usize, usize)>> = Shared(UnsafeCell::new(MVec::new()));
static DISABLED: AtomicIsize = AtomicIsize::new(0);
/// The last full check (exit or on demand) found leaks.
pub static LEAKS_FOUND: AtomicBool = AtomicBool::new(false);
static CHECKED: AtomicBool = AtomicBool::new(false);

pub fn lock() -> &'static Mutex {
    &LOCK
}

/// `__lsan_ignore_object`: never report or reclaim the object at `p` (its
/// start), and treat it as reachable.
pub fn ignore_object(p: usize) {
    if p < HDR + 2 {
        return;
    }
    LOCK.lock();
    // SAFETY: LOCK is held.
    let _ = unsafe { (*IGNORED.0.get()).insert(p - HDR, 1) };
    LOCK.unlock();
}

/// `__lsan_register_root_region`.
pub fn register_root_region(p: usize, n: usize) {
    if n == 0 {
        return;
    }
    LOCK.lock();
    // SAFETY: LOCK is held.
    let _ = unsafe { (*REGIONS.0.get()).push((p, p.saturating_add(n))) };
    LOCK.unlock();
}

/// `__lsan_unregister_root_region`: the region must have been registered
/// with the same address and size.  False if it was not.
pub fn unregister_root_region(p: usize, n: usize) -> bool {
    LOCK.lock();
    // SAFETY: LOCK is held.
    let v = unsafe { &mut *REGIONS.0.get() };
    let want = (p, p.saturating_add(n));
    let found = v.as_slice().iter().position(|&r| r == want);
    if let Some(i) = found {
        let last = v.len() - 1;
        v.as_mut_slice().swap(i, last);
        v.truncate(last);
    }
    LOCK.unlock();
    found.is_some()
}

pub fn disable() {
    DISABLED.fetch_add(1, Ordering::AcqRel);
}

/// False on an `enable` without a matching `disable` (then ignored).
pub fn enable() -> bool {
    DISABLED
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
            (d > 0).then_some(d - 1)
        })
        .is_ok()
}

/// Reports and reclaim are held back.
pub fn disabled() -> bool {
    DISABLED.load(Ordering::Acquire) > 0
}

/// For `__lsan_do_leak_check`: true the first time only.
pub fn first_check() -> bool {
    !CHECKED.swap(true, Ordering::AcqRel)
}

/// The frozen tables, for the snapshot child.
///
/// # Safety
/// Only in the snapshot child (or with LOCK held).
pub unsafe fn frozen() -> (&'static AddrMap, &'static [(usize, usize)]) {
    // SAFETY: function contract.
    unsafe { (&*IGNORED.0.get(), (*REGIONS.0.get()).as_slice()) }
}

/// After `fork`: the child keeps the tables (a copy), with a fresh lock.
pub fn reset_after_fork() {
    LOCK.reset();
}
