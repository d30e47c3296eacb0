//! The snapshot instant, shared by every backend: stop the threads, check
//! that the heap is at rest, record what exists only at that instant (the
//! kernel-held roots, copies of the shared mappings), put the chunks due
//! for reclaim in tentative probation, and let the backend capture its
//! image while the threads are still stopped.  Then release the threads
//! and wait, with a deadline, for the task that scans the image.
//!
//! The pause the program sees is the stop plus the backend's capture; the
//! mark runs afterwards at background priority.
//!
//! A snapshot is discarded (nothing freed from it) when a thread does not
//! stop, when any thread was stopped inside the allocator's own code or any
//! allocator lock was held (the heap may be mid-update), when a root
//! source cannot be read (reclaim mode), or when the capture or the scan
//! fails.

use rmalloc_sys as sys;
use sys::task;

use crate::arena;

use core::sync::atomic::{AtomicBool, Ordering};

use super::options::{Mode, Options, StopMethod};
use super::roots;
use super::scan::Scratch;
use super::snapshot::{Discard, Results};
use super::stats;
use super::stop::{self, StopError};

/// Stops tried per scan before the snapshot is discarded.
const ATTEMPTS: u64 = 12;

/// `stop=auto` found ptrace refused once: use signals from then on.
static PTRACE_REFUSED: AtomicBool = AtomicBool::new(false);

/// The scanner's state that the instant and the scan need.
pub struct Frozen<'a> {
    pub opts: &'a Options,
    pub scratch: &'a mut Scratch,
    pub kroots: &'a mut super::mem::MVec<u64>,
    pub proc_text: &'a mut super::mem::MVec<u8>,
    pub results: &'a mut Results,
    /// Chunks to put in tentative probation at this instant (reclaim).
    pub due: &'a [super::reclaim::Due],
    /// Copies of the writable shared mappings at the instant:
    /// bytes, and (start, length, offset in the bytes) per mapping.
    pub shared_copy: &'a mut super::mem::MVec<u8>,
    pub shared_index: &'a mut super::mem::MVec<(usize, usize, usize)>,
}

/// Most bytes of shared memory copied per snapshot; beyond that a reclaim
/// scan is discarded (its roots could not be frozen).
const SHARED_COPY_MAX: usize = 256 << 20;

/// Copy every writable shared mapping (not the engine's own) while the
/// threads are stopped: fork does not copy them on write, so the child
/// would read them live.  False if they could not all be copied.
fn copy_shared(f: &mut Frozen) -> bool {
    f.shared_copy.clear();
    f.shared_index.clear();
    if roots::read_file(c"/proc/self/maps", f.proc_text).is_err() {
        return false;
    }
    let mut ok = true;
    let mut total = 0usize;
    let text = f.proc_text.as_slice();
    for line in text.split(|&b| b == b'\n') {
        let Some(m) = roots::parse_maps_line(line) else {
            continue;
        };
        let perms = line.split(|&b| b == b' ').nth(1).unwrap_or(b"");
        if !(m.read && m.write && perms.get(3) == Some(&b's')) {
            continue;
        }
        let mut internal = false;
        super::mem::for_each_internal(|a, b| internal |= a < m.end && m.start < b);
        if internal {
            continue;
        }
        let len = m.end - m.start;
        total += len;
        if total > SHARED_COPY_MAX || !f.shared_copy.reserve(len) {
            ok = false;
            break;
        }
        let off = f.shared_copy.len();
        // SAFETY: `reserve` made room for `len` more bytes after `off`; the
        // kernel reads the source (stable: every other thread is stopped)
        // and reports what it cannot read instead of raising SIGBUS.
        let copied = unsafe { task::copy_from_self(f.shared_copy.tail_ptr(), m.start, len) };
        if copied != Ok(len) || !f.shared_copy.grow_len(len) {
            ok = false;
            break;
        }
        ok &= f.shared_index.push((m.start, len, off));
    }
    ok
}

const SCHED_BATCH: usize = 3;
const SCHED_IDLE: usize = 5;

/// The snapshot child's priority: `SCHED_IDLE` when asked (`sched_idle=1`),
/// else `SCHED_BATCH` at nice 19.  (The scanner thread itself stays at the
/// program's priority: it mostly sleeps, and an unprivileged thread could
/// not raise its priority again for the stop, which must be short.)  Plain `SCHED_IDLE`
/// starves the scanner completely while the program keeps every CPU busy
/// (measured: no scan at all in 3 s, four busy threads on two cores), and
/// then leaks are never reclaimed where they matter most.
pub fn background(idle: bool) {
    if idle {
        set_sched(SCHED_IDLE, 0);
    } else {
        set_sched(SCHED_BATCH, 19);
    }
}

fn set_sched(policy: usize, nice: i32) {
    let param = 0i32;
    // SAFETY: sched_setscheduler and setpriority on the calling thread
    // with valid arguments.
    unsafe {
        let _ = task::raw(
            libc::SYS_sched_setscheduler as usize,
            [0, policy, &param as *const i32 as usize, 0, 0, 0],
        );
        let _ = task::raw(
            libc::SYS_setpriority as usize,
            [0, 0, nice as usize, 0, 0, 0],
        );
    }
}

