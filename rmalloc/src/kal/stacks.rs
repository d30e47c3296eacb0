//! Allocation stacks: which call stack allocated a chunk, for reports,
//! suppressions and per-site quarantine.
//!
//! - The *depot* keeps each distinct stack once (hash-consed) in the
//!   engine's own mappings and names it by a 32-bit id.
//! - The *side table* maps a chunk's user address to the id of the stack
//!   that allocated it, in sharded hash maps outside the heap, so the chunk
//!   layout stays glibc's.  An entry goes away when the chunk is freed or
//!   reallocated, by the program or by KAL's reclaim.
//!
//! Recording happens only while KAL is on and `sites` is not `off`: for
//! `malloc` and `free` on their out-of-line paths (`api.rs`), for the other
//! entry points behind one flag test (`exports.rs`: [`on_alloc`],
//! [`on_free`]); always after the allocator has returned (no arena lock
//! held), so the unwinder may call into the loader.  With `sites=sample:N` a thread
//! records about one allocation per N bytes it allocates: `malloc`'s fast
//! path counts every request down in the allocator's TLS block (two
//! instructions, also when nothing samples), and the allocation that runs
//! the count out is made from a chunk too big for the thread cache
//! (`api::malloc_sampled`), so that only `free`'s out-of-line path
//! (`api::free_sited`) ever meets a recorded chunk; there a counting filter
//! answers for most chunks without a lock.  With `sites=all`, or a rate
//! below [`BUMP_MIN_RATE`], chunks are recorded in place and every `free`
//! goes out of line.
//!
//! Both tables are internal mappings ([`super::mem`]): they hold chunk
//! addresses and must never be scanned as roots.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::lock::Mutex;
use crate::tls;

use super::mem::{AddrMap, MVec};
use super::options::Sites;

/// Recording on (KAL on and `sites` not `off`): the one flag the C entry
/// points test.
#[link_section = ".data.hot.rmalloc"]
pub static ON: AtomicBool = AtomicBool::new(false);
/// A stack was not forgotten (see [`forget`]): an entry may name the wrong
/// stack for its chunk.
#[link_section = ".data.hot.rmalloc"]
static STALE: AtomicBool = AtomicBool::new(false);
/// Bytes between samples (0: every allocation).
#[link_section = ".data.hot.rmalloc"]
static SAMPLE: AtomicU64 = AtomicU64::new(0);
/// Frames kept per stack.
static CONTEXT: AtomicUsize = AtomicUsize::new(30);
#[link_section = ".data.hot.rmalloc"]
static FAST: AtomicBool = AtomicBool::new(false);
/// The fork child could not freeze the tables: their contents are not
/// trusted there.
#[link_section = ".data.hot.rmalloc"]
static BROKEN: AtomicBool = AtomicBool::new(false);
/// Stacks recorded (tests, statistics).
pub static RECORDED: AtomicU64 = AtomicU64::new(0);

struct Shared<T>(UnsafeCell<T>);
// SAFETY: each instance is only accessed with its lock held.
unsafe impl<T> Sync for Shared<T> {}

const SHARDS: usize = 16;
static SHARD_LOCK: [Mutex; SHARDS] = [const { Mutex::new() }; SHARDS];
static SHARD: [Shared<AddrMap>; SHARDS] =
    [const { Shared(UnsafeCell::new(AddrMap::new())) }; SHARDS];

/// Counting filter over the side table's keys (sampled mode): a free whose
/// counter is 0 has no entry, and takes no lock.
const FILTER: usize = 1 << 14;
static FILTER_N: [AtomicU32; FILTER] = [const { AtomicU32::new(0) }; FILTER];

static DEPOT_LOCK: Mutex = Mutex::new();
/// Stacks, each stored as `[len, frame...]`; an id is its offset + 1.
static FRAMES: Shared<MVec<usize>> = Shared(UnsafeCell::new(MVec::new()));
/// Open-addressing index of ids by stack hash (0: empty).
static INDEX: Shared<MVec<u32>> = Shared(UnsafeCell::new(MVec::new()));
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Most frames a stack keeps.
pub const MAX_FRAMES: usize = super::options::MAX_CONTEXT as usize;

