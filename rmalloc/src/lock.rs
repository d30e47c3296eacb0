//! A small futex mutex for arenas and the allocator's global lists.
//!
//! Three states, as in glibc's low-level lock: 0 free, 1 held, 2 held with
//! possible sleepers.  It never allocates and never calls libc, so it is
//! usable from the first `malloc` the dynamic loader makes and from fork
//! handlers.  After `fork` the child re-initialises every lock with
//! [`Mutex::reset`]: the threads that could have held them no longer exist.
//!
//! Fork ownership.  From fork's prepare handler to its parent or child
//! handler, the forking thread holds every arena lock and the arena list
//! lock.  Other libraries' atfork handlers may run inside that window (those
//! registered before ours: prepare handlers run in reverse registration
//! order, parent and child handlers in registration order), and they may
//! allocate.  glibc takes its malloc locks inside `fork` itself, after all
//! prepare handlers, so such handlers work there; a preloaded allocator
//! cannot get between the handlers and the system call.  Instead the
//! forking thread is recorded as the owner of those locks, and an operation
//! of that thread that finds one of them taken proceeds as if it had taken
//! it: no other thread can be inside any arena then, so it is exclusive.
//! The check sits in the contended slow path only; the uncontended path is
//! a single compare-and-swap as before.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// What an operation must release: whether it took a lock itself (`true`),
/// or found the lock elided (single-threaded process) or already held on its
/// behalf by fork's prepare handler (`false`).  Captured once when locking
/// and handed back when unlocking, so the two always agree, whatever
/// `__libc_single_threaded` or the fork state read in between.
#[must_use = "hand the token back to unlock"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held(bool);

impl Held {
    /// Nothing to release.
    pub(crate) const NOT_TAKEN: Held = Held(false);

    #[inline(always)]
    pub(crate) fn taken(self) -> bool {
        self.0
    }
}

/// Thread pointer of the thread that holds the fork locks (see the module
/// documentation), or 0.  Written only by that thread, so the owner always
/// reads its own writes; any other thread reads a value that is not its own
/// thread pointer.
#[link_section = ".data.hot.rmalloc"]
static FORK_OWNER: AtomicUsize = AtomicUsize::new(0);

/// A unique id of the calling thread while it lives: its thread pointer
/// (the TCB's self pointer at `%fs:0`).  A forked child's only thread keeps
/// the forking thread's pointer.
#[inline(always)]
pub(crate) fn thread_id() -> usize {
    let tp: usize;
    // SAFETY: on x86-64 Linux `%fs:0` holds the thread control block's own
    // address for every thread glibc creates; the load has no side effects.
    unsafe {
        core::arch::asm!(
            "mov {}, qword ptr fs:[0]",
            out(reg) tp,
            options(nostack, readonly, preserves_flags)
        );
    }
    tp
}

/// Record (or, with `false`, forget) the calling thread as the holder of the
/// fork locks.
pub(crate) fn set_fork_owner(owner: bool) {
    FORK_OWNER.store(if owner { thread_id() } else { 0 }, Ordering::Relaxed);
}

#[inline]
fn is_fork_owner() -> bool {
    FORK_OWNER.load(Ordering::Relaxed) == thread_id()
}

pub(crate) struct Mutex {
    state: AtomicU32,
}

impl Mutex {
    pub(crate) const fn new() -> Self {
        Mutex {
            state: AtomicU32::new(0),
        }
    }

    #[inline(always)]
    pub(crate) fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline(always)]
    pub(crate) fn lock(&self) {
        if !self.try_lock() {
            self.lock_slow();
        }
    }

    /// Lock for an arena operation: like [`Mutex::lock`], except that the
    /// thread holding the fork locks (see the module documentation) does not
    /// wait for a lock it holds already.  Only for the locks fork's prepare
    /// handler takes (arena locks and the arena list lock).
    #[inline(always)]
    pub(crate) fn lock_held(&self) -> Held {
        if self.try_lock() {
            return Held(true);
        }
        self.lock_held_slow()
    }

    #[cold]
    #[link_section = ".text.hot.rmalloc"]
    fn lock_held_slow(&self) -> Held {
        if is_fork_owner() {
            return Held::NOT_TAKEN;
        }
        self.lock_slow();
        Held(true)
    }

    /// [`Mutex::try_lock`] with the token for [`Mutex::release`].
    #[inline(always)]
    pub(crate) fn try_lock_held(&self) -> Option<Held> {
        self.try_lock().then_some(Held(true))
    }

    /// Release what [`Mutex::lock_held`] took.
    #[inline(always)]
    pub(crate) fn release(&self, h: Held) {
        if h.taken() {
            self.unlock();
        }
    }

    #[cold]
    #[link_section = ".text.hot.rmalloc"]
    fn lock_slow(&self) {
        // A short spin catches locks held across a few hundred instructions,
        // which is what arena critical sections are.
        for _ in 0..100 {
            core::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == 0 && self.try_lock() {
                return;
            }
        }
        while self.state.swap(2, Ordering::Acquire) != 0 {
            rmalloc_sys::futex_wait(&self.state, 2);
        }
    }

    #[inline(always)]
    pub(crate) fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            rmalloc_sys::futex_wake(&self.state, 1);
        }
    }

    /// Forget any holder: only valid in a freshly forked child, where the
    /// holding thread does not exist.
    pub(crate) fn reset(&self) {
        self.state.store(0, Ordering::Relaxed);
    }

    /// Held by someone (for the leak scanner's consistency check).
    pub(crate) fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn mutual_exclusion_under_contention() {
        struct Shared {
            m: Mutex,
            n: core::cell::UnsafeCell<u64>,
        }
        // SAFETY: `n` is only touched while `m` is held.
        unsafe impl Sync for Shared {}
        let s = Arc::new(Shared {
            m: Mutex::new(),
            n: core::cell::UnsafeCell::new(0),
        });
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..20000 {
                        s.m.lock();
                        // SAFETY: the mutex is held.
                        unsafe { *s.n.get() += 1 };
                        s.m.unlock();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!s.m.is_locked());
        // SAFETY: all threads joined.
        assert_eq!(unsafe { *s.n.get() }, 80000);
    }

    #[test]
    fn fork_owner_passes_its_own_locks_only() {
        let m = Mutex::new();
        // Uncontended: taken and released as usual.
        let h = m.lock_held();
        assert!(h.taken());
        m.release(h);
        assert!(!m.is_locked());
        // Held by this thread as the fork owner: passed, not released.
        m.lock();
        set_fork_owner(true);
        let h = m.lock_held();
        assert_eq!(h, Held::NOT_TAKEN);
        m.release(h);
        assert!(m.is_locked());
        // Another thread is not the owner: it waits until the lock is free.
        let m = Arc::new(m);
        let waiter = {
            let m = m.clone();
            std::thread::spawn(move || {
                let h = m.lock_held();
                let taken = h.taken();
                m.release(h);
                taken
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished());
        set_fork_owner(false);
        m.unlock();
        assert!(waiter.join().unwrap());
        // No longer the owner: a held lock is waited for, not passed.
        m.lock();
        let m2 = m.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            m2.unlock();
        });
        let h = m.lock_held();
        assert!(h.taken());
        m.release(h);
        t.join().unwrap();
        assert!(!m.is_locked());
    }

    #[test]
    fn try_lock_and_reset() {
        let m = Mutex::new();
        assert!(m.try_lock());
        assert!(!m.try_lock());
        m.reset();
        assert!(m.try_lock());
        m.unlock();
    }
}
