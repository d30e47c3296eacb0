//! `fork` safety: every arena lock is taken before `fork` and released (in
//! the parent) or re-initialised (in the child) afterwards, so the child
//! never inherits a lock held by a thread that does not exist there.
//!
//! Registered with `pthread_atfork` during initialisation.  Our prepare
//! handler runs last among handlers registered before it (glibc runs
//! prepare handlers in reverse order), so other libraries' handlers may
//! still allocate before we lock.

use crate::arena::{self, LIST_LOCK};

pub(crate) fn register() {
    // SAFETY: the handlers are extern "C" fns valid for the process's life.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

extern "C" fn prepare() {
    LIST_LOCK.lock();
    // SAFETY: arenas are never freed; the ring is stable while LIST_LOCK is
    // held.  Locks are always taken in ring order here, and no other path
    // holds two arena locks at once or takes LIST_LOCK while holding an
    // arena, so this cannot deadlock.  FREE_LIST_LOCK is not taken: the
    // child rebuilds the free list from scratch.
    arena::for_each_arena(|a| unsafe { (*a).mutex.lock() });
}

extern "C" fn parent() {
    // SAFETY: we hold every lock taken in `prepare`.
    arena::for_each_arena(|a| unsafe { (*a).mutex.unlock() });
    LIST_LOCK.unlock();
}

extern "C" fn child() {
    // SAFETY: only this thread exists in the child; the locks it inherited
    // were taken by it in `prepare` (or by threads that are gone).
    unsafe { arena::reinit_after_fork() };
    crate::kal::after_fork_child();
}
