//! The scanner thread: every `interval_ms` (or when asked), one snapshot
//! and scan; then the bookkeeping across scans: which chunks stayed
//! unreachable in consecutive snapshots, which are new leaks to report,
//! which are due for reclaim.
//!
//! The thread is a raw `clone`, unknown to glibc: the process stays
//! "single-threaded" for glibc (so the allocator keeps eliding its locks),
//! and the program never sees it in its own thread bookkeeping.  It runs at
//! the program's priority, so that a busy machine cannot stretch the pause;
//! the mark runs in the snapshot child at background priority.  It uses raw
//! system calls only and never allocates.
//!
//! Invariant: [`ENGINE`] is touched only by the scanner thread (and by the
//! snapshot child, on its own copy), except in a forked program child
//! before its scanner exists.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};

use rmalloc_sys as sys;
use sys::task;

use super::dissect::{INDIRECT, TENTATIVE};
use super::fork_backend;
use super::instant::Frozen;
use super::kernel_backend::{self, KernelState};
use super::mem::{self, AddrMap, MVec};
use super::options::{Mode, Options};
use super::pace::{self, Pace};
use super::reclaim;
use super::report::{self, Leak};
use super::scan::Scratch;
use super::snapshot::{Discard, Results};
use super::stats::{self, STATS};

/// A chunk seen unreachable, tracked across scans.
#[derive(Clone, Copy)]
struct Track {
    chunk: usize,
    size: usize,
    arena: usize,
    first_ms: u64,
    streak: u32,
    flags: u32,
}

const REPORTED: u32 = 1;
const IS_INDIRECT: u32 = 4;

pub struct Engine {
    pub opts: Options,
    scratch: Scratch,
    kroots: MVec<u64>,
    proc_text: MVec<u8>,
    pub results: Results,
    track: MVec<Track>,
    index: AddrMap,
    next_track: MVec<Track>,
    next_index: AddrMap,
    leaks: MVec<Leak>,
    groups: MVec<(bool, usize, usize, usize)>,
    due: MVec<reclaim::Due>,
    tentative: AddrMap,
    shared_copy: MVec<u8>,
    shared_index: MVec<(usize, usize, usize)>,
    kernel: KernelState,
    warned_handler: bool,
}

pub struct EngineCell(UnsafeCell<Engine>);
// SAFETY: see the module invariant: one thread at a time.
unsafe impl Sync for EngineCell {}

pub static ENGINE: EngineCell = EngineCell(UnsafeCell::new(Engine {
    opts: Options::defaults(),
    scratch: Scratch::new(),
    kroots: MVec::new(),
    proc_text: MVec::new(),
    results: Results::none(),
    track: MVec::new(),
    index: AddrMap::new(),
    next_track: MVec::new(),
    next_index: AddrMap::new(),
    leaks: MVec::new(),
    groups: MVec::new(),
    due: MVec::new(),
    tentative: AddrMap::new(),
    shared_copy: MVec::new(),
    shared_index: MVec::new(),
    kernel: KernelState::new(),
    warned_handler: false,
}));

/// Where the engine's state lives (in the library's data): never a root,
/// since it holds addresses of chunks it tracks and of image blocks.
pub fn engine_range() -> (usize, usize) {
    let p = ENGINE.0.get() as usize;
    (p, p + core::mem::size_of::<Engine>())
}

/// # Safety
/// Only the scanner thread, or start-up/fork code before the scanner runs.
pub unsafe fn engine() -> &'static mut Engine {
    // SAFETY: function contract (one user at a time).
    unsafe { &mut *ENGINE.0.get() }
}

/// Requests for a scan (bumped by `scan_now`) and scans finished.
static REQ: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
static LAST: AtomicI32 = AtomicI32::new(0);
/// The next requested scan is the one at exit: report everything.
static FINAL: AtomicBool = AtomicBool::new(false);
pub static RUNNING: AtomicBool = AtomicBool::new(false);
/// The scanner's tid while it runs; the kernel clears it when it exits.
static SCANNER_TID: AtomicU32 = AtomicU32::new(0);
/// Asks the scanner to end (see [`suspend`]).
static QUIT: AtomicBool = AtomicBool::new(false);

