//! Arenas (glibc's `malloc_state`): bins, top chunk, lock and accounting,
//! and the choice of arena for a thread.
//!
//! The main arena is a static and grows its heap with `brk` (falling back to
//! `mmap` when the break cannot move).  Other arenas live at the start of
//! their first 64 MiB-aligned heap (see `heap.rs`); a chunk finds its arena
//! through the `NON_MAIN_ARENA` bit and the heap header at the aligned base.
//!
//! Invariants:
//! - every field except `next`, `next_free` and `attached_threads` is
//!   touched only with `mutex` held (or single-threaded during init/fork);
//! - arenas are never freed: a thread's arena pointer stays valid forever;
//! - `next` forms a ring through all arenas, starting at the main arena,
//!   and is only extended (under `LIST_LOCK`);
//! - `next_free` lists arenas with no attached thread (under `FREE_LIST_LOCK`).

use core::ptr::{addr_of_mut, null_mut};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crate::bins::{BINMAPSIZE, NBINS, NFASTBINS};
use crate::chunk::{self, Chunk, ChunkPtr, ALIGN, ALIGN_MASK, MINSIZE, PREV_INUSE};
use crate::heap::{self, HeapInfo};
use crate::lock::{Held, Mutex};
use crate::options::PARAMS;
use crate::tls;

/// The main arena's heap may be made of several `brk`/`mmap` regions.
pub(crate) const NONCONTIGUOUS: u32 = 2;

#[repr(C)]
pub(crate) struct Arena {
    pub mutex: Mutex,
    pub flags: u32,
    pub have_fastchunks: AtomicBool,
    /// KAL has reclaim work for this arena (a hint; see `kal::on_arena`).
    /// Sits in padding: the arena's size and layout are unchanged.
    pub kal_pending: AtomicBool,
    /// Pushed without the lock by `free` (compare-and-swap), popped only
    /// with the lock held, so a pop never races another pop (no ABA).
    pub fastbins: [AtomicPtr<Chunk>; NFASTBINS],
    pub top: ChunkPtr,
    pub last_remainder: ChunkPtr,
    pub bins: [ChunkPtr; NBINS * 2 - 2],
    pub binmap: [u32; BINMAPSIZE],
    pub next: AtomicPtr<Arena>,
    pub next_free: *mut Arena,
    pub attached_threads: usize,
    /// Bytes obtained from the kernel for this arena's heap.  Atomic because
    /// `free` reads it without the lock in its sanity check of fast chunks.
    pub system_mem: AtomicUsize,
    pub max_system_mem: usize,
}

impl Arena {
    pub(crate) const fn new() -> Self {
        Arena {
            mutex: Mutex::new(),
            flags: 0,
            have_fastchunks: AtomicBool::new(false),
            kal_pending: AtomicBool::new(false),
            fastbins: [const { AtomicPtr::new(null_mut()) }; NFASTBINS],
            top: null_mut(),
            last_remainder: null_mut(),
            bins: [null_mut(); NBINS * 2 - 2],
            binmap: [0; BINMAPSIZE],
            next: AtomicPtr::new(null_mut()),
            next_free: null_mut(),
            attached_threads: 1,
            system_mem: AtomicUsize::new(0),
            max_system_mem: 0,
        }
    }

    /// Bin header `i` (1..NBINS) as a fake chunk whose `fd`/`bk` are the pair.
    #[inline(always)]
    pub(crate) fn bin_at(&mut self, i: usize) -> ChunkPtr {
        let pair = addr_of_mut!(self.bins[(i - 1) * 2]) as *mut u8;
        pair.wrapping_sub(2 * chunk::SIZE_SZ) as ChunkPtr
    }

    #[inline(always)]
    pub(crate) fn unsorted(&mut self) -> ChunkPtr {
        self.bin_at(1)
    }

    /// A fresh arena's top is its unsorted bin header with size 0, so the
    /// first allocation falls through to growing the heap.
    #[inline(always)]
    pub(crate) fn initial_top(&mut self) -> ChunkPtr {
        self.unsorted()
    }

    #[inline(always)]
    pub(crate) fn mark_bin(&mut self, i: usize) {
        self.binmap[crate::bins::idx2block(i)] |= crate::bins::idx2bit(i);
    }

    #[inline(always)]
    pub(crate) fn is_main(&self) -> bool {
        core::ptr::eq(self, main_arena())
    }

    #[inline(always)]
    pub(crate) fn contiguous(&self) -> bool {
        self.flags & NONCONTIGUOUS == 0
    }

