//! Pacing: what each scan costs the program, and how long the scanner
//! waits before its next timer-driven scan so that scans cost the program
//! at most `max_overhead` percent of its time (kept in hundredths).
//!
//! A scan costs the program two things.  The pause: its threads are
//! stopped while the snapshot is taken.  And copy-on-write work: while the
//! snapshot lives, the first write to each page it shares with the
//! program costs the writing thread a fault and a page copy in the kernel
//! (and, with the kernel backend, the first write under each pending page
//! table a table copy).  On a large heap written at random the second is
//! by far the larger: a 1 GiB heap rewritten within the life of one
//! snapshot costs 262,144 faults.  It is measured, not modelled: the
//! program's system CPU time during the scan (the process's, less the
//! scanner thread's own) beyond what the program spent at its rate
//! between scans.
//!
//! The usual rate is the lower of two: the rate over the [`SAMPLE_NS`]
//! before a timed scan (or, for a requested scan, over the time since the
//! last measurement ended), and the rate over the [`AFTER_NS`] after the
//! scan's window, once the snapshot is gone.  Programs change phase: a
//! start-up that goes on through a scan is not the scan's cost (counted,
//! it held scans off for minutes under emulation), and copy-on-write work
//! must not hide in the rate of a start-up that just ended.  Rates come
//! only from windows of at least 100 ms: system time is accounted in
//! ticks.  So with pacing on, timed scans are at least the settling time,
//! [`AFTER_NS`] and [`SAMPLE_NS`] apart (at least 500 ms plus the scan),
//! whatever `interval_ms` says.
//!
//! The cost counts CPU time as wall time, which overstates it for a
//! program that is idle or runs on several CPUs: pacing errs towards
//! fewer scans.  Requested scans (`rmalloc_kal_scan_now`, the leak check
//! at exit, `__lsan_do_leak_check`) are never delayed, but their cost
//! counts.  What it does not see: the reclaim drain, which runs in the
//! program's threads in user mode in bounded batches, and cache and
//! memory-bandwidth interference from the scan running on another CPU.

use rmalloc_sys as sys;
use sys::task;

/// The longest pacing makes the scanner wait between scans.
pub const MAX_WAIT_NS: u64 = 3600 * 1_000_000_000;

/// The program's system CPU time now: the process's less the calling
/// (scanner) thread's.  `None` if the kernel would not say.
fn program_sys_ns() -> Option<u64> {
    let all = task::system_cpu_ns(task::RUSAGE_SELF).ok()?;
    let me = task::system_cpu_ns(task::RUSAGE_THREAD).ok()?;
    Some(all.saturating_sub(me))
}

/// The pacing state: when the last measurement ended, and the program's
/// system time then.
pub struct Pace {
    end_ns: u64,
    end_sys: u64,
    /// The program's system time per wall time before the last scan (ns
    /// per ns, as a fraction); `None` until a window of at least
    /// [`MIN_RATE_NS`] was seen.
    rate: Option<(u64, u64)>,
    /// The scan whose cost is still being measured.
    pending: Option<Pending>,
    /// The time and the program's system time shortly before a timed
    /// scan: the usual rate is taken from there when there is one, so that
    /// neither the program's start-up nor the last scan's late faults count
    /// as usual.
    before: Option<(u64, u64)>,
    /// [`Pace::sample`] was called since the last scan began (even if the
    /// kernel would not say).
    sampled: bool,
}

/// A scan under way: when it began, the program's system time then.
#[derive(Clone, Copy)]
pub struct Start {
    at: u64,
    sys: Option<u64>,
}

/// A scan that ended and whose cost is being measured: first over its
/// window (the scan and the settling time after it), then over the
/// [`AFTER_NS`] after that, which gives the program's rate once the
/// snapshot is gone.
#[derive(Clone, Copy)]
struct Pending {
    start: Start,
    pause_ns: u64,
    /// When the scan ended.
    ended: u64,
    /// When its window closes.
    closes_at: u64,
    /// Once closed, what was measured over it.
    window: Option<Window>,
}

/// A scan's window, closed.
#[derive(Clone, Copy)]
struct Window {
    len: u64,
    /// The program's system time over it.
    used: Option<u64>,
    /// The time and system time the rate after it counts from.
    after_from: Option<(u64, u64)>,
}

/// The lower of two rates (ns per ns, as fractions), either possibly unknown.
fn lower(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some(x), Some(y)) => {
            // x.0/x.1 <= y.0/y.1, in floating point (see `settle`).
            if x.0 as f64 * y.1 as f64 <= y.0 as f64 * x.1 as f64 {
                Some(x)
            } else {
                Some(y)
            }
        }
        (x, None) => x,
        (None, y) => y,
    }
}

impl Pace {
    /// Pacing from now on (call it on the scanner thread).
    pub fn new() -> Pace {
        Pace {
            end_ns: task::now_ns(),
            end_sys: program_sys_ns().unwrap_or(0),
            rate: None,
            pending: None,
            before: None,
            sampled: false,
        }
    }

