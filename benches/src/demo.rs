//! `make demo`: a leaky server-like program (demo/leaky_server.c) under glibc,
//! rmalloc, rmalloc with KAL detecting and rmalloc with KAL reclaiming, side by
//! side; once single-threaded and once with an I/O thread feeding 4 workers.
//! A fifth column runs the same program under rmalloc with the leak switched
//! off, as the reference for "bounded memory".
//!
//! Every number shown is measured in this run: RSS from the program's own
//! `/proc/self/statm` readings and `wait4`'s peak, KAL's counters from
//! `rmalloc_kal_stats()` called by the program at its end (through `dlsym`).
//! A column whose allocator is missing or broken, or whose library does not
//! export the KAL interface, says so instead of showing numbers.

use crate::allocators::{self, Allocator, KAL_SYMBOL};
use crate::exec::{self, Outcome, Spec};
use crate::workloads;
use crate::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LEAK_PER_MILLE: u32 = 5;
/// The demo compresses hours of a slow leak into seconds, so it scans more
/// often than KAL's default (2000 ms).
const DEMO_INTERVAL_MS: u32 = 200;
const WORKERS: u32 = 4;

struct Column {
    label: &'static str,
    options: String,
    result: Result<Measured, String>,
}

struct Measured {
    outcome: Outcome,
    malloc_from: String,
    /// (seconds since start, RSS MiB) at each tenth of the requests.
    ticks: Vec<(f64, f64)>,
    /// (seconds since start, RSS MiB) at the ticks where KAL's reclaimed
    /// total had grown since the tick before.
    reclaim_events: Vec<(f64, f64)>,
    rate: f64,
    leaked_mib: f64,
    checksum: String,
    /// The program's `kal ...` line, as key -> value.
    kal: Vec<(String, String)>,
    /// The last `SUMMARY: KAL: ...` line of KAL's reports, if any.
    report_summary: Option<String>,
    /// `KAL: ...` complaints about the options (KAL then stays off).
    kal_refused: Option<String>,
    false_reclaim_lines: usize,
}

