//! Reclaim: handing confirmed-unreachable chunks back to the allocator, at
//! arena boundaries, through probation.
//!
//! The scanner queues a chunk once it was unreachable in `confirm_scans`
//! consecutive snapshots.  A program thread that takes the chunk's arena
//! (the `kal_pending` hint on the arena) drains a bounded batch: each
//! queued chunk is revalidated (its header still says in use with the same
//! size, it is not in a thread cache, its size class is not quarantined)
//! and put in probation; a chunk whose probation has run out is freed.
//!
//! Probation: the chunk stays allocated, its contents untouched, with the
//! `IS_MMAPPED` bit set in its header (for heap chunks), so a later `free`
//! or `realloc` of it by the program takes the allocator's slow path, where
//! [`claim`] recognises it: a false reclaim.  It is reported loudly, the
//! program's call is honoured once as an ordinary free or realloc, and
//! reclaim of that size class stops for the rest of the run.
//!
//! Lock order: arena, then `QLOCK`, then `PLOCK`, then the mmapped-chunk
//! registry's lock.  `claim` takes only `PLOCK`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::arena::{self, Arena};
use crate::chunk::{self, ChunkPtr, IS_MMAPPED, SIZE_BITS};
use crate::lock::Mutex;
use crate::tcache;

use super::mem::{AddrMap, MVec};
use super::stats::STATS;

#[derive(Clone, Copy)]
struct Item {
    chunk: usize,
    size: usize,
    /// Owning arena; 0 for an mmapped chunk.
    arena: usize,
    /// When it entered probation (ms), for probation items.
    since_ms: u64,
}

struct Queues {
    pending: MVec<Item>,
    probation: MVec<Item>,
}

struct Shared<T>(UnsafeCell<T>);
// SAFETY: each instance is only accessed with its lock held (QLOCK for the
// queues, PLOCK for the probation map), or in the frozen snapshot child.
unsafe impl<T> Sync for Shared<T> {}

static QLOCK: Mutex = Mutex::new();
static QUEUES: Shared<Queues> = Shared(UnsafeCell::new(Queues {
    pending: MVec::new(),
    probation: MVec::new(),
}));
static PLOCK: Mutex = Mutex::new();
static PROBATION: Shared<AddrMap> = Shared(UnsafeCell::new(AddrMap::new()));
/// Chunks in probation, read without the lock by the free slow path.
static IN_PROBATION: AtomicUsize = AtomicUsize::new(0);

/// Size classes (16-byte steps, the last one open-ended) where a false
/// reclaim happened: no more reclaim there.
const CLASSES: usize = 256;
static QUARANTINE: [AtomicBool; CLASSES] = [const { AtomicBool::new(false) }; CLASSES];

pub static PROBATION_MS: AtomicUsize = AtomicUsize::new(1000);

fn class(size: usize) -> usize {
    (size / 16).min(CLASSES - 1)
}

pub fn quarantined(size: usize) -> bool {
    QUARANTINE[class(size)].load(Ordering::Relaxed)
}

fn now_ms() -> u64 {
    rmalloc_sys::task::now_ns() / 1_000_000
}

/// The probation map for the snapshot child.
///
/// # Safety
/// Only in the frozen snapshot child.
pub unsafe fn frozen_probation() -> &'static AddrMap {
    // SAFETY: function contract.
    unsafe { &*PROBATION.0.get() }
}

/// Are the engine's reclaim locks free (snapshot consistency check)?
pub fn locks_free() -> bool {
    !QLOCK.is_locked() && !PLOCK.is_locked()
}

/// Queue `chunk` (of `size` bytes, in `arena` or mmapped when null) for
/// reclaim.  Called by the scanner.  False when the queue is full.
pub fn enqueue(chunk: usize, size: usize, arena: *mut Arena) -> bool {
    QLOCK.lock();
    // SAFETY: QLOCK is held.
    let q = unsafe { &mut *QUEUES.0.get() };
    let ok = q.pending.len() < 1 << 20
        && q.pending.push(Item {
            chunk,
            size,
            arena: arena as usize,
            since_ms: 0,
        });
    QLOCK.unlock();
    if ok {
        if arena.is_null() {
            arena::for_each_arena(set_pending);
        } else {
            set_pending(arena);
        }
    }
    ok
}

fn set_pending(a: *mut Arena) {
    // SAFETY: arenas are never freed.
    unsafe { (*a).kal_pending.store(true, Ordering::Release) };
}

