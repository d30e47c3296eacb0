//! Allocator tunables: `mallopt`, `GLIBC_TUNABLES=glibc.malloc.*` and the
//! `MALLOC_*` environment variables, with glibc 2.36's semantics (x86_64).
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
//!
//! Nothing here allocates, takes a lock, or uses std outside `cfg(test)`.
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
//! * Tunables (`elf/dl-tunables.c` `__tunables_init`, `parse_tunables`,
//!   `tunable_initialize`, `do_tunable_update_val`; `elf/dl-misc.c`
//!   `_dl_strtoul`; bounds from `elf/dl-tunables.list`, cross-checked with
//!   `ld.so --list-tunables`): values are parsed by `_dl_strtoul` — leading
//!   blanks/tabs, optional sign, `0x` hex, leading-`0` octal, decimal,
//!   parsing stops at the first non-digit *without* rejecting the value
//!   (`"12abc"` is 12, `""` and `"abc"` are 0), overflow saturates to
//!   `u64::MAX`.  The value is then range-checked (signed comparison for
//!   `INT_32` tunables, unsigned for `SIZE_T`); out-of-range values leave the
//!   tunable unset.  Ranges: check 0..=3, perturb 0..=255, mmap_max
//!   0..=INT32_MAX, arena_max and arena_test >= 1, others unbounded.
//! * Precedence: the environment is walked in order.  A `GLIBC_TUNABLES`
//!   entry sets each named tunable whose value is in range, overriding
//!   anything set before (so the last valid one wins); an alias such as
//!   `MALLOC_TOP_PAD_` only sets a tunable that is still unset (so the first
//!   valid alias wins and a valid `GLIBC_TUNABLES` setting beats any alias,
//!   whatever the order).  Entries without `=` are skipped.
//! * `ptmalloc_init` (`malloc/arena.c`) then calls the same `do_set_*`
//!   helpers as `mallopt` for each set tunable, in the order top_pad,
//!   perturb, mmap_threshold, trim_threshold, mmap_max, arena_max,
//!   arena_test, tcache_max, tcache_count, tcache_unsorted_limit, mxfast —
//!   so setting top_pad, mmap_threshold, trim_threshold or mmap_max through
//!   the environment disables the dynamic threshold, tcache_max above 1032,
//!   tcache_count above 65535 and mxfast above 160 are ignored.
//!   `glibc.malloc.check`/`MALLOC_CHECK_` is parsed and exposed as
//!   [`Params::check_action`] but libc.so itself never acts on it.
//!   `glibc.malloc.hugetlb` is not supported and ignored.
//! * AT_SECURE (setuid/setgid/capabilities) processes: every malloc tunable
//!   and alias is `SXID_IGNORE` or `SXID_ERASE`, so none is read; the only
//!   exception, `glibc.malloc.check` when `/etc/suid-debug` exists, is
//!   reproduced.  `RMALLOC_EXIT_STATS` is ignored there too (a setuid program
//!   must not write to a path chosen by its caller).
//!
//! # Where the environment comes from at the first `malloc`
//! [`init_from_env`] reads libc's `environ`; if it is NULL it falls back to
//! `/proc/self/environ`, read with raw system calls into a fixed 64 KiB
//! static buffer (anything beyond is ignored).  Measured with a throwaway
//! `LD_PRELOAD` probe that interposes malloc/calloc/realloc/free/memalign and
//! reports `environ` at the first call (glibc 2.36, x86_64): `/bin/true`
//! (never calls malloc), python3 3.11, perl, git, `/bin/ls`, a C program,
//! a C++ program whose first malloc comes from libstdc++'s static
//! constructor before the probe's own constructor, with `LD_BIND_NOW=1` and
//! with an empty environment (`env -i`): `environ` was already set at every
//! first call, because the loader only routes `malloc` to an interposer
//! after relocation, by which point libc has published the initial
//! environment.  The `/proc` fallback covers a NULL `environ` (e.g. unusual
//! loaders or `clearenv` before the first allocation); if `/proc` is not
//! mounted the defaults stay.  Like glibc, the environment is read once.

use core::cell::UnsafeCell;
use core::ffi::{c_char, CStr};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering::*};

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

pub const SIZE_SZ: usize = 8;
pub const MALLOC_ALIGNMENT: usize = 16;
pub const MALLOC_ALIGN_MASK: usize = MALLOC_ALIGNMENT - 1;
/// Smallest chunk (`MIN_CHUNK_SIZE` / `MINSIZE`).
pub const MINSIZE: usize = 32;
/// `DEFAULT_MXFAST`: default fastbin request bound (bytes).
pub const DEFAULT_MXFAST: usize = 64 * SIZE_SZ / 4;
/// `MAX_FAST_SIZE`: largest value `M_MXFAST`/`glibc.malloc.mxfast` accept.
pub const MAX_FAST_SIZE: usize = 80 * SIZE_SZ / 4;
pub const DEFAULT_TRIM_THRESHOLD: usize = 128 * 1024;
pub const DEFAULT_TOP_PAD: usize = 128 * 1024;
pub const DEFAULT_MMAP_THRESHOLD_MIN: usize = 128 * 1024;
pub const DEFAULT_MMAP_THRESHOLD: usize = DEFAULT_MMAP_THRESHOLD_MIN;
/// Upper bound of the dynamic mmap threshold: `4 MiB * sizeof(long)`.
pub const DEFAULT_MMAP_THRESHOLD_MAX: usize = 4 * 1024 * 1024 * core::mem::size_of::<usize>();
pub const DEFAULT_MMAP_MAX: usize = 65536;
/// `NARENAS_FROM_NCORES (1)` on a 64-bit target.
pub const DEFAULT_ARENA_TEST: usize = 8;
pub const TCACHE_MAX_BINS: usize = 64;
pub const TCACHE_FILL_COUNT: usize = 7;
/// Tcache counters are `uint16_t` since glibc 2.30.
pub const MAX_TCACHE_COUNT: usize = u16::MAX as usize;
/// `tidx2usize (TCACHE_MAX_BINS - 1)`: largest request served by the tcache.
pub const MAX_TCACHE_SIZE: usize = tidx2usize(TCACHE_MAX_BINS - 1);