    /// Size bit that chunks of this arena carry.
    #[inline(always)]
    pub(crate) fn chunk_flag(&self) -> usize {
        if self.is_main() {
            0
        } else {
            chunk::NON_MAIN_ARENA
        }
    }

    /// glibc's `malloc_init_state`: empty circular bins, top at the unsorted
    /// header, no fast chunks.
    pub(crate) fn init_state(&mut self) {
        for i in 1..NBINS {
            let b = self.bin_at(i);
            // SAFETY: `b` is a bin header of this arena; only fd/bk, which are
            // the pair inside `self.bins`, are written.
            unsafe {
                (*b).fd = b;
                (*b).bk = b;
            }
        }
        self.have_fastchunks.store(false, Ordering::Relaxed);
        self.top = self.initial_top();
    }

    /// Take the arena lock, unless the process has a single thread: then
    /// nobody can contend, and glibc skips the lock the same way.  The
    /// decision is made once, here, and travels in the returned token to
    /// [`Arena::unlock`]: glibc's manual asks for the same actions however
    /// `__libc_single_threaded` reads, so it is not read a second time.  A
    /// thread that holds every arena lock through fork's prepare handler
    /// passes (see `lock.rs`).
    #[inline(always)]
    pub(crate) fn lock(&self) -> Held {
        if single_threaded() {
            return Held::NOT_TAKEN;
        }
        self.mutex.lock_held()
    }

    #[inline(always)]
    pub(crate) fn unlock(&self, h: Held) {
        self.mutex.release(h);
    }

    #[inline(always)]
    pub(crate) fn system_mem(&self) -> usize {
        self.system_mem.load(Ordering::Relaxed)
    }

    /// Changes happen under the arena lock; the atomic only makes unlocked
    /// readers well defined.
    pub(crate) fn add_system_mem(&self, n: usize) {
        self.system_mem
            .store(self.system_mem() + n, Ordering::Relaxed);
    }

    pub(crate) fn sub_system_mem(&self, n: usize) {
        self.system_mem
            .store(self.system_mem() - n, Ordering::Relaxed);
    }

    pub(crate) fn note_system_mem(&mut self) {
        if self.system_mem() > self.max_system_mem {
            self.max_system_mem = self.system_mem();
        }
    }
}

extern "C" {
    /// glibc (>= 2.32) keeps this non-zero until the first thread is created.
    static __libc_single_threaded: core::ffi::c_char;
}

#[cfg(not(test))]
#[inline(always)]
pub(crate) fn single_threaded() -> bool {
    // SAFETY: a plain byte that libc only ever writes from the thread that
    // creates the process's second thread, before that thread exists.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(__libc_single_threaded)) != 0 }
}

#[cfg(test)]
std::thread_local! {
    /// Unit tests pretend, per thread, that the flag reads a given way.
    pub(crate) static SINGLE_THREADED_OVERRIDE: core::cell::Cell<Option<bool>> =
        const { core::cell::Cell::new(None) };
}

#[cfg(test)]
pub(crate) fn single_threaded() -> bool {
    SINGLE_THREADED_OVERRIDE
        .with(|o| o.get())
        .unwrap_or_else(|| {
            // SAFETY: as in the non-test version.
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!(__libc_single_threaded)) != 0 }
        })
}

// The main arena lives in the library's .bss; `ARENA_STORAGE` is accessed
// only through `main_arena()`.
#[link_section = ".data.hot.rmalloc"]
static mut MAIN_ARENA: Arena = Arena::new();

#[inline(always)]
pub(crate) fn main_arena() -> *mut Arena {
    // Taking the address of a static never dereferences it.
    addr_of_mut!(MAIN_ARENA)
}

/// Protects the arena ring's growth.
#[link_section = ".data.hot.rmalloc"]
pub(crate) static LIST_LOCK: Mutex = Mutex::new();
/// Protects `FREE_LIST`, `next_free` and `attached_threads`.
#[link_section = ".data.hot.rmalloc"]
pub(crate) static FREE_LIST_LOCK: Mutex = Mutex::new();
#[link_section = ".data.hot.rmalloc"]
static FREE_LIST: AtomicPtr<Arena> = AtomicPtr::new(null_mut());
#[link_section = ".data.hot.rmalloc"]
pub(crate) static NARENAS: AtomicUsize = AtomicUsize::new(1);
#[link_section = ".data.hot.rmalloc"]
static NARENAS_LIMIT: AtomicUsize = AtomicUsize::new(0);
#[link_section = ".data.hot.rmalloc"]
static NEXT_TO_USE: AtomicPtr<Arena> = AtomicPtr::new(null_mut());

