//! Allocator parameters: [`Params`], `mallopt`, and the process-wide entry
//! points that fill them from the environment, with glibc 2.36's semantics
//! (x86_64).  Parsing the environment (`GLIBC_TUNABLES=glibc.malloc.*`, the
//! `MALLOC_*_` aliases, AT_SECURE, `environ` or `/proc/self/environ`) is
//! the private `tunables` module's job; this module applies what it finds.
//!
//! # What this module owns
//! * [`Params`]: every run-time parameter of the allocator (glibc's `mp_`
//!   fields, `perturb_byte` and `global_max_fast`), one atomic each.  The
//!   allocator reads them with `Relaxed` loads on its fast paths; writers are
//!   `mallopt` (under the main arena lock, held by the caller), the one-time
//!   environment scan, and the dynamic mmap-threshold update in `free`.  As in
//!   glibc, each parameter is independent; there is no cross-field invariant
//!   that a reader could observe half-updated, apart from the (benign, also
//!   racy in glibc) pair `mmap_threshold`/`trim_threshold`.
//! * [`PARAMS`]: the process-wide instance, const-initialised to glibc's
//!   defaults so it is valid before any initialisation code has run.
//! * The `RMALLOC_EXIT_STATS` path, copied once into a fixed buffer inside
//!   [`Params`] (write-once; see [`Params::exit_stats_path`]).
//! * The public entry points [`mallopt`], [`init_from_env`], [`apply_env`],
//!   [`exit_stats_path`] and the `M_*` parameter numbers.
//!
//! Nothing here allocates, takes a lock, or uses std outside `cfg(test)`.
//! The size-class constants (`SIZE_SZ`, `MINSIZE`, `MAX_FAST_SIZE`,
//! `TCACHE_MAX_BINS`, ...) are the ones of `chunk`, `bins` and `tcache`.
//!
//! # Semantics reproduced (glibc 2.36, checked against the Debian 2.36 on the
//! development machine as well as the sources)
//! * Defaults (`malloc/malloc.c` `mp_` initialiser and `malloc_init_state`):
//!   trim threshold 128 KiB, top pad 128 KiB (`DEFAULT_TOP_PAD` from the
//!   generic `malloc-machine.h`; confirmed: a fresh glibc heap is 132 KiB and
//!   shrinks to 4 KiB with `glibc.malloc.top_pad=0`), mmap threshold 128 KiB,
//!   mmap max 65536, arena_test 8 (`NARENAS_FROM_NCORES (1)` on 64-bit),
//!   arena_max 0 (unset), perturb 0, `global_max_fast` =
//!   `set_max_fast (DEFAULT_MXFAST = 64 * SIZE_SZ / 4)` = 128, tcache 7
//!   entries x 64 bins (max request 1032 bytes), tcache_unsorted_limit 0.
//! * `mallopt` (`__libc_mallopt` and the `do_set_*` helpers): the `int` value
//!   is converted to `size_t` (negative values wrap) for the size parameters;
//!   `M_MXFAST` fails (returns 0) above `MAX_FAST_SIZE` (160);
//!   `M_TRIM_THRESHOLD`, `M_TOP_PAD`, `M_MMAP_THRESHOLD` and `M_MMAP_MAX`
//!   always succeed and disable the dynamic threshold; there is no upper
//!   bound on `M_MMAP_THRESHOLD` in 2.36 (Debian's 2.36 returns 1 for 64 MiB
//!   and for -1); `M_ARENA_TEST`/`M_ARENA_MAX` with a value <= 0 are
//!   ignored but return 1; `M_PERTURB` stores the whole `int`;
//!   `M_CHECK_ACTION` is accepted and ignored (since 2.34 checking lives in
//!   `libc_malloc_debug.so`); unknown parameters return 1.
//! * `ptmalloc_init` (`malloc/arena.c`) calls the same `do_set_*` helpers as
//!   `mallopt` for each tunable the environment set, in the order top_pad,
//!   perturb, mmap_threshold, trim_threshold, mmap_max, arena_max,
//!   arena_test, tcache_max, tcache_count, tcache_unsorted_limit, mxfast —
//!   so setting top_pad, mmap_threshold, trim_threshold or mmap_max through
//!   the environment disables the dynamic threshold, tcache_max above 1032,
//!   tcache_count above 65535 and mxfast above 160 are ignored.
//!   `glibc.malloc.check`/`MALLOC_CHECK_` is parsed and exposed as
//!   [`Params::check_action`] but libc.so itself never acts on it.
//!   Like glibc, the environment is read once.

