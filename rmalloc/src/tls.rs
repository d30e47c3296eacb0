//! Per-thread allocator state in initial-exec TLS.
//!
//! Four machine words per thread (the tcache, the thread's arena, KAL's
//! site-sampling countdown and its side-table guard), defined in a `.tbss`
//! section by `global_asm!` and read
//! with one `%fs`-relative load each, as glibc reaches its own tcache.  Stable
//! Rust's `thread_local!` would go through `__tls_get_addr` on every access
//! in a shared library, and it may allocate for destructors; this has neither
//! cost.  Initial-exec TLS sets `DF_STATIC_TLS`: the library must be loaded at
//! start-up (`LD_PRELOAD` or linking), or `dlopen`ed while static TLS surplus
//! remains, which glibc reserves for exactly this.

core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 3",
    ".globl rm_tls_block",
    ".hidden rm_tls_block",
    ".type rm_tls_block, @object",
    ".size rm_tls_block, 32",
    "rm_tls_block:",
    ".zero 32",
    ".popsection",
);

/// Slot offsets inside the block.
pub(crate) const TCACHE: usize = 0;
pub(crate) const ARENA: usize = 8;
/// KAL's allocation-site sampling: bytes left before the next sample, as
/// a signed count that every `malloc` decrements (see `site_countdown`).
pub(crate) const SITE: usize = 16;
/// Nonzero while the thread holds a lock of KAL's stack side table: a
/// signal handler that allocates or frees meanwhile (not async-signal-safe,
/// but programs do it) then skips the side table rather than wait for its
/// own thread.
pub(crate) const KAL_BUSY: usize = 24;

/// Values of the `TCACHE` slot: 0 = not created yet, `TCACHE_DISABLED` =
/// none (being created, none could be allocated, or the thread is exiting);
/// anything greater is the `*mut Tcache`.
pub(crate) const TCACHE_DISABLED: usize = 1;

/// Values of the `ARENA` slot: 0 = none chosen yet, `ARENA_EXITED` = the
/// thread's exit handler has detached it from its arena (later allocations
/// borrow one without attaching); anything greater is the `*mut Arena`.
pub(crate) const ARENA_EXITED: usize = 1;

/// The block's offset from the thread pointer: one load from the GOT, the
/// same in every thread, so the compiler may share it between accesses.
#[inline(always)]
pub(crate) fn offset() -> usize {
    let t: usize;
    // SAFETY: reads the GOTTPOFF entry, which the loader fills before any
    // code of the library runs and which never changes after.
    unsafe {
        core::arch::asm!(
            "mov {t}, qword ptr [rip + rm_tls_block@GOTTPOFF]",
            t = out(reg) t,
            options(nostack, pure, readonly, preserves_flags)
        );
    }
    t
}

#[inline(always)]
pub(crate) fn get<const SLOT: usize>() -> usize {
    // SAFETY: the offset is `offset()`'s.
    unsafe { get_at::<SLOT>(offset()) }
}

/// [`get`] with the block's [`offset`] already loaded (for a fast path
/// that reads more than one slot).
///
/// # Safety
/// `offset` is the value [`offset`] returns.
#[inline(always)]
pub(crate) unsafe fn get_at<const SLOT: usize>(offset: usize) -> usize {
    let v: usize;
    // SAFETY: `rm_tls_block` is a 24-byte TLS object of this module at
    // `offset` from the thread pointer (contract), and `SLOT` is one of the
    // in-bounds offsets above.  The load has no side effects.
    unsafe {
        core::arch::asm!(
            "mov {v}, qword ptr fs:[{t} + {s}]",
            t = in(reg) offset,
            v = lateout(reg) v,
            s = const SLOT,
            options(nostack, readonly, preserves_flags)
        );
    }
    v
}

#[inline(always)]
pub(crate) fn set<const SLOT: usize>(val: usize) {
    // SAFETY: as in `get_at`, with `offset()`; the store goes to this
    // thread's own block.
    unsafe {
        core::arch::asm!(
            "mov qword ptr fs:[{t} + {s}], {v}",
            t = in(reg) offset(),
            v = in(reg) val,
            s = const SLOT,
            options(nostack, preserves_flags)
        );
    }
}

/// Take `n` bytes off the thread's allocation-site countdown (the `SITE`
/// slot, a signed count); `false` once it has gone below zero, which sends
/// `malloc` to its slow path to take a sample or re-arm it (see
/// `api::malloc_sampled`).  Two instructions on the fast path.
///
/// # Safety
/// `offset` is the value [`offset`] returns.
#[inline(always)]
pub(crate) unsafe fn site_countdown(offset: usize, n: usize) -> bool {
    // SAFETY: as in `get_at` (contract): a read-modify-write of this
    // thread's own slot.
    unsafe {
        core::arch::asm!(
            "sub qword ptr fs:[{t} + {s}], {n}",
            "js {ran_out}",
            t = in(reg) offset,
            n = in(reg) n,
            s = const SITE,
            ran_out = label { return false; },
            options(nostack)
        );
    }
    true
}

/// Offset of the block from the thread pointer (the same in every thread:
/// static TLS), so another task can find a stopped thread's slots.
pub(crate) fn block_offset() -> isize {
    offset() as isize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_thread() {
        let saved = get::<ARENA>();
        set::<ARENA>(0x1234);
        assert_eq!(get::<ARENA>(), 0x1234);
        let other = std::thread::spawn(|| {
            let before = get::<ARENA>();
            set::<ARENA>(0x99);
            (before, get::<ARENA>())
        })
        .join()
        .unwrap();
        assert_eq!(other, (0, 0x99));
        assert_eq!(get::<ARENA>(), 0x1234);
        set::<ARENA>(saved);
    }

    #[test]
    fn site_countdown_runs_out_below_zero() {
        let saved = get::<SITE>();
        set::<SITE>(100);
        // SAFETY: the offset is `offset()`'s.
        unsafe {
            assert!(site_countdown(offset(), 60));
            assert!(site_countdown(offset(), 40));
        }
        assert_eq!(get::<SITE>(), 0);
        // SAFETY: as above.
        assert!(!unsafe { site_countdown(offset(), 1) });
        assert_eq!(get::<SITE>() as isize, -1);
        set::<SITE>(saved);
    }
}
