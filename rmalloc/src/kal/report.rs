//! Leak reports in LeakSanitizer's format, and the engine's log lines.
//!
//! Reports go to `log_path.<pid>` when set (opened in append mode for each
//! report and closed after it), else to stderr.  Everything is formatted into fixed
//! buffers and written with raw system calls: the scanner thread has no
//! `errno` of its own and must never allocate.
//!
//! Leaks are grouped by kind and allocation stack (see [`super::stacks`]),
//! as LeakSanitizer groups them; leaks whose stack was not recorded
//! (`sites=off`, or not sampled) are grouped by kind and size, and each
//! such group says so in place of the stack.  Suppressed leaks
//! ([`super::suppress`]) are left out and counted.

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

/// A false reclaim: always reported, on the log and on stderr, with the
/// chunk's allocation stack when it was recorded.
pub fn false_reclaim(mem: usize, size: usize, site: Option<u32>) {
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
        let what = if site.is_some() { "site" } else { "size class" };
        let _ = writeln!(
            o,
            "=={}== KAL: FALSE RECLAIM: the program used {mem:#x} ({size} bytes) after KAL had \
             reclaimed it; the call is honoured and reclaim of this {what} is stopped",
            sys::getpid()
        );
        if let Some(id) = site {
            let _ = writeln!(o, "allocated from:");
            print_stack(&mut o, id);
        }
    }
}

/// The frames of stack `id`, LeakSanitizer-style without a symbolizer:
/// `    #N 0xPC  (module+0xoffset) (BuildId: hex)`, then a blank line.  The address shown
/// is the call instruction's (return address minus one), as LeakSanitizer
/// shows it; `kal report` symbolizes these lines.
pub fn print_stack(o: &mut impl Write, id: u32) {
    let mut frames = [0usize; super::stacks::MAX_FRAMES];
    let n = super::stacks::frames(id, &mut frames);
    for (i, &ra) in frames[..n].iter().enumerate() {
        let pc = ra.wrapping_sub(1);
        match super::modules::find(pc) {
            Some(m) => {
                let _ = write!(
                    o,
                    "    #{i} {pc:#x}  ({}+{:#x})",
                    core::str::from_utf8(m.name()).unwrap_or("?"),
                    pc - m.base
                );
                if !m.build_id().is_empty() {
                    let _ = write!(o, " (BuildId: ");
                    for b in m.build_id() {
                        let _ = write!(o, "{b:02x}");
                    }
                    let _ = write!(o, ")");
                }
                let _ = writeln!(o);
            }
            None => {
                let _ = writeln!(o, "    #{i} {pc:#x}  (<unknown module>)");
            }
        }
    }
    let _ = writeln!(o);
}

/// A leaked chunk to report.
#[derive(Clone, Copy)]
pub struct Leak {
    pub addr: usize,
    pub size: usize,
    pub indirect: bool,
}

/// One group of a report: (indirect, stack id or 0, total bytes, count,
/// first index into the sorted entries).
#[derive(Clone, Copy)]
struct Group {
    indirect: bool,
    site: u32,
    bytes: usize,
    count: usize,
    first: usize,
}

/// A leak with its stack (scanner-only scratch).
#[derive(Clone, Copy)]
struct Entry {
    indirect: bool,
    site: u32,
    size: usize,
    addr: usize,
}

struct Scratch(core::cell::UnsafeCell<(MVec<Entry>, MVec<Group>)>);
// SAFETY: reports are written by the scanner thread only.
unsafe impl Sync for Scratch {}
static SCRATCH: Scratch = Scratch(core::cell::UnsafeCell::new((MVec::new(), MVec::new())));