const STACK: usize = 256 * 1024;
static STACK_TOP: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Start the scanner thread.
pub fn start() -> bool {
    // One stack for every scanner of the process: a previous one has
    // exited (the kernel cleared its tid) before another is started.
    let mut top = STACK_TOP.load(Ordering::Acquire);
    if top == 0 {
        let Some((stack, len, _)) = mem::map(STACK) else {
            return false;
        };
        top = stack as usize + len;
        STACK_TOP.store(top, Ordering::Release);
    }
    if SCANNER_TID.load(Ordering::Acquire) != 0 {
        return false; // the previous scanner has not ended yet
    }
    super::statpage::create();
    QUIT.store(false, Ordering::Release);
    // SAFETY: a stack mapping that is never unmapped and that no other
    // scanner uses; `main` never returns and touches no TLS.
    let r = unsafe { task::spawn_raw_thread(top as *mut u8, main, 0, &SCANNER_TID) };
    if let Ok(tid) = r {
        // The kernel stores it too, but only once the thread first runs;
        // it cannot have exited before (QUIT is clear).
        SCANNER_TID.store(tid as u32, Ordering::Release);
    }
    RUNNING.store(r.is_ok(), Ordering::Release);
    r.is_ok()
}

extern "C" fn main(_: usize) -> ! {
    let _ = task::prctl(task::PR_SET_NAME, c"kal-scanner".as_ptr() as usize);
    // SAFETY: this is the scanner thread.
    let e = unsafe { engine() };
    let interval = e.opts.interval_ms * 1_000_000;
    let mut pace = Pace::new();
    let mut next_at = task::now_ns().saturating_add(interval);
    STATS.interval_ns.store(interval, Ordering::Relaxed);
    // Requests made before this thread ran are still to be served.
    let mut handled = DONE.load(Ordering::Acquire);
    loop {
        // A scan's cost is known a while after it ended: then it sets the
        // time of the next timed scan.
        if pace.settles_at().is_some_and(|t| task::now_ns() >= t) {
            settled(e, &mut pace, interval, &mut next_at, false);
        }
        // Shortly before a timed scan: the program's usual rate.
        let sample_at = next_at.saturating_sub(if e.opts.max_overhead == 0 {
            pace::SAMPLE_NS.min(interval / 2)
        } else {
            pace::SAMPLE_NS
        });
        if !pace.sampled() && pace.settles_at().is_none() && task::now_ns() >= sample_at {
            pace.sample();
        }
        let r = REQ.load(Ordering::Acquire);
        if r == handled && !QUIT.load(Ordering::Acquire) {
            let now = task::now_ns();
            // With pacing on, a timed scan waits until the last one's cost
            // is known: that cost may push it later.  (The after-window
            // counts from the window's actual close, so it can end after
            // the provisional `next_at`.)
            let settles = pace.settles_at();
            let measuring = e.opts.max_overhead != 0 && settles.is_some();
            let mut wake = match settles {
                Some(t) if measuring => t,
                Some(t) => next_at.min(t),
                None => next_at,
            };
            if !pace.sampled() && pace.settles_at().is_none() {
                wake = wake.min(sample_at);
            }
            if now < wake {
                task::futex_wait_timeout(&REQ, r, wake - now);
                continue; // a request, the time, or a spurious wake-up
            }
            if now < next_at || measuring {
                continue; // only the measurement or the sample was due
            }
        }
        if QUIT.load(Ordering::Acquire) {
            task::exit_thread();
        }
        let r = REQ.load(Ordering::Acquire);
        // A full-report request is served by the scan that serves it.
        let last = r != handled && FINAL.swap(false, Ordering::AcqRel);
        if pace.settles_at().is_some() {
            // The next scan comes before the last one's measurement ended
            // (a request, or no pacing): measure it up to here.
            settled(e, &mut pace, interval, &mut next_at, true);
        }
        let start = pace.start();
        let ok = one_scan(e, last);
        let until = pace.end(start, stats::take_pause());
        // Until the cost is known: the interval, and not before it is known
        // when pacing may stretch it.
        next_at = task::now_ns().saturating_add(interval);
        if e.opts.max_overhead != 0 {
            next_at = next_at.max(until);
        }
        handled = r;
        LAST.store(ok, Ordering::Release);
        DONE.store(r, Ordering::Release);
        sys::futex_wake(&DONE, i32::MAX as u32);
    }
}