/// Is the chunk still the in-use chunk of `size` bytes that the scans saw?
///
/// # Safety
/// `it.chunk` must be a chunk address the scanner found in use; its arena
/// (if any) is locked by the caller.
unsafe fn still_leaked(it: &Item) -> bool {
    let p = it.chunk as ChunkPtr;
    // The chunk was in use at the last snapshot, but if the program freed
    // it after all (a pointer KAL could not see) the heap may have shrunk
    // past it since: check that its memory is still part of the heap.
    // SAFETY: arena and registry structures are valid; the arena is locked.
    if !unsafe { still_mapped(it) } {
        return false;
    }
    // SAFETY: mapped (just checked); the arena lock keeps the tags stable.
    unsafe {
        let raw = chunk::size_nomask(p);
        if raw & !SIZE_BITS != it.size {
            return false;
        }
        let e = chunk::chunk2mem(p) as *const tcache::Entry;
        if (*e).key == tcache::key() {
            return false;
        }
        if it.arena == 0 {
            return raw & IS_MMAPPED != 0;
        }
        raw & IS_MMAPPED == 0
            && arena::arena_for_chunk(p) as usize == it.arena
            && chunk::inuse_bit_at_offset(p, it.size)
    }
}

/// Is the chunk's memory still part of its arena's heap (or, mmapped,
/// still registered)?
///
/// # Safety
/// For a heap chunk, its arena must be locked by the caller.
unsafe fn still_mapped(it: &Item) -> bool {
    let (p, end) = (it.chunk, it.chunk + it.size);
    if it.arena == 0 {
        super::registry::LOCK.lock();
        // SAFETY: the registry lock is held.
        let ok = unsafe { super::registry::frozen() }.get(p) == Some(it.size);
        super::registry::LOCK.unlock();
        return ok;
    }
    let av = it.arena as *mut Arena;
    // SAFETY: arenas are never freed and `av` is locked (contract).
    let top = unsafe { (*av).top } as usize;
    // SAFETY: as above.
    if unsafe { (*av).is_main() } {
        // Only the newest region can shrink (from its top end).
        let n = crate::top::NREGIONS.load(Ordering::Acquire);
        let newest = match n.checked_sub(1) {
            Some(i) if i < crate::top::MAX_REGIONS => {
                crate::top::REGIONS[i].load(Ordering::Relaxed)
            }
            _ => return false,
        };
        return p < newest || end <= top;
    }
    // A non-main heap may be deleted or shrunk: the chunk must lie in one
    // of the arena's heaps, below the used size (and below top in the
    // newest one).
    let mut h = crate::heap::heap_for_ptr(top);
    let want = crate::heap::heap_for_ptr(p);
    let mut newest = true;
    while !h.is_null() {
        if h == want {
            // SAFETY: `h` is a live heap of the locked arena.
            let used = h as usize + unsafe { (*h).size };
            return end <= used && (!newest || end <= top);
        }
        newest = false;
        // SAFETY: as above.
        h = unsafe { (*h).prev };
    }
    false
}