use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering::*};

use crate::bins::MAX_FAST_SIZE;
use crate::bins::{csize2tidx, tidx2usize, TCACHE_MAX_BINS};
use crate::chunk::{request2size, ALIGN_MASK, MINSIZE, SIZE_SZ};
use crate::tunables::{self, Tunables, T};

// ---------------------------------------------------------------------------
// glibc constants (x86_64, SIZE_SZ = 8, MALLOC_ALIGNMENT = 16).
// ---------------------------------------------------------------------------

/// `mallopt` parameter numbers, as in glibc's `malloc/malloc.h`.
pub const M_MXFAST: i32 = 1;
pub const M_NLBLKS: i32 = 2;
pub const M_GRAIN: i32 = 3;
pub const M_KEEP: i32 = 4;
pub const M_TRIM_THRESHOLD: i32 = -1;
pub const M_TOP_PAD: i32 = -2;
pub const M_MMAP_THRESHOLD: i32 = -3;
pub const M_MMAP_MAX: i32 = -4;
pub const M_CHECK_ACTION: i32 = -5;
pub const M_PERTURB: i32 = -6;
pub const M_ARENA_TEST: i32 = -7;
pub const M_ARENA_MAX: i32 = -8;

/// `DEFAULT_MXFAST`: default fastbin request bound (bytes).
pub const DEFAULT_MXFAST: usize = 64 * SIZE_SZ / 4;
pub const DEFAULT_TRIM_THRESHOLD: usize = 128 * 1024;
pub const DEFAULT_TOP_PAD: usize = 128 * 1024;
pub const DEFAULT_MMAP_THRESHOLD_MIN: usize = 128 * 1024;
pub const DEFAULT_MMAP_THRESHOLD: usize = DEFAULT_MMAP_THRESHOLD_MIN;
/// Upper bound of the dynamic mmap threshold: `4 MiB * sizeof(long)`.
pub const DEFAULT_MMAP_THRESHOLD_MAX: usize = 4 * 1024 * 1024 * core::mem::size_of::<usize>();
pub const DEFAULT_MMAP_MAX: usize = 65536;
/// `NARENAS_FROM_NCORES (1)` on a 64-bit target.
pub const DEFAULT_ARENA_TEST: usize = 8;
pub const TCACHE_FILL_COUNT: usize = 7;
/// Tcache counters are `uint16_t` since glibc 2.30.
pub const MAX_TCACHE_COUNT: usize = u16::MAX as usize;
/// `tidx2usize (TCACHE_MAX_BINS - 1)`: largest request served by the tcache.
pub const MAX_TCACHE_SIZE: usize = tidx2usize(TCACHE_MAX_BINS - 1);

/// Longest `RMALLOC_EXIT_STATS` path kept (bytes, without the NUL).
pub const EXIT_STATS_PATH_MAX: usize = 4095;

/// glibc's `set_max_fast` formula: the `global_max_fast` value for `s`.
pub const fn max_fast_for(s: usize) -> usize {
    if s == 0 {
        MINSIZE / 2
    } else {
        (s + SIZE_SZ) & !ALIGN_MASK
    }
}

// ---------------------------------------------------------------------------
// Params
// ---------------------------------------------------------------------------