/// Arena that owns heap chunk `p` (not for mmapped chunks).
///
/// # Safety
/// `p` is a heap chunk (not mmapped) of some arena.
#[inline(always)]
pub(crate) unsafe fn arena_for_chunk(p: ChunkPtr) -> *mut Arena {
    // SAFETY: a non-main chunk lies in a heap whose header, at the aligned
    // base `heap_for_ptr` computes, names its arena.
    unsafe {
        if chunk::is_main_arena(p) {
            main_arena()
        } else {
            (*heap::heap_for_ptr(p as usize)).ar_ptr
        }
    }
}

/// Iterate over all arenas, main first.
pub(crate) fn for_each_arena(mut f: impl FnMut(*mut Arena)) {
    let start = main_arena();
    let mut a = start;
    loop {
        f(a);
        // SAFETY: arenas are never freed and `next` is always a valid arena
        // once initialised (the main arena's ring is set up at init).
        a = unsafe { (*a).next.load(Ordering::Acquire) };
        if a.is_null() || a == start {
            break;
        }
    }
}

/// The calling thread's arena, locked (with the token to unlock it).
/// Picks one on first use.
///
/// # Safety
/// The allocator is initialised; the caller unlocks the arena with the
/// returned token once.
#[inline]
#[link_section = ".text.hot.rmalloc"]
pub(crate) unsafe fn arena_get(bytes: usize) -> (*mut Arena, Held) {
    // SAFETY: an ARENA slot above ARENA_EXITED is an arena this thread
    // attached to, and arenas are never freed.
    unsafe {
        let a = tls::get::<{ tls::ARENA }>();
        if a > tls::ARENA_EXITED {
            let a = a as *mut Arena;
            return (a, (*a).lock());
        }
        arena_get2(bytes, null_mut())
    }
}

/// After a failed allocation in `a` (locked with `h`), unlock it and return
/// another arena, locked, to retry in (glibc's `arena_get_retry`).
///
/// # Safety
/// `a` is an arena the caller locked with token `h`; the caller unlocks
/// the returned arena with the returned token once.
pub(crate) unsafe fn arena_get_retry(a: *mut Arena, h: Held, bytes: usize) -> (*mut Arena, Held) {
    // SAFETY: `a` is locked with `h` (contract); the main arena is a static.
    unsafe {
        (*a).unlock(h);
        if a != main_arena() {
            let m = main_arena();
            (m, (*m).lock())
        } else {
            arena_get2(bytes, a)
        }
    }
}

fn ncores() -> usize {
    let mut set = [0u64; 16];
    // SAFETY: the buffer is valid for its size; the raw syscall writes at
    // most that many bytes and returns how many it wrote.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            0,
            core::mem::size_of_val(&set),
            set.as_mut_ptr(),
        )
    };
    if n <= 0 {
        return 2;
    }
    let words = (n as usize) / 8;
    let c: u32 = set[..words.min(set.len())]
        .iter()
        .map(|w| w.count_ones())
        .sum();
    if c == 0 {
        2
    } else {
        c as usize
    }
}

/// # Safety
/// As `arena_get`; `avoid` is null or an arena.
#[cold]
#[link_section = ".text.hot.rmalloc"]
unsafe fn arena_get2(size: usize, avoid: *mut Arena) -> (*mut Arena, Held) {
    // SAFETY: the helpers' contracts are this one's (arenas and their ring are
    // never freed).
    unsafe {
        if tls::get::<{ tls::ARENA }>() == tls::ARENA_EXITED {
            return borrow_arena(avoid);
        }
        if let Some(a) = get_free_list() {
            return a;
        }
        let mut limit = NARENAS_LIMIT.load(Ordering::Relaxed);
        if limit == 0 {
            if PARAMS.arena_max() != 0 {
                limit = PARAMS.arena_max();
                NARENAS_LIMIT.store(limit, Ordering::Relaxed);
            } else if NARENAS.load(Ordering::Relaxed) > PARAMS.arena_test() {
                limit = 8 * ncores();
                NARENAS_LIMIT.store(limit, Ordering::Relaxed);
            }
        }
        loop {
            let n = NARENAS.load(Ordering::Relaxed);
            if n <= limit.wrapping_sub(1) {
                if NARENAS
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                let a = new_arena(size);
                if !a.0.is_null() {
                    return a;
                }
                NARENAS.fetch_sub(1, Ordering::Relaxed);
            }
            return reused_arena(avoid);
        }
    }
}

