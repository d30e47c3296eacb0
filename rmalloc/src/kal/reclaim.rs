//! Reclaim: handing confirmed-unreachable chunks back to the allocator,
//! through probation, without ever racing the program.
//!
//! 1. The scanner lists as *due* the chunks unreachable in `confirm_scans`
//!    consecutive snapshots (and for `min_free_age_ms`).
//! 2. At the next snapshot instant, with every thread stopped and the heap
//!    at rest, [`flip_due`] revalidates each due chunk (still mapped in its
//!    heap, header unchanged and in use, not in a thread cache or fastbin,
//!    size class not quarantined) and puts it in *tentative* probation: its
//!    header gets the `IS_MMAPPED` bit (heap chunks), so any later `free`,
//!    `realloc` or `malloc_usable_size` by the program takes the slow path,
//!    where [`claim`] sees it.
//! 3. The snapshot taken at that same instant must prove it unreachable
//!    again ([`verify`]); then it is *held*, else it is put back.
//! 4. Program threads that take the chunk's arena (the `kal_pending` hint)
//!    free held chunks whose `probation_ms` has run out, and put back the
//!    refuted ones, a bounded batch at a time, under the arena lock.
//!
//! A program that frees, resizes or measures a held chunk had a pointer KAL
//! could not see: a false reclaim.  It is reported loudly (with its
//! allocation stack when recorded), the call is honoured as for any live
//! chunk, and reclaim stops at that site (size class and stack), or in the
//! whole size class when the stack is not known.  Suppressed sites are
//! never reclaimed.
//!
//! Every header change happens either with all threads stopped or under
//! the chunk's arena lock.  Lock order: arena, `QLOCK`, `PLOCK`, then the
//! mmapped-chunk registry's lock.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::arena::{self, Arena};
use crate::chunk::{self, ChunkPtr, IS_MMAPPED, SIZE_BITS};
use crate::lock::Mutex;
use crate::tcache;

use super::mem::{AddrMap, MVec};
use super::stats::STATS;

/// A chunk the scanner wants reclaimed: (chunk, size, arena or 0).
#[derive(Clone, Copy)]
pub struct Due {
    pub chunk: usize,
    pub size: usize,
    pub arena: usize,
}

const TENTATIVE: u8 = 0;
const HELD: u8 = 1;
const REFUTED: u8 = 2;

#[derive(Clone, Copy)]
struct Item {
    chunk: usize,
    size: usize,
    /// Owning arena; 0 for an mmapped chunk.
    arena: usize,
    /// When it was verified (ms).
    since_ms: u64,
    state: u8,
}

/// Probation map values: the size, plus these low bits.
const V_MMAPPED: usize = 1;
const V_HELD: usize = 2;

struct Shared<T>(UnsafeCell<T>);
// SAFETY: each instance is only accessed with its lock held (QLOCK for the
// items, PLOCK for the probation map), or in the frozen snapshot child.
unsafe impl<T> Sync for Shared<T> {}

static QLOCK: Mutex = Mutex::new();
static ITEMS: Shared<MVec<Item>> = Shared(UnsafeCell::new(MVec::new()));
static PLOCK: Mutex = Mutex::new();
static PROBATION: Shared<AddrMap> = Shared(UnsafeCell::new(AddrMap::new()));
/// Chunks in probation, read without the lock by the free slow path.
static IN_PROBATION: AtomicUsize = AtomicUsize::new(0);
/// Scratch: fastbin chunks at the instant (scanner only).
static FASTBIN_SET: Shared<AddrMap> = Shared(UnsafeCell::new(AddrMap::new()));

/// Size classes (16-byte steps, the last one open-ended) where a false
/// reclaim happened: no more reclaim there.
const CLASSES: usize = 256;
static QUARANTINE: [AtomicBool; CLASSES] = [const { AtomicBool::new(false) }; CLASSES];