impl Measured {
    fn kal(&self, key: &str) -> Option<&str> {
        self.kal
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The KAL_OPTIONS value the demo uses for `mode`.
pub fn demo_options(mode: &str) -> String {
    format!("mode={mode}:interval_ms={DEMO_INTERVAL_MS}:max_overhead=0:max_leaks=5")
}

pub fn run(cfg: &Config) -> Result<(), String> {
    let launcher = workloads::helpers(&cfg.src, &cfg.out)?;
    let server = cfg.out.join("bin/leaky_server");
    let include = format!("-I{}", include_dir(&cfg.src).display());
    workloads::compile(&cfg.src.join("demo/leaky_server.c"), &server, &[&include])?;
    let logs = cfg.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;

    let mut allocs = allocators::discover(&cfg.rmalloc, Some(&["rmalloc".to_string()]));
    let probe_bin = cfg.out.join("bin").join(workloads::PROBE);
    for a in &mut allocs {
        allocators::probe(a, &launcher, &probe_bin, &logs);
    }
    let (glibc, rmalloc) = (&allocs[0], &allocs[1]);
    let lib = rmalloc.lib.clone().unwrap_or_default();
    let kal_missing = match &rmalloc.usable {
        Err(why) => Some(format!("rmalloc itself does not work in this build: {why}")),
        Ok(()) if !allocators::exports(&lib, KAL_SYMBOL) => Some(format!(
            "KAL is not in this build: {} does not export {KAL_SYMBOL} (engine not merged yet)",
            lib.display()
        )),
        Ok(()) => None,
    };

    println!(
        "make demo: a server-like program that leaks {}% of its request buffers (0.5-16 KiB each, \
         about 5-10 MiB/s here),",
        LEAK_PER_MILLE as f64 / 10.0
    );
    println!(
        "run under glibc, rmalloc (KAL off), rmalloc+KAL detect and rmalloc+KAL reclaim, plus rmalloc\n\
         with the leak switched off as the reference for bounded memory.\n\
         KAL scans every {DEMO_INTERVAL_MS} ms here, without pacing (KAL's default is 2000 ms, \
         stretched so that scans cost\nat most 1% (max_overhead); the demo compresses hours of a \
         slow leak into seconds); every other KAL\noption is at its default, so a leaked buffer \
         is freed at the earliest confirm_scans (2) scans and\nmin_free_age_ms (1000) plus \
         probation_ms (1000) after it is dropped.\n"
    );
    if let Some(why) = &kal_missing {
        println!("NOTE: {why}; the KAL columns are left empty.\n");
    }

    let variants: [(&str, u32, u64); 2] = if cfg.quick {
        [("single-threaded", 0, 200_000), ("", WORKERS, 200_000)]
    } else {
        [("single-threaded", 0, 4_000_000), ("", WORKERS, 4_000_000)]
    };
    for (name, threads, requests) in variants {
        let title = if threads == 0 {
            name.to_string()
        } else {
            format!("1 I/O thread + {threads} worker threads, shared queue, per-worker sessions")
        };
        println!("=== {title}: {requests} requests ===\n");
        let run_one = |label: &'static str, a: &Allocator, kal: Option<String>, leak: u32| {
            let mut env = Vec::new();
            if let Some(o) = &kal {
                env.push(("KAL_OPTIONS".to_string(), o.clone()));
            }
            let spec = Spec {
                program: server.clone(),
                args: vec![
                    requests.to_string(),
                    leak.to_string(),
                    threads.to_string(),
                    "0".into(),
                ],
                env,
                preload: a.lib.clone(),
                echo: Some(format!("[{label:<19}] ")),
                ..Spec::default()
            };
            let tag = label.replace(['+', ' ', ','], "-");
            let log = logs.join(format!("demo-{threads}t-{tag}.stderr"));
            let result = measure(&spec, &launcher, &log);
            println!();
            Column {
                label,
                options: kal.unwrap_or_else(|| "-".into()),
                result,
            }
        };
        let unavailable = |label: &'static str, why: &str| Column {
            label,
            options: "-".into(),
            result: Err(why.to_string()),
        };

        let mut columns = vec![run_one("glibc", glibc, None, LEAK_PER_MILLE)];
        match &rmalloc.usable {
            Ok(()) => columns.push(run_one("rmalloc", rmalloc, None, LEAK_PER_MILLE)),
            Err(why) => columns.push(unavailable("rmalloc", why)),
        }
        for (label, mode) in [
            ("rmalloc+KAL detect", "detect"),
            ("rmalloc+KAL reclaim", "reclaim"),
        ] {
            columns.push(match &kal_missing {
                None => run_one(label, rmalloc, Some(demo_options(mode)), LEAK_PER_MILLE),
                Some(why) => unavailable(label, why),
            });
        }
        match &rmalloc.usable {
            Ok(()) => columns.push(run_one("rmalloc, no leak", rmalloc, None, 0)),
            Err(why) => columns.push(unavailable("rmalloc, no leak", why)),
        }
        print_summary(&title, &columns, requests);
        let png = cfg.out.join(format!("demo-{threads}t-rss.png"));
        let series: Vec<(String, Vec<(f64, f64)>)> = columns
            .iter()
            .filter_map(|c| {
                c.result
                    .as_ref()
                    .ok()
                    .map(|m| (c.label.to_string(), m.ticks.clone()))
            })
            .filter(|(_, t)| !t.is_empty())
            .collect();
        let chart_title = if threads == 0 {
            "leaky server, single-threaded: RSS over time".to_string()
        } else {
            format!("leaky server, {threads} workers: RSS over time")
        };
        let events: Vec<(f64, f64)> = columns
            .iter()
            .filter_map(|c| c.result.as_ref().ok())
            .flat_map(|m| m.reclaim_events.iter().copied())
            .collect();
        match kal::plot::lines_with_markers(
            &png,
            &chart_title,
            "RSS (MiB)",
            &series,
            Some(("KAL reclaimed more", &events)),
        ) {
            Ok(()) => println!("Chart of RSS over time: {}\n", png.display()),
            Err(e) => println!("No chart: {e}\n"),
        }
    }
    if let Some(why) = &kal_missing {
        println!("NOTE: {why}.");
    }
    println!(
        "Logs (stderr of each run, KAL's leak reports): {}",
        logs.display()
    );
    Ok(())
}

/// `rmalloc/include` next to `benches/`.
pub fn include_dir(src: &Path) -> PathBuf {
    src.parent().map_or_else(
        || PathBuf::from("rmalloc/include"),
        |p| p.join("rmalloc/include"),
    )
}

