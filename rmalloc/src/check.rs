//! Heap consistency checking: the invariants of `chunk.rs`, `bins.rs` and
//! `tcache.rs`, verified over every arena and the calling thread's cache
//! (other threads' caches are out of reach: they live in their TLS).  Used
//! by tests after every step and exported as `rmalloc_check_heap()` for
//! programs and tools.
//!
//! A check never aborts and never writes to the heap; it reports the first
//! problem found.

use core::fmt::Write;

use crate::arena::{self, Arena};
use crate::bins::{self, NBINS, NFASTBINS};
use crate::chunk::{self, reveal_ptr, ChunkPtr, MINSIZE};
use crate::fmt::FixedBuf;
use crate::options::PARAMS;
use crate::tcache::{self, Entry, Tcache, TCACHE_MAX_BINS};
use crate::tls;
use crate::view::Live;
use crate::walk::{walk_arena, Kind};

pub(crate) type Problem = FixedBuf<160>;

macro_rules! fail {
    ($($arg:tt)*) => {{
        let mut b = Problem::new();
        let _ = write!(b, $($arg)*);
        return Err(b);
    }};
}

/// The calling thread's cache, if it has one.
fn own_tcache() -> *mut Tcache {
    let t = tls::get::<{ tls::TCACHE }>();
    if t > tls::TCACHE_DISABLED {
        t as *mut Tcache
    } else {
        core::ptr::null_mut()
    }
}

/// Follow a cache list link.
///
/// # Safety
/// The caller holds `av`'s lock (for `check_arena`); cache lists are the
/// calling thread's.  The heap is only read.
unsafe fn next_entry(e: *mut Entry) -> *mut Entry {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        reveal_ptr(
            core::ptr::addr_of!((*e).next) as *const u8,
            (*e).next as *mut u8,
        ) as *mut Entry
    }
}

/// Whether free chunk `p` (of chunk size `size`) is also in the calling
/// thread's cache.  Only called on lists that passed `check_tcache`, so the
/// walk terminates.
///
/// # Safety
/// The caller holds `av`'s lock (for `check_arena`); cache lists are the
/// calling thread's.  The heap is only read.
unsafe fn cached(p: ChunkPtr, size: usize) -> bool {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let tc = own_tcache();
        let idx = tcache::csize2tidx(size);
        if tc.is_null() || size < MINSIZE || idx >= TCACHE_MAX_BINS {
            return false;
        }
        let mem = chunk::chunk2mem(p) as *mut Entry;
        let mut e = (*tc).entries[idx];
        while !e.is_null() {
            if e == mem {
                return true;
            }
            e = next_entry(e);
        }
        false
    }
}

/// The calling thread's cache: each list is as long as its count (at most
/// the configured count), its entries are aligned, carry the cache key, and
/// are in-use heap chunks of the list's size class.  Chunks that are also in
/// an arena's bins are caught by `check_arena`.
///
/// # Safety
/// The caller holds `av`'s lock (for `check_arena`); cache lists are the
/// calling thread's.  The heap is only read.
pub(crate) unsafe fn check_tcache() -> Result<(), Problem> {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let tc = own_tcache();
        if tc.is_null() {
            return Ok(());
        }
        let limit = PARAMS.tcache_count();
        for i in 0..TCACHE_MAX_BINS {
            let count = (*tc).counts[i] as usize;
            let mut n = 0usize;
            let mut e = (*tc).entries[i];
            while !e.is_null() {
                if n >= count || n >= limit {
                    fail!("tcache bin {} holds more than its count {}", i, count);
                }
                if !chunk::aligned_ok(e as usize) {
                    fail!("tcache bin {} entry {:p} misaligned", i, e);
                }
                if (*e).key != tcache::key() {
                    fail!("tcache bin {} entry {:p} lacks the cache key", i, e);
                }
                let p = chunk::mem2chunk(e as *mut u8);
                if chunk::is_mmapped(p) {
                    fail!("tcache bin {} holds mmapped chunk {:p}", i, p);
                }
                let size = chunk::size(p);
                if size < MINSIZE || tcache::csize2tidx(size) != i {
                    fail!("tcache bin {} holds chunk {:p} of size {}", i, p, size);
                }
                if !chunk::inuse(p) {
                    fail!("tcache bin {} chunk {:p} marked free", i, p);
                }
                n += 1;
                e = next_entry(e);
            }
            if n != count {
                fail!("tcache bin {} has {} entries, count says {}", i, n, count);
            }
            // `malloc`'s fast path relies on it (see `tcache.rs`).
            if count != 0 && i >= PARAMS.tcache_bins() {
                fail!("tcache bin {} holds chunks beyond tcache_bins", i);
            }
        }
        Ok(())
    }
}