/// The measurement of the last scan's cost is due to go on (or to end
/// `now`): once it has ended, account for it and set the next timed scan.
fn settled(e: &Engine, pace: &mut Pace, interval: u64, next_at: &mut u64, now: bool) {
    let Some((cost, ended)) = pace.settle(now) else {
        return;
    };
    let wait = pace::wait_ns(cost, interval, e.opts.max_overhead);
    // The wait counts from the scan's end; with pacing on, a whole sample
    // window of the usual rate comes first.
    *next_at = ended.saturating_add(wait);
    if e.opts.max_overhead != 0 {
        *next_at = (*next_at).max(task::now_ns().saturating_add(pace::SAMPLE_NS));
    }
    // What the program sees: the gap from this scan's end to the next.
    let wait = next_at.saturating_sub(ended);
    STATS.cost_ns_last.store(cost, Ordering::Relaxed);
    STATS.cost_ns_total.fetch_add(cost, Ordering::Relaxed);
    STATS.interval_ns.store(wait, Ordering::Relaxed);
    if wait > interval {
        report::log(
            e.opts.verbosity,
            1,
            format_args!(
                "paced: the scan cost the program {} us; next scan in {} ms (max_overhead={}.{:02}%)",
                cost / 1000,
                wait / 1_000_000,
                e.opts.max_overhead / 100,
                e.opts.max_overhead % 100
            ),
        );
    }
    super::statpage::update(&super::c_stats());
}

/// End the scanner thread and wait (at most 10 s) until it is gone, for
/// system calls that require a single-threaded process, such as
/// `unshare(CLONE_NEWUSER)`.  Returns whether one was running; `start`
/// brings it back once it has ended.
pub fn suspend() -> bool {
    if !RUNNING.swap(false, Ordering::AcqRel) {
        return false;
    }
    QUIT.store(true, Ordering::Release);
    REQ.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(&REQ, 1);
    // A scan in progress finishes first; bounded, so the caller's system
    // call is never held up for long (it then fails as without KAL's help).
    let deadline = task::now_ns() + 10_000_000_000;
    let tid = SCANNER_TID.load(Ordering::Acquire);
    loop {
        let t = SCANNER_TID.load(Ordering::Acquire);
        if t == 0 {
            break;
        }
        if task::now_ns() >= deadline {
            return true; // it ends after its scan; `start` waits for that
        }
        task::futex_wait_timeout(&SCANNER_TID, t, 100_000_000);
    }
    // The kernel clears the tid while the thread is still in the thread
    // group (the mm is released before the task is unhashed), and in that
    // window `unshare(CLONE_NEWUSER)` still fails with EINVAL.  Wait until
    // the thread is gone for the kernel too.
    let pid = sys::getpid();
    while tid != 0 && task::thread_alive(pid, tid as i32) && task::now_ns() < deadline {
        task::sleep_ns(20_000);
    }
    true
}

/// Ask for a scan and wait for it (at most `timeout_ns`).  Returns 1 if it
/// completed, 0 if discarded, -1 if no scanner runs or it timed out.
pub fn request_and_wait(final_scan: bool, timeout_ns: u64) -> i32 {
    if !RUNNING.load(Ordering::Acquire) {
        return -1;
    }
    let me = sys::gettid();
    super::stop::add_waiter(me);
    if final_scan {
        FINAL.store(true, Ordering::Release);
    }
    let want = REQ.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
    sys::futex_wake(&REQ, 1);
    let deadline = task::now_ns() + timeout_ns;
    let mut r = -1;
    loop {
        let d = DONE.load(Ordering::Acquire);
        if d.wrapping_sub(want) as i32 >= 0 {
            r = LAST.load(Ordering::Acquire);
            break;
        }
        let now = task::now_ns();
        if now >= deadline {
            break;
        }
        task::futex_wait_timeout(&DONE, d, (deadline - now).min(100_000_000));
    }
    super::stop::remove_waiter(me);
    r
}

