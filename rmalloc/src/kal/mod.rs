//! KAL: finding and reclaiming leaks in a running program, without stopping
//! it for longer than a snapshot takes.
//!
//! A scanner thread ([`scanner`]) takes a snapshot of the process at one
//! instant ([`snapshot`]; the [`fork_backend`] stops the threads with
//! [`stop`] and scans a copy-on-write child), dissects the heap in it
//! ([`dissect`]), marks conservatively from every root ([`roots`], [`mark`],
//! [`scan`]), and reports ([`report`]) or, in reclaim mode, queues for
//! reclaim ([`reclaim`]) what stayed unreachable in `confirm_scans`
//! consecutive snapshots.  Program threads free queued chunks at arena
//! boundaries, through probation.  Settings: [`options`]; counters:
//! [`stats`]; the engine's own memory: [`mem`]; mmapped chunks: [`registry`].
//!
//! The allocator core calls in through the hooks in this file only: the
//! arena drain (`on_arena`, behind each arena's `kal_pending` hint), the
//! probation check on the free/realloc slow paths (`claim`), the mmapped
//! chunk registry, and the fork and exit lifecycle.
//!
//! The rule above all: a chunk is freed only when a consistent snapshot
//! proves it unreachable.  Whatever could make a snapshot inconsistent (a
//! thread not stopped, a thread inside the allocator, a lock held, a root
//! source unreadable) discards the snapshot.

// The entry points are called from the C exports, which unit tests leave out.
#![cfg_attr(test, allow(dead_code))]

pub mod dissect;
pub mod fork_backend;
pub mod mark;
pub mod mem;
pub mod options;
pub mod ptrace;
pub mod reclaim;
pub mod registry;
pub mod report;
pub mod roots;
pub mod scan;
pub mod scanner;
pub mod snapshot;
pub mod stats;
pub mod stop;

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use rmalloc_sys as sys;

use crate::arena::{self, Arena};
use crate::chunk::ChunkPtr;
use crate::fmt::{Out, Sink};
use options::Mode;

static MODE: AtomicU8 = AtomicU8::new(Mode::Off as u8);
static BACKEND: AtomicU8 = AtomicU8::new(0);
/// A forked child must start its own scanner (lazily, from `on_arena`).
static RESTART: AtomicBool = AtomicBool::new(false);

pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::Detect,
        2 => Mode::Reclaim,
        _ => Mode::Off,
    }
}

pub fn mode_name() -> &'static str {
    match mode() {
        Mode::Off => "off",
        Mode::Detect => "detect",
        Mode::Reclaim => "reclaim",
    }
}

fn say(msg: &[u8]) {
    let _ = sys::write_all(2, msg);
    let _ = sys::write_all(2, b"\n");
}

/// Start-up, from the library's constructor (libc is ready, the loader is
/// done): read `KAL_OPTIONS`, and start the scanner if KAL is on.
pub fn start_from_env() {
    let (secure, _) = crate::tunables::secure_mode();
    if secure {
        return; // set-user-ID programs ignore KAL_OPTIONS, as glibc MALLOC_*
    }
    // SAFETY: getenv with a NUL-terminated name; the result is a C string
    // of the environment or null.  It neither allocates nor locks.
    let v = unsafe { libc::getenv(c"KAL_OPTIONS".as_ptr()) };
    if v.is_null() {
        return;
    }
    // SAFETY: non-null getenv results are NUL-terminated strings.
    let s = unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes();
    let o = match options::parse(s) {
        Ok(o) => o,
        Err(e) => return say(e.as_bytes()),
    };
    if o.mode == Mode::Off {
        return;
    }
    let backend = match snapshot::choose(o.backend) {
        Ok(b) => b,
        Err(msg) => return say(msg.as_bytes()),
    };
    if !enable(o, backend) {
        say(b"KAL: could not start (no memory, signal in use, or no thread); KAL stays off");
    }
}

fn enable(o: options::Options, backend: snapshot::Kind) -> bool {
    if !signal_free(o.stop_signal) {
        let mut out = Out::<200>::new(Sink::Fd(2));
        let _ = core::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "KAL: signal {} has a handler of the program's; set stop_signal= to a free one; KAL stays off\n",
                o.stop_signal
            ),
        );
        out.flush();
        return true;
    }
    // SAFETY: the scanner does not exist yet; this is the only user.
    let e = unsafe { scanner::engine() };
    e.opts = o;
    let Some(r) = snapshot::Results::map() else {
        return false;
    };
    e.results = r;
    ptrace::init();
    if !stop::init() || !find_text() {
        return false;
    }
    reclaim::PROBATION_MS.store(o.probation_ms as usize, Ordering::Relaxed);
    report::open_log(o.log_path());
    if !stop::install(o.stop_signal) {
        return false;
    }
    registry::ON.store(true, Ordering::Release);
    MODE.store(o.mode as u8, Ordering::Release);
    BACKEND.store(backend as u8, Ordering::Relaxed);
    if !scanner::start() {
        MODE.store(Mode::Off as u8, Ordering::Release);
        return false;
    }
    report::log(
        o.verbosity,
        1,
        format_args!(
            "started: mode={} interval_ms={}",
            mode_name(),
            o.interval_ms
        ),
    );
    true
}