/// Print a report of `leaks`, grouped by allocation stack as
/// LeakSanitizer does (by size where the stack was not recorded), without
/// the suppressed ones (counted in the "Suppressions used" block).
/// `reclaiming` names the groups as reclaimed rather than leaked.  Returns
/// (bytes, objects) reported.  `_groups` is kept for the caller's
/// signature.
pub fn leak_report(
    leaks: &mut MVec<Leak>,
    _groups: &mut MVec<(bool, usize, usize, usize)>,
    reclaiming: bool,
    report_objects: bool,
    max_leaks: u64,
) -> (u64, u64) {
    if leaks.is_empty() {
        return (0, 0);
    }
    // SAFETY: scanner thread only (see `Scratch`).
    let (entries, groups) = unsafe { &mut *SCRATCH.0.get() };
    entries.clear();
    groups.clear();
    super::suppress::reset_counts();
    let stacks_on = super::stacks::ON.load(Ordering::Relaxed);
    for l in leaks.as_slice() {
        let (site, size) = match stacks_on {
            true => super::stacks::site_and_size(l.addr, l.size)
                .map_or((None, l.size), |(s, n)| (Some(s), n)),
            false => (None, l.size),
        };
        if super::suppress::count_if_suppressed(site, size as u64) {
            continue;
        }
        entries.push(Entry {
            indirect: l.indirect,
            site: site.unwrap_or(0),
            size,
            addr: l.addr,
        });
    }
    let key = |e: &Entry| (e.indirect, e.site, if e.site == 0 { e.size } else { 0 });
    entries
        .as_mut_slice()
        .sort_unstable_by_key(|e| (key(e), usize::MAX - e.size, e.addr));
    let (mut bytes, mut objects) = (0u64, 0u64);
    for (i, e) in entries.as_slice().iter().enumerate() {
        bytes += e.size as u64;
        objects += 1;
        match groups.as_mut_slice().last_mut() {
            Some(g) if key(&entries.as_slice()[g.first]) == key(e) => {
                g.count += 1;
                g.bytes += e.size;
            }
            _ => {
                groups.push(Group {
                    indirect: e.indirect,
                    site: e.site,
                    bytes: e.size,
                    count: 1,
                    first: i,
                });
            }
        }
    }
    // Direct before indirect, larger totals first, as LeakSanitizer orders.
    groups
        .as_mut_slice()
        .sort_unstable_by_key(|g| (g.indirect, usize::MAX - g.bytes, g.first));
    let mut o = out();
    if groups.is_empty() {
        super::suppress::print_used(&mut o);
        o.flush();
        return (0, 0);
    }
    let _ = writeln!(
        o,
        "\n=================================================================\n\
         =={}==ERROR: KAL: detected memory leaks\n",
        sys::getpid()
    );
    let shown = if max_leaks == 0 {
        groups.len()
    } else {
        (max_leaks as usize).min(groups.len())
    };
    if shown < groups.len() {
        let _ = writeln!(o, "The {shown} top leak(s):");
    }
    for g in &groups.as_slice()[..shown] {
        let what = match (reclaiming, g.indirect) {
            (true, _) => "Reclaimed",
            (false, false) => "Direct leak of",
            (false, true) => "Indirect leak of",
        };
        let _ = writeln!(
            o,
            "{what} {} byte(s) in {} object(s) allocated from:",
            g.bytes, g.count
        );
        if g.site != 0 {
            print_stack(&mut o, g.site);
        } else {
            let _ = writeln!(o, "    #0 (allocation stack not recorded)\n");
        }
        if report_objects {
            let _ = writeln!(o, "Objects leaked above:");
            for e in &entries.as_slice()[g.first..g.first + g.count] {
                let _ = writeln!(o, "{:#x} ({} bytes)", e.addr, e.size);
            }
            let _ = writeln!(o);
        }
    }
    if shown < groups.len() {
        let _ = writeln!(o, "Omitting {} more leak(s).", groups.len() - shown);
    }
    super::suppress::print_used(&mut o);
    let _ = writeln!(
        o,
        "SUMMARY: KAL: {bytes} byte(s) leaked in {objects} allocation(s)."
    );
    o.flush();
    (bytes, objects)
}
