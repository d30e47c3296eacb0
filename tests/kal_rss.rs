//! Leak-injected workloads: resident memory with and without KAL.
//!
//! The program is the demo's server (`benches/demo/leaky_server.c`), compiled
//! here: it handles requests (buffers, header strings, sessions, responses)
//! and loses 2% of its request buffers (0.5-16 KiB each) by dropping the
//! pointer.  It runs single-threaded, and as an I/O thread feeding 4 worker
//! threads through a shared queue, with per-worker sessions.
//!
//! What is asserted (RSS only, never time):
//! - Under glibc and under rmalloc with KAL off, RSS grows with the leak: at
//!   the end it is above the no-leak run's by most of the leaked bytes, and it
//!   is still growing in the second half of the run.
//! - Under KAL detect mode the same holds (detect frees nothing), and the
//!   leaks are reported.
//! - Under KAL reclaim mode peak RSS stays within 1.5x of the no-leak run's
//!   (rmalloc, same program, leak switched off), most leaked bytes are
//!   reclaimed, and there is no false reclaim.
//! - Every run prints the same deterministic output (checksum, leaked bytes).
//!
//! The program calls `rmalloc_kal_scan_now()` every `SCAN_EVERY` requests
//! (found through `dlsym`), so how many scans happen does not depend on how
//! much CPU the machine gives KAL's background thread; the background interval
//! is set long.  KAL options: `confirm_scans=2:min_free_age_ms=0:probation_ms=0`
//! (the contract: a dropped object is freed by the third scan after it).

use rmalloc_integration as support;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const REQUESTS: u64 = 300_000;
const LEAK_PER_MILLE: u32 = 20;
const WORKERS: u32 = 4;
/// An explicit scan every this many requests: about 0.85 MiB leaked between scans.
const SCAN_EVERY: u64 = 5_000;
/// Only there to turn a hang into a failure.
const TIMEOUT: Duration = Duration::from_secs(240);
const RECLAIM_OPTIONS: &str =
    "mode=reclaim:interval_ms=3600000:confirm_scans=2:min_free_age_ms=0:probation_ms=0:max_leaks=3";
const DETECT_OPTIONS: &str = "mode=detect:interval_ms=3600000:confirm_scans=2:max_leaks=3";

fn program() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = support::workspace_root();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kal_rss");
        std::fs::create_dir_all(&dir).expect("create build dir");
        let exe = dir.join("leaky_server");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let out = support::run(
            Command::new(cc)
                .args(["-O2", "-Wall", "-pthread"])
                .arg(format!("-I{}", root.join("rmalloc/include").display()))
                .arg("-o")
                .arg(&exe)
                .arg(root.join("benches/demo/leaky_server.c"))
                .arg("-ldl"),
            Duration::from_secs(120),
        );
        assert!(
            out.success(),
            "compiling leaky_server.c failed\n{}",
            out.describe()
        );
        exe
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Malloc {
    Glibc,
    Rmalloc,
}

#[derive(Debug)]
struct Run {
    what: String,
    out: support::Output,
    /// (rss MiB, leaked MiB) at each tenth of the requests.
    ticks: Vec<(f64, f64)>,
    maxrss: f64,
    final_rss: f64,
    leaked: f64,
    /// `kal ...` line fields (empty when KAL is not exported).
    kal: Vec<(String, String)>,
}

impl Run {
    fn kal_num(&self, key: &str) -> f64 {
        self.kal
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{}: no {key} on the kal line\n{}", self.what, self.tail()))
    }

    fn kal_str(&self, key: &str) -> &str {
        self.kal
            .iter()
            .find(|(k, _)| k == key)
            .map_or("?", |(_, v)| v.as_str())
    }

    /// The output that depends only on the work done: leaked bytes per tick,
    /// and the summary without timings and RSS.
    fn deterministic(&self) -> Vec<String> {
        let keep = ["requests", "leaked_mib", "handled", "checksum"];
        self.out
            .stdout
            .lines()
            .filter_map(|l| {
                if l.starts_with("tick") {
                    // What the program leaked is deterministic; what KAL
                    // reclaimed (`reclaimed=`, rmalloc+KAL only) is not.
                    let leaked = l.split("leaked=").nth(1)?;
                    let leaked = leaked.split("reclaimed=").next()?.trim();
                    Some(format!("{} leaked={leaked}", &l[..7]))
                } else if l.starts_with("summary") {
                    Some(
                        l.split_whitespace()
                            .filter(|w| keep.iter().any(|k| w.starts_with(&format!("{k}="))))
                            .collect::<Vec<_>>()
                            .join(" "),
                    )
                } else {
                    None
                }
            })
            .collect()
    }

