//! KAL: finding and reclaiming leaks in a running program, without stopping
//! it for longer than a snapshot takes.
//!
//! A scanner thread ([`scanner`]) takes a snapshot of the process at one
//! instant ([`instant`]: the threads are stopped with [`ptrace`] or
//! [`stop`]; the [`fork_backend`] scans a copy-on-write child, the
//! [`kernel_backend`] a `kal_snapshot` image read through [`image`]),
//! dissects the heap in it ([`dissect`]), marks conservatively from every
//! root ([`roots`], [`mark`], [`scan`]), and reports ([`report`]) or, in reclaim mode, queues for
//! reclaim ([`reclaim`]) what stayed unreachable in `confirm_scans`
//! consecutive snapshots.  Program threads free queued chunks at arena
//! boundaries, through probation.  Scans are paced ([`pace`]) so that they
//! cost the program at most `max_overhead` percent.  Settings: [`options`]; counters:
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

pub mod cfi;
pub mod dissect;
pub mod fork_backend;
pub mod image;
pub mod instant;
pub mod kernel_backend;
pub mod lsan;
pub mod mark;
pub mod mem;
pub mod modules;
pub mod options;
pub mod pace;
pub mod ptrace;
pub mod reclaim;
pub mod registry;
pub mod report;
pub mod roots;
pub mod scan;
pub mod scanner;
pub mod snapshot;
pub mod stacks;
pub mod statpage;
pub mod stats;
pub mod stop;
pub mod suppress;
pub mod unwind;

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use rmalloc_sys as sys;

use crate::arena::{self, Arena};
use crate::chunk::ChunkPtr;
use crate::fmt::{Out, Sink};
use options::Mode;

#[link_section = ".data.hot.rmalloc"]
static MODE: AtomicU8 = AtomicU8::new(Mode::Off as u8);
static BACKEND: AtomicU8 = AtomicU8::new(0);
/// A forked child must start its own scanner (lazily, from `on_arena`).
static RESTART: AtomicBool = AtomicBool::new(false);

/// The snapshot backend chosen when KAL was enabled.
pub fn backend() -> snapshot::Kind {
    if BACKEND.load(Ordering::Relaxed) == snapshot::Kind::Kernel as u8 {
        snapshot::Kind::Kernel
    } else {
        snapshot::Kind::Fork
    }
}

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
    // Settings, weakest first: the program's `__lsan_default_options`
    // (written for LeakSanitizer: keys KAL does not know are skipped), its
    // `kal_default_options`, then `KAL_OPTIONS`.
    let mut o = options::Options::defaults();
    for (which, lenient) in [(0, true), (1, false)] {
        if let Some(s) = program_string(which) {
            if let Err(e) = options::parse_into(&mut o, s, lenient) {
                return say(e.as_bytes());
            }
        }
    }
    // SAFETY: getenv with a NUL-terminated name; the result is a C string
    // of the environment or null.  It neither allocates nor locks.
    let v = unsafe { libc::getenv(c"KAL_OPTIONS".as_ptr()) };
    if !v.is_null() {
        // SAFETY: non-null getenv results are NUL-terminated strings.
        let s = unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes();
        if let Err(e) = options::parse_into(&mut o, s, false) {
            return say(e.as_bytes());
        }
    }
    if let Err(e) = options::check(&o) {
        return say(e.as_bytes());
    }
    if o.mode == Mode::Off {
        return;
    }
    if let Some(path) = o.suppressions() {
        if let Err(e) = suppress::load_file(path) {
            return say(e.as_bytes());
        }
    }
    suppress::load_default(program_string(2));
    let backend = match snapshot::choose(o.backend) {
        Ok(b) => b,
        Err(msg) => return say(msg.as_bytes()),
    };
    if !enable(o, backend) {
        say(b"KAL: could not start (no memory, signal in use, or no thread); KAL stays off");
    }
}

// The program's default-option functions, as weak references: resolved by
// the loader to the program's definitions when it exports them, to null
// otherwise.  (A `dlsym` lookup would do the same but allocate its error
// message when the symbol is missing, changing the heap of every program.)
core::arch::global_asm!(
    ".weak __lsan_default_options",
    ".weak kal_default_options",
    ".weak __lsan_default_suppressions"
);

