//! The `fork` backend, for stock kernels: stop the threads, check that the
//! heap is at rest, read the kernel-held roots, take a copy-on-write child
//! with a raw `clone` (no atfork handlers run, no `SIGCHLD`, invisible to the
//! program's `wait`), release the threads, and let the child scan.
//!
//! The pause the program sees is the stop plus the `clone` (page-table
//! copy); the mark runs in the child at the scanner's idle priority.
//!
//! A snapshot is discarded (nothing freed from it) when a thread does not
//! stop, when any thread was stopped inside the allocator's own code or any
//! allocator lock was held (the heap may be mid-update), when a root
//! source cannot be read (reclaim mode), or when the child fails.

use rmalloc_sys as sys;
use sys::task;

use crate::arena;

use super::options::{Mode, Options};
use super::roots;
use super::scan::{self, Scratch};
use super::snapshot::{Discard, Results};
use super::stats;
use super::stop::{self, StopError};

/// The scanner's state that the child needs.
pub struct Frozen<'a> {
    pub opts: &'a Options,
    pub scratch: &'a mut Scratch,
    pub kroots: &'a mut super::mem::MVec<u64>,
    pub proc_text: &'a mut super::mem::MVec<u8>,
    pub results: &'a mut Results,
}

const SCHED_OTHER: usize = 0;
const SCHED_IDLE: usize = 5;

pub fn set_sched(policy: usize) {
    let param = 0i32;
    // SAFETY: sched_setscheduler on the calling thread with a valid param.
    let _ = unsafe {
        task::raw(
            libc::SYS_sched_setscheduler as usize,
            [0, policy, &param as *const i32 as usize, 0, 0, 0],
        )
    };
}

/// Is any allocator lock held, or is any stopped thread inside our code?
fn heap_busy() -> bool {
    let mut busy = stop::slots()
        .iter()
        .any(|s| stop::stopped(s) && s.in_allocator != 0);
    arena::for_each_arena(|a| {
        // SAFETY: arenas are never freed; reading the lock word is a plain
        // atomic load.
        busy |= unsafe { (*a).mutex.is_locked() };
    });
    busy |= arena::LIST_LOCK.is_locked() || arena::FREE_LIST_LOCK.is_locked();
    busy |= super::registry::LOCK.is_locked() || !super::reclaim::locks_free();
    busy
}

/// Take one snapshot and scan it.  On success the results are in
/// `f.results`.  `incomplete_roots` is set when a kernel root source was
/// unreadable in detect mode (the report may then name live objects).
pub fn take(f: &mut Frozen, incomplete_roots: &mut bool) -> Result<(), Discard> {
    let o = f.opts;
    for attempt in 0..5u64 {
        set_sched(SCHED_OTHER);
        let t0 = task::now_ns();
        match stop::stop_all(o.stop_signal, o.stop_timeout_ms * 1_000_000) {
            Ok(_) => {}
            Err(StopError::Timeout) | Err(StopError::Threads) => {
                set_sched(SCHED_IDLE);
                return Err(Discard::Stop);
            }
        }
        if heap_busy() {
            stop::release();
            set_sched(SCHED_IDLE);
            if attempt == 4 {
                return Err(Discard::Heap);
            }
            task::sleep_ns(200_000 * (attempt + 1));
            continue;
        }
        *incomplete_roots = false;
        if let Err(e) = roots::kernel_roots(f.kroots, f.proc_text, o.stop_signal) {
            if o.mode == Mode::Reclaim {
                stop::release();
                set_sched(SCHED_IDLE);
                super::report::log(
                    o.verbosity,
                    1,
                    format_args!("kernel-held roots unreadable: {e:?}"),
                );
                return Err(Discard::Roots);
            }
            *incomplete_roots = true;
        }
        f.results.reset();
        // SAFETY: the child only scans (raw system calls, memory it maps
        // itself, the shared result area) and ends with exit_now.
        let pid = unsafe { task::fork_raw() };
        match pid {
            Ok(0) => {
                set_sched(SCHED_IDLE);
                let _ = task::prctl(task::PR_SET_PDEATHSIG, task::SIGKILL);
                // SAFETY: this is the snapshot child: nothing else runs.
                let r = unsafe { scan::run(f.scratch, o, f.kroots.as_slice(), f.results) };
                f.results.finish(r);
                task::exit_now(0);
            }
            Ok(pid) => {
                stop::release();
                stats::note_pause(task::now_ns() - t0);
                set_sched(SCHED_IDLE);
                return match task::wait_clone(pid) {
                    Ok(status) if status == 0 => f.results.outcome(),
                    _ => Err(Discard::Resources),
                };
            }
            Err(_) => {
                stop::release();
                set_sched(SCHED_IDLE);
                return Err(Discard::Resources);
            }
        }
    }
    Err(Discard::Heap)
}
