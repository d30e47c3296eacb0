//! The `kernel` backend, for kernels with the `kal_snapshot` system call
//! (`kernel-patch/`): at the instant (see [`super::instant`]) the kernel
//! captures a copy-on-write image of the process's private mappings, and a
//! task that shares the address space (a `CLONE_VM` child at background
//! priority, so no page table is copied for it) scans the image through a
//! bounded block cache ([`super::image`]).
//!
//! Everything the scan interprets comes from the instant: the heap from
//! the image, and the engine's own tables (registry of mmapped chunks,
//! probation, ignored objects, root regions, the stopped threads'
//! registers, the list of the engine's mappings) from copies made while
//! the threads were stopped.  The engine's mappings are left out of the
//! image: they are never roots.
//!
//! The threads are stopped by the engine itself (ptrace or signals), not
//! by the call's `KAL_SNAPSHOT_STOP_THREADS`: the checks at the instant
//! (no allocator lock held, kernel-held roots, shared mappings, the
//! tentative-probation flip) must run while the threads are held, and ABI
//! version 1 gives user space no such window.
//!
//! Kernel-held roots (epoll data, POSIX timer values, queued signals'
//! values) come from the image itself where the kernel records them
//! (`KAL_FEATURE_ROOTS`): taken under the call's locks at the instant, and
//! complete where `/proc` is not (no `/proc/self/timers` without
//! CONFIG_CHECKPOINT_RESTORE; no queued signal's value at all).  The
//! scanning task reads them, so they cost the pause only the kernel's
//! walk.  A kind the kernel could not record in full frees nothing.  The
//! kernel walks the calling thread's descriptor table for epoll instances:
//! the scanner thread shares the program's (`task::THREAD_FLAGS`).

use rmalloc_sys as sys;
use sys::kal::{KalRange, KalRoot};
use sys::task;

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::dissect::Tables;
use super::image::{BlockCache, ImageView};
use super::instant::{self, Frozen};
use super::mem::{self, AddrMap, MVec};
use super::options::Mode;
use super::roots;
use super::scan::{self, Instant, Scratch, Source};
use super::snapshot::Discard;
use super::stop::{self, Slot};

/// The engine's state for this backend, kept across scans.
pub struct KernelState {
    /// Ranges captured, sorted and disjoint: (start, end).
    captured: MVec<(usize, usize)>,
    ranges: MVec<KalRange>,
    internal: MVec<(usize, usize)>,
    /// Byte copy of the stop slots at the instant.
    slots: MVec<u8>,
    registry: AddrMap,
    probation: AddrMap,
    ignored: AddrMap,
    regions: MVec<(usize, usize)>,
    cache: BlockCache,
    stack_top: usize,
    /// The kernel-held roots read from the image (by the scanning task).
    kernel_roots: MVec<KalRoot>,
    /// The image said a kind of kernel-held root is incomplete (detect
    /// mode; in reclaim mode the scan is discarded instead).
    roots_incomplete: bool,
    job: Job,
}

struct Job {
    frozen: *mut Frozen<'static>,
    state: *mut KernelState,
    fd: i32,
    shared_ok: bool,
    /// The image records the kernel-held roots.
    roots: bool,
    deadline: u64,
    /// The program's process id (the task's parent).
    parent: i32,
}

impl KernelState {
    pub const fn new() -> Self {
        KernelState {
            captured: MVec::new(),
            ranges: MVec::new(),
            internal: MVec::new(),
            slots: MVec::new(),
            registry: AddrMap::new(),
            probation: AddrMap::new(),
            ignored: AddrMap::new(),
            regions: MVec::new(),
            cache: BlockCache::new(),
            stack_top: 0,
            kernel_roots: MVec::new(),
            roots_incomplete: false,
            job: Job {
                frozen: core::ptr::null_mut(),
                state: core::ptr::null_mut(),
                fd: -1,
                shared_ok: false,
                roots: false,
                deadline: 0,
                parent: 0,
            },
        }
    }
}

/// Stack of the scanning task, and the guard page below it.
const STACK: usize = 256 << 10;
const GUARD: usize = sys::PAGE_SIZE;

/// Does the kernel record the kernel-held roots in its images: 0 not yet
/// known, 1 no, 2 yes.
static ROOTS_IN_IMAGE: AtomicU8 = AtomicU8::new(0);