/// Longest `RMALLOC_EXIT_STATS` path kept (bytes, without the NUL).
pub const EXIT_STATS_PATH_MAX: usize = 4095;
/// How much of `/proc/self/environ` the fallback reads.
const PROC_ENVIRON_BUF: usize = 64 * 1024;

/// glibc's `request2size` (without the overflow check; callers bound `req`).
pub const fn request2size(req: usize) -> usize {
    if req.wrapping_add(SIZE_SZ + MALLOC_ALIGN_MASK) < MINSIZE {
        MINSIZE
    } else {
        req.wrapping_add(SIZE_SZ + MALLOC_ALIGN_MASK) & !MALLOC_ALIGN_MASK
    }
}

/// glibc's `csize2tidx`: tcache bin index of a chunk size.
pub const fn csize2tidx(csize: usize) -> usize {
    (csize - MINSIZE).div_ceil(MALLOC_ALIGNMENT)
}

/// glibc's `tidx2usize`: largest usable request of tcache bin `idx`.
pub const fn tidx2usize(idx: usize) -> usize {
    idx * MALLOC_ALIGNMENT + MINSIZE - SIZE_SZ
}

/// glibc's `set_max_fast` formula: the `global_max_fast` value for `s`.
pub const fn max_fast_for(s: usize) -> usize {
    if s == 0 {
        MINSIZE / 2
    } else {
        (s + SIZE_SZ) & !MALLOC_ALIGN_MASK
    }
}