/// Defines `Relaxed` readers named after the fields they load.
macro_rules! readers {
    ($($(#[$attr:meta])* $field:ident: $ty:ty;)*) => {$(
        $(#[$attr])*
        #[inline]
        pub fn $field(&self) -> $ty {
            self.$field.load(Relaxed)
        }
    )*};
}

/// Defines glibc's `do_set_*` helpers that store the value and succeed;
/// `and flag` also sets the boolean field `flag`.
macro_rules! setters {
    ($($(#[$attr:meta])* $name:ident($field:ident: $ty:ty) $(and $flag:ident)?;)*) => {$(
        $(#[$attr])*
        pub fn $name(&self, value: $ty) -> bool {
            self.$field.store(value, Relaxed);
            $(self.$flag.store(true, Relaxed);)?
            true
        }
    )*};
}

/// A `do_set_*` helper applied to a tunable's value.
type Setter = fn(&Params, u64) -> bool;

const EXIT_EMPTY: u8 = 0;
const EXIT_WRITING: u8 = 1;
const EXIT_READY: u8 = 2;

/// The allocator's tunable parameters.  See the module documentation.
pub struct Params {
    trim_threshold: AtomicUsize,
    top_pad: AtomicUsize,
    mmap_threshold: AtomicUsize,
    /// glibc's `n_mmaps_max` is an `int`; `mallopt` may store a negative.
    mmap_max: AtomicI32,
    no_dyn_threshold: AtomicBool,
    arena_test: AtomicUsize,
    arena_max: AtomicUsize,
    /// glibc's `perturb_byte` is an `int`; `mallopt` may store any value.
    perturb: AtomicI32,
    max_fast: AtomicUsize,
    tcache_max_bytes: AtomicUsize,
    tcache_bins: AtomicUsize,
    /// The tcache bins the `free` fast path uses: `tcache_bins`, or 0 while
    /// KAL records every allocation's stack (see `divert_fast_paths`).
    fast_bins: AtomicUsize,
    fast_diverted: AtomicBool,
    tcache_count: AtomicUsize,
    tcache_unsorted_limit: AtomicUsize,
    check_action: AtomicI32,
    exit_stats_state: AtomicU8,
    exit_stats_len: AtomicUsize,
    /// Written once (state EMPTY -> WRITING -> READY), read only when READY.
    exit_stats_buf: UnsafeCell<[u8; EXIT_STATS_PATH_MAX + 1]>,
}

// SAFETY: all fields except `exit_stats_buf` are atomics.  The buffer is
// written only by the single thread that won the EMPTY -> WRITING
// compare-exchange on `exit_stats_state`, and read only after observing
// READY with Acquire ordering (published with Release after the write), and
// never written again afterwards; so no data race is possible.
unsafe impl Sync for Params {}

/// The process-wide parameters, valid (glibc defaults) from the first call.
#[link_section = ".data.hot.rmalloc"]
pub static PARAMS: Params = Params::new();

impl Default for Params {
    fn default() -> Self {
        Self::new()
    }
}

impl Params {
    /// A parameter set holding glibc 2.36's x86_64 defaults.
    pub const fn new() -> Self {
        Params {
            trim_threshold: AtomicUsize::new(DEFAULT_TRIM_THRESHOLD),
            top_pad: AtomicUsize::new(DEFAULT_TOP_PAD),
            mmap_threshold: AtomicUsize::new(DEFAULT_MMAP_THRESHOLD),
            mmap_max: AtomicI32::new(DEFAULT_MMAP_MAX as i32),
            no_dyn_threshold: AtomicBool::new(false),
            arena_test: AtomicUsize::new(DEFAULT_ARENA_TEST),
            arena_max: AtomicUsize::new(0),
            perturb: AtomicI32::new(0),
            max_fast: AtomicUsize::new(max_fast_for(DEFAULT_MXFAST)),
            tcache_max_bytes: AtomicUsize::new(MAX_TCACHE_SIZE),
            tcache_bins: AtomicUsize::new(TCACHE_MAX_BINS),
            fast_bins: AtomicUsize::new(TCACHE_MAX_BINS),
            fast_diverted: AtomicBool::new(false),
            tcache_count: AtomicUsize::new(TCACHE_FILL_COUNT),
            tcache_unsorted_limit: AtomicUsize::new(0),
            check_action: AtomicI32::new(0),
            exit_stats_state: AtomicU8::new(EXIT_EMPTY),
            exit_stats_len: AtomicUsize::new(0),
            exit_stats_buf: UnsafeCell::new([0; EXIT_STATS_PATH_MAX + 1]),
        }
    }

    // ----- readers (cheap Relaxed loads) -----

    readers! {
        trim_threshold: usize;
        top_pad: usize;
        mmap_threshold: usize;
        /// True once the user fixed any of the threshold parameters.
        no_dyn_threshold: bool;
        arena_test: usize;
        /// 0 means unset (the arena limit is then derived from the CPU count).
        arena_max: usize;
        /// glibc's `global_max_fast`: chunks of at most this size use fastbins.
        max_fast: usize;
        /// Maximum entries per tcache bin.
        tcache_count: usize;
        /// Number of tcache bins in use (`mp_.tcache_bins`, at most 64).
        tcache_bins: usize;
        /// Tcache bins the inlined `free` fast path may use.
        fast_bins: usize;
        /// Largest request size served from the tcache (`mp_.tcache_max_bytes`).
        tcache_max_bytes: usize;
        /// 0 = no limit.
        tcache_unsorted_limit: usize;
        /// The `glibc.malloc.check` / `MALLOC_CHECK_` value (0..=3, default 0).
        /// glibc 2.36's libc.so ignores it (only `libc_malloc_debug.so` reads it).
        check_action: i32;
    }

    /// Maximum number of simultaneous mmapped chunks.  A negative value set
    /// through `mallopt` (glibc stores the `int`) reads as 0: in both cases
    /// `n_mmaps < n_mmaps_max` is never true, so mmap is disabled.
    #[inline]
    pub fn mmap_max(&self) -> usize {
        let v = self.mmap_max.load(Relaxed);
        if v < 0 {
            0
        } else {
            v as usize
        }
    }
    /// The perturb byte (low byte of glibc's `perturb_byte`); 0 = off.
    /// Only `mallopt(M_PERTURB, v)` with `v` a non-zero multiple of 256 makes
    /// this 0 while glibc would still perturb; use [`Self::perturb_enabled`]
    /// for glibc's exact on/off test.
    #[inline]
    pub fn perturb_byte(&self) -> u8 {
        self.perturb.load(Relaxed) as u8
    }
    /// glibc's `if (perturb_byte)` test (on the full `int`).
    #[inline]
    pub fn perturb_enabled(&self) -> bool {
        self.perturb.load(Relaxed) != 0
    }

    /// The `RMALLOC_EXIT_STATS` path, if one was given.
    pub fn exit_stats_path(&self) -> Option<&CStr> {
        if self.exit_stats_state.load(Acquire) != EXIT_READY {
            return None;
        }
        let len = self.exit_stats_len.load(Relaxed);
        // SAFETY: READY was published (Release) after the buffer and length
        // were written, and the buffer is never written again, so this shared
        // read cannot race with a write (see `unsafe impl Sync`).
        let buf: &[u8; EXIT_STATS_PATH_MAX + 1] = unsafe { &*self.exit_stats_buf.get() };
        CStr::from_bytes_with_nul(&buf[..=len]).ok()
    }

    /// Store the exit-stats path (first successful call wins).  Empty,
    /// over-long (> 4095 bytes) or NUL-containing values are ignored.
    fn set_exit_stats_path(&self, path: &[u8]) {
        if path.is_empty() || path.len() > EXIT_STATS_PATH_MAX || path.contains(&0) {
            return;
        }
        if self
            .exit_stats_state
            .compare_exchange(EXIT_EMPTY, EXIT_WRITING, Acquire, Relaxed)
            .is_err()
        {
            return;
        }
        // SAFETY: winning the EMPTY -> WRITING exchange makes this thread the
        // only writer ever, and readers only look at the buffer after READY.
        let buf: &mut [u8; EXIT_STATS_PATH_MAX + 1] = unsafe { &mut *self.exit_stats_buf.get() };
        buf[..path.len()].copy_from_slice(path);
        buf[path.len()] = 0;
        self.exit_stats_len.store(path.len(), Relaxed);
        self.exit_stats_state.store(EXIT_READY, Release);
    }

    // ----- glibc's do_set_* helpers -----

    setters! {
        /// `do_set_trim_threshold`.
        set_trim_threshold(trim_threshold: usize) and no_dyn_threshold;
        /// `do_set_top_pad`.
        set_top_pad(top_pad: usize) and no_dyn_threshold;
        /// `do_set_mmap_threshold` (no upper bound in 2.36).
        set_mmap_threshold(mmap_threshold: usize) and no_dyn_threshold;
        /// `do_set_mmaps_max`.
        set_mmap_max(mmap_max: i32) and no_dyn_threshold;
        /// `do_set_perturb_byte`.
        set_perturb(perturb: i32);
        /// `do_set_arena_test`.
        set_arena_test(arena_test: usize);
        /// `do_set_arena_max`.
        set_arena_max(arena_max: usize);
        /// `do_set_tcache_unsorted_limit`.
        set_tcache_unsorted_limit(tcache_unsorted_limit: usize);
    }

    /// `do_set_tcache_max`: `value` is a request size in bytes.
    pub(crate) fn set_tcache_max(&self, value: usize) -> bool {
        if value > MAX_TCACHE_SIZE {
            return false;
        }
        self.tcache_max_bytes.store(value, Relaxed);
        let bins = csize2tidx(request2size(value)) + 1;
        self.tcache_bins.store(bins, Relaxed);
        if !self.fast_diverted.load(Relaxed) {
            self.fast_bins.store(bins, Relaxed);
        }
        true
    }

    /// Send every `free` through the out-of-line path (which still uses the
    /// thread cache), so KAL can forget the stack of every chunk
    /// (`sites=all`) while the inlined fast path, which compares against
    /// `fast_bins` as it would against `tcache_bins`, stays as it is.
    /// (`malloc` records through its site countdown: `api::malloc_sampled`.)
    pub fn divert_fast_paths(&self) {
        self.fast_diverted.store(true, Relaxed);
        self.fast_bins.store(0, Relaxed);
    }

    /// Undo [`Params::divert_fast_paths`] once no stack will be forgotten
    /// again (a fork child whose side table is not trusted).
    pub fn restore_fast_paths(&self) {
        self.fast_diverted.store(false, Relaxed);
        self.fast_bins.store(self.tcache_bins(), Relaxed);
    }
    /// `do_set_tcache_count`.
    pub fn set_tcache_count(&self, value: usize) -> bool {
        if value > MAX_TCACHE_COUNT {
            return false;
        }
        self.tcache_count.store(value, Relaxed);
        true
    }
    /// `do_set_mxfast`: the caller must have consolidated the fastbins.
    pub fn set_mxfast(&self, value: usize) -> bool {
        if value > MAX_FAST_SIZE {
            return false;
        }
        self.max_fast.store(max_fast_for(value), Relaxed);
        true
    }

    /// glibc's dynamic threshold update in `free` of an mmapped chunk.
    ///
    /// `chunk_size` is the chunk's size field as stored in the header (flag
    /// bits included, like glibc's `chunksize_nomask`); the comparison uses
    /// it as is and the new thresholds use it with the flag bits cleared,
    /// exactly as glibc.  Nothing happens once the user fixed a threshold
    /// parameter, or for chunks above `DEFAULT_MMAP_THRESHOLD_MAX`.
    #[inline]
    pub fn note_mmapped_free(&self, chunk_size: usize) {
        if !self.no_dyn_threshold()
            && chunk_size > self.mmap_threshold()
            && chunk_size <= DEFAULT_MMAP_THRESHOLD_MAX
        {
            let size = chunk_size & !0b111;
            self.mmap_threshold.store(size, Relaxed);
            self.trim_threshold.store(2 * size, Relaxed);
        }
    }

    /// `__libc_mallopt`'s parameter logic on this instance (returns 1 on
    /// success, 0 on failure).  Fastbin consolidation is the caller's job.
    pub fn mallopt(&self, param: i32, value: i32) -> i32 {
        // glibc passes the int to size_t parameters: negatives wrap.
        let as_size = value as isize as usize;
        let ok = match param {
            M_MXFAST => self.set_mxfast(as_size),
            M_TRIM_THRESHOLD => self.set_trim_threshold(as_size),
            M_TOP_PAD => self.set_top_pad(as_size),
            M_MMAP_THRESHOLD => self.set_mmap_threshold(as_size),
            M_MMAP_MAX => self.set_mmap_max(value),
            // do_set_mallopt_check: accepted, no effect in libc.so 2.36.
            M_CHECK_ACTION => true,
            M_PERTURB => self.set_perturb(value),
            M_ARENA_TEST => value <= 0 || self.set_arena_test(as_size),
            M_ARENA_MAX => value <= 0 || self.set_arena_max(as_size),
            // Unknown parameters: glibc's `res` stays 1.
            _ => true,
        };
        ok as i32
    }

    /// Apply an environment (`NAME=value` items, in environment order) as
    /// glibc's tunables layer and `ptmalloc_init` would.  `secure` is the
    /// process's AT_SECURE flag; `suid_debug` whether `/etc/suid-debug`
    /// exists (only consulted when `secure`).
    #[link_section = ".text.hot.rmalloc"]
    pub fn apply_env_with<'a>(
        &self,
        vars: impl Iterator<Item = &'a [u8]>,
        secure: bool,
        suid_debug: bool,
    ) {
        let set = tunables::scan(vars, secure, suid_debug, |path| {
            self.set_exit_stats_path(path)
        });
        self.apply_tunables(&set);
    }

    /// The `TUNABLE_GET (..., TUNABLE_CALLBACK (set_*))` sequence of
    /// `ptmalloc_init`: call the `do_set_*` helper of each set tunable, in
    /// glibc's order (the results are ignored, as glibc does).
    fn apply_tunables(&self, set: &Tunables) {
        let order: [(T, Setter); 12] = [
            (T::TopPad, |p, x| p.set_top_pad(x as usize)),
            (T::Perturb, |p, x| p.set_perturb(x as i32)),
            (T::MmapThreshold, |p, x| p.set_mmap_threshold(x as usize)),
            (T::TrimThreshold, |p, x| p.set_trim_threshold(x as usize)),
            (T::MmapMax, |p, x| p.set_mmap_max(x as i32)),
            (T::ArenaMax, |p, x| p.set_arena_max(x as usize)),
            (T::ArenaTest, |p, x| p.set_arena_test(x as usize)),
            (T::TcacheMax, |p, x| p.set_tcache_max(x as usize)),
            (T::TcacheCount, |p, x| p.set_tcache_count(x as usize)),
            (T::TcacheUnsortedLimit, |p, x| {
                p.set_tcache_unsorted_limit(x as usize)
            }),
            (T::Mxfast, |p, x| p.set_mxfast(x as usize)),
            (T::Check, |p, x| {
                p.check_action.store(x as i32, Relaxed);
                true
            }),
        ];
        for (t, apply) in order {
            if let Some(x) = set.get(t) {
                apply(self, x);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Process-level entry points
// ---------------------------------------------------------------------------

/// `mallopt` on [`PARAMS`].  The caller holds the main arena lock and has
/// consolidated the fastbins (glibc does so for every call).
pub fn mallopt(param: i32, value: i32) -> i32 {
    PARAMS.mallopt(param, value)
}

/// Apply an explicit environment to [`PARAMS`], honouring AT_SECURE.
pub fn apply_env<'a>(vars: impl Iterator<Item = &'a [u8]>) {
    let (secure, suid_debug) = tunables::secure_mode();
    PARAMS.apply_env_with(vars, secure, suid_debug);
}

/// The `RMALLOC_EXIT_STATS` path of the process, if set.
pub fn exit_stats_path() -> Option<&'static CStr> {
    PARAMS.exit_stats_path()
}

/// Read the process environment into [`PARAMS`], once (later calls return at
/// once).  Meant for the allocator's lazy initialisation, which serialises
/// callers; a concurrent second caller returns without waiting.
#[link_section = ".text.hot.rmalloc"]
pub fn init_from_env() {
    tunables::scan_process_env_once(apply_process_env);
}

#[link_section = ".text.hot.rmalloc"]
fn apply_process_env(vars: &mut dyn Iterator<Item = &[u8]>) {
    apply_env(vars);
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
#[path = "options/tests.rs"]
pub(crate) mod tests;