/// The address of `__lsan_default_options` (`which` = 0),
/// `kal_default_options` (1) or `__lsan_default_suppressions` (2), or null.
fn weak_options_fn(which: u32) -> usize {
    let f: usize;
    // SAFETY: loads a GOT entry (filled by the loader; 0 for an undefined
    // weak symbol); no memory is written.
    unsafe {
        if which == 0 {
            core::arch::asm!("mov {}, qword ptr [rip + __lsan_default_options@GOTPCREL]",
                out(reg) f, options(nostack, readonly, preserves_flags));
        } else if which == 1 {
            core::arch::asm!("mov {}, qword ptr [rip + kal_default_options@GOTPCREL]",
                out(reg) f, options(nostack, readonly, preserves_flags));
        } else {
            core::arch::asm!("mov {}, qword ptr [rip + __lsan_default_suppressions@GOTPCREL]",
                out(reg) f, options(nostack, readonly, preserves_flags));
        }
    }
    f
}

/// The string the program's default-options function returns, if it
/// defines one (`const char *f(void)`, LeakSanitizer's convention).
fn program_string(which: u32) -> Option<&'static [u8]> {
    let f = weak_options_fn(which);
    if f == 0 {
        return None;
    }
    // SAFETY: by the convention, the symbol is a function taking nothing
    // and returning a NUL-terminated string that lives for the process.
    let s = unsafe {
        let f: extern "C" fn() -> *const core::ffi::c_char = core::mem::transmute(f);
        f()
    };
    // SAFETY: as above.
    (!s.is_null()).then(|| unsafe { core::ffi::CStr::from_ptr(s) }.to_bytes())
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
    let Some((lo, hi)) = modules::own_writable() else {
        return false;
    };
    OWN_DATA.0.store(lo, Ordering::Relaxed);
    OWN_DATA.1.store(hi, Ordering::Relaxed);
    reclaim::PROBATION_MS.store(o.probation_ms as usize, Ordering::Relaxed);
    report::open_log(o.log_path());
    if !stop::install(o.stop_signal) {
        return false;
    }
    registry::ON.store(true, Ordering::Release);
    stacks::enable(o.sites, o.malloc_context_size, o.fast_unwind_on_malloc);
    MODE.store(o.mode as u8, Ordering::Release);
    BACKEND.store(backend as u8, Ordering::Relaxed);
    if bench_without_scanner() {
        return true;
    }
    if !scanner::start() {
        MODE.store(Mode::Off as u8, Ordering::Release);
        stacks::disable();
        registry::ON.store(false, Ordering::Release);
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

/// `RMALLOC_KAL_BENCH_NO_SCANNER=1`: everything KAL does on the
/// allocator's paths (registry, allocation stacks) but no scanner thread,
/// so `valgrind --tool=callgrind` (which cannot run the scanner's raw
/// `clone`) can count the instructions those paths cost.  For
/// measurements only: no leak is ever found.
fn bench_without_scanner() -> bool {
    // SAFETY: getenv with a NUL-terminated name; see `start_from_env`.
    let v = unsafe { libc::getenv(c"RMALLOC_KAL_BENCH_NO_SCANNER".as_ptr()) };
    // SAFETY: non-null getenv results are NUL-terminated strings.
    !v.is_null() && unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes() == b"1"
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

/// This library's writable segments (see [`modules::own_writable`]).
static OWN_DATA: (
    core::sync::atomic::AtomicUsize,
    core::sync::atomic::AtomicUsize,
) = (
    core::sync::atomic::AtomicUsize::new(0),
    core::sync::atomic::AtomicUsize::new(0),
);

/// The allocator's and the engine's own data: never roots.  Its bins and
/// top pointer point at chunk boundaries, and the engine's statics hold
/// the bounds of its mappings, any of which would keep the chunk right
/// below alive as a pointer one past its end.
pub fn own_data() -> (usize, usize) {
    (
        OWN_DATA.0.load(Ordering::Relaxed),
        OWN_DATA.1.load(Ordering::Relaxed),
    )
}

/// Record where the allocator's code lies (all of it: the hot code is a
/// mapping of its own), so a thread stopped inside it can be recognised and
/// the unwinder knows the allocator's own frames.
fn find_text() -> bool {
    match modules::own_executable() {
        Some((start, end)) => {
            stop::TEXT.0.store(start, Ordering::Relaxed);
            stop::TEXT.1.store(end, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Alternate signal stacks the program registered (through the
/// `sigaltstack` we export): the kernel holds them, and under the ptrace
/// stop nothing else tells where they are.  Stale entries only keep memory.
const ALTSTACKS: usize = 1024;
static ALTSTACK: [core::sync::atomic::AtomicUsize; ALTSTACKS] =
    [const { core::sync::atomic::AtomicUsize::new(0) }; ALTSTACKS];
static ALTSTACK_N: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Record a registered alternate signal stack.
pub fn note_altstack(sp: usize) {
    if sp == 0 || ALTSTACK.iter().any(|a| a.load(Ordering::Relaxed) == sp) {
        return;
    }
    let i = ALTSTACK_N.fetch_add(1, Ordering::Relaxed) % ALTSTACKS;
    ALTSTACK[i].store(sp, Ordering::Relaxed);
}

/// Every alternate signal stack ever registered (for the mark).
pub fn altstacks() -> impl Iterator<Item = usize> {
    ALTSTACK
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .filter(|&v| v != 0)
}

/// Arena hook: `av` (locked, or the process is single-threaded) has work
/// queued by the scanner.  Called from the allocation slow path only.
///
/// # Safety
/// `av` is the caller's locked arena.
#[cold]
pub unsafe fn on_arena(av: *mut Arena) {
    if RESTART.load(Ordering::Acquire) && mode() != Mode::Off && scanner::start() {
        RESTART.store(false, Ordering::Release);
    }
    // SAFETY: `av` is locked by the caller (contract).
    unsafe { reclaim::drain(av, 64) };
}

/// [`claim`] for a chunk the program is freeing or resizing: a chunk KAL
/// held keeps its allocation stack until the false-reclaim report named
/// it (see `stacks::on_free`); it goes now.
///
/// # Safety
/// As [`claim`].
#[inline]
pub unsafe fn claim_freeing(p: ChunkPtr) -> bool {
    // SAFETY: forwarded contract.
    let r = unsafe { claim(p) };
    if r && stacks::ON.load(Ordering::Relaxed) {
        stacks::forget(p as usize + crate::chunk::HDR);
    }
    r
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

/// Which of KAL's locks `fork_prepare` took (bit per lock).
#[link_section = ".data.hot.rmalloc"]
static FORK_HELD: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
/// Which of the allocation-stack tables' locks it took (see `stacks`).
#[link_section = ".data.hot.rmalloc"]
static FORK_HELD_STACKS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
const ALL_FORK_LOCKS: u8 = 0b1111;

/// Take `m` within about 10 ms, or give up (a signal handler that forks
/// may have interrupted this very thread inside a KAL lock).
pub(crate) fn take_for_fork(m: &crate::lock::Mutex) -> bool {
    for _ in 0..10_000 {
        if m.try_lock() {
            return true;
        }
        sys::task::sleep_ns(1_000);
    }
    false
}

/// The program used `MADV_DONTFORK` or `MADV_WIPEONFORK`: the fork
/// backend's child cannot see that memory, so no snapshot proves anything.
pub static FORK_HIDDEN_MEMORY: AtomicBool = AtomicBool::new(false);

pub fn note_fork_hidden_memory() {
    FORK_HIDDEN_MEMORY.store(true, Ordering::Release);
}

/// Before `unshare`/`setns` calls that need a single-threaded process: end
/// the scanner; the next allocation slow path starts it again.  Returns
/// whether KAL is on (one of its threads may still be on its way out).
pub fn suspend_for_namespaces() -> bool {
    if mode() == Mode::Off {
        return false;
    }
    if scanner::suspend() {
        RESTART.store(true, Ordering::Release);
        arena::for_each_arena(|a| {
            // SAFETY: arenas are never freed.
            unsafe { (*a).kal_pending.store(true, Ordering::Release) };
        });
    }
    true
}

/// Fork prepare handler (after the arena locks): KAL's own locks, so the
/// child never inherits a half-updated queue, probation map or registry.
pub fn fork_prepare() {
    if mode() == Mode::Off {
        return;
    }
    let mut held = 0u8;
    for (bit, m) in [
        (1u8, reclaim::queue_lock()),
        (2, reclaim::probation_lock()),
        (4, &registry::LOCK),
        (8, lsan::lock()),
    ] {
        if take_for_fork(m) {
            held |= bit;
        }
    }
    FORK_HELD.store(held, Ordering::Relaxed);
    FORK_HELD_STACKS.store(stacks::fork_prepare(), Ordering::Relaxed);
}

/// Fork parent handler.
pub fn fork_parent() {
    stacks::fork_parent(FORK_HELD_STACKS.swap(0, Ordering::Relaxed));
    let held = FORK_HELD.swap(0, Ordering::Relaxed);
    for (bit, m) in [
        (1u8, reclaim::queue_lock()),
        (2, reclaim::probation_lock()),
        (4, &registry::LOCK),
        (8, lsan::lock()),
    ] {
        if held & bit != 0 {
            m.unlock();
        }
    }
}

/// Fork child handler: the scanner did not survive the fork.  The child
/// gets fresh state and a result area of its own (the inherited one is
/// shared with the parent); if KAL's structures could not be frozen for
/// the fork, KAL is turned off in the child rather than trust them.
pub fn after_fork_child() {
    let held = FORK_HELD.swap(0, Ordering::Relaxed);
    if mode() == Mode::Off {
        return;
    }
    stacks::fork_child(FORK_HELD_STACKS.swap(0, Ordering::Relaxed));
    stop::reset_after_fork();
    ptrace::reset_after_fork();
    lsan::reset_after_fork();
    statpage::after_fork_child();
    registry::reset_after_fork();
    reclaim::reset_after_fork();
    stats::reset();
    // SAFETY: only this thread exists in the child.
    unsafe { scanner::reset_after_fork() };
    // SAFETY: as above.
    let e = unsafe { scanner::engine() };
    let fresh = snapshot::Results::map();
    if held != ALL_FORK_LOCKS || fresh.is_none() {
        MODE.store(Mode::Off as u8, Ordering::Release);
        registry::ON.store(false, Ordering::Release);
        return;
    }
    e.results.forget();
    if let Some(r) = fresh {
        e.results = r;
    }
    report::reopen_after_fork(e.opts.log_path());
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
    if o.leak_check_at_exit() && lsan::first_check() {
        scanner::request_and_wait(true, 10_000_000_000);
        exit_if_leaked(o.exitcode);
    }
    statpage::remove();
}

/// LeakSanitizer's `exitcode`: after a full check found leaks, end the
/// process with that status (0: leave it alone).
fn exit_if_leaked(code: i32) {
    if code != 0 && lsan::LEAKS_FOUND.load(Ordering::Acquire) {
        statpage::remove();
        // SAFETY: flushing stdio at exit; the program's buffers would
        // otherwise be lost by the immediate exit below.
        unsafe { libc::fflush(core::ptr::null_mut()) };
        sys::task::exit_now(code);
    }
}

/// `__lsan_do_leak_check`: a full check and report now, once per process;
/// with `exitcode`, leaks end the process.
pub fn do_leak_check() {
    if mode() == Mode::Off || !lsan::first_check() {
        return;
    }
    // SAFETY: options are written once before the scanner starts.
    let code = unsafe { scanner::engine() }.opts.exitcode;
    lsan::LEAKS_FOUND.store(false, Ordering::Release);
    scanner::request_and_wait(true, 120_000_000_000);
    exit_if_leaked(code);
}

/// `__lsan_do_recoverable_leak_check`: a full check and report now; 1 if
/// it found leaks.
pub fn do_recoverable_leak_check() -> i32 {
    if mode() == Mode::Off {
        return 0;
    }
    lsan::LEAKS_FOUND.store(false, Ordering::Release);
    scanner::request_and_wait(true, 120_000_000_000);
    lsan::LEAKS_FOUND.load(Ordering::Acquire) as i32
}

/// `rmalloc_kal_scan_now`: one scan now, then (reclaim mode) free what
/// is due in every arena.
pub fn scan_now() -> i32 {
    if mode() == Mode::Off {
        return -1;
    }
    if RESTART.load(Ordering::Acquire) && scanner::start() {
        RESTART.store(false, Ordering::Release);
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
