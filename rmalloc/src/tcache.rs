//! The per-thread cache: 64 singly linked lists of recently freed chunks,
//! one per small size class, reached without any lock.
//!
//! The cache itself is a heap chunk allocated from the thread's arena on its
//! first allocation, as in glibc.  Each cached chunk's user area holds a
//! [`Entry`]: `next` is safe-linked, and `key` holds a per-process random
//! value while the chunk is cached, so `free` can detect a double free of a
//! cached chunk cheaply and confirm it by searching the list.
//!
//! Invariants: `counts[i]` is the length of `entries[i]`, at most
//! `PARAMS.tcache_count()` (after `mallopt` lowers the count, lists may
//! briefly hold more; they drain as usual).  Bins from
//! `PARAMS.tcache_bins()` up stay empty: every path that caches a chunk
//! checks that bound (it only changes at start-up), so `malloc`'s fast
//! path may bound its index by [`TCACHE_MAX_BINS`] alone.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::chunk::{self, protect_ptr, reveal_ptr, ChunkPtr};
// The size classes live with the bins; re-exported for the cache's users.
pub(crate) use crate::bins::{csize2tidx, TCACHE_MAX_BINS};
use crate::error::malloc_printerr;

#[repr(C)]
pub(crate) struct Entry {
    pub next: *mut Entry,
    pub key: usize,
}

#[repr(C)]
pub(crate) struct Tcache {
    pub counts: [u16; TCACHE_MAX_BINS],
    pub entries: [*mut Entry; TCACHE_MAX_BINS],
}

/// Random per-process value marking cached chunks.
#[link_section = ".data.hot.rmalloc"]
pub(crate) static KEY: AtomicUsize = AtomicUsize::new(0);

#[inline(always)]
pub(crate) fn key() -> usize {
    KEY.load(Ordering::Relaxed)
}

pub(crate) fn init_key() {
    let mut k: usize = 0;
    // SAFETY: getrandom writes at most 8 bytes into `k`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getrandom,
            &mut k as *mut usize,
            core::mem::size_of::<usize>(),
            libc::GRND_NONBLOCK,
        )
    };
    if n != core::mem::size_of::<usize>() as i64 || k == 0 {
        // No entropy yet (very early boot): mix the address-space layout and
        // the clock, which is what glibc falls back to as well.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        k = (ts.tv_nsec as usize).rotate_left(32)
            ^ (ts.tv_sec as usize)
            ^ (&k as *const usize as usize)
            ^ 0x9e37_79b9_7f4a_7c15;
    }
    KEY.store(k, Ordering::Relaxed);
}

/// Pop from bin `idx`, which must be non-empty.
///
/// # Safety
/// `tc` is the calling thread's own cache (no other thread touches it),
/// `idx < TCACHE_MAX_BINS`; `get` needs a non-empty bin; `put` an in-use
/// heap chunk of bin `idx`'s size that the caller owns; `e` a chunk's user
/// pointer.
#[inline(always)]
pub(crate) unsafe fn get(tc: *mut Tcache, idx: usize) -> *mut u8 {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let e = (*tc).entries[idx];
        if !chunk::aligned_ok(e as usize) {
            malloc_printerr("malloc(): unaligned tcache chunk detected");
        }
        (*tc).entries[idx] = reveal_ptr(
            core::ptr::addr_of!((*e).next) as *const u8,
            (*e).next as *mut u8,
        ) as *mut Entry;
        (*tc).counts[idx] -= 1;
        (*e).key = 0;
        e as *mut u8
    }
}

/// # Safety
/// `tc` is the calling thread's own cache (no other thread touches it),
/// `idx < TCACHE_MAX_BINS`; `get` needs a non-empty bin; `put` an in-use
/// heap chunk of bin `idx`'s size that the caller owns; `e` a chunk's user
/// pointer.
#[inline(always)]
pub(crate) unsafe fn put(tc: *mut Tcache, p: ChunkPtr, idx: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let e = chunk::chunk2mem(p) as *mut Entry;
        (*e).key = key();
        (*e).next = protect_ptr(
            core::ptr::addr_of!((*e).next) as *const u8,
            (*tc).entries[idx] as *mut u8,
        ) as *mut Entry;
        (*tc).entries[idx] = e;
        (*tc).counts[idx] += 1;
    }
}

/// `free` found the cache key in a chunk: confirm a double free by walking
/// the bin (the key may also be user data that happens to match).
///
/// # Safety
/// `tc` is the calling thread's own cache (no other thread touches it),
/// `idx < TCACHE_MAX_BINS`; `get` needs a non-empty bin; `put` an in-use
/// heap chunk of bin `idx`'s size that the caller owns; `e` a chunk's user
/// pointer.
#[cold]
pub(crate) unsafe fn check_double_free(tc: *mut Tcache, e: *mut Entry, idx: usize) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let mut cnt = 0usize;
        let mut tmp = (*tc).entries[idx];
        while !tmp.is_null() {
            if cnt >= crate::options::PARAMS.tcache_count() + 64 {
                malloc_printerr("free(): too many chunks detected in tcache");
            }
            if !chunk::aligned_ok(tmp as usize) {
                malloc_printerr("free(): unaligned chunk detected in tcache 2");
            }
            if tmp == e {
                malloc_printerr("free(): double free detected in tcache 2");
            }
            tmp = reveal_ptr(
                core::ptr::addr_of!((*tmp).next) as *const u8,
                (*tmp).next as *mut u8,
            ) as *mut Entry;
            cnt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_indices() {
        assert_eq!(csize2tidx(32), 0);
        assert_eq!(csize2tidx(48), 1);
        assert_eq!(csize2tidx(1040), 63);
    }
}
