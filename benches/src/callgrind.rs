//! `BENCH_CALLGRIND=1`: every workload under every allocator once more, under
//! `valgrind --tool=callgrind`, at a reduced size, for the total number of
//! instructions executed.  Those counts hardly move from one run to the next,
//! so they show a regression even on a machine too busy for wall times
//! (threaded workloads vary a little with valgrind's thread scheduling, and
//! valgrind runs one thread at a time, so lock and cache-line contention is
//! not in these numbers).

use crate::allocators::Allocator;
use crate::exec::{self, Spec};
use crate::report::geomean;
use crate::workloads::{self, Workload};
use crate::Config;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Instructions of one (workload, allocator) run, or why there are none.
type Count = Result<u64, String>;

/// Run the pass; returns the Markdown section and writes `callgrind.csv`.
pub fn run(cfg: &Config, allocs: &[Allocator], launcher: &Path) -> Result<String, String> {
    let Some(valgrind) = ["/usr/bin/valgrind", "/usr/local/bin/valgrind"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        return Err("BENCH_CALLGRIND=1 needs valgrind (make bench-deps installs it)".into());
    };
    let dir = cfg.out.join("callgrind");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let env = workloads::Env {
        src: &cfg.src,
        out: &cfg.out,
        quick: cfg.quick,
        callgrind: true,
    };
    let wls = workloads::prepare(&env, cfg.only_workloads.as_deref())?;
    // KAL's scanner starts its thread with clone() flags valgrind refuses
    // ("Unsupported clone() flags"), so the KAL variants are left out.
    let cols: Vec<usize> = (0..allocs.len())
        .filter(|&i| allocs[i].usable.is_ok() && !allocs[i].name.starts_with("rmalloc+KAL"))
        .collect();

    println!(
        "\nCallgrind (instruction counts, scale {}):",
        workloads::scale(&env)
    );
    let mut counts: Vec<Vec<Count>> = Vec::new();
    for w in &wls {
        let mut row = Vec::new();
        let mut reference = None;
        let mut line = format!("  {:<12}", w.name);
        for &ai in &cols {
            let c = count(w, &allocs[ai], &valgrind, launcher, &dir, &mut reference)?;
            match &c {
                Ok(n) => line += &format!(" {} {:.1}M", allocs[ai].name, *n as f64 / 1e6),
                Err(e) => line += &format!(" {} [{e}]", allocs[ai].name),
            }
            row.push(c);
        }
        println!("{line}");
        counts.push(row);
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Instructions executed (callgrind, millions; ratio to glibc)\n"
    );
    let names: Vec<&str> = cols.iter().map(|&i| allocs[i].name.as_str()).collect();
    let _ = writeln!(out, "| workload | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(cols.len()));
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cols.len()];
    let mut csv = String::from("workload,allocator,instructions,ratio_to_glibc,status\n");
    for (w, row) in wls.iter().zip(&counts) {
        let base = row[0].as_ref().ok().copied();
        let mut line = format!("| {} |", w.name);
        for (k, c) in row.iter().enumerate() {
            let r = match (c, base) {
                (Ok(n), Some(b)) if b > 0 => Some(*n as f64 / b as f64),
                _ => None,
            };
            match (c, r) {
                (Ok(n), Some(r)) => {
                    ratios[k].push(r);
                    let _ = write!(line, " {:.1} ({r:.2}x) |", *n as f64 / 1e6);
                }
                (Ok(n), None) => {
                    let _ = write!(line, " {:.1} |", *n as f64 / 1e6);
                }
                (Err(e), _) => {
                    let _ = write!(line, " FAIL: {e} |");
                }
            }
            let _ = writeln!(
                csv,
                "{},{},{},{},{}",
                w.name,
                names[k],
                c.as_ref().map_or(String::new(), |n| n.to_string()),
                r.map_or(String::new(), |r| format!("{r:.4}")),
                c.as_ref().err().map_or("ok", |e| e.as_str())
            );
        }
        let _ = writeln!(out, "{line}");
    }
    let mut line = "| geometric mean of ratios |".to_string();
    for r in &ratios {
        match geomean(r) {
            Some(g) => {
                let _ = write!(line, " {g:.2}x |");
            }
            None => line += " - |",
        }
    }
    let _ = writeln!(out, "{line}\n");
    let _ = writeln!(
        out,
        "- Whole-process instruction counts (`valgrind --tool=callgrind`, one run per pair, \
         workload scale {}{}): repeatable to a fraction of a percent for single-threaded \
         workloads; threaded ones vary a little with valgrind's thread scheduling, and valgrind \
         runs one thread at a time, so contention and false sharing do not show here.\n",
        workloads::scale(&env),
        if cfg.quick { ", QUICK mode" } else { "" }
    );
    if allocs
        .iter()
        .any(|a| a.usable.is_ok() && a.name.starts_with("rmalloc+KAL"))
    {
        let _ = writeln!(
            out,
            "- rmalloc+KAL is not counted: valgrind refuses the clone() flags of KAL's scanner thread.\n"
        );
    }
    let file = cfg.out.join("callgrind.csv");
    std::fs::write(&file, csv).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(out)
}

/// One run under callgrind: its total instruction count, checked to print what
/// the first allocator (glibc) printed.
fn count(
    w: &Workload,
    a: &Allocator,
    valgrind: &Path,
    launcher: &Path,
    dir: &Path,
    reference: &mut Option<u64>,
) -> Result<Count, String> {
    let stem = format!("{}-{}", w.name, a.name.replace(['+', '@'], "-"));
    let data = dir.join(format!("{stem}.out"));
    let _ = std::fs::remove_file(&data);
    let mut args = vec![
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", data.display()),
        w.program.to_string_lossy().into_owned(),
    ];
    args.extend(w.args.iter().cloned());
    let spec = Spec {
        program: valgrind.to_path_buf(),
        args,
        env: w.env.iter().chain(&a.env).cloned().collect(),
        preload: a.lib.clone(),
        ..Spec::default()
    };
    let log = dir.join(format!("{stem}.stderr"));
    let o = exec::run(&spec, launcher, Duration::from_secs(3600), &log)
        .map_err(|e| format!("cannot run {} under callgrind: {e}", w.name))?;
    if !o.status.ok() {
        return Ok(Err(o.status.describe()));
    }
    match reference {
        None => *reference = Some(o.stdout_hash),
        Some(h) if *h != o.stdout_hash => return Ok(Err("CHECKSUM MISMATCH".into())),
        Some(_) => {}
    }
    let text = std::fs::read_to_string(&data).unwrap_or_default();
    Ok(total(&text).ok_or_else(|| format!("no totals in {}", data.display())))
}

/// The `totals:` (or `summary:`) line of a callgrind output file: the first
/// event, instructions.
fn total(text: &str) -> Option<u64> {
    let find = |key: &str| {
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    find("totals:").or_else(|| find("summary:"))
}
