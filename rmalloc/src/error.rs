//! Fatal heap-corruption reports, in glibc's words, followed by `abort()`.
//!
//! The message goes straight to fd 2 with `write(2)`: the heap is known to be
//! damaged, so nothing here may allocate or take an arena lock.

/// Report `msg` (e.g. `"free(): invalid pointer"`) and abort the process.
#[cold]
#[inline(never)]
pub(crate) fn malloc_printerr(msg: &str) -> ! {
    let _ = rmalloc_sys::write_all(2, msg.as_bytes());
    let _ = rmalloc_sys::write_all(2, b"\n");
    // SAFETY: abort has no preconditions; it raises SIGABRT like glibc's
    // malloc_printerr does, so core dumps and handlers behave the same.
    unsafe { libc::abort() }
}
