//! The registry of mmapped chunks: a snapshot cannot tell a chunk's own
//! mapping from a program `mmap` by looking at it, and guessing wrong either
//! way is unsafe (a program mapping taken for a chunk stops being a root).
//!
//! Maintained only while KAL is on, on the mmap/munmap/mremap paths of the
//! allocator (system calls already, so one lock and a hash update do not
//! show).  A chunk mapped before KAL started is not listed: its mapping is
//! then scanned as a root and never reclaimed, which is safe.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::chunk::{self, ChunkPtr};
use crate::lock::Mutex;

use super::mem::AddrMap;

#[link_section = ".data.hot.rmalloc"]
pub static ON: AtomicBool = AtomicBool::new(false);
pub static LOCK: Mutex = Mutex::new();
struct Map(core::cell::UnsafeCell<AddrMap>);
// SAFETY: only accessed with LOCK held, or in the frozen snapshot child.
unsafe impl Sync for Map {}
static MAP: Map = Map(core::cell::UnsafeCell::new(AddrMap::new()));

/// The registry, for the snapshot child (frozen image, no lock needed).
///
/// # Safety
/// Only where no other thread can run: the snapshot child.
pub unsafe fn frozen() -> &'static AddrMap {
    // SAFETY: function contract.
    unsafe { &*MAP.0.get() }
}

fn with<R>(f: impl FnOnce(&mut AddrMap) -> R) -> R {
    LOCK.lock();
    // SAFETY: LOCK is held.
    let r = f(unsafe { &mut *MAP.0.get() });
    LOCK.unlock();
    r
}

/// A chunk was mapped (or moved by mremap to `p`).
///
/// Inlined down to the flag test, so that with KAL off the allocator's
/// mmap paths run no code outside the library's hot text (see `build.rs`).
#[inline]
pub fn added(p: ChunkPtr) {
    if ON.load(Ordering::Relaxed) {
        list(p);
    }
}

#[inline(never)]
fn list(p: ChunkPtr) {
    // SAFETY: `p` is a freshly mapped chunk with a valid header.
    let size = unsafe { chunk::size(p) };
    // If the table cannot grow, the chunk stays unlisted: safe (above).
    with(|m| m.insert(p as usize, size));
}

/// A chunk is being unmapped (or moved away from `p`).
#[inline]
pub fn removed(p: ChunkPtr) {
    if ON.load(Ordering::Relaxed) {
        unlist(p);
    }
}

#[inline(never)]
fn unlist(p: ChunkPtr) {
    with(|m| m.remove(p as usize));
}

/// After `fork`: the child inherited a copy; only its lock needs resetting.
pub fn reset_after_fork() {
    LOCK.reset();
}