fn measure(spec: &Spec, launcher: &Path, log: &Path) -> Result<Measured, String> {
    let o = exec::run(spec, launcher, Duration::from_secs(300), log).map_err(|e| e.to_string())?;
    if !o.status.ok() {
        return Err(format!(
            "FAILED ({}), see {}",
            o.status.describe(),
            log.display()
        ));
    }
    let text = o.stdout_tail.clone();
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    let summary = text
        .lines()
        .find(|l| l.starts_with("summary"))
        .ok_or("no summary line")?;
    let fields = |line: &str| -> Vec<(String, String)> {
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let s = fields(summary);
    let num = |key: &str| {
        s.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Measured {
        malloc_from: text
            .lines()
            .find_map(|l| l.strip_prefix("malloc from "))
            .unwrap_or("?")
            .to_string(),
        ticks: ticks(&text),
        reclaim_events: reclaim_events(&text),
        rate: num("rate"),
        leaked_mib: num("leaked_mib"),
        checksum: s
            .iter()
            .find(|(k, _)| k == "checksum")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        kal: text
            .lines()
            .find(|l| l.starts_with("kal mode="))
            .map(fields)
            .unwrap_or_default(),
        report_summary: stderr
            .lines()
            .rev()
            .find_map(|l| l.find("SUMMARY: KAL:").map(|i| l[i..].trim().to_string())),
        kal_refused: stderr
            .lines()
            .find(|l| l.starts_with("KAL: ") && !l.contains("FALSE RECLAIM"))
            .map(str::to_string),
        false_reclaim_lines: stderr.matches("KAL: FALSE RECLAIM").count(),
        outcome: o,
    })
}

/// (t, rss) from the `tick  N  t=  1.23s  ... rss=  18.7 MiB ...` lines.
/// The number after `key` in a tick line (`t=  1.23s` gives 1.23).
fn tick_field(l: &str, key: &str) -> Option<f64> {
    let rest = &l[l.find(key)? + key.len()..];
    rest.split_whitespace()
        .next()?
        .trim_end_matches('s')
        .parse()
        .ok()
}

fn ticks(text: &str) -> Vec<(f64, f64)> {
    let after = tick_field;
    text.lines()
        .filter(|l| l.starts_with("tick"))
        .filter_map(|l| Some((after(l, "t=")?, after(l, "rss=")?)))
        .collect()
}

/// Ticks at which the `reclaimed=` total grew: (t, rss).
fn reclaim_events(text: &str) -> Vec<(f64, f64)> {
    let after = tick_field;
    let mut last = 0.0;
    let mut ev = Vec::new();
    for l in text.lines().filter(|l| l.starts_with("tick")) {
        if let (Some(t), Some(rss), Some(r)) =
            (after(l, "t="), after(l, "rss="), after(l, "reclaimed="))
        {
            if r > last {
                ev.push((t, rss));
            }
            last = r;
        }
    }
    ev
}

/// Formats one row's value for one column.
type Show = dyn Fn(&Measured) -> String;

fn us(v: Option<&str>) -> String {
    match v.and_then(|x| x.parse::<f64>().ok()) {
        Some(x) if x >= 10_000.0 => format!("{:.1} ms", x / 1000.0),
        Some(x) => format!("{x:.0} us"),
        None => "-".into(),
    }
}

fn print_summary(title: &str, columns: &[Column], requests: u64) {
    const W: usize = 21;
    let header = |first: &str| {
        let mut h = format!("{first:<30}");
        for c in columns {
            h += &format!("{:>W$}", c.label);
        }
        h
    };
    let kal_on = |m: &Measured| m.kal("mode").is_some_and(|x| x != "off");
    let kal_field = |key: &'static str| {
        move |m: &Measured| {
            if kal_on(m) {
                m.kal(key).unwrap_or("?").to_string()
            } else {
                "-".into()
            }
        }
    };
    let rows: Vec<(&str, Box<Show>)> = vec![
        (
            "malloc resolved to",
            Box::new(|m: &Measured| {
                Path::new(&m.malloc_from)
                    .file_name()
                    .map_or(m.malloc_from.clone(), |f| f.to_string_lossy().into_owned())
            }),
        ),
        (
            "wall time",
            Box::new(|m: &Measured| format!("{:.2} s", m.outcome.wall.as_secs_f64())),
        ),
        (
            "CPU time (user+sys)",
            Box::new(|m: &Measured| {
                format!("{:.2} s", (m.outcome.user + m.outcome.sys).as_secs_f64())
            }),
        ),
        (
            "throughput",
            Box::new(|m: &Measured| format!("{:.0} req/s", m.rate)),
        ),
        (
            "leaked by the program",
            Box::new(|m: &Measured| format!("{:.1} MiB", m.leaked_mib)),
        ),
        (
            "RSS at 10% of requests",
            Box::new(|m: &Measured| mib(m.ticks.first().map(|t| t.1))),
        ),
        (
            "RSS at the end",
            Box::new(|m: &Measured| mib(m.ticks.last().map(|t| t.1))),
        ),
        (
            "RSS growth (10% -> end)",
            Box::new(|m: &Measured| match (m.ticks.first(), m.ticks.last()) {
                (Some(a), Some(b)) => format!("{:+.1} MiB", b.1 - a.1),
                _ => "-".into(),
            }),
        ),
        (
            "peak RSS (wait4)",
            Box::new(|m: &Measured| format!("{:.1} MiB", m.outcome.maxrss_kib as f64 / 1024.0)),
        ),
        ("KAL mode (from the library)", Box::new(kal_field("mode"))),
        ("KAL backend", Box::new(kal_field("backend"))),
        ("KAL scans completed", Box::new(kal_field("scans"))),
        (
            "KAL snapshots discarded",
            Box::new(move |m: &Measured| {
                if kal_on(m) {
                    format!(
                        "{} (s{} h{} r{})",
                        m.kal("discarded").unwrap_or("?"),
                        m.kal("discarded_stop").unwrap_or("?"),
                        m.kal("discarded_heap").unwrap_or("?"),
                        m.kal("discarded_roots").unwrap_or("?")
                    )
                } else {
                    "-".into()
                }
            }),
        ),
        (
            "KAL pause p50",
            Box::new(move |m: &Measured| {
                if kal_on(m) {
                    us(m.kal("pause_p50_us"))
                } else {
                    "-".into()
                }
            }),
        ),
        (
            "KAL pause p99",
            Box::new(move |m: &Measured| {
                if kal_on(m) {
                    us(m.kal("pause_p99_us"))
                } else {
                    "-".into()
                }
            }),
        ),
        (
            "KAL pause max",
            Box::new(move |m: &Measured| {
                if kal_on(m) {
                    us(m.kal("pause_max_us"))
                } else {
                    "-".into()
                }
            }),
        ),
        (
            "KAL last mark",
            Box::new(move |m: &Measured| match m.kal("scan_last_ms") {
                Some(v) if kal_on(m) => format!("{v} ms"),
                _ => "-".into(),
            }),
        ),
        (
            "KAL unreachable (last scan)",
            Box::new(move |m: &Measured| match m.kal("unreachable_mib") {
                Some(v) if kal_on(m) => format!("{v} MiB"),
                _ => "-".into(),
            }),
        ),
        (
            "KAL reclaimed",
            Box::new(move |m: &Measured| match m.kal("reclaimed_mib") {
                Some(v) if kal_on(m) => format!("{v} MiB"),
                _ => "-".into(),
            }),
        ),
        (
            "KAL reclaimed chunks",
            Box::new(kal_field("reclaimed_chunks")),
        ),
        (
            "KAL false reclaims",
            Box::new(move |m: &Measured| {
                if kal_on(m) {
                    format!(
                        "{} ({} logged)",
                        m.kal("false_reclaims").unwrap_or("?"),
                        m.false_reclaim_lines
                    )
                } else {
                    "-".into()
                }
            }),
        ),
        ("KAL leaks reported", Box::new(kal_field("leaks_reported"))),
        (
            "output checksum",
            Box::new(|m: &Measured| m.checksum.clone()),
        ),
    ];
    println!("--- Summary: {title}, {requests} requests ---\n");
    println!("{}", header(""));
    for (name, show) in &rows {
        let mut line = format!("{name:<30}");
        for c in columns {
            let cell = match &c.result {
                Ok(m) => show(m),
                Err(_) => "n/a".into(),
            };
            line += &format!("{cell:>W$}");
        }
        println!("{line}");
    }

    println!("\nRSS over time, MiB (seconds since start), at each tenth of the requests:\n");
    println!("{}", header("requests done"));
    let n = columns
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .map(|m| m.ticks.len())
        .max()
        .unwrap_or(0);
    for i in 0..n {
        let mut line = format!("{:<30}", format!("{}%", (i + 1) * 100 / n.max(1)));
        for c in columns {
            let cell = match c.result.as_ref().ok().and_then(|m| m.ticks.get(i)) {
                Some((t, rss)) => format!("{rss:.1} ({t:.1}s)"),
                None => "-".into(),
            };
            line += &format!("{cell:>W$}");
        }
        println!("{line}");
    }
    println!();
    println!("Discarded snapshots: (s)top = a thread could not be stopped, (h)eap = heap metadata mid-update, (r)oots.");

    for c in columns {
        if c.options != "-" {
            println!("{}: KAL_OPTIONS={}", c.label, c.options);
        }
        match &c.result {
            Err(why) => println!("{}: not run: {why}", c.label),
            Ok(m) => {
                if let Some(line) = &m.kal_refused {
                    println!("{}: KAL said: {line}", c.label);
                }
                if c.options != "-" && !kal_on(m) {
                    println!(
                        "{}: WARNING: KAL_OPTIONS was set but the library reports KAL off",
                        c.label
                    );
                }
                if let Some(s) = &m.report_summary {
                    println!("{}: last leak report: {s}", c.label);
                }
            }
        }
    }
    let sums: Vec<&str> = columns
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .map(|m| m.checksum.as_str())
        .collect();
    if sums.windows(2).any(|w| w[0] != w[1]) {
        println!("WARNING: the runs computed different results (checksums differ): an allocator is broken.");
    } else if !sums.is_empty() {
        println!("Checksums: every run computed the same result.");
    }
    println!();
}

fn mib(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1} MiB"))
}