/// Drop the calling thread's attachment to `a` (caller holds FREE_LIST_LOCK).
///
/// # Safety
/// `a` is null or an arena the calling thread is attached to, and the
/// caller holds `FREE_LIST_LOCK`.
unsafe fn detach(a: *mut Arena) {
    // SAFETY: `attached_threads` is guarded by `FREE_LIST_LOCK`, held (contract).
    unsafe {
        if !a.is_null() {
            (*a).attached_threads -= 1;
        }
    }
}

/// An arena for an allocation after the thread's exit handler detached it
/// (a thread-specific-data destructor that runs later): used without
/// attaching, because nothing would detach the thread again and the arena
/// would never return to the free list.  Arenas are shared under their lock
/// anyway; this one only briefly has a user it does not count.
///
/// # Safety
/// `avoid` is null or an arena.
unsafe fn borrow_arena(avoid: *mut Arena) -> (*mut Arena, Held) {
    // SAFETY: the main arena and its ring successor are arenas, never freed.
    unsafe {
        let mut a = main_arena();
        if a == avoid {
            a = (*a).next.load(Ordering::Acquire);
        }
        (a, (*a).lock())
    }
}

/// # Safety
/// The calling thread's ARENA slot is null, exited or an arena.
unsafe fn get_free_list() -> Option<(*mut Arena, Held)> {
    // SAFETY: free-list arenas are live and are popped under `FREE_LIST_LOCK`;
    // `replaced` is detached under the same lock.
    unsafe {
        if FREE_LIST.load(Ordering::Relaxed).is_null() {
            return None;
        }
        let replaced = tls::get::<{ tls::ARENA }>() as *mut Arena;
        FREE_LIST_LOCK.lock();
        let a = FREE_LIST.load(Ordering::Relaxed);
        if !a.is_null() {
            FREE_LIST.store((*a).next_free, Ordering::Relaxed);
            (*a).attached_threads = 1;
            detach(replaced);
        }
        FREE_LIST_LOCK.unlock();
        if a.is_null() {
            return None;
        }
        tls::set::<{ tls::ARENA }>(a as usize);
        Some((a, (*a).lock()))
    }
}

/// # Safety
/// The allocator is initialised; a non-null result is locked for the
/// caller, who unlocks it with the returned token.
unsafe fn new_arena(size: usize) -> (*mut Arena, Held) {
    // SAFETY: `h` is a fresh heap of `h.size` bytes with room (`hdr`) for its
    // header, the arena and an aligned top chunk, all written in bounds;
    // the ring and free-list counts change under their locks.
    unsafe {
        let hdr = core::mem::size_of::<HeapInfo>() + core::mem::size_of::<Arena>() + ALIGN;
        let mut h = heap::new_heap(hdr, PARAMS.top_pad());
        if h.is_null() {
            h = heap::new_heap(hdr, 0);
            if h.is_null() {
                return (null_mut(), Held::NOT_TAKEN);
            }
        }
        let _ = size;
        let a = (h as *mut u8).add(core::mem::size_of::<HeapInfo>()) as *mut Arena;
        a.write(Arena::new());
        (*h).ar_ptr = a;
        (*a).init_state();
        (*a).attached_threads = 1;
        (*a).system_mem.store((*h).size, Ordering::Relaxed);
        (*a).max_system_mem = (*h).size;
        // The top chunk starts after the arena, aligned so its user pointer is.
        let mut top = (a as *mut u8).add(core::mem::size_of::<Arena>());
        let mis = (chunk::chunk2mem(top as ChunkPtr) as usize) & ALIGN_MASK;
        if mis > 0 {
            top = top.add(ALIGN - mis);
        }
        (*a).top = top as ChunkPtr;
        let top_size = (h as usize + (*h).size) - top as usize;
        debug_assert!(top_size >= MINSIZE);
        chunk::set_head(top as ChunkPtr, top_size | PREV_INUSE);

        let list = LIST_LOCK.lock_held();
        let m = main_arena();
        (*a).next
            .store((*m).next.load(Ordering::Relaxed), Ordering::Relaxed);
        (*m).next.store(a, Ordering::Release);
        LIST_LOCK.release(list);

        let replaced = tls::get::<{ tls::ARENA }>() as *mut Arena;
        tls::set::<{ tls::ARENA }>(a as usize);
        FREE_LIST_LOCK.lock();
        detach(replaced);
        FREE_LIST_LOCK.unlock();
        let held = (*a).lock();
        if !list.taken() && held.taken() {
            // This thread holds the fork locks (fork's prepare handler took the
            // list lock for it): the new arena stays locked with the others
            // until the parent or child handler, so no other thread can be
            // inside it when the process is copied.
            return (a, Held::NOT_TAKEN);
        }
        (a, held)
    }
}