fn discard(e: &Engine, d: Discard) -> i32 {
    STATS.discarded.fetch_add(1, Ordering::Relaxed);
    let c = match d {
        Discard::Stop => &STATS.discarded_stop,
        Discard::Roots => &STATS.discarded_roots,
        Discard::Heap | Discard::Resources | Discard::Slow | Discard::Killed => {
            &STATS.discarded_heap
        }
    };
    c.fetch_add(1, Ordering::Relaxed);
    super::statpage::update(&super::c_stats());
    report::log(
        e.opts.verbosity,
        1,
        format_args!("snapshot discarded: {}", d.why()),
    );
    0
}

fn one_scan(e: &mut Engine, last: bool) -> i32 {
    if !super::stop::still_installed(e.opts.stop_signal) {
        if !e.warned_handler {
            e.warned_handler = true;
            report::log(
                1,
                1,
                format_args!(
                    "the program replaced the handler of signal {}; no more scans \
                     (set stop_signal= to a signal it does not use)",
                    e.opts.stop_signal
                ),
            );
        }
        return discard(e, Discard::Stop);
    }
    let mut incomplete = false;
    let r = {
        let mut f = Frozen {
            opts: &e.opts,
            scratch: &mut e.scratch,
            kroots: &mut e.kroots,
            proc_text: &mut e.proc_text,
            results: &mut e.results,
            due: e.due.as_slice(),
            shared_copy: &mut e.shared_copy,
            shared_index: &mut e.shared_index,
        };
        if super::backend() == super::snapshot::Kind::Kernel {
            kernel_backend::take(&mut f, &mut e.kernel, &mut incomplete)
        } else {
            fork_backend::take(&mut f, &mut incomplete)
        }
    };
    e.due.clear();
    if let Err(d) = r {
        reclaim::verify(None, &mut |_, _, _| {});
        return discard(e, d);
    }
    // The verdict on the chunks put in tentative probation at this instant.
    e.tentative.clear();
    for f in e.results.found() {
        if f.flags & TENTATIVE as u64 != 0 {
            e.tentative.insert(f.chunk as usize, 1);
        }
    }
    let tentative = &e.tentative;
    let leaks = &mut e.leaks;
    leaks.clear();
    reclaim::verify(
        Some(&|c| tentative.get(c).is_some()),
        &mut |chunk, size, mmapped| {
            let usable = size - if mmapped { 2 } else { 1 } * crate::chunk::SIZE_SZ;
            leaks.push(Leak {
                addr: chunk + crate::chunk::HDR,
                size: usable,
                indirect: false,
            });
        },
    );
    if !e.leaks.is_empty() {
        let (_, objects) = report::leak_report(
            &mut e.leaks,
            &mut e.groups,
            true,
            e.opts.report_objects,
            e.opts.max_leaks,
        );
        STATS.leaks_reported.fetch_add(objects, Ordering::Relaxed);
    }
    let h = e.results.header();
    let (chunks, scanned, mark_ns, truncated) = (h.chunks, h.scanned, h.mark_ns, h.truncated);
    STATS.scans.fetch_add(1, Ordering::Relaxed);
    STATS.scan_ns_last.store(mark_ns, Ordering::Relaxed);
    STATS.bytes_scanned.fetch_add(scanned, Ordering::Relaxed);
    STATS.chunks_last.store(chunks, Ordering::Relaxed);
    track(e);
    report::log(
        e.opts.verbosity,
        1,
        format_args!(
            "scan: {} chunks, {} bytes scanned in {} us, {} unreachable{}",
            chunks,
            scanned,
            mark_ns / 1000,
            e.track.len(),
            if truncated != 0 {
                " (list truncated)"
            } else {
                ""
            }
        ),
    );
    // `__lsan_disable`: hold reports and reclaim back while it is open.
    if !super::lsan::disabled() || last {
        report_new(e, last);
    }
    if e.opts.mode == Mode::Reclaim && !incomplete && !last && !super::lsan::disabled() {
        queue_due(e);
    }
    super::statpage::update(&super::c_stats());
    1
}