    fn tail(&self) -> String {
        self.out.describe()
    }

    fn rss_table(&self) -> String {
        self.ticks
            .iter()
            .map(|(r, l)| format!("{r:.1}/{l:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn summary_num(stdout: &str, key: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("summary"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

fn run(malloc: Malloc, threads: u32, leak: u32, scan_every: u64, kal: Option<&str>) -> Run {
    let what = format!(
        "{malloc:?} threads={threads} leak={leak}/1000 scan_every={scan_every} KAL_OPTIONS={}",
        kal.unwrap_or("-")
    );
    let mut cmd = Command::new(program());
    cmd.args([
        REQUESTS.to_string(),
        leak.to_string(),
        threads.to_string(),
        scan_every.to_string(),
    ]);
    for var in [
        "LD_PRELOAD",
        "KAL_OPTIONS",
        "GLIBC_TUNABLES",
        "MALLOC_ARENA_MAX",
    ] {
        cmd.env_remove(var);
    }
    if malloc == Malloc::Rmalloc {
        cmd.env("LD_PRELOAD", support::lib_path());
    }
    if let Some(o) = kal {
        cmd.env("KAL_OPTIONS", o);
    }
    let out = support::run(&mut cmd, TIMEOUT);
    assert!(out.success(), "{what}: failed\n{}", out.describe());
    let from = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("malloc from "))
        .unwrap_or("?")
        .to_string();
    let expect = match malloc {
        Malloc::Glibc => "libc.so",
        Malloc::Rmalloc => "librmalloc.so",
    };
    assert!(
        from.contains(expect),
        "{what}: malloc resolves to {from}, expected {expect}\n{}",
        out.describe()
    );
    let num_after = |l: &str, key: &str| -> Option<f64> {
        l.split(key).nth(1)?.split_whitespace().next()?.parse().ok()
    };
    let ticks: Vec<(f64, f64)> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("tick"))
        .filter_map(|l| Some((num_after(l, "rss=")?, num_after(l, "leaked=")?)))
        .collect();
    assert_eq!(
        ticks.len(),
        10,
        "{what}: expected 10 tick lines\n{}",
        out.describe()
    );
    let kal = out
        .stdout
        .lines()
        .find(|l| l.starts_with("kal mode="))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    Run {
        maxrss: summary_num(&out.stdout, "maxrss_mib").expect("maxrss_mib"),
        final_rss: summary_num(&out.stdout, "final_rss_mib").expect("final_rss_mib"),
        leaked: summary_num(&out.stdout, "leaked_mib").expect("leaked_mib"),
        what,
        out,
        ticks,
        kal,
    }
}

/// Panics (clearly) when the library under test has no KAL engine.
fn require_kal(r: &Run) {
    let mode = r
        .out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("kal_mode "))
        .unwrap_or("?");
    assert!(
        mode != "unavailable" && !r.kal.is_empty(),
        "KAL engine not in this build: {} does not export rmalloc_kal_mode/rmalloc_kal_stats \
         (program says kal_mode={mode})",
        support::lib_path().display()
    );
}

#[track_caller]
fn assert_same_output(reference: &Run, other: &Run) {
    assert_eq!(
        reference.deterministic(),
        other.deterministic(),
        "output differs between {} and {}",
        reference.what,
        other.what
    );
}

/// The leak shows in RSS: at the end, above the no-leak run by most of the
/// leaked bytes, and still growing over the second half of the run.
#[track_caller]
fn assert_grows(leaky: &Run, no_leak: &Run) {
    let excess = leaky.final_rss - no_leak.final_rss;
    assert!(
        leaky.leaked > 20.0 && excess >= 0.6 * leaky.leaked,
        "{}: final RSS {:.1} MiB is only {excess:.1} MiB above the no-leak run's {:.1} MiB, \
         though {:.1} MiB leaked\nrss/leaked per tick: {}",
        leaky.what,
        leaky.final_rss,
        no_leak.final_rss,
        leaky.leaked,
        leaky.rss_table()
    );
    let (mid, end) = (leaky.ticks[4], leaky.ticks[9]);
    assert!(
        end.0 - mid.0 >= 0.6 * (end.1 - mid.1),
        "{}: RSS grew only {:.1} MiB over the second half while {:.1} MiB leaked\nrss/leaked per tick: {}",
        leaky.what,
        end.0 - mid.0,
        end.1 - mid.1,
        leaky.rss_table()
    );
}

fn growth_without_reclaim(threads: u32) {
    let glibc = run(Malloc::Glibc, threads, LEAK_PER_MILLE, 0, None);
    let glibc_clean = run(Malloc::Glibc, threads, 0, 0, None);
    let rm = run(Malloc::Rmalloc, threads, LEAK_PER_MILLE, 0, None);
    let rm_clean = run(Malloc::Rmalloc, threads, 0, 0, None);
    eprintln!(
        "threads={threads}: glibc final {:.1} MiB (no leak {:.1}), rmalloc KAL off final {:.1} MiB \
         (no leak {:.1}), leaked {:.1} MiB",
        glibc.final_rss, glibc_clean.final_rss, rm.final_rss, rm_clean.final_rss, rm.leaked
    );
    assert_same_output(&glibc, &rm);
    assert_eq!(
        glibc.deterministic().last(),
        rm.deterministic().last(),
        "checksum"
    );
    assert!(glibc_clean.leaked == 0.0 && rm_clean.leaked == 0.0);
    assert_grows(&glibc, &glibc_clean);
    assert_grows(&rm, &rm_clean);
}

fn reclaim_bounded(threads: u32) {
    let glibc = run(Malloc::Glibc, threads, LEAK_PER_MILLE, SCAN_EVERY, None);
    let clean = run(Malloc::Rmalloc, threads, 0, 0, None);
    let reclaim = run(
        Malloc::Rmalloc,
        threads,
        LEAK_PER_MILLE,
        SCAN_EVERY,
        Some(RECLAIM_OPTIONS),
    );
    require_kal(&reclaim);
    let detect = run(
        Malloc::Rmalloc,
        threads,
        LEAK_PER_MILLE,
        SCAN_EVERY,
        Some(DETECT_OPTIONS),
    );
    for r in [&reclaim, &detect] {
        eprintln!(
            "{}: maxrss {:.1} MiB final {:.1} MiB (no leak: maxrss {:.1} final {:.1}), leaked {:.1} MiB\n  \
             rss/leaked per tick: {}\n  {}",
            r.what,
            r.maxrss,
            r.final_rss,
            clean.maxrss,
            clean.final_rss,
            r.leaked,
            r.rss_table(),
            r.out.stdout.lines().find(|l| l.starts_with("kal ")).unwrap_or("")
        );
    }
    assert_same_output(&glibc, &reclaim);
    assert_same_output(&glibc, &detect);

    // Reclaim: bounded, really freeing the leak, never a live object.
    assert_eq!(reclaim.kal_str("mode"), "reclaim", "{}", reclaim.tail());
    assert!(
        !reclaim.out.stderr.contains("FALSE RECLAIM") && reclaim.kal_num("false_reclaims") == 0.0,
        "{}: false reclaim\n{}",
        reclaim.what,
        reclaim.tail()
    );
    let reclaimed = reclaim.kal_num("reclaimed_mib");
    assert!(
        reclaimed >= 0.5 * reclaim.leaked,
        "{}: KAL reclaimed {reclaimed:.1} MiB of {:.1} MiB leaked (scans {}, discarded {})\n{}",
        reclaim.what,
        reclaim.leaked,
        reclaim.kal_str("scans"),
        reclaim.kal_str("discarded"),
        reclaim.tail()
    );
    let bound = 1.5 * clean.maxrss;
    assert!(
        reclaim.maxrss <= bound,
        "{}: peak RSS {:.1} MiB exceeds 1.5x the no-leak run's peak {:.1} MiB ({bound:.1} MiB); \
         leaked {:.1} MiB, reclaimed {reclaimed:.1} MiB\nrss/leaked per tick: {}\n{}",
        reclaim.what,
        reclaim.maxrss,
        clean.maxrss,
        reclaim.leaked,
        reclaim.rss_table(),
        reclaim.tail()
    );

    // Detect: reports, frees nothing, so the leak still shows in RSS.
    assert_eq!(detect.kal_str("mode"), "detect", "{}", detect.tail());
    assert_eq!(
        detect.kal_num("reclaimed_chunks"),
        0.0,
        "{}: detect mode freed chunks",
        detect.what
    );
    assert!(
        detect.kal_num("leaks_reported") > 0.0 && detect.out.stderr.contains("SUMMARY: KAL:"),
        "{}: no leak reported\n{}",
        detect.what,
        detect.tail()
    );
    assert_grows(&detect, &clean);
}

#[test]
fn single_threaded_leak_grows_under_glibc_and_kal_off() {
    growth_without_reclaim(0);
}

#[test]
fn multi_threaded_leak_grows_under_glibc_and_kal_off() {
    growth_without_reclaim(WORKERS);
}

#[test]
fn single_threaded_leak_bounded_by_kal_reclaim() {
    reclaim_bounded(0);
}

#[test]
fn multi_threaded_leak_bounded_by_kal_reclaim() {
    reclaim_bounded(WORKERS);
}
