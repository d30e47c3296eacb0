//! A small futex mutex for arenas and the allocator's global lists.
//!
//! Three states, as in glibc's low-level lock: 0 free, 1 held, 2 held with
//! possible sleepers.  It never allocates and never calls libc, so it is
//! usable from the first `malloc` the dynamic loader makes and from fork
//! handlers.  After `fork` the child re-initialises every lock with
//! [`Mutex::reset`]: the threads that could have held them no longer exist.

use core::sync::atomic::{AtomicU32, Ordering};

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

    #[cold]
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
    fn try_lock_and_reset() {
        let m = Mutex::new();
        assert!(m.try_lock());
        assert!(!m.try_lock());
        m.reset();
        assert!(m.try_lock());
        m.unlock();
    }
}