/// Could the heap be mid-update?  With several threads, every change to
/// shared allocator state happens under a lock, except thread-cache
/// operations (thread-local; a list caught mid-push is one entry longer
/// than its count, which the dissection accepts, and the chunk in flight
/// is in the thread's registers) and lock-free fastbin pushes (one atomic
/// exchange): so "no lock held" is enough.  A single-threaded process
/// elides the locks, as glibc does: then its one thread must not have been
/// stopped inside the allocator's code.
fn heap_busy() -> bool {
    let mut busy = arena::single_threaded()
        && stop::slots()
            .iter()
            .any(|s| stop::stopped(s) && s.in_allocator != 0);
    arena::for_each_arena(|a| {
        // SAFETY: arenas are never freed; reading the lock word is a plain
        // atomic load.
        busy |= unsafe { (*a).mutex.is_locked() };
    });
    busy |= arena::LIST_LOCK.is_locked() || arena::FREE_LIST_LOCK.is_locked();
    busy |= super::registry::LOCK.is_locked() || !super::reclaim::locks_free();
    busy |= super::lsan::lock().is_locked();
    busy
}

/// Take one snapshot and scan it.  `capture` runs while every other thread
/// is stopped and the instant's records are in `f`; it starts the task
/// that scans the image and returns its id (a `clone` without an exit
/// signal, waited for with `__WCLONE`).  On success the results are in
/// `f.results`.  `incomplete_roots` is set when a kernel root source was
/// unreadable in detect mode (the report may then name live objects).  The
/// task is killed (and reaped) if it runs longer than `kill_after_ns`.
/// With `roots_in_image` the kernel records the kernel-held roots in the
/// backend's image at the instant, and the backend reads them from there:
/// none are read from `/proc` here.
pub fn take(
    f: &mut Frozen,
    incomplete_roots: &mut bool,
    roots_in_image: bool,
    kill_after_ns: u64,
    mut capture: impl FnMut(&mut Frozen, bool) -> Result<i32, Discard>,
) -> Result<(), Discard> {
    let o = f.opts;
    for attempt in 0..ATTEMPTS {
        let t0 = task::now_ns();
        let use_ptrace = match o.stop {
            StopMethod::Signal => false,
            StopMethod::Ptrace => true,
            StopMethod::Auto => !PTRACE_REFUSED.load(Ordering::Relaxed),
        };
        let stopped = if use_ptrace {
            match super::ptrace::stop_all(o.stop_timeout_ms * 1_000_000) {
                Err(StopError::NotPermitted) if o.stop == StopMethod::Auto => {
                    PTRACE_REFUSED.store(true, Ordering::Relaxed);
                    super::report::log(
                        o.verbosity,
                        1,
                        format_args!("ptrace not permitted here; stopping threads with signals"),
                    );
                    continue;
                }
                r => r,
            }
        } else {
            stop::stop_all(o.stop_signal, o.stop_timeout_ms * 1_000_000)
        };
        let release = || {
            if use_ptrace {
                super::ptrace::release()
            } else {
                stop::release()
            }
        };
        match stopped {
            Ok(_) => {}
            // A thread being created runs with every signal blocked for a
            // moment: worth a few more tries.
            Err(StopError::Blocked) if attempt + 1 < ATTEMPTS => {
                task::sleep_ns(1_000_000);
                continue;
            }
            Err(_) => return Err(Discard::Stop),
        }
        if heap_busy() {
            release();
            if attempt + 1 == ATTEMPTS {
                return Err(Discard::Heap);
            }
            // Locks are held for microseconds: try again soon, with a
            // little jitter so as not to fall into step with the program.
            task::sleep_ns(50_000 + (t0 % 97) * 1_000);
            continue;
        }
        let t_stop = task::now_ns();
        *incomplete_roots = false;
        if roots_in_image {
            f.kroots.clear();
        } else if let Err(e) = roots::kernel_roots(f.kroots, f.proc_text, o.stop_signal) {
            if o.mode == Mode::Reclaim {
                release();
                super::report::log(
                    o.verbosity,
                    1,
                    format_args!("kernel-held roots unreadable: {e:?}"),
                );
                return Err(Discard::Roots);
            }
            *incomplete_roots = true;
        }
        if super::FORK_HIDDEN_MEMORY.load(Ordering::Acquire) {
            if o.mode == Mode::Reclaim {
                release();
                return Err(Discard::Roots);
            }
            *incomplete_roots = true;
        }
        let shared_ok = copy_shared(f);
        if !shared_ok && o.mode == Mode::Reclaim {
            release();
            return Err(Discard::Roots);
        }
        if o.mode == Mode::Reclaim && !*incomplete_roots {
            // SAFETY: every other thread is stopped and no allocator lock
            // is held (checked above).
            unsafe { super::reclaim::flip_due(f.due) };
        }
        f.results.reset();
        let t_roots = task::now_ns();
        let pid = capture(f, shared_ok);
        match pid {
            Ok(pid) => {
                let t_capture = task::now_ns();
                release();
                stats::note_pause(task::now_ns() - t0);
                super::report::log(
                    o.verbosity,
                    2,
                    format_args!(
                        "pause: stop {} us, kernel roots {} us, capture {} us",
                        (t_stop - t0) / 1000,
                        (t_roots - t_stop) / 1000,
                        (t_capture - t_roots) / 1000
                    ),
                );
                // A mark that cannot finish (a machine with no idle CPU for
                // it) is abandoned: the child's copy-on-write pages would
                // otherwise grow with every write the program makes.
                return match task::wait_clone_timeout(pid, kill_after_ns) {
                    Ok(0) => f.results.outcome(),
                    // Killed at the deadline, or died of a signal.
                    Ok(_) | Err(task::ETIMEDOUT) => Err(Discard::Killed),
                    _ => Err(Discard::Resources),
                };
            }
            Err(d) => {
                release();
                return Err(d);
            }
        }
    }
    Err(Discard::Heap)
}