pub static PROBATION_MS: AtomicUsize = AtomicUsize::new(1000);
/// Earliest time (ms) any item can be drained: lets the allocation slow
/// path skip the queue until then (0: now).
static NEXT_DUE_MS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn class(size: usize) -> usize {
    (size / 16).min(CLASSES - 1)
}

pub fn quarantined(size: usize) -> bool {
    QUARANTINE[class(size)].load(Ordering::Relaxed)
}

/// Sites (size class, allocation stack) where a false reclaim happened:
/// when the site is known, only that site stops being reclaimed.
const SITES: usize = 64;
static QUARANTINE_SITE: [core::sync::atomic::AtomicU64; SITES] =
    [const { core::sync::atomic::AtomicU64::new(0) }; SITES];

fn site_key(size: usize, id: u32) -> u64 {
    ((class(size) as u64) << 32) | id as u64
}

/// Stop reclaiming at this site (falls back to the whole size class when
/// the table is full).
fn quarantine_site(size: usize, id: u32) {
    let k = site_key(size, id);
    for q in &QUARANTINE_SITE {
        match q.compare_exchange(0, k, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(v) if v == k => return,
            Err(_) => {}
        }
    }
    QUARANTINE[class(size)].store(true, Ordering::Relaxed);
}

fn site_quarantined(size: usize, id: u32) -> bool {
    let k = site_key(size, id);
    QUARANTINE_SITE
        .iter()
        .any(|q| q.load(Ordering::Relaxed) == k)
}

/// May the chunk (`size`) at user address `mem` be reclaimed as far as its
/// allocation site goes: not quarantined, not suppressed?  Never waits for
/// a lock (threads are stopped): a busy table means not now.
fn site_allows(mem: usize, size: usize) -> bool {
    match super::stacks::try_site_of(mem) {
        Err(()) => false,
        Ok(None) => true,
        Ok(Some(id)) => {
            !site_quarantined(size, id) && super::suppress::lookup_nowait(id) == Ok(None)
        }
    }
}

fn now_ms() -> u64 {
    rmalloc_sys::task::now_ns() / 1_000_000
}

/// Probation map value: is this chunk held (verified), not just tentative?
pub fn value_is_held(v: usize) -> bool {
    v & V_HELD != 0
}

/// The probation map for the snapshot child.
///
/// # Safety
/// Only in the frozen snapshot child.
pub unsafe fn frozen_probation() -> &'static AddrMap {
    // SAFETY: function contract.
    unsafe { &*PROBATION.0.get() }
}

pub fn queue_lock() -> &'static Mutex {
    &QLOCK
}

pub fn probation_lock() -> &'static Mutex {
    &PLOCK
}

/// Are the engine's reclaim locks free (snapshot consistency check)?
pub fn locks_free() -> bool {
    !QLOCK.is_locked() && !PLOCK.is_locked()
}

fn set_pending(a: *mut Arena) {
    // SAFETY: arenas are never freed.
    unsafe { (*a).kal_pending.store(true, Ordering::Release) };
}

fn pend(arena: usize) {
    if arena == 0 {
        arena::for_each_arena(set_pending);
    } else {
        set_pending(arena as *mut Arena);
    }
}

/// Collect every fastbin chunk (the heap is at rest).  False if a list is
/// malformed or too long to check: then nothing is flipped this time.
///
/// # Safety
/// All other threads stopped, no allocator lock held.
unsafe fn fastbin_chunks(set: &mut AddrMap) -> bool {
    set.clear();
    let mut ok = true;
    let mut budget = 1usize << 16;
    arena::for_each_arena(|av| {
        // SAFETY: the heap is at rest (contract); arenas are never freed.
        for b in unsafe { (*av).fastbins.iter() } {
            let mut p = b.load(Ordering::Relaxed);
            while ok && !p.is_null() {
                if budget == 0 || !chunk::aligned_ok(p as usize) {
                    ok = false;
                    break;
                }
                budget -= 1;
                ok &= set.insert(p as usize, 1);
                // SAFETY: a fastbin chunk of a heap at rest.
                let slot = unsafe { core::ptr::addr_of!((*p).fd) } as *const u8;
                // SAFETY: as above.
                p = chunk::reveal_ptr(slot, unsafe { (*p).fd } as *mut u8) as ChunkPtr;
            }
        }
    });
    ok
}

