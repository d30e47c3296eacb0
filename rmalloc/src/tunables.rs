//! The environment side of the allocator's parameters: glibc 2.36's
//! tunables layer (`GLIBC_TUNABLES=glibc.malloc.*` and the `MALLOC_*_`
//! aliases), `_dl_strtoul`, the AT_SECURE checks and the early access to
//! the process environment.  [`crate::options`] turns what is found here
//! into [`Params`](crate::options::Params) values.
//!
//! # What this module owns
//! * The table of malloc tunables ([`TUNABLES`], indexed by [`T`]) with the
//!   names, aliases, types, bounds and security levels of
//!   `elf/dl-tunables.list` (cross-checked with `ld.so --list-tunables`).
//! * [`scan`]: one pass over `NAME=value` items producing a [`Tunables`] set
//!   (which tunables were given, with their range-checked values).
//! * The once-only read of the process environment ([`scan_process_env_once`]):
//!   libc's `environ`, or `/proc/self/environ` read into a fixed static
//!   buffer when `environ` is NULL.
//!
//! Invariants: nothing here allocates, takes a lock, or uses std outside
//! `cfg(test)`.  A value stored in a [`Tunables`] set is always inside its
//! tunable's range.  The `/proc` buffer is touched by exactly one thread,
//! once (the winner of `INIT_STATE`'s exchange).
//!
//! # Semantics reproduced (`elf/dl-tunables.c` `__tunables_init`,
//! `parse_tunables`, `tunable_initialize`, `do_tunable_update_val`;
//! `elf/dl-misc.c` `_dl_strtoul`)
//! * Values are parsed by `_dl_strtoul`: leading blanks/tabs, optional sign,
//!   `0x` hex, leading-`0` octal, decimal; parsing stops at the first
//!   non-digit *without* rejecting the value (`"12abc"` is 12, `""` and
//!   `"abc"` are 0); overflow saturates to `u64::MAX`.  The value is then
//!   range-checked (signed comparison for `INT_32` tunables, unsigned for
//!   `SIZE_T`); out-of-range values leave the tunable unset.  Ranges: check
//!   0..=3, perturb 0..=255, mmap_max 0..=INT32_MAX, arena_max and
//!   arena_test >= 1, others unbounded.
//! * Precedence: the environment is walked in order.  A `GLIBC_TUNABLES`
//!   entry sets each named tunable whose value is in range, overriding
//!   anything set before (so the last valid one wins); an alias such as
//!   `MALLOC_TOP_PAD_` only sets a tunable that is still unset (so the first
//!   valid alias wins and a valid `GLIBC_TUNABLES` setting beats any alias,
//!   whatever the order).  Entries without `=` are skipped.
//!   `glibc.malloc.hugetlb` is not supported and ignored.
//! * AT_SECURE (setuid/setgid/capabilities) processes: every malloc tunable
//!   and alias is `SXID_IGNORE` or `SXID_ERASE`, so none is read; the only
//!   exception, `glibc.malloc.check` when `/etc/suid-debug` exists, is
//!   reproduced.  `RMALLOC_EXIT_STATS` is ignored there too (a setuid program
//!   must not write to a path chosen by its caller).
//!
//! # Where the environment comes from at the first `malloc`
//! libc's `environ`; if it is NULL, `/proc/self/environ`, read with raw
//! system calls into a fixed 64 KiB static buffer (anything beyond is
//! ignored; without `/proc` the defaults stay).  Measured with a throwaway
//! `LD_PRELOAD` probe reporting `environ` at the first malloc/calloc/realloc/
//! free/memalign (glibc 2.36, x86_64; python3, perl, git, `/bin/ls`, C and
//! C++ programs, a first malloc from libstdc++'s static constructors,
//! `LD_BIND_NOW=1`, `env -i`): `environ` was always set already, because the
//! loader only routes `malloc` to an interposer after relocation, by which
//! point libc has published the initial environment.  The fallback covers
//! unusual loaders or a `clearenv` before the first allocation.

use core::cell::UnsafeCell;
use core::ffi::{c_char, CStr};
use core::sync::atomic::{AtomicU8, Ordering::*};

/// How much of `/proc/self/environ` the fallback reads.
const PROC_ENVIRON_BUF: usize = 64 * 1024;