    /// Note the program's system time now, shortly before a timed scan.
    pub fn sample(&mut self) {
        self.before = program_sys_ns().map(|s| (task::now_ns(), s));
        self.sampled = true;
    }

    /// Whether [`Pace::sample`] was called since the last scan began.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// A scan begins: the time since [`Pace::sample`] (or else since the
    /// last measurement ended) gives the program's usual rate of system
    /// time.
    pub fn start(&mut self) -> Start {
        let at = task::now_ns();
        let sys = program_sys_ns();
        let (t0, s0) = self.before.take().unwrap_or((self.end_ns, self.end_sys));
        self.sampled = false;
        if let Some(s) = sys {
            // System time is accounted in ticks (the split of a thread's
            // time between user and system mode is sampled), so a short
            // window says little: keep the rate of the last long one.
            let gap = at.saturating_sub(t0);
            if gap >= MIN_RATE_NS {
                self.rate = Some((s.saturating_sub(s0), gap));
            }
        }
        Start { at, sys }
    }

    /// The scan that began at `s` has ended; `pause_ns` is how long the
    /// program's threads were stopped.  Its cost is measured until the
    /// time returned (see [`Pace::settle`]).
    pub fn end(&mut self, s: Start, pause_ns: u64) -> u64 {
        let now = task::now_ns();
        let settle = now.saturating_sub(s.at).clamp(SETTLE_MIN_NS, SETTLE_MAX_NS);
        let closes_at = now.saturating_add(settle);
        self.pending = Some(Pending {
            start: s,
            pause_ns,
            ended: now,
            closes_at,
            window: None,
        });
        closes_at.saturating_add(AFTER_NS)
    }

    /// When [`Pace::settle`] is next due, if a measurement is under way.
    pub fn settles_at(&self) -> Option<u64> {
        self.pending.map(|p| match p.window {
            None => p.closes_at,
            // From when the window actually closed (the scanner may wake
            // late), so that the rate after it has its full length.
            Some(w) => w
                .after_from
                .map_or(p.closes_at, |(t, _)| t)
                .saturating_add(AFTER_NS),
        })
    }

    /// Go on with the measurement under way, at the time
    /// [`Pace::settles_at`] said, or end it early (`now`: another scan is
    /// about to start).  At the end: the scan's cost to the program in ns,
    /// the pause included, and when the scan ended.  `None` while the
    /// measurement goes on, or if there is none.
    pub fn settle(&mut self, now: bool) -> Option<(u64, u64)> {
        let mut p = self.pending.take()?;
        let t = task::now_ns();
        let sys = program_sys_ns();
        let w = match p.window {
            Some(w) => w,
            None => {
                let w = Window {
                    len: t.saturating_sub(p.start.at),
                    used: p.start.sys.zip(sys).map(|(a, b)| b.saturating_sub(a)),
                    after_from: sys.map(|s| (t, s)),
                };
                if !now {
                    p.window = Some(w);
                    self.pending = Some(p);
                    return None;
                }
                w
            }
        };
        let after = match (w.after_from, sys) {
            (Some((t0, s0)), Some(s)) if t.saturating_sub(t0) >= MIN_RATE_NS => {
                Some((s.saturating_sub(s0), t - t0))
            }
            _ => None,
        };
        // The usual rate is the lower of the one before the scan and the
        // one after it.  A program whose start-up (page faults, seconds of
        // system time under emulation) goes on through its first scan,
        // 20 ms in with no rate before it, would otherwise have it counted
        // as the scan's cost; one whose start-up ends just before a scan
        // would have the copy-on-write work hidden in its start-up rate.
        // A start-up that ends within the window still counts: pacing errs
        // towards fewer scans, by one window at most.  With neither rate
        // known (scans back to back from the start), all of it counts.
        let extra = match (w.used, lower(self.rate, after)) {
            (Some(used), Some((rs, rt))) => {
                // In floating point: a 128-bit division would call a
                // compiler helper through the GOT (see c_api's test), and
                // the product overflows 64 bits.  The cast saturates.
                let usual = (w.len as f64 * rs as f64 / rt.max(1) as f64) as u64;
                used.saturating_sub(usual)
            }
            (Some(used), None) => used,
            (None, _) => 0,
        };
        self.end_ns = t;
        self.end_sys = sys.unwrap_or(self.end_sys);
        Some((p.pause_ns.saturating_add(extra), p.ended))
    }
}

/// How long before a timed scan the usual rate is sampled.  With pacing
/// on, timed scans are never closer than this plus the settling time and
/// [`AFTER_NS`].
pub const SAMPLE_NS: u64 = 200_000_000;

/// The shortest window a rate is taken from.
const MIN_RATE_NS: u64 = 100_000_000;

/// How long after a scan's window the program's rate is measured.
const AFTER_NS: u64 = 200_000_000;