/// Is the chunk still the in-use chunk of `size` bytes that the scans saw?
///
/// # Safety
/// The heap is at rest (threads stopped) or the chunk's arena is locked.
unsafe fn still_leaked(it: &Item) -> bool {
    let p = it.chunk as ChunkPtr;
    // If the program freed it after all (a pointer KAL could not see), the
    // heap may have shrunk past it since: check that it is still mapped.
    // SAFETY: forwarded contract.
    if !unsafe { still_mapped(it) } {
        return false;
    }
    // SAFETY: mapped (just checked); the tags are stable (contract).
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

/// At a snapshot instant (all other threads stopped, no allocator lock
/// held): put the due chunks in tentative probation.  The snapshot taken at
/// this same instant then decides ([`verify`]).
///
/// # Safety
/// Only from the scanner, between a successful stop and the release.
pub unsafe fn flip_due(due: &[Due]) {
    if due.is_empty() {
        return;
    }
    // SAFETY: scanner only; the heap is at rest (contract).
    let fast = unsafe { &mut *FASTBIN_SET.0.get() };
    // SAFETY: as above.
    if !unsafe { fastbin_chunks(fast) } {
        return;
    }
    QLOCK.lock();
    PLOCK.lock();
    // SAFETY: both locks held.
    let (items, map) = unsafe { (&mut *ITEMS.0.get(), &mut *PROBATION.0.get()) };
    for d in due {
        let it = Item {
            chunk: d.chunk,
            size: d.size,
            arena: d.arena,
            since_ms: 0,
            state: TENTATIVE,
        };
        if quarantined(d.size) || map.get(d.chunk).is_some() || fast.get(d.chunk).is_some() {
            continue;
        }
        if !site_allows(d.chunk + chunk::HDR, d.size) {
            continue;
        }
        // A thread stopped with the chunk in a register may be in the middle
        // of freeing it (its header read, not yet acted on): leave it.
        let (lo, hi) = (d.chunk, d.chunk + d.size + 2 * chunk::SIZE_SZ);
        let in_flight = super::stop::slots().iter().any(|s| {
            super::stop::stopped(s)
                && s.gregs
                    .iter()
                    .chain(s.xmm.iter())
                    .any(|&v| (lo..=hi).contains(&(v as usize)))
        });
        if in_flight {
            continue;
        }
        // SAFETY: the heap is at rest (contract).
        if !unsafe { still_leaked(&it) } {
            continue;
        }
        let v = d.size | if d.arena == 0 { V_MMAPPED } else { 0 };
        if !items.reserve(1) || !map.insert(d.chunk, v) {
            break;
        }
        items.push(it);
        if d.arena != 0 {
            let p = d.chunk as ChunkPtr;
            // SAFETY: an in-use chunk of a heap at rest.
            unsafe { chunk::set_head(p, chunk::size_nomask(p) | IS_MMAPPED) };
        }
        IN_PROBATION.fetch_add(1, Ordering::Relaxed);
    }
    PLOCK.unlock();
    QLOCK.unlock();
}

/// After the snapshot that saw the tentative chunks: hold those it proved
/// unreachable (`unreachable(chunk)`), refute the others.  With no
/// completed snapshot (`None`), they stay tentative for the next one.
pub fn verify(
    unreachable: Option<&dyn Fn(usize) -> bool>,
    on_held: &mut dyn FnMut(usize, usize, bool),
) {
    let Some(unreachable) = unreachable else {
        return;
    };
    let now = now_ms();
    QLOCK.lock();
    PLOCK.lock();
    // SAFETY: both locks held.
    let (items, map) = unsafe { (&mut *ITEMS.0.get(), &mut *PROBATION.0.get()) };
    NEXT_DUE_MS.store(0, Ordering::Relaxed);
    for it in items.as_mut_slice() {
        if it.state != TENTATIVE {
            continue;
        }
        let Some(v) = map.get(it.chunk) else {
            it.state = REFUTED; // claimed by the program meanwhile
            continue;
        };
        if unreachable(it.chunk) {
            it.state = HELD;
            it.since_ms = now;
            map.insert(it.chunk, v | V_HELD);
            STATS.reclaimed_chunks.fetch_add(1, Ordering::Relaxed);
            STATS
                .reclaimed_bytes
                .fetch_add(it.size as u64, Ordering::Relaxed);
            on_held(it.chunk, it.size, it.arena == 0);
        } else {
            it.state = REFUTED;
        }
        pend(it.arena);
    }
    PLOCK.unlock();
    QLOCK.unlock();
}

/// Take `it` out of probation: restore its header (heap chunk).  Returns
/// whether the chunk was still held *and* still exactly as KAL left it
/// (only then may it be freed).
///
/// # Safety
/// The chunk's arena is locked by the caller; PLOCK is held.
unsafe fn unflip(map: &mut AddrMap, it: &Item) -> bool {
    if map.remove(it.chunk).is_none() {
        return false; // the program claimed it meanwhile
    }
    IN_PROBATION.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: arena locked (contract); the heap is checked to still hold
    // the chunk before its header is read.
    if !unsafe { still_mapped(it) } {
        return false;
    }
    if it.arena == 0 {
        return true;
    }
    let p = it.chunk as ChunkPtr;
    // SAFETY: mapped (checked), arena locked.
    unsafe {
        let raw = chunk::size_nomask(p);
        if raw & IS_MMAPPED == 0 || raw & !SIZE_BITS != it.size {
            return false; // not the header KAL set: leave it alone
        }
        chunk::set_head(p, raw & !IS_MMAPPED);
    }
    true
}

/// Drain up to `budget` items of arena `av` (locked by the caller, or the
/// process is single-threaded): free held chunks whose probation ran out,
/// put refuted ones back.
///
/// # Safety
/// `av` must be the caller's locked arena.
pub unsafe fn drain(av: *mut Arena, mut budget: usize) {
    if budget != usize::MAX && now_ms() < NEXT_DUE_MS.load(Ordering::Relaxed) {
        return;
    }
    if !QLOCK.try_lock() {
        return;
    }
    let mut next_due = u64::MAX;
    // SAFETY: QLOCK is held.
    let items = unsafe { &mut *ITEMS.0.get() };
    let now = now_ms();
    let probation_ms = PROBATION_MS.load(Ordering::Relaxed) as u64;
    let mut left = false;
    let mut i = 0;
    while i < items.len() {
        let it = items.as_slice()[i];
        let mine = it.arena == av as usize || it.arena == 0;
        let ready = match it.state {
            HELD => now >= it.since_ms + probation_ms,
            REFUTED => true,
            _ => false,
        };
        if it.state == HELD && !ready {
            next_due = next_due.min(it.since_ms + probation_ms);
        }
        if !mine || !ready || budget == 0 {
            if ready {
                next_due = next_due.min(now); // another arena's work
            }
            left |= mine && it.state != TENTATIVE;
            i += 1;
            continue;
        }
        swap_remove(items, i);
        budget -= 1;
        PLOCK.lock();
        // SAFETY: PLOCK held; the arena of a heap chunk is `av`, locked.
        let still = unsafe { unflip(&mut *PROBATION.0.get(), &it) };
        PLOCK.unlock();
        if !still || it.state != HELD {
            continue;
        }
        let p = it.chunk as ChunkPtr;
        if super::stacks::ON.load(Ordering::Relaxed) {
            super::stacks::forget(it.chunk + chunk::HDR);
        }
        // SAFETY: a held chunk nobody else can free (the program would have
        // claimed it); for a heap chunk its arena `av` is locked.
        unsafe {
            if it.arena == 0 {
                crate::mmap_chunk::unmap_chunk(p);
            } else {
                crate::free::int_free_locked(av, p);
            }
        }
    }
    if !left {
        // SAFETY: arenas are never freed.
        unsafe { (*av).kal_pending.store(false, Ordering::Release) };
    }
    // Nothing to do before the first held item's probation ends (a whole
    // pass found nothing refuted or due; a partial one leaves 0: now).
    if budget > 0 {
        NEXT_DUE_MS.store(
            if next_due == u64::MAX { 0 } else { next_due },
            Ordering::Relaxed,
        );
    }
    QLOCK.unlock();
}

fn swap_remove(v: &mut MVec<Item>, i: usize) {
    let n = v.len();
    let s = v.as_mut_slice();
    s[i] = s[n - 1];
    v.truncate(n - 1);
}

/// Cheap test for the slow paths: is any chunk in probation at all?
#[inline]
pub fn any_in_probation() -> bool {
    IN_PROBATION.load(Ordering::Relaxed) != 0
}

/// The program freed, resized or measured chunk `p`.  If KAL holds it in
/// probation, restore it (so the caller proceeds as with any live chunk)
/// and return true; a *held* chunk is a false reclaim and is reported.
///
/// # Safety
/// `p` is a chunk pointer the program passed to the allocator, and the
/// caller holds no arena lock.
pub unsafe fn claim(p: ChunkPtr) -> bool {
    PLOCK.lock();
    // SAFETY: PLOCK is held.
    let kind = unsafe { (*PROBATION.0.get()).get(p as usize) };
    PLOCK.unlock();
    let Some(kind) = kind else {
        return false;
    };
    // The probation bit shares the size word with PREV_INUSE, which a free
    // of the chunk below changes under the arena lock: take it too.
    let av = if kind & V_MMAPPED == 0 {
        // SAFETY: `p` is a heap chunk KAL flipped: its header is intact
        // apart from that bit, so it names its arena.
        unsafe { arena::arena_for_chunk(p) }
    } else {
        core::ptr::null_mut()
    };
    // SAFETY: arenas are never freed; the caller holds no arena lock.
    let arena_held = (!av.is_null()).then(|| unsafe { (*av).lock() });
    PLOCK.lock();
    // SAFETY: PLOCK is held.
    let v = unsafe { (*PROBATION.0.get()).remove(p as usize) };
    if let Some(v) = v {
        IN_PROBATION.fetch_sub(1, Ordering::Relaxed);
        if v & V_MMAPPED == 0 {
            // SAFETY: a heap chunk KAL flipped; its arena is locked.
            unsafe { chunk::set_head(p, chunk::size_nomask(p) & !IS_MMAPPED) };
        }
    }
    PLOCK.unlock();
    if let Some(h) = arena_held {
        // SAFETY: locked above.
        unsafe { (*av).unlock(h) };
    }
    let Some(v) = v else {
        return false;
    };
    if value_is_held(v) {
        let size = v & !(V_MMAPPED | V_HELD);
        let mem = p as usize + chunk::HDR;
        let site = super::stacks::site_of(mem);
        match site {
            Some(id) => quarantine_site(size, id),
            None => QUARANTINE[class(size)].store(true, Ordering::Relaxed),
        }
        STATS.false_reclaims.fetch_add(1, Ordering::Relaxed);
        super::report::false_reclaim(mem, size, site);
    }
    true
}

/// Is chunk `p` held in probation (its header bit is KAL's)?
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

/// After `fork` (KAL's locks were taken for it, see `kal::fork_prepare`):
/// the child keeps the parent's probation (the chunks are allocated in its
/// copy too) and gets fresh locks.
pub fn reset_after_fork() {
    QLOCK.reset();
    PLOCK.reset();
}