// ---------------------------------------------------------------------------
// Params
// ---------------------------------------------------------------------------

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
            tcache_count: AtomicUsize::new(TCACHE_FILL_COUNT),
            tcache_unsorted_limit: AtomicUsize::new(0),
            check_action: AtomicI32::new(0),
            exit_stats_state: AtomicU8::new(EXIT_EMPTY),
            exit_stats_len: AtomicUsize::new(0),
            exit_stats_buf: UnsafeCell::new([0; EXIT_STATS_PATH_MAX + 1]),
        }
    }

    // ----- readers (cheap Relaxed loads) -----

    #[inline]
    pub fn trim_threshold(&self) -> usize {
        self.trim_threshold.load(Relaxed)
    }
    #[inline]
    pub fn top_pad(&self) -> usize {
        self.top_pad.load(Relaxed)
    }
    #[inline]
    pub fn mmap_threshold(&self) -> usize {
        self.mmap_threshold.load(Relaxed)
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
    /// True once the user fixed any of the threshold parameters.
    #[inline]
    pub fn no_dyn_threshold(&self) -> bool {
        self.no_dyn_threshold.load(Relaxed)
    }
    #[inline]
    pub fn arena_test(&self) -> usize {
        self.arena_test.load(Relaxed)
    }
    /// 0 means unset (the arena limit is then derived from the CPU count).
    #[inline]
    pub fn arena_max(&self) -> usize {
        self.arena_max.load(Relaxed)
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
    /// glibc's `global_max_fast`: chunks of at most this size use fastbins.
    #[inline]
    pub fn max_fast(&self) -> usize {
        self.max_fast.load(Relaxed)
    }
    /// Maximum entries per tcache bin.
    #[inline]
    pub fn tcache_count(&self) -> usize {
        self.tcache_count.load(Relaxed)
    }
    /// Number of tcache bins in use (`mp_.tcache_bins`, at most 64).
    #[inline]
    pub fn tcache_bins(&self) -> usize {
        self.tcache_bins.load(Relaxed)
    }
    /// Largest request size served from the tcache (`mp_.tcache_max_bytes`).
    #[inline]
    pub fn tcache_max_bytes(&self) -> usize {
        self.tcache_max_bytes.load(Relaxed)
    }
    /// 0 = no limit.
    #[inline]
    pub fn tcache_unsorted_limit(&self) -> usize {
        self.tcache_unsorted_limit.load(Relaxed)
    }
    /// The `glibc.malloc.check` / `MALLOC_CHECK_` value (0..=3, default 0).
    /// glibc 2.36's libc.so ignores it (only `libc_malloc_debug.so` reads it).
    #[inline]
    pub fn check_action(&self) -> i32 {
        self.check_action.load(Relaxed)
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

    /// `do_set_trim_threshold`.
    pub fn set_trim_threshold(&self, value: usize) -> bool {
        self.trim_threshold.store(value, Relaxed);
        self.no_dyn_threshold.store(true, Relaxed);
        true
    }
    /// `do_set_top_pad`.
    pub fn set_top_pad(&self, value: usize) -> bool {
        self.top_pad.store(value, Relaxed);
        self.no_dyn_threshold.store(true, Relaxed);
        true
    }
    /// `do_set_mmap_threshold` (no upper bound in 2.36).
    pub fn set_mmap_threshold(&self, value: usize) -> bool {
        self.mmap_threshold.store(value, Relaxed);
        self.no_dyn_threshold.store(true, Relaxed);
        true
    }
    /// `do_set_mmaps_max`.
    pub fn set_mmap_max(&self, value: i32) -> bool {
        self.mmap_max.store(value, Relaxed);
        self.no_dyn_threshold.store(true, Relaxed);
        true
    }
    /// `do_set_perturb_byte`.
    pub fn set_perturb(&self, value: i32) -> bool {
        self.perturb.store(value, Relaxed);
        true
    }
    /// `do_set_arena_test`.
    pub fn set_arena_test(&self, value: usize) -> bool {
        self.arena_test.store(value, Relaxed);
        true
    }
    /// `do_set_arena_max`.
    pub fn set_arena_max(&self, value: usize) -> bool {
        self.arena_max.store(value, Relaxed);
        true
    }
    /// `do_set_tcache_max`: `value` is a request size in bytes.
    pub fn set_tcache_max(&self, value: usize) -> bool {
        if value > MAX_TCACHE_SIZE {
            return false;
        }
        self.tcache_max_bytes.store(value, Relaxed);
        self.tcache_bins
            .store(csize2tidx(request2size(value)) + 1, Relaxed);
        true
    }
    /// `do_set_tcache_count`.
    pub fn set_tcache_count(&self, value: usize) -> bool {
        if value > MAX_TCACHE_COUNT {
            return false;
        }
        self.tcache_count.store(value, Relaxed);
        true
    }
    /// `do_set_tcache_unsorted_limit`.
    pub fn set_tcache_unsorted_limit(&self, value: usize) -> bool {
        self.tcache_unsorted_limit.store(value, Relaxed);
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
    pub fn apply_env_with<'a>(
        &self,
        vars: impl Iterator<Item = &'a [u8]>,
        secure: bool,
        suid_debug: bool,
    ) {
        let mut set = Tunables::default();
        for item in vars {
            // A C string ends at its first NUL.
            let item = match item.iter().position(|&b| b == 0) {
                Some(n) => &item[..n],
                None => item,
            };
            let Some(eq) = item.iter().position(|&b| b == b'=') else {
                continue; // name without value: skipped by get_next_env
            };
            let (name, value) = (&item[..eq], &item[eq + 1..]);
            if name == b"GLIBC_TUNABLES" {
                parse_tunables(&mut set, value, secure, suid_debug);
            } else if name == b"RMALLOC_EXIT_STATS" {
                if !secure {
                    self.set_exit_stats_path(value);
                }
            } else if let Some(t) = TUNABLES.iter().position(|d| d.alias == Some(name)) {
                if set.vals[t].is_none() && readable(t, secure, suid_debug) {
                    set.initialize(t, value);
                }
            }
        }
        self.apply_tunables(&set);
    }

    /// The `TUNABLE_GET (..., TUNABLE_CALLBACK (set_*))` sequence of
    /// `ptmalloc_init`: call the `do_set_*` helper of each set tunable.
    fn apply_tunables(&self, set: &Tunables) {
        let v = |t: T| set.vals[t as usize];
        if let Some(x) = v(T::TopPad) {
            self.set_top_pad(x as usize);
        }
        if let Some(x) = v(T::Perturb) {
            self.set_perturb(x as i32);
        }
        if let Some(x) = v(T::MmapThreshold) {
            self.set_mmap_threshold(x as usize);
        }
        if let Some(x) = v(T::TrimThreshold) {
            self.set_trim_threshold(x as usize);
        }
        if let Some(x) = v(T::MmapMax) {
            self.set_mmap_max(x as i32);
        }
        if let Some(x) = v(T::ArenaMax) {
            self.set_arena_max(x as usize);
        }
        if let Some(x) = v(T::ArenaTest) {
            self.set_arena_test(x as usize);
        }
        if let Some(x) = v(T::TcacheMax) {
            self.set_tcache_max(x as usize);
        }
        if let Some(x) = v(T::TcacheCount) {
            self.set_tcache_count(x as usize);
        }
        if let Some(x) = v(T::TcacheUnsortedLimit) {
            self.set_tcache_unsorted_limit(x as usize);
        }
        if let Some(x) = v(T::Mxfast) {
            self.set_mxfast(x as usize);
        }
        if let Some(x) = v(T::Check) {
            self.check_action.store(x as i32, Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------
// The tunables layer (elf/dl-tunables.c)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum T {
    Check,
    TopPad,
    Perturb,
    MmapThreshold,
    TrimThreshold,
    MmapMax,
    ArenaMax,
    ArenaTest,
    TcacheMax,
    TcacheCount,
    TcacheUnsortedLimit,
    Mxfast,
}

/// Whether a tunable is `INT_32` (signed range check) or `SIZE_T`.
#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Int32,
    SizeT,
}

/// Security level for AT_SECURE processes (all malloc tunables are either
/// SXID_IGNORE or the default SXID_ERASE: both mean "not read").
#[derive(Clone, Copy, PartialEq)]
enum Sec {
    NotRead,
    /// `glibc.malloc.check`: read when `/etc/suid-debug` exists.
    SuidDebug,
}

struct TunableDef {
    name: &'static [u8],
    alias: Option<&'static [u8]>,
    ty: Ty,
    min: i64,
    max: u64,
    sec: Sec,
}

const fn def(
    name: &'static [u8],
    alias: Option<&'static [u8]>,
    ty: Ty,
    min: i64,
    max: u64,
) -> TunableDef {
    TunableDef {
        name,
        alias,
        ty,
        min,
        max,
        sec: Sec::NotRead,
    }
}

/// Indexed by `T`.  Bounds as printed by 2.36's `ld.so --list-tunables`.
const TUNABLES: [TunableDef; 12] = [
    TunableDef {
        sec: Sec::SuidDebug,
        ..def(
            b"glibc.malloc.check",
            Some(b"MALLOC_CHECK_"),
            Ty::Int32,
            0,
            3,
        )
    },
    def(
        b"glibc.malloc.top_pad",
        Some(b"MALLOC_TOP_PAD_"),
        Ty::SizeT,
        0,
        u64::MAX,
    ),
    def(
        b"glibc.malloc.perturb",
        Some(b"MALLOC_PERTURB_"),
        Ty::Int32,
        0,
        0xff,
    ),
    def(
        b"glibc.malloc.mmap_threshold",
        Some(b"MALLOC_MMAP_THRESHOLD_"),
        Ty::SizeT,
        0,
        u64::MAX,
    ),
    def(
        b"glibc.malloc.trim_threshold",
        Some(b"MALLOC_TRIM_THRESHOLD_"),
        Ty::SizeT,
        0,
        u64::MAX,
    ),
    def(
        b"glibc.malloc.mmap_max",
        Some(b"MALLOC_MMAP_MAX_"),
        Ty::Int32,
        0,
        i32::MAX as u64,
    ),
    def(
        b"glibc.malloc.arena_max",
        Some(b"MALLOC_ARENA_MAX"),
        Ty::SizeT,
        1,
        u64::MAX,
    ),
    def(
        b"glibc.malloc.arena_test",
        Some(b"MALLOC_ARENA_TEST"),
        Ty::SizeT,
        1,
        u64::MAX,
    ),
    def(b"glibc.malloc.tcache_max", None, Ty::SizeT, 0, u64::MAX),
    def(b"glibc.malloc.tcache_count", None, Ty::SizeT, 0, u64::MAX),
    def(
        b"glibc.malloc.tcache_unsorted_limit",
        None,
        Ty::SizeT,
        0,
        u64::MAX,
    ),
    def(b"glibc.malloc.mxfast", None, Ty::SizeT, 0, u64::MAX),
];

/// Tunable values found in the environment (`initialized` = `Some`).
#[derive(Default)]
struct Tunables {
    vals: [Option<u64>; 12],
}

impl Tunables {
    /// `tunable_initialize` + `do_tunable_update_val`: parse and range-check;
    /// an out-of-range value leaves the tunable as it was.
    fn initialize(&mut self, t: usize, value: &[u8]) {
        let d = &TUNABLES[t];
        let v = dl_strtoul(value);
        let ok = match d.ty {
            Ty::Int32 => (v as i64) >= d.min && (v as i64) <= d.max as i64,
            Ty::SizeT => v >= d.min as u64 && v <= d.max,
        };
        if ok {
            self.vals[t] = Some(v);
        }
    }
}

fn readable(t: usize, secure: bool, suid_debug: bool) -> bool {
    !secure || (TUNABLES[t].sec == Sec::SuidDebug && suid_debug)
}

/// `parse_tunables`: `name=value` pairs separated by `:`.
fn parse_tunables(set: &mut Tunables, s: &[u8], secure: bool, suid_debug: bool) {
    let mut p = 0;
    while p < s.len() {
        let rest = &s[p..];
        let Some(n) = rest.iter().position(|&b| b == b'=' || b == b':') else {
            return; // a name running to the end: no value
        };
        if rest[n] == b':' {
            p += n + 1;
            continue;
        }
        let name = &rest[..n];
        let vrest = &rest[n + 1..];
        let vlen = vrest.iter().position(|&b| b == b':').unwrap_or(vrest.len());
        if let Some(t) = TUNABLES.iter().position(|d| d.name == name) {
            if readable(t, secure, suid_debug) {
                set.initialize(t, &vrest[..vlen]);
            }
        }
        p += n + 1 + vlen + 1;
    }
}

/// `_dl_strtoul` on a byte string (ends at the slice end or a NUL).
fn dl_strtoul(s: &[u8]) -> u64 {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let mut i = 0;
    while at(i) == b' ' || at(i) == b'\t' {
        i += 1;
    }
    let mut positive = true;
    if at(i) == b'-' {
        positive = false;
        i += 1;
    } else if at(i) == b'+' {
        i += 1;
    }
    if !at(i).is_ascii_digit() {
        return 0;
    }
    let (base, max_digit) = if at(i) == b'0' {
        if at(i + 1) == b'x' || at(i + 1) == b'X' {
            i += 2;
            (16u64, b'9')
        } else {
            (8, b'7')
        }
    } else {
        (10, b'9')
    };
    let mut result: u64 = 0;
    loop {
        let c = at(i);
        let digval = match c {
            b'0'..=b'9' if c <= max_digit => (c - b'0') as u64,
            b'a'..=b'f' if base == 16 => (c - b'a' + 10) as u64,
            b'A'..=b'F' if base == 16 => (c - b'A' + 10) as u64,
            _ => break,
        };
        // glibc's (slightly conservative) overflow test, kept as is.
        if result >= (u64::MAX - digval) / base {
            return u64::MAX;
        }
        result = result * base + digval;
        i += 1;
    }
    if positive {
        result
    } else {
        result.wrapping_neg()
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
    let secure = is_secure();
    PARAMS.apply_env_with(vars, secure, secure && suid_debug_exists());
}

/// The `RMALLOC_EXIT_STATS` path of the process, if set.
pub fn exit_stats_path() -> Option<&'static CStr> {
    PARAMS.exit_stats_path()
}

/// True in AT_SECURE (setuid/setgid/file-capability) processes.
fn is_secure() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector libc saved at
    // startup (set up by the loader before any malloc can be interposed); it
    // neither allocates nor locks.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

fn suid_debug_exists() -> bool {
    match rmalloc_sys::open_rdonly(c"/etc/suid-debug") {
        Ok(fd) => {
            rmalloc_sys::close(fd);
            true
        }
        Err(_) => false,
    }
}

extern "C" {
    static environ: *const *const c_char;
}

/// Iterator over a NULL-terminated `char **` environment.
struct EnvironIter {
    p: *const *const c_char,
}

impl Iterator for EnvironIter {
    type Item = &'static [u8];
    fn next(&mut self) -> Option<&'static [u8]> {
        if self.p.is_null() {
            return None;
        }
        // SAFETY: `p` points into a NULL-terminated array of pointers to
        // NUL-terminated strings (the process environment), which stays
        // valid while it is scanned during initialisation.
        let s = unsafe { *self.p };
        if s.is_null() {
            self.p = core::ptr::null();
            return None;
        }
        // SAFETY: `p` is not the terminating entry, so `p + 1` is in bounds.
        self.p = unsafe { self.p.add(1) };
        // SAFETY: every non-NULL entry is a NUL-terminated C string.
        Some(unsafe { CStr::from_ptr(s) }.to_bytes())
    }
}

struct ProcBuf(UnsafeCell<[u8; PROC_ENVIRON_BUF]>);
// SAFETY: only `init_from_env` touches the buffer, and only in the single
// thread that won `INIT_STATE`'s exchange, exactly once.
unsafe impl Sync for ProcBuf {}
static PROC_ENVIRON: ProcBuf = ProcBuf(UnsafeCell::new([0; PROC_ENVIRON_BUF]));

/// Read up to `buf.len()` bytes of `/proc/self/environ`; returns the length.
fn read_proc_environ(buf: &mut [u8]) -> usize {
    let Ok(fd) = rmalloc_sys::open_rdonly(c"/proc/self/environ") else {
        return 0;
    };
    let mut len = 0;
    while len < buf.len() {
        match rmalloc_sys::read(fd, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e == rmalloc_sys::EINTR => continue,
            Err(_) => break,
        }
    }
    rmalloc_sys::close(fd);
    len
}

const INIT_NONE: u8 = 0;
const INIT_RUNNING: u8 = 1;
const INIT_DONE: u8 = 2;
static INIT_STATE: AtomicU8 = AtomicU8::new(INIT_NONE);

/// Read the process environment into [`PARAMS`], once (later calls return at
/// once).  Meant for the allocator's lazy initialisation, which serialises
/// callers; a concurrent second caller returns without waiting.
pub fn init_from_env() {
    if INIT_STATE
        .compare_exchange(INIT_NONE, INIT_RUNNING, Acquire, Relaxed)
        .is_err()
    {
        return;
    }
    // SAFETY: reading the libc `environ` pointer; it is written only by libc
    // startup and by setenv/putenv/clearenv, none of which can run
    // concurrently with the allocator's first initialisation in practice.
    let env = unsafe { environ };
    if !env.is_null() {
        apply_env(EnvironIter { p: env });
    } else {
        // SAFETY: this thread won INIT_STATE's exchange, so it is the only
        // one ever to access PROC_ENVIRON (see `ProcBuf`).
        let buf: &mut [u8; PROC_ENVIRON_BUF] = unsafe { &mut *PROC_ENVIRON.0.get() };
        let len = read_proc_environ(buf);
        apply_env(buf[..len].split(|&b| b == 0).filter(|s| !s.is_empty()));
    }
    INIT_STATE.store(INIT_DONE, Release);
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(p: &Params, vars: &[&str]) {
        p.apply_env_with(vars.iter().map(|s| s.as_bytes()), false, false);
    }
    fn fresh(vars: &[&str]) -> Params {
        let p = Params::new();
        env(&p, vars);
        p
    }
    fn snapshot(p: &Params) -> [usize; 14] {
        [
            p.trim_threshold(),
            p.top_pad(),
            p.mmap_threshold(),
            p.mmap_max(),
            p.no_dyn_threshold() as usize,
            p.arena_test(),
            p.arena_max(),
            p.perturb.load(Relaxed) as usize,
            p.max_fast(),
            p.tcache_count(),
            p.tcache_bins(),
            p.tcache_max_bytes(),
            p.tcache_unsorted_limit(),
            p.check_action() as usize,
        ]
    }

    #[test]
    fn defaults_match_glibc_2_36_x86_64() {
        for p in [&Params::new(), &PARAMS_DEFAULT_COPY] {
            assert_eq!(p.trim_threshold(), 128 * 1024);
            assert_eq!(p.top_pad(), 128 * 1024);
            assert_eq!(p.mmap_threshold(), 128 * 1024);
            assert_eq!(p.mmap_max(), 65536);
            assert!(!p.no_dyn_threshold());
            assert_eq!(p.arena_test(), 8);
            assert_eq!(p.arena_max(), 0);
            assert_eq!(p.perturb_byte(), 0);
            assert!(!p.perturb_enabled());
            assert_eq!(p.max_fast(), 128);
            assert_eq!(p.tcache_count(), 7);
            assert_eq!(p.tcache_bins(), 64);
            assert_eq!(p.tcache_max_bytes(), 1032);
            assert_eq!(p.tcache_unsorted_limit(), 0);
            assert_eq!(p.check_action(), 0);
            assert!(p.exit_stats_path().is_none());
        }
        assert_eq!(DEFAULT_MMAP_THRESHOLD_MAX, 32 << 20);
        assert_eq!(MAX_FAST_SIZE, 160);
        assert_eq!(MAX_TCACHE_SIZE, 1032);
        // 1032 is the largest request of bin 63.
        assert_eq!(csize2tidx(request2size(1032)), 63);
        assert_eq!(csize2tidx(request2size(1033)), 64);
    }
    /// A static built the same way as PARAMS (PARAMS itself may be touched
    /// by `init_from_env` in another test).
    static PARAMS_DEFAULT_COPY: Params = Params::new();

    #[test]
    fn mallopt_constants_match_malloc_h() {
        assert_eq!(
            [
                M_MXFAST,
                M_TRIM_THRESHOLD,
                M_TOP_PAD,
                M_MMAP_THRESHOLD,
                M_MMAP_MAX
            ],
            [1, -1, -2, -3, -4]
        );
        assert_eq!(
            [M_CHECK_ACTION, M_PERTURB, M_ARENA_TEST, M_ARENA_MAX],
            [-5, -6, -7, -8]
        );
    }

    #[test]
    fn mallopt_mxfast() {
        let p = Params::new();
        assert_eq!(p.mallopt(M_MXFAST, 160), 1);
        assert_eq!(p.max_fast(), 160);
        assert_eq!(p.mallopt(M_MXFAST, 161), 0);
        assert_eq!(p.max_fast(), 160);
        assert_eq!(p.mallopt(M_MXFAST, -1), 0);
        assert_eq!(p.mallopt(M_MXFAST, 0), 1);
        assert_eq!(p.max_fast(), 16);
        assert_eq!(p.mallopt(M_MXFAST, 24), 1);
        assert_eq!(p.max_fast(), 32);
        assert_eq!(p.mallopt(M_MXFAST, 1), 1);
        assert_eq!(p.max_fast(), 0);
        assert!(!p.no_dyn_threshold());
    }

    #[test]
    fn mallopt_thresholds_disable_dynamic_threshold() {
        for (param, get) in [
            (
                M_TRIM_THRESHOLD,
                Params::trim_threshold as fn(&Params) -> usize,
            ),
            (M_TOP_PAD, Params::top_pad),
            (M_MMAP_THRESHOLD, Params::mmap_threshold),
            (M_MMAP_MAX, Params::mmap_max),
        ] {
            let p = Params::new();
            assert_eq!(p.mallopt(param, 4096), 1);
            assert_eq!(get(&p), 4096);
            assert!(p.no_dyn_threshold(), "param {param}");
        }
        let p = Params::new();
        // No upper bound in 2.36; negative ints wrap to huge size_t.
        assert_eq!(p.mallopt(M_MMAP_THRESHOLD, 64 << 20), 1);
        assert_eq!(p.mmap_threshold(), 64 << 20);
        assert_eq!(p.mallopt(M_MMAP_THRESHOLD, -1), 1);
        assert_eq!(p.mmap_threshold(), usize::MAX);
        assert_eq!(p.mallopt(M_TRIM_THRESHOLD, -1), 1);
        assert_eq!(p.trim_threshold(), usize::MAX);
        assert_eq!(p.mallopt(M_MMAP_MAX, -1), 1);
        assert_eq!(p.mmap_max(), 0);
        assert_eq!(p.mallopt(M_MMAP_MAX, 0), 1);
        assert_eq!(p.mmap_max(), 0);
    }

    #[test]
    fn mallopt_arena_perturb_check_unknown() {
        let p = Params::new();
        assert_eq!(p.mallopt(M_ARENA_TEST, 0), 1);
        assert_eq!(p.mallopt(M_ARENA_TEST, -3), 1);
        assert_eq!(p.arena_test(), 8);
        assert_eq!(p.mallopt(M_ARENA_TEST, 4), 1);
        assert_eq!(p.arena_test(), 4);
        assert_eq!(p.mallopt(M_ARENA_MAX, 0), 1);
        assert_eq!(p.arena_max(), 0);
        assert_eq!(p.mallopt(M_ARENA_MAX, 2), 1);
        assert_eq!(p.arena_max(), 2);
        assert_eq!(p.mallopt(M_PERTURB, 0xa5), 1);
        assert_eq!(p.perturb_byte(), 0xa5);
        assert_eq!(p.mallopt(M_PERTURB, 256), 1);
        assert_eq!(p.perturb_byte(), 0);
        assert!(p.perturb_enabled());
        assert_eq!(p.mallopt(M_PERTURB, 0), 1);
        assert!(!p.perturb_enabled());
        assert_eq!(p.mallopt(M_CHECK_ACTION, 5), 1);
        assert_eq!(p.check_action(), 0);
        assert_eq!(p.mallopt(99, 1), 1);
        assert_eq!(p.mallopt(-9, 1), 1);
        assert_eq!(p.mallopt(M_GRAIN, 1), 1);
        assert!(!p.no_dyn_threshold());
    }

    #[test]
    fn dynamic_threshold_update() {
        let p = Params::new();
        p.note_mmapped_free((100 * 1024) | 2); // below threshold
        assert_eq!(p.mmap_threshold(), 128 * 1024);
        p.note_mmapped_free((1 << 20) | 2);
        assert_eq!(p.mmap_threshold(), 1 << 20);
        assert_eq!(p.trim_threshold(), 2 << 20);
        p.note_mmapped_free(32 << 20); // == max: still applies
        assert_eq!(p.mmap_threshold(), 32 << 20);
        let p = Params::new();
        p.note_mmapped_free((32 << 20) + 4096); // above max
        assert_eq!(p.mmap_threshold(), 128 * 1024);
        let p = Params::new();
        p.mallopt(M_TOP_PAD, 0);
        p.note_mmapped_free(1 << 20);
        assert_eq!(p.mmap_threshold(), 128 * 1024);
        assert_eq!(p.trim_threshold(), 128 * 1024);
    }

    #[test]
    fn strtoul_like_glibc() {
        let cases: &[(&str, u64)] = &[
            ("", 0),
            ("abc", 0),
            ("12abc", 12),
            ("0x10", 16),
            ("0XfF", 255),
            ("0x", 0),
            ("010", 8),
            ("09", 0),
            ("077", 63),
            (" \t12", 12),
            ("+5", 5),
            ("-1", u64::MAX),
            ("-0x10", 16u64.wrapping_neg()),
            ("99999999999999999999999", u64::MAX),
            ("18446744073709551615", u64::MAX),
            ("1844674407370955161", 1844674407370955161),
            ("- 1", 0),
            ("1=2", 1),
        ];
        for &(s, v) in cases {
            assert_eq!(dl_strtoul(s.as_bytes()), v, "{s:?}");
        }
        assert_eq!(dl_strtoul(b"12\x0034"), 12);
    }

    #[test]
    fn each_tunable() {
        let t = |s: &str| fresh(&[&format!("GLIBC_TUNABLES=glibc.malloc.{s}")]);
        let p = t("top_pad=0x1000");
        assert_eq!((p.top_pad(), p.no_dyn_threshold()), (4096, true));
        let p = t("perturb=0x10");
        assert_eq!((p.perturb_byte(), p.no_dyn_threshold()), (16, false));
        assert_eq!(t("perturb=256").perturb_byte(), 0);
        let p = t("mmap_threshold=12abc");
        assert_eq!((p.mmap_threshold(), p.no_dyn_threshold()), (12, true));
        assert_eq!(t("mmap_threshold=").mmap_threshold(), 0);
        assert_eq!(t("mmap_threshold=0x4000000").mmap_threshold(), 64 << 20);
        let p = t("trim_threshold=1000");
        assert_eq!((p.trim_threshold(), p.no_dyn_threshold()), (1000, true));
        let p = t("mmap_max=0");
        assert_eq!((p.mmap_max(), p.no_dyn_threshold()), (0, true));
        let p = t("mmap_max=-1");
        assert_eq!((p.mmap_max(), p.no_dyn_threshold()), (65536, false));
        assert_eq!(t("mmap_max=4294967296").mmap_max(), 65536);
        assert_eq!(t("mmap_max=2147483647").mmap_max(), i32::MAX as usize);
        assert_eq!(t("arena_max=0").arena_max(), 0);
        assert_eq!(t("arena_max=+5").arena_max(), 5);
        assert_eq!(t("arena_test=0").arena_test(), 8);
        assert_eq!(t("arena_test=3").arena_test(), 3);
        let p = t("tcache_max=0");
        assert_eq!((p.tcache_max_bytes(), p.tcache_bins()), (0, 1));
        let p = t("tcache_max=100");
        assert_eq!((p.tcache_max_bytes(), p.tcache_bins()), (100, 6)); // chunk 112 -> bin 5
        assert_eq!(t("tcache_max=1032").tcache_bins(), 64);
        assert_eq!(t("tcache_max=1033").tcache_bins(), 64);
        assert_eq!(t("tcache_max=1033").tcache_max_bytes(), 1032);
        assert_eq!(t("tcache_count=0").tcache_count(), 0);
        assert_eq!(t("tcache_count=65535").tcache_count(), 65535);
        assert_eq!(t("tcache_count=65536").tcache_count(), 7);
        assert_eq!(t("tcache_count=-1").tcache_count(), 7);
        assert_eq!(t("tcache_unsorted_limit=9").tcache_unsorted_limit(), 9);
        assert_eq!(t("mxfast=0").max_fast(), 16);
        assert_eq!(t("mxfast=0x").max_fast(), 16);
        assert_eq!(t("mxfast=160").max_fast(), 160);
        assert_eq!(t("mxfast=161").max_fast(), 128);
        assert_eq!(t("check=3").check_action(), 3);
        assert_eq!(t("check=4").check_action(), 0);
        assert!(!t("check=3").no_dyn_threshold());
        // Unknown / non-malloc tunables are ignored.
        assert_eq!(snapshot(&t("bogus=1")), snapshot(&Params::new()));
        assert_eq!(
            snapshot(&fresh(&["GLIBC_TUNABLES=glibc.cpu.x86_ibt=on"])),
            snapshot(&Params::new())
        );
    }

    #[test]
    fn each_alias() {
        let p = fresh(&["MALLOC_TOP_PAD_=0x20"]);
        assert_eq!((p.top_pad(), p.no_dyn_threshold()), (32, true));
        assert_eq!(fresh(&["MALLOC_PERTURB_=7"]).perturb_byte(), 7);
        assert_eq!(fresh(&["MALLOC_PERTURB_=300"]).perturb_byte(), 0);
        let p = fresh(&["MALLOC_MMAP_THRESHOLD_=abc"]);
        assert_eq!((p.mmap_threshold(), p.no_dyn_threshold()), (0, true));
        assert_eq!(fresh(&["MALLOC_TRIM_THRESHOLD_=010"]).trim_threshold(), 8);
        assert_eq!(fresh(&["MALLOC_MMAP_MAX_=3"]).mmap_max(), 3);
        assert_eq!(fresh(&["MALLOC_ARENA_MAX=2"]).arena_max(), 2);
        assert_eq!(fresh(&["MALLOC_ARENA_MAX=0"]).arena_max(), 0);
        assert_eq!(fresh(&["MALLOC_ARENA_TEST=1"]).arena_test(), 1);
        assert_eq!(fresh(&["MALLOC_CHECK_=2"]).check_action(), 2);
        // Names must match exactly; tunables without alias have none.
        for v in [
            "MALLOC_TOP_PAD=1",
            "MALLOC_TOP_PAD_X=1",
            "malloc_top_pad_=1",
            "MALLOC_MXFAST_=1",
            " MALLOC_TOP_PAD_=1",
        ] {
            assert_eq!(snapshot(&fresh(&[v])), snapshot(&Params::new()), "{v}");
        }
        // No '=' at all: skipped.
        assert_eq!(
            snapshot(&fresh(&["MALLOC_TOP_PAD_"])),
            snapshot(&Params::new())
        );
    }

    #[test]
    fn precedence() {
        // A valid GLIBC_TUNABLES setting wins over an alias, in either order.
        let a = "MALLOC_MMAP_THRESHOLD_=100";
        let g = "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=200";
        assert_eq!(fresh(&[a, g]).mmap_threshold(), 200);
        assert_eq!(fresh(&[g, a]).mmap_threshold(), 200);
        // An out-of-range tunable leaves room for the alias.
        assert_eq!(
            fresh(&[
                "GLIBC_TUNABLES=glibc.malloc.perturb=300",
                "MALLOC_PERTURB_=7"
            ])
            .perturb_byte(),
            7
        );
        // First valid alias wins; the last valid tunable wins.
        assert_eq!(
            fresh(&[
                "MALLOC_PERTURB_=300",
                "MALLOC_PERTURB_=7",
                "MALLOC_PERTURB_=9"
            ])
            .perturb_byte(),
            7
        );
        let p = fresh(&[
            "MALLOC_PERTURB_=9",
            "GLIBC_TUNABLES=glibc.malloc.perturb=1:glibc.malloc.perturb=2",
            "GLIBC_TUNABLES=glibc.malloc.perturb=3:glibc.malloc.perturb=999",
        ]);
        assert_eq!(p.perturb_byte(), 3);
    }

    #[test]
    fn tunables_string_syntax() {
        let p = fresh(&["GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1=2:glibc.malloc.top_pad=5::glibc.malloc.perturb=4:glibc.malloc.check"]);
        assert_eq!(
            (
                p.mmap_threshold(),
                p.top_pad(),
                p.perturb_byte(),
                p.check_action()
            ),
            (1, 5, 4, 0)
        );
        let p = fresh(&[
            "GLIBC_TUNABLES=:glibc.malloc.mmap_threshold=077:garbage:glibc.malloc.top_pad=09:",
        ]);
        assert_eq!((p.mmap_threshold(), p.top_pad()), (63, 0));
        let p = fresh(&["GLIBC_TUNABLES=glibc.malloc.arena_max=3:glibc.malloc.arena_max"]);
        assert_eq!(p.arena_max(), 3);
        assert_eq!(
            snapshot(&fresh(&["GLIBC_TUNABLES="])),
            snapshot(&Params::new())
        );
        assert_eq!(
            snapshot(&fresh(&["GLIBC_TUNABLES"])),
            snapshot(&Params::new())
        );
    }

    #[test]
    fn secure_mode_ignores_everything_but_suid_debug_check() {
        let vars = [
            "MALLOC_TOP_PAD_=1",
            "MALLOC_CHECK_=3",
            "RMALLOC_EXIT_STATS=/tmp/x",
            "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=5:glibc.malloc.tcache_count=0",
        ];
        let p = Params::new();
        p.apply_env_with(vars.iter().map(|s| s.as_bytes()), true, false);
        assert_eq!(snapshot(&p), snapshot(&Params::new()));
        assert!(p.exit_stats_path().is_none());
        let p = Params::new();
        p.apply_env_with(vars.iter().map(|s| s.as_bytes()), true, true);
        assert_eq!(p.check_action(), 3);
        assert_eq!(
            (p.top_pad(), p.mmap_threshold(), p.tcache_count()),
            (DEFAULT_TOP_PAD, DEFAULT_MMAP_THRESHOLD, 7)
        );
        // Not secure: all applied.
        let p = fresh(&vars);
        assert_eq!(
            (
                p.top_pad(),
                p.mmap_threshold(),
                p.tcache_count(),
                p.check_action()
            ),
            (1, 5, 0, 3)
        );
    }

    #[test]
    fn exit_stats_path() {
        let p = fresh(&["RMALLOC_EXIT_STATS=/tmp/stats.txt"]);
        assert_eq!(p.exit_stats_path().unwrap().to_bytes(), b"/tmp/stats.txt");
        // Write-once: a later value does not replace it.
        env(&p, &["RMALLOC_EXIT_STATS=/other"]);
        assert_eq!(p.exit_stats_path().unwrap().to_bytes(), b"/tmp/stats.txt");
        assert!(fresh(&["RMALLOC_EXIT_STATS="]).exit_stats_path().is_none());
        let long = format!(
            "RMALLOC_EXIT_STATS=/{}",
            "a".repeat(EXIT_STATS_PATH_MAX - 1)
        );
        assert_eq!(
            fresh(&[&long]).exit_stats_path().unwrap().to_bytes().len(),
            EXIT_STATS_PATH_MAX
        );
        let too_long = format!("RMALLOC_EXIT_STATS=/{}", "a".repeat(EXIT_STATS_PATH_MAX));
        assert!(fresh(&[&too_long]).exit_stats_path().is_none());
        // Embedded NUL ends the C string.
        let p = Params::new();
        p.apply_env_with([&b"RMALLOC_EXIT_STATS=/a\0b"[..]].into_iter(), false, false);
        assert_eq!(p.exit_stats_path().unwrap().to_bytes(), b"/a");
    }

    #[test]
    fn environ_iterator_sees_process_environment() {
        // SAFETY (test): reading libc's environ while no test modifies it.
        let got: Vec<Vec<u8>> = EnvironIter {
            p: unsafe { environ },
        }
        .map(|s| s.to_vec())
        .collect();
        let mut proc_buf = vec![0u8; PROC_ENVIRON_BUF];
        let n = read_proc_environ(&mut proc_buf);
        assert!(n > 0, "/proc/self/environ unreadable");
        assert!(!got.is_empty());
        // Every entry of the initial environment (if it fit) is in environ,
        // unless the test harness changed it; at least PATH-like entries match.
        let proc_entries: Vec<&[u8]> = proc_buf[..n]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .collect();
        let common = proc_entries
            .iter()
            .filter(|e| got.iter().any(|g| g == *e))
            .count();
        assert!(
            common * 2 >= proc_entries.len(),
            "{common} of {}",
            proc_entries.len()
        );
        assert!(EnvironIter {
            p: core::ptr::null()
        }
        .next()
        .is_none());
    }

    #[test]
    fn init_from_env_runs_once() {
        init_from_env();
        init_from_env();
        assert_eq!(INIT_STATE.load(Relaxed), INIT_DONE);
        // Plain accessors on the global work after initialisation.
        let _ = (
            PARAMS.mmap_threshold(),
            PARAMS.tcache_count(),
            exit_stats_path(),
        );
    }

    proptest! {
        #[test]
        fn apply_env_never_panics(vars in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let p = Params::new();
            p.apply_env_with(vars.iter().map(|v| v.as_slice()), false, false);
            prop_assert!(p.tcache_bins() <= TCACHE_MAX_BINS);
            prop_assert!(p.max_fast() <= MAX_FAST_SIZE);
            prop_assert!(p.tcache_count() <= MAX_TCACHE_COUNT);
        }

        #[test]
        fn tunables_strings_never_panic(s in "[a-z_.=:0-9xX+ -]{0,80}") {
            let p = Params::new();
            let item = format!("GLIBC_TUNABLES={s}");
            p.apply_env_with([item.as_bytes()].into_iter(), false, false);
            let item = format!("GLIBC_TUNABLES=glibc.malloc.{s}");
            p.apply_env_with([item.as_bytes()].into_iter(), false, false);
            prop_assert!(p.max_fast() <= MAX_FAST_SIZE);
        }

        #[test]
        fn decimal_values_round_trip(v in 0u64..=u32::MAX as u64) {
            prop_assert_eq!(dl_strtoul(v.to_string().as_bytes()), v);
            prop_assert_eq!(dl_strtoul(format!("0x{v:x}").as_bytes()), v);
            prop_assert_eq!(dl_strtoul(format!("0{v:o}").as_bytes()), v);
            let p = fresh(&[&format!("MALLOC_TOP_PAD_={v}")]);
            prop_assert_eq!(p.top_pad(), v as usize);
        }
    }
}