/// The malloc tunables, in [`TUNABLES`] order.
#[derive(Clone, Copy)]
pub(crate) enum T {
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

/// A `SIZE_T` tunable with range `min..=SIZE_MAX`, never read when AT_SECURE.
const fn size_t(name: &'static [u8], alias: Option<&'static [u8]>, min: i64) -> TunableDef {
    let (ty, max, sec) = (Ty::SizeT, u64::MAX, Sec::NotRead);
    TunableDef {
        name,
        alias,
        ty,
        min,
        max,
        sec,
    }
}

/// An `INT_32` tunable (all have an alias) with range `0..=max`.
const fn int32(name: &'static [u8], alias: &'static [u8], max: u64, sec: Sec) -> TunableDef {
    let ty = Ty::Int32;
    TunableDef {
        ty,
        max,
        sec,
        ..size_t(name, Some(alias), 0)
    }
}

/// Indexed by `T`.  Bounds as printed by 2.36's `ld.so --list-tunables`.
#[rustfmt::skip]
const TUNABLES: [TunableDef; 12] = [
    int32(b"glibc.malloc.check", b"MALLOC_CHECK_", 3, Sec::SuidDebug),
    size_t(b"glibc.malloc.top_pad", Some(b"MALLOC_TOP_PAD_"), 0),
    int32(b"glibc.malloc.perturb", b"MALLOC_PERTURB_", 0xff, Sec::NotRead),
    size_t(b"glibc.malloc.mmap_threshold", Some(b"MALLOC_MMAP_THRESHOLD_"), 0),
    size_t(b"glibc.malloc.trim_threshold", Some(b"MALLOC_TRIM_THRESHOLD_"), 0),
    int32(b"glibc.malloc.mmap_max", b"MALLOC_MMAP_MAX_", i32::MAX as u64, Sec::NotRead),
    size_t(b"glibc.malloc.arena_max", Some(b"MALLOC_ARENA_MAX"), 1),
    size_t(b"glibc.malloc.arena_test", Some(b"MALLOC_ARENA_TEST"), 1),
    size_t(b"glibc.malloc.tcache_max", None, 0),
    size_t(b"glibc.malloc.tcache_count", None, 0),
    size_t(b"glibc.malloc.tcache_unsorted_limit", None, 0),
    size_t(b"glibc.malloc.mxfast", None, 0),
];

/// Tunable values found in the environment (`initialized` = `Some`).
#[derive(Default)]
pub(crate) struct Tunables {
    vals: [Option<u64>; 12],
}

impl Tunables {
    /// The value given for tunable `t`, if any (always within its range).
    #[inline]
    pub(crate) fn get(&self, t: T) -> Option<u64> {
        self.vals[t as usize]
    }

    /// `tunable_initialize` + `do_tunable_update_val`: parse and range-check;
    /// an out-of-range value leaves the tunable as it was.
    #[link_section = ".text.warm.rmalloc"]
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

/// Whether tunable `t` is read at all in a process with this AT_SECURE flag.
fn readable(t: usize, secure: bool, suid_debug: bool) -> bool {
    !secure || (TUNABLES[t].sec == Sec::SuidDebug && suid_debug)
}

/// One pass over an environment (`NAME=value` items, in environment order),
/// as glibc's tunables layer does it.  `secure` is the process's AT_SECURE
/// flag; `suid_debug` whether `/etc/suid-debug` exists (only consulted when
/// `secure`).  Each `RMALLOC_EXIT_STATS` value is handed to `exit_stats`, in
/// order, unless `secure`.
pub(crate) fn scan<'a>(
    vars: impl Iterator<Item = &'a [u8]>,
    secure: bool,
    suid_debug: bool,
    mut exit_stats: impl FnMut(&'a [u8]),
) -> Tunables {
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
                exit_stats(value);
            }
        } else if let Some(t) = TUNABLES.iter().position(|d| d.alias == Some(name)) {
            if set.vals[t].is_none() && readable(t, secure, suid_debug) {
                set.initialize(t, value);
            }
        }
    }
    set
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

/// The process's AT_SECURE flag and, only when it is set, whether
/// `/etc/suid-debug` exists: the last two arguments of [`scan`].
pub(crate) fn secure_mode() -> (bool, bool) {
    let secure = is_secure();
    (secure, secure && suid_debug_exists())
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
    #[link_section = ".text.hot.rmalloc"]
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
// SAFETY: only `scan_process_env_once` touches the buffer, and only in the
// single thread that won `INIT_STATE`'s exchange, exactly once.
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
#[link_section = ".data.hot.rmalloc"]
static INIT_STATE: AtomicU8 = AtomicU8::new(INIT_NONE);

/// Hand the process environment to `apply`, once per process (later calls
/// return at once, a concurrent second caller without waiting).  Meant for
/// the allocator's lazy initialisation, which serialises callers.
pub(crate) fn scan_process_env_once(apply: fn(&mut dyn Iterator<Item = &[u8]>)) {
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
        apply(&mut EnvironIter { p: env });
    } else {
        // SAFETY: this thread won INIT_STATE's exchange, so it is the only
        // one ever to access PROC_ENVIRON (see `ProcBuf`).
        let buf: &mut [u8; PROC_ENVIRON_BUF] = unsafe { &mut *PROC_ENVIRON.0.get() };
        let len = read_proc_environ(buf);
        apply(&mut buf[..len].split(|&b| b == 0).filter(|s| !s.is_empty()));
    }
    INIT_STATE.store(INIT_DONE, Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bins::MAX_FAST_SIZE;
    use crate::options::tests::{fresh, snapshot};
    use crate::options::{
        exit_stats_path, init_from_env, Params, DEFAULT_MMAP_THRESHOLD, DEFAULT_TOP_PAD,
        MAX_TCACHE_COUNT, PARAMS,
    };
    use crate::tcache::TCACHE_MAX_BINS;
    use proptest::prelude::*;

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
