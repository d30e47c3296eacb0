//! `fork` safety: every arena lock is taken before `fork` and released (in
//! the parent) or re-initialised (in the child) afterwards, so the child
//! never inherits a lock held by a thread that does not exist there.
//!
//! The handlers are registered with glibc's `__register_atfork` (what
//! `pthread_atfork` calls) during initialisation,
//! which a constructor of the library forces at load time (see `init.rs`),
//! so they usually come before any handler of the program: glibc runs
//! prepare handlers in reverse registration order, so ours runs after the
//! program's, and parent and child handlers in registration order, so ours
//! run first.  Libraries initialised before this one, or a program's
//! `.preinit_array`, can still register earlier; their handlers then run
//! while we hold the locks.  They may allocate all the same: the forking
//! thread is recorded as the owner of the locks and its own operations pass
//! them (see `lock.rs`), which is safe because no other thread can be inside
//! an arena then.  So, as with glibc, every handler may call malloc.
//!
//! As glibc does, nothing is locked while the process has a single thread:
//! then no other thread can hold a lock, and a `fork` from a signal handler
//! that interrupted a function holding arena locks (`mallopt`,
//! `malloc_trim`, the statistics, the heap check) must not wait for them.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::arena::{self, LIST_LOCK};
use crate::lock;

/// Whether `prepare` took the locks, for the parent and child handlers.
/// Only the forking thread touches it: glibc runs a multithreaded
/// process's fork handlers under its own lock, one fork at a time.
#[link_section = ".data.hot.rmalloc"]
static LOCKED: AtomicBool = AtomicBool::new(false);

extern "C" {
    /// glibc's registration behind `pthread_atfork`, which itself is a
    /// stub in `libc_nonshared.a` passing the caller's `__dso_handle` (from
    /// the C start files, which the library is linked without: see
    /// `build.rs`).  The handle only matters for unregistering at
    /// `dlclose`, and the library is never unloaded (`-z nodelete`).
    fn __register_atfork(
        prepare: Option<extern "C" fn()>,
        parent: Option<extern "C" fn()>,
        child: Option<extern "C" fn()>,
        dso_handle: *mut core::ffi::c_void,
    ) -> core::ffi::c_int;
}

pub(crate) fn register() {
    // SAFETY: the handlers are extern "C" fns valid for the process's life
    // (the library is never unloaded); a null handle is never unregistered.
    unsafe {
        __register_atfork(
            Some(prepare),
            Some(parent),
            Some(child),
            core::ptr::null_mut(),
        )
    };
}

#[link_section = ".text.warm.rmalloc"]
extern "C" fn prepare() {
    if arena::single_threaded() {
        // KAL's scanner is a thread glibc does not count: its locks are
        // taken whatever glibc believes (see `kal::fork_prepare`).
        crate::kal::fork_prepare();
        return;
    }
    LIST_LOCK.lock();
    // SAFETY: arenas are never freed; the ring is stable while LIST_LOCK is
    // held.  Locks are always taken in ring order here, and no other path
    // holds two arena locks at once or takes LIST_LOCK while holding an
    // arena, so this cannot deadlock.  FREE_LIST_LOCK is not taken: the
    // child rebuilds the free list from scratch.
    arena::for_each_arena(|a| unsafe { (*a).mutex.lock() });
    lock::set_fork_owner(true);
    LOCKED.store(true, Ordering::Relaxed);
    crate::kal::fork_prepare();
}

#[link_section = ".text.warm.rmalloc"]
extern "C" fn parent() {
    crate::kal::fork_parent();
    if !LOCKED.swap(false, Ordering::Relaxed) {
        return;
    }
    lock::set_fork_owner(false);
    // SAFETY: we hold every lock taken in `prepare`, and those of arenas
    // this thread created since (see `arena::new_arena`).
    arena::for_each_arena(|a| unsafe { (*a).mutex.unlock() });
    LIST_LOCK.unlock();
}

#[link_section = ".text.warm.rmalloc"]
extern "C" fn child() {
    crate::kal::after_fork_child();
    if !LOCKED.swap(false, Ordering::Relaxed) {
        return;
    }
    // SAFETY: only this thread exists in the child; the locks it inherited
    // were taken by it in `prepare` (or by threads that are gone).
    unsafe { arena::reinit_after_fork() };
    lock::set_fork_owner(false);
}