/// Check one arena.  Caller holds its lock, and has checked its own cache
/// with `check_tcache` (its lists are walked here).
///
/// # Safety
/// The caller holds `av`'s lock (for `check_arena`); cache lists are the
/// calling thread's.  The heap is only read.
pub(crate) unsafe fn check_arena(av: *mut Arena) -> Result<(), Problem> {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let mut free_in_heap = 0usize;
        // End of the previous chunk if it was free (regions are not adjacent,
        // so a free chunk that ends one region says nothing about the next).
        let mut prev_free_end = 0usize;
        let mut problem: Option<Problem> = None;
        let flag = (*av).chunk_flag();
        // SAFETY: the arena lock is held (function contract), so its
        // chunks are mapped and stable while the walk reads them.
        let walked = walk_arena(&mut Live::new(), av, &mut |p, size, kind| {
            if problem.is_some() {
                return;
            }
            let p = p as ChunkPtr;
            let mut b = Problem::new();
            if !chunk::aligned_ok(p as usize) {
                let _ = write!(b, "chunk {:p} misaligned", p);
            } else if kind != Kind::Top
                && chunk::size_nomask(p) & chunk::IS_MMAPPED != 0
                && !crate::kal::in_probation(p)
            {
                let _ = write!(b, "heap chunk {:p} marked mmapped", p);
            } else if kind == Kind::Free {
                if prev_free_end == p as usize {
                    let _ = write!(b, "two adjacent free chunks at {:p}", p);
                } else if chunk::prev_size(chunk::at_offset(p, size)) != size {
                    let _ = write!(
                        b,
                        "free chunk {:p} foot {} != size {}",
                        p,
                        chunk::prev_size(chunk::at_offset(p, size)),
                        size
                    );
                }
                free_in_heap += 1;
            } else if kind == Kind::InUse && flag != 0 && chunk::is_main_arena(p) {
                let _ = write!(b, "in-use chunk {:p} lacks NON_MAIN_ARENA", p);
            }
            if b.len > 0 {
                problem = Some(b);
            }
            prev_free_end = if kind == Kind::Free {
                p as usize + size
            } else {
                0
            };
        });
        if let Some(b) = problem {
            return Err(b);
        }
        if let Err(e) = walked {
            fail!("heap walk broken at {:#x}: {}", e.at, e.why);
        }

        // Bins: well-linked, holding free chunks of the right sizes.
        let mut in_bins = 0usize;
        for i in 1..NBINS {
            let bin = (*av).bin_at(i);
            let mut p = (*bin).fd;
            let mut guard = 0usize;
            while p != bin {
                if (*(*p).fd).bk != p || (*(*p).bk).fd != p {
                    fail!("bin {} list broken at {:p}", i, p);
                }
                let size = chunk::size(p);
                if size < MINSIZE || chunk::inuse(p) {
                    fail!("bin {} holds in-use or tiny chunk {:p}", i, p);
                }
                if i > 1 && bins::bin_index(size) != i {
                    fail!("chunk {:p} of size {} in wrong bin {}", p, size, i);
                }
                if i > 1 && (*av).binmap[bins::idx2block(i)] & bins::idx2bit(i) == 0 {
                    fail!("bin {} non-empty but unmarked in binmap", i);
                }
                if cached(p, size) {
                    fail!("chunk {:p} is both in bin {} and in the tcache", p, i);
                }
                in_bins += 1;
                guard += 1;
                if guard > 1 << 26 {
                    fail!("bin {} list does not terminate", i);
                }
                p = (*p).fd;
            }
        }
        // Fastbins: right sizes, chunks look in use.
        for i in 0..NFASTBINS {
            let mut p: ChunkPtr = (*av).fastbins[i].load(core::sync::atomic::Ordering::Acquire);
            let mut guard = 0usize;
            while !p.is_null() {
                if !chunk::aligned_ok(p as usize) || bins::fastbin_index(chunk::size(p)) != i {
                    fail!("fastbin {} holds bad chunk {:p}", i, p);
                }
                if !chunk::inuse(p) {
                    fail!("fastbin chunk {:p} marked free", p);
                }
                if cached(p, chunk::size(p)) {
                    fail!("chunk {:p} is both in fastbin {} and in the tcache", p, i);
                }
                guard += 1;
                if guard > 1 << 26 {
                    fail!("fastbin {} does not terminate", i);
                }
                p = reveal_ptr(
                    core::ptr::addr_of!((*p).fd) as *const u8,
                    (*p).fd as *mut u8,
                ) as ChunkPtr;
            }
        }
        if walked.unwrap_or(false) && in_bins != free_in_heap {
            fail!(
                "{} free chunks in the heap but {} in bins",
                free_in_heap,
                in_bins
            );
        }
        let top = (*av).top;
        if top != (*av).initial_top() && (chunk::size(top) < MINSIZE || !chunk::prev_inuse(top)) {
            fail!("top chunk {:p} malformed (size {})", top, chunk::size(top));
        }
        Ok(())
    }
}

/// Check every arena, locking each in turn.
pub(crate) fn check_all() -> Result<(), Problem> {
    crate::init::ensure();
    // SAFETY: the cache belongs to this thread; nothing else changes it.
    let mut result = unsafe { check_tcache() };
    arena::for_each_arena(|a| {
        if result.is_err() {
            return;
        }
        // SAFETY: arenas are valid forever; the lock is held for the check.
        unsafe {
            let held = (*a).lock();
            result = check_arena(a);
            (*a).unlock(held);
        }
    });
    result
}
