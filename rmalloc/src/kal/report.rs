//! Leak reports in LeakSanitizer's format, and the engine's log lines.
//!
//! Reports go to `log_path.<pid>` when set (opened once per process, in
//! append mode), else to stderr.  Everything is formatted into fixed
//! buffers and written with raw system calls: the scanner thread has no
//! `errno` of its own and must never allocate.
//!
//! Without allocation stacks (a later addition), leaks are grouped by
//! kind and size, and each group says so in place of the stack.

use core::fmt::Write;
use core::sync::atomic::{AtomicI32, Ordering};

use rmalloc_sys as sys;

use crate::fmt::{FixedBuf, Out, Sink};

use super::mem::MVec;

static LOG_FD: AtomicI32 = AtomicI32::new(2);

/// Open `path.<pid>` for the reports; stderr if it cannot be opened.
pub fn open_log(path: Option<&[u8]>) {
    let Some(path) = path else {
        LOG_FD.store(2, Ordering::Relaxed);
        return;
    };
    let mut name = FixedBuf::<1100>::new();
    let _ = write!(
        name,
        "{}.{}\0",
        core::str::from_utf8(path).unwrap_or("kal"),
        sys::getpid()
    );
    let cstr = core::ffi::CStr::from_bytes_until_nul(name.as_bytes()).unwrap_or(c"/dev/null");
    match sys::task::open_append(cstr) {
        Ok(fd) => LOG_FD.store(fd, Ordering::Relaxed),
        Err(_) => {
            LOG_FD.store(2, Ordering::Relaxed);
            let mut o = Out::<256>::new(Sink::Fd(2));
            let _ = writeln!(
                o,
                "KAL: cannot open log_path {}; reporting to stderr",
                cstr.to_str().unwrap_or("?")
            );
            o.flush();
        }
    }
}

/// After `fork`: a child reports to its own `log_path.<pid>`.
pub fn reopen_after_fork(path: Option<&[u8]>) {
    if path.is_some() {
        open_log(path);
    }
}

pub fn out() -> Out<1024> {
    Out::new(Sink::Fd(LOG_FD.load(Ordering::Relaxed)))
}

/// One line at the given verbosity.
pub fn log(verbosity: u32, need: u32, args: core::fmt::Arguments) {
    if verbosity >= need {
        let mut o = out();
        let _ = writeln!(o, "==={}== KAL: {}", sys::getpid(), args);
        o.flush();
    }
}

/// A false reclaim: always reported, on the log and on stderr.
pub fn false_reclaim(mem: usize, size: usize) {
    let fd = LOG_FD.load(Ordering::Relaxed);
    let sinks = [fd, 2];
    let n = if fd == 2 { 1 } else { 2 };
    for &sink in &sinks[..n] {
        let mut o = Out::<512>::new(Sink::Fd(sink));
        let _ = writeln!(
            o,
            "=={}== KAL: FALSE RECLAIM: the program used {mem:#x} ({size} bytes) after KAL had \
             reclaimed it; the call is honoured and reclaim of this size class is stopped",
            sys::getpid()
        );
        o.flush();
    }
}

/// A leaked chunk to report.
#[derive(Clone, Copy)]
pub struct Leak {
    pub addr: usize,
    pub size: usize,
    pub indirect: bool,
}

/// Print a report of `leaks` (sorted here, in place).  `reclaiming` names
/// the groups as reclaimed rather than leaked.  Returns (bytes, objects).
pub fn leak_report(
    leaks: &mut MVec<Leak>,
    groups: &mut MVec<(bool, usize, usize, usize)>,
    reclaiming: bool,
    report_objects: bool,
    max_leaks: u64,
) -> (u64, u64) {
    if leaks.is_empty() {
        return (0, 0);
    }
    leaks
        .as_mut_slice()
        .sort_unstable_by_key(|l| (l.indirect, usize::MAX - l.size, l.addr));
    // Groups: (indirect, size, count, first index).
    groups.clear();
    let (mut bytes, mut objects) = (0u64, 0u64);
    for (i, l) in leaks.as_slice().iter().enumerate() {
        bytes += l.size as u64;
        objects += 1;
        match groups.as_mut_slice().last_mut() {
            Some(g) if g.0 == l.indirect && g.1 == l.size => g.2 += 1,
            _ => {
                groups.push((l.indirect, l.size, 1, i));
            }
        }
    }
    // Direct before indirect, larger totals first, as LeakSanitizer orders.
    groups
        .as_mut_slice()
        .sort_unstable_by_key(|g| (g.0, usize::MAX - g.1 * g.2));
    let mut o = out();
    let _ = writeln!(
        o,
        "\n=================================================================\n\
         =={}==ERROR: KAL: detected memory leaks\n",
        sys::getpid()
    );
    for (n, g) in groups.as_slice().iter().enumerate() {
        if max_leaks != 0 && n as u64 >= max_leaks {
            break;
        }
        let what = match (reclaiming, g.0) {
            (true, _) => "Reclaimed",
            (false, false) => "Direct leak",
            (false, true) => "Indirect leak",
        };
        let _ = writeln!(
            o,
            "{what} of {} byte(s) in {} object(s) allocated from:\n    \
             #0 (allocation stacks are not recorded yet)\n",
            g.1 * g.2,
            g.2
        );
        if report_objects {
            let _ = writeln!(o, "Objects leaked above:");
            for l in &leaks.as_slice()[g.3..g.3 + g.2] {
                let _ = writeln!(o, "{:#x} ({} bytes)", l.addr, l.size);
            }
            let _ = writeln!(o);
        }
    }
    let _ = writeln!(
        o,
        "SUMMARY: KAL: {bytes} byte(s) leaked in {objects} allocation(s)."
    );
    o.flush();
    (bytes, objects)
}