/// Does this kernel record the kernel-held roots in its images
/// (`/sys/kernel/mm/kal/features` has `KAL_FEATURE_ROOTS`)?  Then they are
/// taken from there, always: the record is made at the instant.
pub fn roots_in_image() -> bool {
    match ROOTS_IN_IMAGE.load(Ordering::Relaxed) {
        0 => {
            let yes = sys::kal::features() & sys::kal::KAL_FEATURE_ROOTS != 0;
            ROOTS_IN_IMAGE.store(1 + yes as u8, Ordering::Relaxed);
            yes
        }
        v => v == 2,
    }
}

/// A scanning task exists (between its spawn and its reaping).
static IN_FLIGHT: AtomicBool = AtomicBool::new(false);

/// Was a scanning task sharing the memory when the program forked?
pub fn scan_in_flight() -> bool {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// Take one snapshot with `kal_snapshot` and scan it.
pub fn take(
    f: &mut Frozen,
    k: &mut KernelState,
    incomplete_roots: &mut bool,
) -> Result<(), Discard> {
    // The task stops itself at the deadline (`ImageView`); it is killed
    // only if it cannot even run to notice (no CPU for it at all).
    let deadline = task::now_ns() + f.opts.scan_timeout_ms * 1_000_000;
    let kill_after = f.opts.scan_timeout_ms * 1_000_000 * 2 + 1_000_000_000;
    let roots = roots_in_image();
    k.roots_incomplete = false;
    let r = instant::take(f, incomplete_roots, roots, kill_after, |f, shared_ok| {
        capture(f, k, shared_ok, roots, deadline)
    });
    IN_FLIGHT.store(false, Ordering::Release);
    *incomplete_roots |= k.roots_incomplete;
    if r == Err(Discard::Killed) {
        // The task died or was killed wherever it was, maybe in the middle
        // of growing a table: forget what it was using.  (The memory stays
        // mapped and listed as the engine's, so it is never scanned.)
        *f.scratch = Scratch::new();
        k.cache = BlockCache::new();
    }
    r
}

/// At the instant: record the engine's tables, capture the image, start
/// the scanning task.  Returns its id.
fn capture(
    f: &mut Frozen,
    k: &mut KernelState,
    shared_ok: bool,
    roots: bool,
    deadline: u64,
) -> Result<i32, Discard> {
    if k.stack_top == 0 {
        let (p, len, _) = mem::map(STACK + GUARD).ok_or(Discard::Resources)?;
        // SAFETY: the lowest page of a mapping of ours; an overflow of the
        // task's stack then faults instead of writing below it.
        if unsafe { sys::mprotect(p, GUARD, 0) }.is_err() {
            return Err(Discard::Resources);
        }
        k.stack_top = p as usize + len;
    }
    if !record(f, k) {
        return Err(Discard::Resources);
    }
    // The map of the instant, read after the engine's last change to its
    // own mappings (the records above may have grown its tables).
    if roots::read_file(c"/proc/self/maps", f.proc_text).is_err() {
        return Err(Discard::Roots);
    }
    if !plan_ranges(f.proc_text.as_slice(), k) {
        return Err(Discard::Resources);
    }
    let flags = if roots {
        sys::kal::KAL_SNAPSHOT_ROOTS
    } else {
        0
    };
    let fd = match sys::kal::kal_snapshot(k.ranges.as_slice(), flags) {
        Ok(fd) => fd,
        Err(e) => {
            super::report::log(
                f.opts.verbosity,
                1,
                format_args!("kal_snapshot failed (errno {e}); snapshot discarded"),
            );
            // EPERM: MADV_DONTFORK/WIPEONFORK memory; EOPNOTSUPP: a mapping
            // the kernel cannot capture.  Either way a root is unreadable.
            return Err(match e {
                sys::kal::EPERM | sys::kal::EOPNOTSUPP => Discard::Roots,
                _ => Discard::Resources,
            });
        }
    };
    // The task outlives this call's frame but not `take`'s, which waits
    // for it (or kills and reaps it) before returning.
    k.job = Job {
        frozen: (f as *mut Frozen).cast::<Frozen<'static>>(),
        state: k as *mut KernelState,
        fd,
        shared_ok,
        roots,
        deadline,
        parent: sys::getpid(),
    };
    let arg = &k.job as *const Job as usize;
    // SAFETY: a stack mapping of ours that only this task uses; `scan_task`
    // never returns and touches no TLS; without CLONE_THREAD the task is a
    // process of its own, reaped with __WCLONE and killable alone.
    IN_FLIGHT.store(true, Ordering::Release);
    let r = unsafe { task::spawn_raw(CLONE_VM, k.stack_top as *mut u8, scan_task, arg) };
    // The task has its own copy of the descriptor table.
    sys::close(fd);
    if r.is_err() {
        IN_FLIGHT.store(false, Ordering::Release);
    }
    r.map_err(|_| Discard::Resources)
}

const CLONE_VM: usize = 0x100;

extern "C" fn scan_task(arg: usize) -> ! {
    // SAFETY: `arg` is the job `capture` filled in; the scanner thread
    // leaves it, the Frozen and the state alone until this task is reaped.
    // The job lives inside the state: copy it out before borrowing that.
    let job = unsafe { (arg as *const Job).read() };
    // SAFETY: as above: this task has exclusive use of both meanwhile.
    let (f, k) = unsafe { (&mut *job.frozen, &mut *job.state) };
    // Keep only the image's descriptor: a copy of a pipe's write end would
    // delay the EOF its reader waits for.
    let fd = job.fd as usize;
    // SAFETY: close_range only closes this task's own descriptor table.
    unsafe {
        if fd > 0 {
            let _ = task::raw(436, [0, fd - 1, 0, 0, 0, 0]);
        }
        let _ = task::raw(436, [fd + 1, u32::MAX as usize, 0, 0, 0, 0]);
    }
    instant::background(f.opts.sched_idle);
    task::die_with_parent(job.parent);
    let r = scan_image(f, k, &job);
    f.results.finish(r);
    task::exit_now(0);
}

fn scan_image(f: &mut Frozen, k: &mut KernelState, job: &Job) -> Result<(), Discard> {
    let (fd, shared_ok, deadline) = (job.fd, job.shared_ok, job.deadline);
    if job.roots {
        // The altstacks are in already (`record`); add the kernel's record.
        let complete = image_roots(fd, &mut k.kernel_roots, f.kroots);
        if complete != Ok(true) {
            if f.opts.mode == Mode::Reclaim {
                return Err(Discard::Roots);
            }
            k.roots_incomplete = true;
        }
    }
    let KernelState {
        captured,
        internal,
        slots,
        registry,
        probation,
        ignored,
        regions,
        cache,
        ..
    } = k;
    let slots: &[Slot] = match slots.as_slice() {
        [] => &[],
        // SAFETY: the bytes are a copy of whole `Slot`s (plain integers
        // and atomics, valid for any bits), in page-aligned storage.
        b => unsafe {
            core::slice::from_raw_parts(
                b.as_ptr() as *const Slot,
                b.len() / core::mem::size_of::<Slot>(),
            )
        },
    };
    let inst = Instant {
        slots,
        kroots: f.kroots.as_slice(),
        shared: shared_ok.then(|| (f.shared_copy.as_slice(), f.shared_index.as_slice())),
        maps: f.proc_text.as_slice(),
        internal: internal.as_slice(),
        tables: Tables {
            mmapped: registry,
            probation,
            ignored,
        },
        regions: regions.as_slice(),
    };
    let captured = captured.as_slice();
    let mut v = ImageView::new(fd, captured, cache, deadline).ok_or(Discard::Resources)?;
    let r = scan::run(
        &mut v,
        &Source::Kernel { captured },
        f.scratch,
        f.opts,
        &inst,
        f.results,
    );
    if v.late {
        return Err(Discard::Slow);
    }
    r
}

/// Append the values of the kernel-held roots that image `fd` recorded to
/// `out`.  Ok(false) when the kernel could not record a kind in full,
/// Err(()) when the record cannot be read.
fn image_roots(fd: i32, buf: &mut MVec<KalRoot>, out: &mut MVec<u64>) -> Result<bool, ()> {
    let h = sys::kal::read_roots(fd, &mut []).map_err(|_| ())?;
    let n = h.nr_roots as usize;
    if n == 0 {
        return Ok(h.incomplete == 0);
    }
    buf.clear();
    if !buf.reserve(n) || !out.reserve(n) {
        return Err(());
    }
    // SAFETY: `reserve` made room for `n` elements after the (empty)
    // contents, in the engine's own mapping, whose bytes are initialised
    // (zero-filled or old entries); `KalRoot` is plain integers.
    let room = unsafe { core::slice::from_raw_parts_mut(buf.tail_ptr(), n) };
    let h = sys::kal::read_roots(fd, room).map_err(|_| ())?;
    // The record is fixed when the image is taken: the same count again.
    if h.nr_roots as usize != n || h.nr_copied as usize != n {
        return Err(());
    }
    for r in room.iter() {
        if !out.push(r.value) {
            return Err(());
        }
    }
    Ok(h.incomplete == 0)
}

/// Copy what the scan needs of the engine's own state, as it is at the
/// instant.  Every other thread is stopped and holds none of the locks
/// guarding these tables (the instant checked).
fn record(f: &mut Frozen, k: &mut KernelState) -> bool {
    let mut ok = true;
    k.internal.clear();
    mem::for_each_internal(|a, b| ok &= k.internal.push((a, b)));
    k.internal.as_mut_slice().sort_unstable();
    let s = stop::slots();
    let bytes = core::mem::size_of_val(s);
    k.slots.clear();
    ok &= k.slots.reserve(bytes);
    if ok {
        // SAFETY: room for `bytes` was reserved; the slots of the stopped
        // threads are not written until the next stop.
        unsafe {
            core::ptr::copy_nonoverlapping(s.as_ptr() as *const u8, k.slots.tail_ptr(), bytes)
        };
        ok &= k.slots.grow_len(bytes);
    }
    // SAFETY: the tables' writers are stopped outside their locks (see
    // above), so they are as consistent as the snapshot child sees them.
    let (registry, probation, (ignored, regions)) = unsafe {
        (
            super::registry::frozen(),
            super::reclaim::frozen_probation(),
            super::lsan::frozen(),
        )
    };
    ok &= k.registry.copy_from(registry);
    ok &= k.probation.copy_from(probation);
    ok &= k.ignored.copy_from(ignored);
    k.regions.clear();
    for &r in regions {
        ok &= k.regions.push(r);
    }
    for v in super::altstacks() {
        ok &= f.kroots.push(v as u64);
    }
    ok
}

/// The ranges to capture, from the maps text of the instant: every private
/// mapping except the kernel's special ones, minus the engine's own
/// mappings; adjacent ranges merged.
fn plan_ranges(maps: &[u8], k: &mut KernelState) -> bool {
    k.captured.clear();
    let mut ok = true;
    let internal = k.internal.as_slice();
    roots::for_each_area(maps, |a| {
        if a.special || a.shared || !ok {
            return;
        }
        // Subtract the engine's mappings (sorted) from [start, end).
        let mut at = a.start;
        let i0 = internal.partition_point(|&(_, e)| e <= at);
        for &(s, e) in &internal[i0..] {
            if s >= a.end {
                break;
            }
            if s > at {
                ok &= push_merged(&mut k.captured, at, s);
            }
            at = at.max(e);
        }
        if at < a.end {
            ok &= push_merged(&mut k.captured, at, a.end);
        }
    });
    k.ranges.clear();
    for &(s, e) in k.captured.as_slice() {
        ok &= k.ranges.push(KalRange {
            start: s as u64,
            len: (e - s) as u64,
        });
    }
    ok && !k.ranges.is_empty() && k.ranges.len() <= sys::kal::KAL_MAX_RANGES
}

fn push_merged(v: &mut MVec<(usize, usize)>, s: usize, e: usize) -> bool {
    if let Some(last) = v.as_mut_slice().last_mut() {
        if last.1 == s {
            last.1 = e;
            return true;
        }
    }
    v.push((s, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_leave_out_shared_special_and_engine_memory() {
        let maps = b"\
1000-3000 rw-p 00000000 00:00 0 \n\
3000-5000 r--p 00000000 08:01 12 /usr/lib/x\n\
5000-6000 rw-s 00000000 00:05 7 /dev/zero (deleted)\n\
7000-9000 rw-p 00000000 00:00 0 \n\
a000-b000 r-xp 00000000 00:00 0 [vdso]\n";
        let mut k = KernelState::new();
        assert!(k.internal.push((0x7000, 0x8000)));
        assert!(plan_ranges(maps, &mut k));
        assert_eq!(k.captured.as_slice(), &[(0x1000, 0x5000), (0x8000, 0x9000)]);
        assert_eq!(
            k.ranges.as_slice()[1],
            KalRange {
                start: 0x8000,
                len: 0x1000
            }
        );
    }
}
