//! The `fork` backend, for stock kernels: at the instant (see
//! [`super::instant`]) take a copy-on-write child with a raw `clone` (no
//! atfork handlers run, no `SIGCHLD`, invisible to the program's `wait`)
//! and let the child scan its own memory, which is the image.
//!
//! The pause includes the `clone`, whose page-table copy grows with the
//! heap's resident pages.  The child runs at background priority and hands
//! its results back through the shared result area.

use rmalloc_sys as sys;
use sys::task;

use crate::view::Live;

use super::dissect::Tables;
use super::instant::{self, Frozen};
use super::scan::{self, Instant, Source};
use super::snapshot::Discard;

/// Take one snapshot with `fork` and scan it (see [`instant::take`]).
pub fn take(f: &mut Frozen, incomplete_roots: &mut bool) -> Result<(), Discard> {
    let kill_after = f.opts.scan_timeout_ms * 1_000_000;
    let parent = sys::getpid();
    let r = instant::take(f, incomplete_roots, false, kill_after, |f, shared_ok| {
        // SAFETY: the child only scans (raw system calls, memory it maps
        // itself, the shared result area) and ends with exit_now.
        match unsafe { task::fork_raw() } {
            Ok(0) => {
                // Drop the inherited descriptors at once: a copy of a pipe's
                // write end would delay the EOF its reader waits for.
                // SAFETY: close_range only closes this child's fds.
                let _ = unsafe { task::raw(436, [0, u32::MAX as usize, 0, 0, 0, 0]) };
                instant::background(f.opts.sched_idle);
                task::die_with_parent(parent);
                let r = scan_self(f, shared_ok);
                f.results.finish(r);
                task::exit_now(0);
            }
            Ok(pid) => Ok(pid),
            Err(_) => Err(Discard::Resources),
        }
    });
    // The deadline is enforced by killing the child, whose memory is its
    // own: a kill here is the ordinary "too slow".
    r.map_err(|d| {
        if d == Discard::Killed {
            Discard::Slow
        } else {
            d
        }
    })
}

/// The child's scan: everything is read in place, frozen at the instant.
fn scan_self(f: &mut Frozen, shared_ok: bool) -> Result<(), Discard> {
    let mut ok = true;
    for v in super::altstacks() {
        ok &= f.kroots.push(v as u64);
    }
    if !ok {
        return Err(Discard::Resources);
    }
    // SAFETY: this is the snapshot child: nothing else runs in this
    // address space, so the engine's tables are those of the instant.
    let (mmapped, probation, (ignored, regions)) = unsafe {
        (
            super::registry::frozen(),
            super::reclaim::frozen_probation(),
            super::lsan::frozen(),
        )
    };
    let inst = Instant {
        slots: super::stop::slots(),
        kroots: f.kroots.as_slice(),
        shared: shared_ok.then(|| (f.shared_copy.as_slice(), f.shared_index.as_slice())),
        maps: f.proc_text.as_slice(),
        // The scan excludes the child's own mappings as they are then.
        internal: &[],
        tables: Tables {
            mmapped,
            probation,
            ignored,
        },
        regions,
    };
    // SAFETY: the child's memory is the image: mapped where the instant
    // had it mapped (the scan checks), and nothing changes it.
    let mut v = unsafe { Live::new() };
    scan::run(&mut v, &Source::Fork, f.scratch, f.opts, &inst, f.results)
}
