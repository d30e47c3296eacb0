//! The comparison: every workload under every allocator, repeated, with the
//! allocators interleaved within each repetition (and their order rotated from
//! one repetition to the next) so that machine noise spreads over all of them.

use crate::allocators::{self, Allocator};
use crate::callgrind;
use crate::exec::{self, Outcome, Spec};
use crate::report::{self, Machine, Run};
use crate::workloads::{self, Workload};
use crate::Config;
use crate::{pacing, pause, redis};
use std::path::Path;
use std::time::{Duration, Instant};

pub fn run(cfg: &Config) -> Result<(), String> {
    let started = Instant::now();
    let cpu_start = exec::cpu_times();
    let load_start = loadavg();
    let logs = cfg.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;

    let env = workloads::Env {
        src: &cfg.src,
        out: &cfg.out,
        quick: cfg.quick,
        callgrind: false,
    };
    let launcher = workloads::helpers(&cfg.src, &cfg.out)?;
    let wls = workloads::prepare(&env, cfg.only_workloads.as_deref())?;
    let mut allocs = allocators::discover(&cfg.rmalloc, cfg.only_allocators.as_deref());
    let probe_bin = cfg.out.join("bin").join(workloads::PROBE);
    println!("\nAllocators:");
    for a in &mut allocs {
        allocators::probe(a, &launcher, &probe_bin, &logs);
        let lib = a
            .lib
            .as_ref()
            .map_or("(system malloc)".into(), |p| p.display().to_string());
        match &a.usable {
            Ok(()) => println!("  {:<9} {:<16} {lib}", a.name, a.version),
            Err(why) => println!("  {:<9} SKIPPED: {why}", a.name),
        }
    }
    let active: Vec<usize> = (0..allocs.len())
        .filter(|&i| allocs[i].usable.is_ok())
        .collect();
    let mut children_cpu = Duration::ZERO;

    // Warm-up under glibc: warms the page cache, gives the reference output
    // and sets each workload's timeout.
    println!("\nWarm-up (glibc, not counted):");
    let mut reference = Vec::new();
    let mut timeouts = Vec::new();
    for w in &wls {
        let o = measure(
            w,
            &allocs[0],
            &launcher,
            &logs,
            "warmup",
            Duration::from_secs(600),
        )?;
        children_cpu += o.user + o.sys;
        println!(
            "  {:<12} {:>7.3} s  {}",
            w.name,
            o.wall.as_secs_f64(),
            o.status.describe()
        );
        if !o.status.ok() {
            return Err(format!(
                "{} fails under glibc ({}); see {}",
                w.name,
                o.status.describe(),
                logs.join(format!("{}-glibc-warmup.stderr", w.name))
                    .display()
            ));
        }
        reference.push(o.stdout_hash);
        timeouts.push(Duration::from_secs_f64(
            (o.wall.as_secs_f64() * 20.0).max(60.0),
        ));
    }

    let mut runs: Vec<Run> = Vec::new();
    for rep in 0..cfg.runs {
        println!("\nRepetition {}/{}:", rep + 1, cfg.runs);
        for (wi, w) in wls.iter().enumerate() {
            let mut line = format!("  {:<12}", w.name);
            for k in 0..active.len() {
                let ai = active[(k + rep) % active.len()];
                let a = &allocs[ai];
                let tag = format!("r{}", rep + 1);
                let o = measure(w, a, &launcher, &logs, &tag, timeouts[wi])?;
                children_cpu += o.user + o.sys;
                let mark = if !o.status.ok() {
                    format!(" [{}]", o.status.describe())
                } else if o.stdout_hash != reference[wi] {
                    " [CHECKSUM MISMATCH]".to_string()
                } else {
                    String::new()
                };
                line += &format!(" {} {:.3}s{mark}", a.name, o.wall.as_secs_f64());
                runs.push(Run {
                    workload: wi,
                    allocator: ai,
                    rep,
                    outcome: o,
                });
            }
            println!("{line}");
        }
    }

    let wall = started.elapsed();
    let machine = Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_start,
        load_end: loadavg(),
        others_busy: other_load(cpu_start, exec::cpu_times(), children_cpu, wall),
        wall,
        runs: cfg.runs,
        quick: cfg.quick,
    };
    let summary = report::summarize(&wls, &allocs, &runs, &reference);
    let mut text = report::render(&wls, &allocs, &summary, &machine);
    if cfg.callgrind {
        text += "\n";
        text += &callgrind::run(cfg, &allocs, &launcher)?;
    }
    if cfg.kal_sections {
        text += "\n";
        text += &redis::run(cfg, &allocs)?;
        text += &pause::run(cfg, &launcher)?;
        text += &pacing::run(cfg, &launcher)?;
    }
    println!("\n{text}");
    report::write_files(&cfg.out, &wls, &allocs, &runs, &summary, &text)?;
    println!(
        "Wrote {0}/results.md, {0}/summary.csv, {0}/runs.csv (logs in {0}/logs)",
        cfg.out.display()
    );
    Ok(())
}

/// `rmalloc-bench kal`: only redis-benchmark and the pause/scan-rate table.
pub fn run_kal(cfg: &Config) -> Result<(), String> {
    let logs = cfg.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let launcher = workloads::helpers(&cfg.src, &cfg.out)?;
    let probe_bin = cfg.out.join("bin").join(workloads::PROBE);
    let names: Vec<String> = allocators::kal_variants()
        .into_iter()
        .map(|(n, _)| n)
        .chain(["rmalloc".to_string()])
        .collect();
    let mut allocs = allocators::discover(&cfg.rmalloc, Some(&names));
    for a in &mut allocs {
        allocators::probe(a, &launcher, &probe_bin, &logs);
        if let Err(why) = &a.usable {
            println!("  {:<18} SKIPPED: {why}", a.name);
        }
    }
    let mut text = redis::run(cfg, &allocs)?;
    text += &pause::run(cfg, &launcher)?;
    text += &pacing::run(cfg, &launcher)?;
    println!("\n{text}");
    let file = cfg.out.join("kal.md");
    std::fs::write(&file, &text).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("Wrote {}", file.display());
    Ok(())
}

fn measure(
    w: &Workload,
    a: &Allocator,
    launcher: &Path,
    logs: &Path,
    tag: &str,
    timeout: Duration,
) -> Result<Outcome, String> {
    let spec = Spec {
        program: w.program.clone(),
        args: w.args.clone(),
        env: w.env.iter().chain(&a.env).cloned().collect(),
        preload: a.lib.clone(),
        ..Spec::default()
    };
    let log = logs.join(format!(
        "{}-{}-{tag}.stderr",
        w.name,
        a.name.replace(['+', '@'], "-")
    ));
    let o = exec::run(&spec, launcher, timeout, &log)
        .map_err(|e| format!("cannot run {}: {e}", w.name))?;
    // Keep only the logs that say something.
    if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&log);
    }
    Ok(o)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Fraction of the machine's CPU capacity that processes other than the
/// benchmark used while it ran (0.0 = quiet machine).
fn other_load(
    start: Option<(f64, f64)>,
    end: Option<(f64, f64)>,
    ours: Duration,
    wall: Duration,
) -> Option<f64> {
    let ((busy0, total0), (busy1, total1)) = (start?, end?);
    let capacity = total1 - total0;
    if capacity <= 0.0 || wall.is_zero() {
        return None;
    }
    Some(((busy1 - busy0 - ours.as_secs_f64()) / capacity).clamp(0.0, 1.0))
}
