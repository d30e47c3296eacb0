//! Leak reports in LeakSanitizer's format, and the engine's log lines.
//!
//! Reports go to `log_path.<pid>` when set (opened in append mode for each
//! report and closed after it), else to stderr.  Everything is formatted into fixed
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

/// `log_path.<pid>` with its NUL, or empty for stderr.  Written at
/// start-up and in a fork child before any scanner runs.
struct LogName(core::cell::UnsafeCell<FixedBuf<1100>>);
// SAFETY: written only while no scanner thread exists (start-up, fork
// child handler); read-only afterwards.
unsafe impl Sync for LogName {}
static LOG_NAME: LogName = LogName(core::cell::UnsafeCell::new(FixedBuf::new()));
/// Whether reports go to the file (else stderr).
static TO_FILE: AtomicI32 = AtomicI32::new(0);

/// Report to `path.<pid>` (opened for each report, in append mode, so no
/// descriptor of ours stays open for the program to close or reuse);
/// stderr when unset or when it cannot be opened.
pub fn open_log(path: Option<&[u8]>) {
    TO_FILE.store(0, Ordering::Relaxed);
    let Some(path) = path else {
        return;
    };
    // SAFETY: see `LogName`: no other thread reads it now.
    let name = unsafe { &mut *LOG_NAME.0.get() };
    *name = FixedBuf::new();
    let _ = write!(
        name,
        "{}.{}\0",
        core::str::from_utf8(path).unwrap_or("kal"),
        sys::getpid()
    );
    match log_fd_open() {
        Some(fd) => {
            sys::close(fd);
            TO_FILE.store(1, Ordering::Relaxed);
        }
        None => {
            let mut o = Out::<256>::new(Sink::Fd(2));
            let _ = writeln!(
                o,
                "KAL: cannot open log_path {}.<pid>; reporting to stderr",
                core::str::from_utf8(path).unwrap_or("?")
            );
            o.flush();
        }
    }
}

fn log_fd_open() -> Option<i32> {
    // SAFETY: see `LogName`: read-only once reports can be written.
    let name = unsafe { &*LOG_NAME.0.get() };
    let cstr = core::ffi::CStr::from_bytes_until_nul(name.as_bytes()).ok()?;
    sys::task::open_append(cstr).ok()
}

/// After `fork`: a child reports to its own `log_path.<pid>`.
pub fn reopen_after_fork(path: Option<&[u8]>) {
    if path.is_some() {
        open_log(path);
    }
}

/// A report being written: to the log file (closed when dropped) or stderr.
pub struct Log {
    out: Out<1024>,
    fd: i32,
}

impl Write for Log {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.out.write_str(s)
    }
}

impl Log {
    pub fn flush(&mut self) {
        self.out.flush();
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.out.flush();
        if self.fd != 2 {
            sys::close(self.fd);
        }
    }
}

pub fn out() -> Log {
    let fd = if TO_FILE.load(Ordering::Relaxed) != 0 {
        log_fd_open().unwrap_or(2)
    } else {
        2
    };
    Log {
        out: Out::new(Sink::Fd(fd)),
        fd,
    }
}

/// One line at the given verbosity.
pub fn log(verbosity: u32, need: u32, args: core::fmt::Arguments) {
    if verbosity >= need {
        let mut o = out();
        let _ = writeln!(o, "=={}== KAL: {}", sys::getpid(), args);
        o.flush();
    }
}

/// A false reclaim: always reported, on the log and on stderr.
pub fn false_reclaim(mem: usize, size: usize) {
    let to_file = TO_FILE.load(Ordering::Relaxed) != 0;
    for file in [true, false] {
        if file && !to_file {
            continue;
        }
        let mut o = if file {
            out()
        } else {
            Log {
                out: Out::new(Sink::Fd(2)),
                fd: 2,
            }
        };
        let _ = writeln!(
            o,
            "=={}== KAL: FALSE RECLAIM: the program used {mem:#x} ({size} bytes) after KAL had \
             reclaimed it; the call is honoured and reclaim of this size class is stopped",
            sys::getpid()
        );
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
            (false, false) => "Direct leak of",
            (false, true) => "Indirect leak of",
        };
        let _ = writeln!(
            o,
            "{what} {} byte(s) in {} object(s) allocated from:\n    \
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