/// Drain up to `budget` items for arena `av` (locked by the caller, or the
/// process is single-threaded).  Returns whether work remains for `av`.
///
/// # Safety
/// `av` must be the caller's locked arena.
pub unsafe fn drain(av: *mut Arena, mut budget: usize) {
    if !QLOCK.try_lock() {
        return;
    }
    // SAFETY: QLOCK is held.
    let q = unsafe { &mut *QUEUES.0.get() };
    let now = now_ms();
    let probation_ms = PROBATION_MS.load(Ordering::Relaxed) as u64;
    let mut left = false;
    // Probation that has run out: free for real.
    let mut i = 0;
    while i < q.probation.len() {
        let it = q.probation.as_slice()[i];
        let mine = it.arena == av as usize || it.arena == 0;
        if !mine || budget == 0 {
            left |= mine;
            i += 1;
            continue;
        }
        if now < it.since_ms + probation_ms {
            left = true;
            i += 1;
            continue;
        }
        swap_remove(&mut q.probation, i);
        budget -= 1;
        PLOCK.lock();
        // SAFETY: PLOCK is held.
        let held = unsafe { (*PROBATION.0.get()).remove(it.chunk) }.is_some();
        if held {
            IN_PROBATION.fetch_sub(1, Ordering::Relaxed);
        }
        PLOCK.unlock();
        if !held {
            continue; // the program freed it itself (a false reclaim)
        }
        let p = it.chunk as ChunkPtr;
        // SAFETY: the chunk was in probation, so nobody else frees it; for
        // a heap chunk its arena `av` is locked by the caller.
        unsafe {
            if it.arena == 0 {
                crate::mmap_chunk::unmap_chunk(p);
            } else {
                chunk::set_head_size(p, chunk::size_nomask(p) & !IS_MMAPPED);
                crate::free::int_free_locked(av, p);
            }
        }
    }
    // Newly confirmed leaks: into probation.
    let mut i = 0;
    while i < q.pending.len() {
        let it = q.pending.as_slice()[i];
        let mine = it.arena == av as usize || it.arena == 0;
        if !mine || budget == 0 {
            left |= mine;
            i += 1;
            continue;
        }
        swap_remove(&mut q.pending, i);
        budget -= 1;
        // SAFETY: see `still_leaked`; `av` is locked for heap chunks.
        if quarantined(it.size) || !unsafe { still_leaked(&it) } {
            continue;
        }
        PLOCK.lock();
        // SAFETY: PLOCK is held.
        let m = unsafe { &mut *PROBATION.0.get() };
        if m.get(it.chunk).is_none() && m.insert(it.chunk, it.size | (it.arena == 0) as usize) {
            if it.arena != 0 {
                let p = it.chunk as ChunkPtr;
                // SAFETY: an in-use chunk of the locked arena `av`.
                unsafe { chunk::set_head_size(p, chunk::size_nomask(p) | IS_MMAPPED) };
            }
            IN_PROBATION.fetch_add(1, Ordering::Relaxed);
            let mut held = it;
            held.since_ms = now;
            if !q.probation.push(held) {
                // Cannot track its expiry: give it back to the program.
                m.remove(it.chunk);
                IN_PROBATION.fetch_sub(1, Ordering::Relaxed);
                if it.arena != 0 {
                    let p = it.chunk as ChunkPtr;
                    // SAFETY: as above.
                    unsafe { chunk::set_head_size(p, chunk::size_nomask(p) & !IS_MMAPPED) };
                }
            } else {
                STATS.reclaimed_chunks.fetch_add(1, Ordering::Relaxed);
                STATS
                    .reclaimed_bytes
                    .fetch_add(it.size as u64, Ordering::Relaxed);
            }
        }
        PLOCK.unlock();
    }
    if !left {
        // SAFETY: arenas are never freed.
        unsafe { (*av).kal_pending.store(false, Ordering::Release) };
    }
    QLOCK.unlock();
}

fn swap_remove(v: &mut MVec<Item>, i: usize) {
    let n = v.len();
    let s = v.as_mut_slice();
    s[i] = s[n - 1];
    v.truncate(n - 1);
}

/// Is the chunk behind `p` one in probation?  Cheap when none is.
#[inline]
pub fn any_in_probation() -> bool {
    IN_PROBATION.load(Ordering::Relaxed) != 0
}

/// The program freed, resized or measured chunk `p` that KAL had
/// reclaimed: a false reclaim.  Restores the chunk (so the caller can
/// proceed as with any live chunk) and returns true; false if `p` is not
/// in probation.
///
/// # Safety
/// `p` is a chunk pointer the program passed to the allocator.
pub unsafe fn claim(p: ChunkPtr) -> bool {
    PLOCK.lock();
    // SAFETY: PLOCK is held.
    let held = unsafe { (*PROBATION.0.get()).remove(p as usize) };
    if let Some(v) = held {
        let (size, mmapped) = (v & !1, v & 1 != 0);
        IN_PROBATION.fetch_sub(1, Ordering::Relaxed);
        if !mmapped {
            // SAFETY: `p` is a heap chunk held in probation: allocated, and
            // its header carries the probation bit.
            unsafe { chunk::set_head_size(p, chunk::size_nomask(p) & !IS_MMAPPED) };
        }
        QUARANTINE[class(size)].store(true, Ordering::Relaxed);
        STATS.false_reclaims.fetch_add(1, Ordering::Relaxed);
        PLOCK.unlock();
        super::report::false_reclaim(p as usize + chunk::HDR, size);
        return true;
    }
    PLOCK.unlock();
    false
}

/// Is heap chunk `p` held in probation (its header bit is KAL's)?
pub fn holds(p: ChunkPtr) -> bool {
    if !any_in_probation() {
        return false;
    }
    PLOCK.lock();
    // SAFETY: PLOCK is held.
    let r = unsafe { (*PROBATION.0.get()).get(p as usize) }.is_some();
    PLOCK.unlock();
    r
}

/// After `fork`: the child keeps the parent's probation (the chunks are
/// allocated in its copy too) but gets fresh locks.  Pending items stay
/// valid: they name chunks of the child's copy.
pub fn reset_after_fork() {
    QLOCK.reset();
    PLOCK.reset();
}
