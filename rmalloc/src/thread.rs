//! Thread lifecycle: creating a thread's tcache on its first allocation and
//! returning everything at thread exit.
//!
//! Thread exit is observed through a pthread key destructor (the key is
//! created at initialisation, early enough to get an inline key slot, so
//! glibc never allocates for it).  The destructor re-arms itself for the
//! remaining destructor rounds so that it runs after other keys' destructors
//! (which may still free memory into the cache), and only then flushes.
//!
//! TLS states of the tcache slot: 0 = not created yet, 1 = disabled (thread
//! exiting, or no cache could be allocated), otherwise a `*mut Tcache`.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::arena;
use crate::chunk::{self, mem2chunk};
use crate::malloc::int_malloc;
use crate::tcache::{self, Tcache, TCACHE_MAX_BINS};
use crate::tls::{self, TCACHE_DISABLED};

#[link_section = ".data.hot.rmalloc"]
static KEY: AtomicU32 = AtomicU32::new(u32::MAX);
/// glibc's PTHREAD_DESTRUCTOR_ITERATIONS.
const DESTRUCTOR_ROUNDS: usize = 4;

pub(crate) fn create_key() {
    let mut k: libc::pthread_key_t = 0;
    // SAFETY: `k` is a valid out-pointer; the destructor is an extern "C" fn
    // that stays valid for the life of the process.
    if unsafe { libc::pthread_key_create(&mut k, Some(thread_exit)) } == 0 {
        KEY.store(k, Ordering::Relaxed);
    }
}

/// The thread's tcache, creating it on first use; null if there is none.
///
/// # Safety
/// Runs on the thread whose cache and arena it manages, after
/// initialisation; `mem` (for `free_chunk_slow`) is an in-use heap chunk's
/// user pointer that the caller owns.
#[inline]
pub(crate) unsafe fn tcache_or_init() -> *mut Tcache {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let t = tls::get::<{ tls::TCACHE }>();
        if t > TCACHE_DISABLED {
            return t as *mut Tcache;
        }
        if t == TCACHE_DISABLED {
            return core::ptr::null_mut();
        }
        init_tcache()
    }
}

/// # Safety
/// Runs on the thread whose cache and arena it manages, after
/// initialisation; `mem` (for `free_chunk_slow`) is an in-use heap chunk's
/// user pointer that the caller owns.
#[cold]
#[link_section = ".text.hot.rmalloc"]
unsafe fn init_tcache() -> *mut Tcache {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        // Mark first: the allocation below must not recurse into this.
        tls::set::<{ tls::TCACHE }>(TCACHE_DISABLED);
        let bytes = core::mem::size_of::<Tcache>();
        let nb = chunk::request2size(bytes);
        let (mut av, mut held) = arena::arena_get(bytes);
        let mut mem = int_malloc(av, bytes, nb);
        if mem.is_null() {
            (av, held) = arena::arena_get_retry(av, held, bytes);
            mem = int_malloc(av, bytes, nb);
        }
        (*av).unlock(held);
        if mem.is_null() {
            return core::ptr::null_mut();
        }
        core::ptr::write_bytes(mem, 0, bytes);
        tls::set::<{ tls::TCACHE }>(mem as usize);
        let k = KEY.load(Ordering::Relaxed);
        if k != u32::MAX {
            // SAFETY: `k` is our key; a non-null value arms the destructor.
            libc::pthread_setspecific(k, core::ptr::dangling::<libc::c_void>());
        }
        mem as *mut Tcache
    }
}

/// Return every cached chunk and the cache itself to their arenas, and
/// detach the thread from its arena.
///
/// # Safety
/// Runs on the thread whose cache and arena it manages, after
/// initialisation; `mem` (for `free_chunk_slow`) is an in-use heap chunk's
/// user pointer that the caller owns.
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn shutdown() {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let t = tls::get::<{ tls::TCACHE }>();
        tls::set::<{ tls::TCACHE }>(TCACHE_DISABLED);
        if t > TCACHE_DISABLED {
            let tc = t as *mut Tcache;
            for i in 0..TCACHE_MAX_BINS {
                while !(*tc).entries[i].is_null() {
                    let e = tcache::get(tc, i);
                    free_chunk_slow(e);
                }
            }
            free_chunk_slow(tc as *mut u8);
        }
        arena::thread_detach();
    }
}

/// Free a heap chunk straight into its arena, bypassing the cache.
///
/// # Safety
/// Runs on the thread whose cache and arena it manages, after
/// initialisation; `mem` (for `free_chunk_slow`) is an in-use heap chunk's
/// user pointer that the caller owns.
unsafe fn free_chunk_slow(mem: *mut u8) {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let p = mem2chunk(mem);
        crate::free::int_free(arena::arena_for_chunk(p), p);
    }
}

#[link_section = ".text.hot.rmalloc"]
extern "C" fn thread_exit(arg: *mut libc::c_void) {
    let round = arg as usize;
    if round < DESTRUCTOR_ROUNDS {
        // Run again in the next round, after destructors that free memory.
        // SAFETY: re-setting our own key from its destructor is allowed.
        unsafe {
            libc::pthread_setspecific(
                KEY.load(Ordering::Relaxed),
                (round + 1) as *const libc::c_void,
            )
        };
        return;
    }
    // SAFETY: called once per exiting thread, on that thread.
    unsafe { shutdown() };
}
