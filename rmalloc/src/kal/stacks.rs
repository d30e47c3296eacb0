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
//! Recording happens only while KAL is on and `sites` is not `off`, on the
//! C entry points ([`on_alloc`], [`on_free`] behind one flag test, see
//! `exports.rs`), after the allocator has returned (no arena lock held), so
//! the unwinder may call into the loader.  With `sites=sample:N` a thread
//! records about one allocation per N bytes it allocates (a countdown in
//! the allocator's TLS block), and frees consult a counting filter first,
//! so the frees of unrecorded chunks take no lock.
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
pub static ON: AtomicBool = AtomicBool::new(false);
/// Bytes between samples (0: every allocation).
static SAMPLE: AtomicU64 = AtomicU64::new(0);
/// Frames kept per stack.
static CONTEXT: AtomicUsize = AtomicUsize::new(30);
static FAST: AtomicBool = AtomicBool::new(false);
/// The fork child could not freeze the tables: their contents are not
/// trusted there.
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
    ON.store(true, Ordering::Release);
    crate::options::PARAMS.divert_fast_paths();
}

/// A chunk was allocated at `mem`: record its stack (always, or when the
/// thread's sampling countdown, counted in usable bytes, runs out).  The
/// size is read from the chunk so the entry points need not keep it.
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
        let size = unsafe { crate::chunk::size(crate::chunk::mem2chunk(mem)) };
        let left = tls::get::<{ tls::SITE }>();
        if left > size {
            tls::set::<{ tls::SITE }>(left - size);
            return;
        }
        tls::set::<{ tls::SITE }>(rate as usize);
    }
    record(mem as usize);
}

/// Unwind and store the stack of the chunk at `mem`.
#[cold]
#[inline(never)]
fn record(mem: usize) {
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
    let Some(id) = intern(&frames[..n]) else {
        return;
    };
    let s = shard(mem);
    SHARD_LOCK[s].lock();
    // SAFETY: the shard's lock is held.
    let map = unsafe { &mut *SHARD[s].0.get() };
    let fresh = map.get(mem).is_none();
    let ok = map.insert(mem, id as usize);
    SHARD_LOCK[s].unlock();
    if ok && fresh {
        FILTER_N[slot(mem)].fetch_add(1, Ordering::Relaxed);
    }
    RECORDED.fetch_add(1, Ordering::Relaxed);
}

/// The program is about to free or reallocate `mem`: forget its stack.
/// While sampling, a counting filter answers for most chunks without a
/// lock.
///
/// # Safety
/// `mem` is null or a pointer the program passes to `free`/`realloc`.
#[inline(always)]
pub unsafe fn on_free(mem: *mut u8) {
    let mem = mem as usize;
    if mem == 0
        || SAMPLE.load(Ordering::Relaxed) != 0 && FILTER_N[slot(mem)].load(Ordering::Relaxed) == 0
    {
        return;
    }
    forget_unless_held(mem);
}

/// A chunk KAL holds in probation keeps its entry, so the false-reclaim
/// report can name its site (`kal::claim_freeing` forgets it after).
#[cold]
#[inline(never)]
fn forget_unless_held(mem: usize) {
    if super::reclaim::any_in_probation()
        && super::reclaim::holds(mem.wrapping_sub(crate::chunk::HDR) as crate::chunk::ChunkPtr)
    {
        return;
    }
    forget(mem);
}

/// Drop `mem`'s entry, if any.
pub fn forget(mem: usize) {
    let s = shard(mem);
    SHARD_LOCK[s].lock();
    // SAFETY: the shard's lock is held.
    let gone = unsafe { (*SHARD[s].0.get()).remove(mem) }.is_some();
    SHARD_LOCK[s].unlock();
    if gone {
        FILTER_N[slot(mem)].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The stack id of the chunk at user address `mem`, if recorded.
pub fn site_of(mem: usize) -> Option<u32> {
    if !ON.load(Ordering::Relaxed) || BROKEN.load(Ordering::Relaxed) {
        return None;
    }
    let s = shard(mem);
    SHARD_LOCK[s].lock();
    // SAFETY: the shard's lock is held.
    let v = unsafe { (*SHARD[s].0.get()).get(mem) };
    SHARD_LOCK[s].unlock();
    v.map(|v| v as u32)
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
        ON.store(false, Ordering::Relaxed);
    }
}