/// Is `sig` free for our use (default disposition)?
fn signal_free(sig: i32) -> bool {
    // SAFETY: querying the current action into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = core::mem::zeroed();
        libc::sigaction(sig, core::ptr::null(), &mut old) == 0
            && (old.sa_sigaction == libc::SIG_DFL
                || old.sa_sigaction == stop::on_signal as *const () as usize)
    }
}

/// Record where the allocator's code lies (the mapping holding this
/// function), so a thread stopped inside it can be recognised.
fn find_text() -> bool {
    let mut buf = mem::MVec::new();
    if roots::read_file(c"/proc/self/maps", &mut buf).is_err() {
        return false;
    }
    let here = find_text as *const () as usize;
    let found = roots::mapping_of(buf.as_slice(), here);
    buf.release();
    match found {
        Some(m) => {
            stop::TEXT.0.store(m.start, Ordering::Relaxed);
            stop::TEXT.1.store(m.end, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Arena hook: `av` (locked, or the process is single-threaded) has work
/// queued by the scanner.  Called from the allocation slow path only.
///
/// # Safety
/// `av` is the caller's locked arena.
#[cold]
pub unsafe fn on_arena(av: *mut Arena) {
    if RESTART.swap(false, Ordering::AcqRel) && mode() != Mode::Off {
        scanner::start();
    }
    // SAFETY: `av` is locked by the caller (contract).
    unsafe { reclaim::drain(av, 64) };
}

/// Free/realloc slow path: is `p` (with the `IS_MMAPPED` bit) a chunk KAL
/// holds in probation?  If so it is restored and the false reclaim
/// reported; the caller then treats it as an ordinary live chunk.
///
/// # Safety
/// `p` is the chunk of a pointer the program passed to the allocator.
#[inline]
pub unsafe fn claim(p: ChunkPtr) -> bool {
    // SAFETY: forwarded contract.
    reclaim::any_in_probation() && unsafe { reclaim::claim(p) }
}

/// For the heap check: a heap chunk with the `IS_MMAPPED` bit is fine when
/// KAL holds it in probation.
pub fn in_probation(p: ChunkPtr) -> bool {
    reclaim::holds(p)
}

/// A chunk was mapped, or moved by `mremap` (then call `mmapped_removed`
/// for the old address first).
#[inline]
pub fn mmapped_added(p: ChunkPtr) {
    registry::added(p);
}

#[inline]
pub fn mmapped_removed(p: ChunkPtr) {
    registry::removed(p);
}

/// Fork child handler: the scanner did not survive the fork.
pub fn after_fork_child() {
    if mode() == Mode::Off {
        return;
    }
    stop::reset_after_fork();
    ptrace::reset_after_fork();
    registry::reset_after_fork();
    reclaim::reset_after_fork();
    stats::reset();
    // SAFETY: only this thread exists in the child.
    unsafe { scanner::reset_after_fork() };
    // SAFETY: as above.
    report::reopen_after_fork(unsafe { scanner::engine() }.opts.log_path());
    RESTART.store(true, Ordering::Release);
    arena::for_each_arena(|a| {
        // SAFETY: arenas are never freed.
        unsafe { (*a).kal_pending.store(true, Ordering::Release) };
    });
}

/// Process exit: the final leak check, bounded so exit never hangs.
pub fn at_exit() {
    if mode() == Mode::Off {
        return;
    }
    // SAFETY: options are written once before the scanner starts.
    let o = unsafe { scanner::engine() }.opts;
    if o.leak_check_at_exit {
        scanner::request_and_wait(true, 10_000_000_000);
    }
}

/// `rmalloc_kal_scan_now`: one scan now, then (reclaim mode) free what
/// is due in every arena.
pub fn scan_now() -> i32 {
    if mode() == Mode::Off {
        return -1;
    }
    let r = scanner::request_and_wait(false, 120_000_000_000);
    if mode() == Mode::Reclaim {
        arena::for_each_arena(|a| {
            // SAFETY: arenas are never freed; the lock is taken (or elided
            // while single-threaded) around the drain.
            unsafe {
                let held = (*a).lock();
                reclaim::drain(a, usize::MAX);
                (*a).unlock(held);
            }
        });
    }
    r
}

/// `rmalloc_kal_stats`.
pub fn c_stats() -> stats::CStats {
    stats::snapshot(
        MODE.load(Ordering::Relaxed) as u32,
        BACKEND.load(Ordering::Relaxed) as u32,
    )
}