#[inline]
fn shard(mem: usize) -> usize {
    (mem >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60
}

#[inline]
fn slot(mem: usize) -> usize {
    ((mem >> 4).wrapping_mul(0xff51_afd7_ed55_8ccd) >> 40) & (FILTER - 1)
}

/// Turn recording on (start-up, before the scanner runs).
pub fn enable(sites: Sites, context: u32, fast: bool) {
    let rate = match sites {
        Sites::Off => return,
        Sites::All => 0,
        Sites::Sample(n) => n,
    };
    SAMPLE.store(rate, Ordering::Relaxed);
    CONTEXT.store((context as usize).clamp(1, MAX_FRAMES), Ordering::Relaxed);
    FAST.store(fast, Ordering::Relaxed);
    super::modules::refresh();
    // Before `ON`: a chunk recorded in place must never meet `free`'s fast
    // path.
    if rate < BUMP_MIN_RATE {
        crate::options::PARAMS.divert_fast_paths();
    }
    ON.store(true, Ordering::Release);
    // This thread's countdown was re-armed for no sampling by its first
    // allocations: run it out, so that its next allocation is recorded, as
    // each new thread's first is.  (Threads that already exist pick the
    // change up when theirs next runs out: see `IDLE_COUNTDOWN`.)
    tls::set::<{ tls::SITE }>(0);
}

/// Stop recording for good (KAL could not start, or a fork child's table
/// is not trusted): nothing is forgotten any more, so frees may take the
/// fast path again (and the thread cache's double-free check with it).
pub fn disable() {
    ON.store(false, Ordering::Release);
    crate::options::PARAMS.restore_fast_paths();
}

/// Below this rate a sample is taken in place, and every `free` goes out
/// of line to forget it (as with `sites=all`): making each sampled chunk
/// about 1 KiB would multiply the memory of small blocks when most are
/// sampled.  From here up the bump costs at most 1056/65536 = 1.6% of the
/// bytes allocated, and usually nothing (sampled blocks are freed too).
pub const BUMP_MIN_RATE: u64 = 1 << 16;

/// What `malloc` does with the allocation whose bytes ran the thread's
/// site countdown out (see `api::malloc_sampled`).
pub enum Due {
    /// Nothing is recorded: allocate as usual.
    No,
    /// `sites=all`, or a rate below [`BUMP_MIN_RATE`]: record this
    /// allocation, from wherever it comes (every `free` goes out of line).
    Every,
    /// `sites=sample:N`: record this allocation, from a chunk that the
    /// thread cache does not hold.
    Sample,
}

/// Without recording, how many bytes a thread allocates between looks at
/// whether recording has started (one call out of line per 16 MiB: nil),
/// so that threads that existed when KAL turned recording on join in.
const IDLE_COUNTDOWN: usize = 1 << 24;

/// No countdown is ever armed above this (`sites=sample:N` takes N up to
/// 2^40): `malloc`'s slow path treats anything above, as a negative count
/// read unsigned is, as run out, so a count wrapped by an absurd request
/// is re-armed rather than kept.
pub const MAX_COUNTDOWN: usize = 1 << 40;

/// The thread's site countdown ran out: re-arm it and say what to do.
#[inline(always)]
pub fn due() -> Due {
    // Acquire: `enable` set SAMPLE and diverted the fast paths before its
    // release store of ON (free on x86, where every load acquires).
    if !ON.load(Ordering::Acquire) {
        tls::set::<{ tls::SITE }>(IDLE_COUNTDOWN);
        return Due::No;
    }
    let rate = SAMPLE.load(Ordering::Relaxed);
    tls::set::<{ tls::SITE }>(rate as usize);
    if rate < BUMP_MIN_RATE {
        Due::Every
    } else {
        Due::Sample
    }
}

/// Record the stack of the chunk `malloc` just made at `mem` (null: none)
/// for [`Due::Every`] or [`Due::Sample`].  `shown`: the usable size the
/// chunk would have had if it had not been made large for sampling (0:
/// its own), which reports show (see [`site_and_size`]).
#[cold]
#[inline(never)]
pub fn record_new(mem: *mut u8, shown: usize) {
    if !mem.is_null() {
        record(mem as usize, shown);
    }
}

/// The other allocating entry points (`calloc`, `realloc`, the aligned
/// ones) made a chunk at `mem`: count it down, and record its stack when
/// the countdown runs out (always with `sites=all`).  A sampled chunk
/// must not be of a size the thread cache holds (its `free` would not
/// forget it: see `api::malloc_sampled`); one that is leaves the countdown
/// run out, so the thread's next `malloc` takes the sample.  The size is
/// read from the chunk so the entry points need not keep it.
///
/// # Safety
/// `mem` is null or a chunk just returned to the program by this thread.
#[inline(always)]
pub unsafe fn on_alloc(mem: *mut u8) {
    if mem.is_null() {
        return;
    }
    let rate = SAMPLE.load(Ordering::Relaxed);
    if rate != 0 {
        // SAFETY: a live chunk just handed out: its header is readable.
        let (size, mmapped) = unsafe {
            let p = crate::chunk::mem2chunk(mem);
            (crate::chunk::size(p), crate::chunk::is_mmapped(p))
        };
        let left = (tls::get::<{ tls::SITE }>() as isize).wrapping_sub(size as isize);
        if left >= 0
            || rate >= BUMP_MIN_RATE
                && !mmapped
                && crate::bins::csize2tidx(size) < crate::options::PARAMS.tcache_bins()
        {
            tls::set::<{ tls::SITE }>(left as usize);
            return;
        }
        tls::set::<{ tls::SITE }>(rate as usize);
    }
    record(mem as usize, 0);
}

/// Unwind and store the stack of the chunk at `mem`.  The side table's
/// value is the stack id in the low 32 bits and `shown` (see
/// [`record_new`]; below 2^32, as sizes made large for sampling are) above.
#[cold]
#[inline(never)]
fn record(mem: usize, shown: usize) {
    // Not from a signal handler that interrupted this thread while it held
    // the depot's or a shard's lock (it would wait for itself): unrecorded.
    // The flag covers only the locked part, so a handler that jumps out of
    // the unwind leaves nothing set.
    if tls::get::<{ tls::KAL_BUSY }>() != 0 {
        return;
    }
    let mut frames = [0usize; MAX_FRAMES];
    let n = CONTEXT.load(Ordering::Relaxed);
    let text = (
        super::stop::TEXT.0.load(Ordering::Relaxed),
        super::stop::TEXT.1.load(Ordering::Relaxed),
    );
    let n = super::unwind::capture(&mut frames[..n], FAST.load(Ordering::Relaxed), text);
    if n == 0 {
        return;
    }
    tls::set::<{ tls::KAL_BUSY }>(1);
    let stored = intern(&frames[..n]).and_then(|id| {
        let s = shard(mem);
        SHARD_LOCK[s].lock();
        // SAFETY: the shard's lock is held.
        let map = unsafe { &mut *SHARD[s].0.get() };
        let fresh = map.get(mem).is_none();
        let ok = map.insert(mem, id as usize | (shown & 0xffff_ffff) << 32);
        SHARD_LOCK[s].unlock();
        ok.then_some(fresh)
    });
    tls::set::<{ tls::KAL_BUSY }>(0);
    match stored {
        Some(true) => {
            FILTER_N[slot(mem)].fetch_add(1, Ordering::Relaxed);
        }
        Some(false) => {}
        None => return,
    }
    RECORDED.fetch_add(1, Ordering::Relaxed);
}

/// The program is about to free or reallocate `mem`: forget its stack.
/// While sampling, a counting filter answers for most chunks without a
/// lock.  Returns whether `mem` had a stack (and was not kept for a chunk
/// in probation).
///
/// # Safety
/// `mem` is null or a pointer the program passes to `free`/`realloc`.
#[inline(always)]
pub unsafe fn on_free(mem: *mut u8) -> bool {
    let mem = mem as usize;
    if mem == 0
        || SAMPLE.load(Ordering::Relaxed) != 0 && FILTER_N[slot(mem)].load(Ordering::Relaxed) == 0
    {
        return false;
    }
    forget_unless_held(mem)
}

/// Whether `sites=sample:N` is on (recorded chunks are then sampled ones).
#[inline]
pub fn sampling() -> bool {
    SAMPLE.load(Ordering::Relaxed) != 0
}

/// A chunk KAL holds in probation keeps its entry, so the false-reclaim
/// report can name its site (`kal::claim_freeing` forgets it after).
#[cold]
#[inline(never)]
fn forget_unless_held(mem: usize) -> bool {
    if super::reclaim::any_in_probation()
        && super::reclaim::holds(mem.wrapping_sub(crate::chunk::HDR) as crate::chunk::ChunkPtr)
    {
        return false;
    }
    forget(mem)
}

/// Drop `mem`'s entry, if any; whether there was one.  From a signal
/// handler that interrupted this thread inside the side table, nothing is
/// dropped: the entry stays, naming a stack for whatever is allocated there
/// next and not recorded.  A report's stack may then be wrong; a false
/// reclaim no longer trusts sites ([`STALE`]), so it stops reclaim in the
/// whole size class, not at a site that may be the wrong one.
pub fn forget(mem: usize) -> bool {
    if tls::get::<{ tls::KAL_BUSY }>() != 0 {
        STALE.store(true, Ordering::Relaxed);
        return false;
    }
    let s = shard(mem);
    tls::set::<{ tls::KAL_BUSY }>(1);
    SHARD_LOCK[s].lock();
    // SAFETY: the shard's lock is held.
    let gone = unsafe { (*SHARD[s].0.get()).remove(mem) }.is_some();
    SHARD_LOCK[s].unlock();
    tls::set::<{ tls::KAL_BUSY }>(0);
    if gone {
        FILTER_N[slot(mem)].fetch_sub(1, Ordering::Relaxed);
    }
    gone
}

/// The stack id of the chunk at user address `mem`, if recorded and the
/// table is known to hold no stale entries (what a false reclaim stops
/// reclaim by).
pub fn site_of(mem: usize) -> Option<u32> {
    if STALE.load(Ordering::Relaxed) {
        return None;
    }
    site_and_size(mem, 0).map(|(site, _)| site)
}

/// The stack id of the chunk at user address `mem`, if recorded, and the
/// size reports show for it: `usable` (the chunk's), unless the chunk was
/// made large for sampling, then the size it would have had.
pub fn site_and_size(mem: usize, usable: usize) -> Option<(u32, usize)> {
    if !ON.load(Ordering::Relaxed) || BROKEN.load(Ordering::Relaxed) {
        return None;
    }
    let s = shard(mem);
    SHARD_LOCK[s].lock();
    // SAFETY: the shard's lock is held.
    let v = unsafe { (*SHARD[s].0.get()).get(mem) };
    SHARD_LOCK[s].unlock();
    v.map(|v| {
        let shown = v >> 32;
        (v as u32, if shown != 0 { shown } else { usable })
    })
}

/// [`site_of`] without waiting: `Err` when the table is busy (threads are
/// stopped and one may hold its lock).
pub fn try_site_of(mem: usize) -> Result<Option<u32>, ()> {
    if !ON.load(Ordering::Relaxed) || BROKEN.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let s = shard(mem);
    if !SHARD_LOCK[s].try_lock() {
        return Err(());
    }
    // SAFETY: the shard's lock is held.
    let v = unsafe { (*SHARD[s].0.get()).get(mem) };
    SHARD_LOCK[s].unlock();
    Ok(v.map(|v| v as u32))
}

fn hash(frames: &[usize]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ frames.len() as u64;
    for &f in frames {
        h = (h ^ f as u64).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// The id of `frames` in the depot, adding it if new.
pub fn intern(frames: &[usize]) -> Option<u32> {
    let h = hash(frames);
    DEPOT_LOCK.lock();
    // SAFETY: the depot lock is held.
    let r = unsafe { intern_locked(frames, h, &mut *FRAMES.0.get(), &mut *INDEX.0.get()) };
    DEPOT_LOCK.unlock();
    r
}

fn intern_locked(
    frames: &[usize],
    h: u64,
    all: &mut MVec<usize>,
    index: &mut MVec<u32>,
) -> Option<u32> {
    let count = COUNT.load(Ordering::Relaxed);
    if (count + 1) * 2 > index.len() && !grow_index(all, index) {
        return None;
    }
    let slots = index.as_mut_slice();
    let mask = slots.len() - 1;
    let mut i = h as usize & mask;
    loop {
        let id = slots[i];
        if id == 0 {
            break;
        }
        let at = id as usize - 1;
        let s = all.as_slice();
        let len = s[at];
        if &s[at + 1..at + 1 + len] == frames {
            return Some(id);
        }
        i = (i + 1) & mask;
    }
    let at = all.len();
    if at + 1 + frames.len() >= u32::MAX as usize || !all.reserve(frames.len() + 1) {
        return None;
    }
    all.push(frames.len());
    for &f in frames {
        all.push(f);
    }
    let id = at as u32 + 1;
    index.as_mut_slice()[i] = id;
    COUNT.store(count + 1, Ordering::Relaxed);
    Some(id)
}

fn grow_index(all: &MVec<usize>, index: &mut MVec<u32>) -> bool {
    let n = (index.len() * 2).max(4096);
    let mut fresh: MVec<u32> = MVec::new();
    if !fresh.reserve(n) {
        return false;
    }
    for _ in 0..n {
        fresh.push(0);
    }
    let mask = n - 1;
    for &id in index.as_slice() {
        if id == 0 {
            continue;
        }
        let at = id as usize - 1;
        let s = all.as_slice();
        let h = hash(&s[at + 1..at + 1 + s[at]]);
        let f = fresh.as_mut_slice();
        let mut i = h as usize & mask;
        while f[i] != 0 {
            i = (i + 1) & mask;
        }
        f[i] = id;
    }
    let mut old = core::mem::replace(index, fresh);
    old.release();
    true
}

/// Copy the frames of stack `id` into `out`; returns how many.
pub fn frames(id: u32, out: &mut [usize; MAX_FRAMES]) -> usize {
    DEPOT_LOCK.lock();
    frames_locked(id, out)
}

/// [`frames`] without waiting: `None` when the depot is busy.
pub fn try_frames(id: u32, out: &mut [usize; MAX_FRAMES]) -> Option<usize> {
    DEPOT_LOCK.try_lock().then(|| frames_locked(id, out))
}

/// With the depot lock held: copy, then release it.
fn frames_locked(id: u32, out: &mut [usize; MAX_FRAMES]) -> usize {
    // SAFETY: the depot lock is held.
    let all = unsafe { &*FRAMES.0.get() };
    let at = (id as usize).wrapping_sub(1);
    let s = all.as_slice();
    let mut n = 0;
    if at < s.len() {
        n = s[at].min(MAX_FRAMES).min(s.len() - at - 1);
        out[..n].copy_from_slice(&s[at + 1..at + 1 + n]);
    }
    DEPOT_LOCK.unlock();
    n
}

fn fork_locks() -> impl Iterator<Item = &'static Mutex> {
    core::iter::once(&DEPOT_LOCK).chain(SHARD_LOCK.iter())
}

/// Every bit of [`fork_prepare`]'s mask.
const ALL_HELD: u32 = (1 << (SHARDS + 1)) - 1;

/// Fork prepare: freeze the tables (each lock within about 10 ms).
/// Returns a bit per lock taken.
pub fn fork_prepare() -> u32 {
    if !ON.load(Ordering::Relaxed) {
        return ALL_HELD;
    }
    let mut held = 0;
    for (i, l) in fork_locks().enumerate() {
        if super::take_for_fork(l) {
            held |= 1 << i;
        }
    }
    held
}

/// Fork parent: release what [`fork_prepare`] took.
pub fn fork_parent(held: u32) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    for (i, l) in fork_locks().enumerate() {
        if held & (1 << i) != 0 {
            l.unlock();
        }
    }
}

/// Fork child: fresh locks; tables not frozen are not trusted.
pub fn fork_child(held: u32) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    for l in fork_locks() {
        l.reset();
    }
    super::modules::reset_after_fork();
    if held != ALL_HELD {
        BROKEN.store(true, Ordering::Relaxed);
        disable();
    }
}