/// Fold the scan's results into the tracking table.
fn track(e: &mut Engine) {
    let now = task::now_ns() / 1_000_000;
    e.next_track.clear();
    e.next_index.clear();
    let (mut n, mut bytes) = (0u64, 0u64);
    for f in e.results.found() {
        if f.flags & TENTATIVE as u64 != 0 {
            continue; // KAL's own, in probation
        }
        let (chunk, size) = (f.chunk as usize, f.size as usize);
        let mut t = Track {
            chunk,
            size,
            arena: f.arena as usize,
            first_ms: now,
            streak: 1,
            flags: if f.flags & INDIRECT as u64 != 0 {
                IS_INDIRECT
            } else {
                0
            },
        };
        if let Some(i) = e.index.get(chunk) {
            let old = e.track.as_slice()[i];
            if old.size == size && old.arena == t.arena {
                t.first_ms = old.first_ms;
                t.streak = old.streak.saturating_add(1);
                t.flags |= old.flags & REPORTED;
            }
        }
        if e.next_track.push(t) {
            e.next_index.insert(chunk, e.next_track.len() - 1);
        }
        n += 1;
        bytes += size as u64;
    }
    core::mem::swap(&mut e.track, &mut e.next_track);
    core::mem::swap(&mut e.index, &mut e.next_index);
    STATS.unreachable_chunks.store(n, Ordering::Relaxed);
    STATS.unreachable_bytes.store(bytes, Ordering::Relaxed);
}

fn usable(t: &Track) -> usize {
    // Heap chunks lend the next chunk's prev_size; mmapped ones do not.
    if t.arena == 0 {
        t.size - 2 * crate::chunk::SIZE_SZ
    } else {
        t.size - crate::chunk::SIZE_SZ
    }
}

/// Report leaks confirmed for the first time (or, at exit, all of them).
fn report_new(e: &mut Engine, last: bool) {
    // In reclaim mode, what is reclaimed is reported as such (`verify`);
    // only the exit report lists what is still leaked.
    if e.opts.mode == Mode::Reclaim && !last {
        return;
    }
    let confirm = e.opts.confirm_scans;
    e.leaks.clear();
    for t in e.track.as_mut_slice() {
        let due = if last {
            true
        } else {
            t.streak >= confirm && t.flags & REPORTED == 0
        };
        if due {
            t.flags |= REPORTED;
            e.leaks.push(Leak {
                addr: t.chunk + crate::chunk::HDR,
                size: usable(t),
                indirect: t.flags & IS_INDIRECT != 0,
            });
        }
    }
    if e.leaks.is_empty() {
        return;
    }
    let (_, objects) = report::leak_report(
        &mut e.leaks,
        &mut e.groups,
        false,
        e.opts.report_objects,
        e.opts.max_leaks,
    );
    STATS.leaks_reported.fetch_add(objects, Ordering::Relaxed);
    if last && objects > 0 {
        super::lsan::LEAKS_FOUND.store(true, Ordering::Release);
    }
}

/// List what has been unreachable long enough: put in tentative probation
/// at the next snapshot instant, held if that snapshot agrees.
fn queue_due(e: &mut Engine) {
    let now = task::now_ns() / 1_000_000;
    let (confirm, age) = (e.opts.confirm_scans, e.opts.min_free_age_ms);
    e.due.clear();
    for t in e.track.as_slice() {
        if t.streak < confirm || now < t.first_ms + age || reclaim::quarantined(t.size) {
            continue;
        }
        if !e.due.push(reclaim::Due {
            chunk: t.chunk,
            size: t.size,
            arena: t.arena,
        }) {
            break;
        }
    }
}

/// After the program's `fork`, in the child: no scanner, no history.
///
/// # Safety
/// Only from the fork child handler (one thread exists).
pub unsafe fn reset_after_fork() {
    RUNNING.store(false, Ordering::Release);
    // The parent's scanner does not exist here (its stack is free to use).
    SCANNER_TID.store(0, Ordering::Release);
    FINAL.store(false, Ordering::Relaxed);
    // SAFETY: no scanner thread exists in the child (function contract).
    let e = unsafe { engine() };
    e.track.clear();
    e.index.clear();
    if kernel_backend::scan_in_flight() {
        // A task sharing the parent's memory was changing the scratch
        // tables at the fork: their copies here may be torn.  Forget them
        // (their memory stays mapped, listed as the engine's).
        e.scratch = Scratch::new();
        e.kernel = KernelState::new();
    }
}