/// # Safety
/// `avoid` is null or an arena.
unsafe fn reused_arena(avoid: *mut Arena) -> (*mut Arena, Held) {
    // SAFETY: every arena on the ring is live forever; attachment counts and the
    // free list change under `FREE_LIST_LOCK`.
    unsafe {
        let mut start = NEXT_TO_USE.load(Ordering::Relaxed);
        if start.is_null() {
            start = main_arena();
        }
        let mut result = start;
        let mut held = None;
        if single_threaded() {
            held = Some(Held::NOT_TAKEN);
        }
        while held.is_none() {
            if let Some(h) = (*result).mutex.try_lock_held() {
                held = Some(h);
                break;
            }
            result = (*result).next.load(Ordering::Acquire);
            if result == start {
                break;
            }
        }
        let held = match held {
            Some(h) => h,
            None => {
                if result == avoid {
                    result = (*result).next.load(Ordering::Acquire);
                }
                (*result).mutex.lock_held()
            }
        };
        FREE_LIST_LOCK.lock();
        detach(tls::get::<{ tls::ARENA }>() as *mut Arena);
        if (*result).attached_threads == 0 {
            remove_from_free_list(result);
        }
        (*result).attached_threads += 1;
        FREE_LIST_LOCK.unlock();
        tls::set::<{ tls::ARENA }>(result as usize);
        NEXT_TO_USE.store((*result).next.load(Ordering::Acquire), Ordering::Relaxed);
        (result, held)
    }
}

/// Unlink `a` from the free list (caller holds FREE_LIST_LOCK).
///
/// # Safety
/// `a` is an arena and the caller holds `FREE_LIST_LOCK`.
unsafe fn remove_from_free_list(a: *mut Arena) {
    // SAFETY: the free list links only arenas, and it is stable under
    // `FREE_LIST_LOCK` (contract).
    unsafe {
        let mut prev: *mut *mut Arena = FREE_LIST.as_ptr();
        while !(*prev).is_null() {
            if *prev == a {
                *prev = (*a).next_free;
                return;
            }
            prev = addr_of_mut!((**prev).next_free);
        }
    }
}

/// Thread exit: the thread no longer uses its arena; an arena nobody uses
/// goes on the free list for the next new thread.
///
/// # Safety
/// Called once per thread at its exit, with no arena lock held.
pub(crate) unsafe fn thread_detach() {
    // SAFETY: an ARENA slot above ARENA_EXITED is this thread's attached
    // arena; its count and the free list change under `FREE_LIST_LOCK`.
    unsafe {
        let a = tls::get::<{ tls::ARENA }>();
        tls::set::<{ tls::ARENA }>(tls::ARENA_EXITED);
        if a <= tls::ARENA_EXITED {
            return;
        }
        let a = a as *mut Arena;
        FREE_LIST_LOCK.lock();
        (*a).attached_threads -= 1;
        if (*a).attached_threads == 0 {
            (*a).next_free = FREE_LIST.load(Ordering::Relaxed);
            FREE_LIST.store(a, Ordering::Relaxed);
        }
        FREE_LIST_LOCK.unlock();
    }
}

/// Child side of `fork`: only the forking thread survives.  Every lock is
/// reset, and every arena but that thread's own goes on the free list.
///
/// # Safety
/// Only in the child right after `fork`, which has just this thread.
pub(crate) unsafe fn reinit_after_fork() {
    // SAFETY: the child is single-threaded, so resetting the locks and writing
    // every arena's list fields races with nothing.
    unsafe {
        let mine = tls::get::<{ tls::ARENA }>() as *mut Arena;
        FREE_LIST_LOCK.reset();
        LIST_LOCK.reset();
        FREE_LIST.store(null_mut(), Ordering::Relaxed);
        for_each_arena(|a| {
            (*a).mutex.reset();
            if a == mine {
                (*a).attached_threads = 1;
            } else {
                (*a).attached_threads = 0;
                (*a).next_free = FREE_LIST.load(Ordering::Relaxed);
                FREE_LIST.store(a, Ordering::Relaxed);
            }
        });
    }
}