/// How long after a scan its cost is still measured: its own duration,
/// within these bounds.
const SETTLE_MIN_NS: u64 = 100_000_000;
const SETTLE_MAX_NS: u64 = 1_000_000_000;

/// How long to wait after a scan that cost `cost_ns` before the next
/// timer-driven one: `interval_ns`, or longer if that would let scans cost
/// more than `max_overhead` hundredths of a percent (0: no pacing).
pub fn wait_ns(cost_ns: u64, interval_ns: u64, max_overhead: u64) -> u64 {
    if max_overhead == 0 {
        return interval_ns;
    }
    let paced = (cost_ns as f64 * 10_000.0 / max_overhead as f64).min(MAX_WAIT_NS as f64) as u64;
    interval_ns.max(paced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_keeps_the_cost_to_its_share() {
        let ms = 1_000_000;
        // Cheap scans keep the interval (max_overhead in hundredths of %).
        assert_eq!(wait_ns(ms, 2000 * ms, 100), 2000 * ms);
        // A scan that cost 50 ms at 1% waits 5 s; at 0.25%, 20 s; at 5%,
        // 1 s, so the interval.
        assert_eq!(wait_ns(50 * ms, 2000 * ms, 100), 5000 * ms);
        assert_eq!(wait_ns(50 * ms, 2000 * ms, 25), 20_000 * ms);
        assert_eq!(wait_ns(50 * ms, 2000 * ms, 500), 2000 * ms);
        // 0 turns pacing off; the wait is bounded.
        assert_eq!(wait_ns(50 * ms, 2 * ms, 0), 2 * ms);
        assert_eq!(wait_ns(u64::MAX, 2 * ms, 1), MAX_WAIT_NS);
    }

    #[test]
    fn system_time_spent_during_a_scan_is_its_cost() {
        let _one = ONE_AT_A_TIME.lock();
        let mut p = Pace::new();
        // Between scans the test thread makes no system calls to speak of
        // (for long enough to give a usual rate), then "during the scan"
        // another thread faults in fresh pages: the program's system time
        // grows, the scanner's (this thread's) not.
        sleep_ms(120);
        let s = p.start();
        fault_in_256_mib();
        let until = p.end(s, 1_000);
        let closes = p.settles_at().unwrap();
        assert_eq!(closes + AFTER_NS, until);
        sleep_until(closes);
        assert_eq!(p.settle(false), None, "the rate after the scan comes first");
        let after = p.settles_at().unwrap();
        assert!(
            after >= until,
            "{after} < {until}: AFTER_NS from the actual close"
        );
        sleep_until(after);
        let (cost, _) = p.settle(false).unwrap();
        assert_eq!(p.settle(false), None);
        // 65,536 page faults take well over a millisecond of system time.
        assert!(cost > 1_000_000, "cost {cost} ns");
        // A scan during which nothing happens costs its pause, give or
        // take the accounting's grain (ticks) and the other tests' threads,
        // also when the next scan ends its measurement early.
        let s = p.start();
        p.end(s, 7_000);
        let (cost, _) = p.settle(true).unwrap();
        assert!((7_000..50_000_000).contains(&cost), "cost {cost} ns");
    }

    /// The measurement is of the whole process: these tests fault pages
    /// in, and would count each other's.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn sleep_ms(ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    fn sleep_until(t: u64) {
        let now = task::now_ns();
        std::thread::sleep(std::time::Duration::from_nanos(t.saturating_sub(now)));
    }

    fn fault_in_256_mib() {
        std::thread::spawn(|| {
            let mut v = vec![0u8; 256 << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn work_that_goes_on_after_the_scan_is_not_its_cost() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        // Scanned 20 ms after start-up (no rate before), while the program
        // faults its heap in, which goes on after the scan: that is the
        // program's own work, not the scan's cost.
        let _one = ONE_AT_A_TIME.lock();
        let mut p = Pace::new();
        let stop = Arc::new(AtomicBool::new(false));
        let faulting = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut v = vec![0u8; 64 << 20];
                    for i in (0..v.len()).step_by(4096) {
                        v[i] = 1;
                    }
                    std::hint::black_box(&v);
                }
            })
        };
        sleep_ms(20);
        let s = p.start();
        sleep_ms(300);
        p.end(s, 3_000);
        sleep_until(p.settles_at().unwrap());
        assert_eq!(p.settle(false), None);
        sleep_until(p.settles_at().unwrap());
        let cost = p.settle(false).map(|(c, _)| c);
        stop.store(true, Ordering::Relaxed);
        faulting.join().unwrap();
        // About 600 ms of faulting in the window, at the same rate as
        // after it: what is left is the pause and the accounting's grain,
        // and the faulting thread's share of a busy machine, which moves
        // (counted as the scan's, all of it would be about 550 ms).
        let cost = cost.unwrap();
        assert!((3_000..250_000_000).contains(&cost), "cost {cost} ns");
    }
}
