//! What KAL's scans cost a program that keeps rewriting a large heap, with
//! pacing (`max_overhead`, default 1%) and without it: `kal/kal_writer.c`
//! rewrites random words of a 1 GiB heap (256 MiB in quick mode) for a
//! fixed time under KAL off, reclaim at the defaults, and reclaim with
//! `max_overhead=0`, alternating, and the table shows its write rate, its
//! system time (the copy-on-write faults) and what KAL says it cost.

use crate::exec::{self, Spec};
use crate::report;
use crate::workloads;
use crate::Config;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const CONFIGS: [(&str, Option<&str>); 3] = [
    ("KAL off", None),
    (
        "reclaim (max_overhead=1, the default)",
        Some("mode=reclaim"),
    ),
    (
        "reclaim, max_overhead=0",
        Some("mode=reclaim:max_overhead=0"),
    ),
];

/// Run the measurement and return the Markdown section.
pub fn run(cfg: &Config, launcher: &Path) -> Result<String, String> {
    let (heap_mib, seconds, rounds) = if cfg.quick {
        (256, 10, 1)
    } else {
        (1024, 40, 2)
    };
    println!("\nKAL cost to a heap writer (kal_writer {heap_mib} MiB, {seconds} s):");
    let mut out = String::from("## KAL's cost to a program rewriting its heap\n\n");
    let bin = cfg.out.join("bin/kal_writer");
    let include = format!("-I{}", crate::demo::include_dir(&cfg.src).display());
    workloads::compile(&cfg.src.join("kal/kal_writer.c"), &bin, &[&include])?;
    let logs = cfg.out.join("logs");
    let mut results: Vec<Vec<Vec<(String, String)>>> = vec![Vec::new(); CONFIGS.len()];
    for round in 0..rounds {
        for (k, (name, opts)) in CONFIGS.iter().enumerate() {
            let spec = Spec {
                program: bin.clone(),
                args: vec![heap_mib.to_string(), seconds.to_string()],
                env: opts
                    .map(|o| vec![("KAL_OPTIONS".into(), o.to_string())])
                    .unwrap_or_default(),
                preload: Some(cfg.rmalloc.clone()),
                ..Spec::default()
            };
            let log = logs.join(format!("kal_writer-{k}-{round}.stderr"));
            let o = exec::run(&spec, launcher, Duration::from_secs(seconds + 600), &log)
                .map_err(|e| format!("kal_writer: {e}"))?;
            let Some(line) = o.stdout_tail.lines().find(|l| l.starts_with("result ")) else {
                return Err(format!(
                    "kal_writer ({name}) printed no result, see {}",
                    log.display()
                ));
            };
            let fields: Vec<(String, String)> = line
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            println!("  {name:<40} {line}");
            results[k].push(fields);
        }
    }
    let _ = writeln!(
        out,
        "`kal/kal_writer.c {heap_mib} {seconds}`: {heap_mib} MiB of 240-byte objects, random words \
         rewritten for {seconds} s; {rounds} run(s) of each, alternating; medians.  Write rate in \
         millions per second; system time and minor faults of the program (the snapshot \
         children not counted); cost = KAL's own measure of what its scans cost the program \
         (pause + copy-on-write work); wait = its wait before the next scan at the end.\n"
    );
    let _ = writeln!(
        out,
        "| configuration | writes (M/s) | vs KAL off | system time | minor faults | scans | cost (KAL's measure) | wait |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|");
    let base = median(&results[0], "mops");
    for (k, (name, _)) in CONFIGS.iter().enumerate() {
        let r = &results[k];
        let mops = median(r, "mops");
        let _ = writeln!(
            out,
            "| {name} | {mops:.2} | {:.3}x | {:.2} s | {:.0} | {:.0} | {:.0} ms | {:.1} s |",
            mops / base,
            median(r, "sys_s"),
            median(r, "minflt"),
            median(r, "scans"),
            median(r, "cost_ms"),
            median(r, "interval_ms") / 1000.0
        );
    }
    out.push('\n');
    Ok(out)
}

fn median(runs: &[Vec<(String, String)>], key: &str) -> f64 {
    let v = runs
        .iter()
        .filter_map(|f| f.iter().find(|(k, _)| k == key)?.1.parse().ok())
        .collect();
    report::median(v).unwrap_or(f64::NAN)
}
