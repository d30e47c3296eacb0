//! Medians, ratios to glibc, the printed tables and the machine-readable files.

use crate::allocators::Allocator;
use crate::exec::Outcome;
use crate::workloads::Workload;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

pub struct Run {
    pub workload: usize,
    pub allocator: usize,
    pub rep: usize,
    pub outcome: Outcome,
}

pub struct Machine {
    pub cpus: usize,
    pub load_start: String,
    pub load_end: String,
    /// Share of all CPUs used by other processes during the run.
    pub others_busy: Option<f64>,
    pub wall: Duration,
    pub runs: usize,
    pub quick: bool,
}

/// One (workload, allocator) pair over all repetitions.
#[derive(Default)]
pub struct Cell {
    pub runs: usize,
    pub ok: usize,
    pub median_s: Option<f64>,
    pub median_rss_kib: Option<f64>,
    /// User + system CPU time: less disturbed than wall time by other load.
    pub median_cpu_s: Option<f64>,
    /// Why some runs failed (first failure), if any did.
    pub failure: Option<String>,
    /// Some successful run printed something else than glibc's reference.
    pub mismatch: bool,
}

/// `cells[workload][allocator]`
pub struct Summary {
    pub cells: Vec<Vec<Cell>>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn summarize(
    wls: &[Workload],
    allocs: &[Allocator],
    runs: &[Run],
    reference: &[u64],
) -> Summary {
    let mut cells: Vec<Vec<Cell>> = (0..wls.len())
        .map(|_| (0..allocs.len()).map(|_| Cell::default()).collect())
        .collect();
    for (wi, row) in cells.iter_mut().enumerate() {
        for (ai, cell) in row.iter_mut().enumerate() {
            let mine: Vec<&Outcome> = runs
                .iter()
                .filter(|r| r.workload == wi && r.allocator == ai)
                .map(|r| &r.outcome)
                .collect();
            let good: Vec<&&Outcome> = mine.iter().filter(|o| o.status.ok()).collect();
            cell.runs = mine.len();
            cell.ok = good.len();
            cell.median_s = median(good.iter().map(|o| o.wall.as_secs_f64()).collect());
            cell.median_rss_kib = median(good.iter().map(|o| o.maxrss_kib as f64).collect());
            cell.median_cpu_s = median(
                good.iter()
                    .map(|o| (o.user + o.sys).as_secs_f64())
                    .collect(),
            );
            cell.failure = mine
                .iter()
                .find(|o| !o.status.ok())
                .map(|o| o.status.describe());
            cell.mismatch = good.iter().any(|o| o.stdout_hash != reference[wi]);
        }
    }
    Summary { cells }
}

fn ratio(x: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => Some(x / b),
        _ => None,
    }
}

pub fn geomean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// The results as Markdown (readable on a terminal too).
pub fn render(wls: &[Workload], allocs: &[Allocator], s: &Summary, m: &Machine) -> String {
    let cols: Vec<usize> = (0..allocs.len())
        .filter(|&i| allocs[i].usable.is_ok())
        .collect();
    let mut out = String::new();
    let header = |out: &mut String, first: &str| {
        let names: Vec<&str> = cols.iter().map(|&i| allocs[i].name.as_str()).collect();
        let _ = writeln!(out, "| {first} | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(cols.len()));
    };

    for (title, pick) in [
        ("Median wall time, seconds (ratio to glibc)", 0),
        ("Median peak RSS, MiB (ratio to glibc)", 1),
        (
            "Median CPU time (user + system), seconds (ratio to glibc)",
            2,
        ),
    ] {
        let _ = writeln!(out, "### {title}\n");
        header(&mut out, "workload");
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); allocs.len()];
        for (wi, w) in wls.iter().enumerate() {
            let row = &s.cells[wi];
            let value = |c: &Cell| match pick {
                0 => c.median_s,
                1 => c.median_rss_kib.map(|k| k / 1024.0),
                _ => c.median_cpu_s,
            };
            let base = value(&row[0]);
            let mut line = format!("| {} |", w.name);
            for &ai in &cols {
                let c = &row[ai];
                let v = value(c);
                let text = match (v, ratio(v, base)) {
                    (Some(v), Some(r)) => {
                        ratios[ai].push(r);
                        let digits = if pick == 1 { 1 } else { 3 };
                        format!("{v:.digits$} ({r:.2}x)")
                    }
                    (Some(v), None) => format!("{v:.3}"),
                    _ => "FAIL".to_string(),
                };
                let mut flags = String::new();
                if c.ok < c.runs {
                    let _ = write!(
                        flags,
                        " {}/{} failed: {}",
                        c.runs - c.ok,
                        c.runs,
                        c.failure.as_deref().unwrap_or("?")
                    );
                }
                if c.mismatch {
                    flags += " CHECKSUM MISMATCH";
                }
                let _ = write!(line, " {text}{flags} |");
            }
            let _ = writeln!(out, "{line}");
        }
        let mut line = "| geometric mean of ratios |".to_string();
        for &ai in &cols {
            match geomean(&ratios[ai]) {
                Some(g) => {
                    let _ = write!(line, " {g:.2}x |");
                }
                None => line += " - |",
            }
        }
        let _ = writeln!(out, "{line}\n");
    }

    let _ = writeln!(out, "### Notes\n");
    let mismatches: Vec<String> = wls
        .iter()
        .enumerate()
        .flat_map(|(wi, w)| {
            cols.iter()
                .filter(move |&&ai| s.cells[wi][ai].mismatch)
                .map(move |&ai| format!("{} under {}", w.name, allocs[ai].name))
        })
        .collect();
    if mismatches.is_empty() {
        let _ = writeln!(
            out,
            "- Checksums: every successful run printed the same output as glibc's reference run."
        );
    } else {
        let _ = writeln!(
            out,
            "- CHECKSUM MISMATCH (wrong results): {}.",
            mismatches.join(", ")
        );
    }
    for a in allocs {
        if let Err(why) = &a.usable {
            let _ = writeln!(out, "- {} not benchmarked: {why}", a.name);
        }
    }
    if let Some(ri) = cols.iter().copied().find(|&i| allocs[i].name == "rmalloc") {
        let _ = writeln!(out, "- {}", target_check(wls, s, ri));
        for &ki in cols
            .iter()
            .filter(|&&i| allocs[i].name.starts_with("rmalloc+KAL"))
        {
            let _ = writeln!(out, "- {}", kal_overhead(wls, s, ri, ki, &allocs[ki].name));
        }
    }
    let _ = writeln!(out, "- {}", machine_note(m));
    let _ = writeln!(out, "\nAllocators:\n");
    for &ai in &cols {
        let a = &allocs[ai];
        let lib = a
            .lib
            .as_ref()
            .map_or("system malloc".into(), |p| p.display().to_string());
        let _ = writeln!(out, "- {}: {} ({lib})", a.name, a.version);
    }
    let _ = writeln!(out, "\nWorkloads:\n");
    for w in wls {
        let _ = writeln!(out, "- {}: {}", w.name, w.what);
    }
    out
}

/// The target: rmalloc's median time no worse than glibc's and its
/// peak RSS at most 1.1x glibc's, on every workload.
fn target_check(wls: &[Workload], s: &Summary, ri: usize) -> String {
    let mut misses = Vec::new();
    for (wi, w) in wls.iter().enumerate() {
        let (g, r) = (&s.cells[wi][0], &s.cells[wi][ri]);
        if r.ok < r.runs || r.mismatch {
            misses.push(format!("{} (failed or wrong output)", w.name));
            continue;
        }
        if let Some(t) = ratio(r.median_s, g.median_s).filter(|&t| t > 1.0) {
            misses.push(format!("{} time {t:.2}x", w.name));
        }
        if let Some(m) = ratio(r.median_rss_kib, g.median_rss_kib).filter(|&m| m > 1.1) {
            misses.push(format!("{} RSS {m:.2}x", w.name));
        }
    }
    if misses.is_empty() {
        "rmalloc target (time <= glibc, peak RSS <= 1.1x glibc): met on every workload.".into()
    } else {
        format!(
            "rmalloc target (time <= glibc, peak RSS <= 1.1x glibc) missed: {}.",
            misses.join("; ")
        )
    }
}

/// KAL's cost: time and CPU of an rmalloc+KAL column against rmalloc with
/// KAL off, in the same run (the target: at most 1%).
fn kal_overhead(wls: &[Workload], s: &Summary, ri: usize, ki: usize, name: &str) -> String {
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    let mut worst: Option<(f64, &str)> = None;
    for (wi, w) in wls.iter().enumerate() {
        let (r, k) = (&s.cells[wi][ri], &s.cells[wi][ki]);
        if let Some(t) = ratio(k.median_s, r.median_s) {
            wall.push(t);
            if worst.is_none_or(|(x, _)| t > x) {
                worst = Some((t, &w.name));
            }
        }
        if let Some(c) = ratio(k.median_cpu_s, r.median_cpu_s) {
            cpu.push(c);
        }
    }
    let pct = |v: Option<f64>| v.map_or("?".into(), |g| format!("{:+.1}%", (g - 1.0) * 100.0));
    format!(
        "{name} against rmalloc (KAL off): wall time {} (geometric mean), CPU time {}, worst workload {} \
         (target: at most +1%; wall times are noisy on a busy machine)",
        pct(geomean(&wall)),
        pct(geomean(&cpu)),
        worst.map_or("?".into(), |(t, n)| format!("{n} {:+.1}%", (t - 1.0) * 100.0))
    )
}

fn machine_note(m: &Machine) -> String {
    let busy = match m.others_busy {
        Some(f) if f > 0.10 => format!(
            "BUSY: other processes used about {:.0}% of the machine's CPU meanwhile, so times are noisy",
            f * 100.0
        ),
        Some(f) => format!("quiet: other processes used about {:.0}% of the CPU meanwhile", f * 100.0),
        None => "background load unknown".into(),
    };
    format!(
        "Machine: {} CPUs; {} runs per pair{}; took {:.0} s; load average {} -> {}; {busy}.",
        m.cpus,
        m.runs,
        if m.quick {
            ", QUICK mode (reduced sizes)"
        } else {
            ""
        },
        m.wall.as_secs_f64(),
        m.load_start,
        m.load_end
    )
}

pub fn write_files(
    out: &Path,
    wls: &[Workload],
    allocs: &[Allocator],
    runs: &[Run],
    s: &Summary,
    text: &str,
) -> Result<(), String> {
    let write = |name: &str, body: String| {
        std::fs::write(out.join(name), body)
            .map_err(|e| format!("{}: {e}", out.join(name).display()))
    };
    let mut csv = String::from(
        "workload,allocator,rep,status,wall_s,user_s,sys_s,maxrss_kib,stdout_bytes,stdout_fnv64\n",
    );
    for r in runs {
        let o = &r.outcome;
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.6},{:.6},{:.6},{},{},{:016x}",
            wls[r.workload].name,
            allocs[r.allocator].name,
            r.rep + 1,
            o.status.describe(),
            o.wall.as_secs_f64(),
            o.user.as_secs_f64(),
            o.sys.as_secs_f64(),
            o.maxrss_kib,
            o.stdout_bytes,
            o.stdout_hash
        );
    }
    write("runs.csv", csv)?;

    let mut csv = String::from(
        "workload,allocator,runs,runs_ok,median_s,time_ratio_to_glibc,median_maxrss_kib,rss_ratio_to_glibc,median_cpu_s,cpu_ratio_to_glibc,checksum\n",
    );
    let num = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
    for (wi, w) in wls.iter().enumerate() {
        let g = &s.cells[wi][0];
        for (ai, a) in allocs.iter().enumerate().filter(|(_, a)| a.usable.is_ok()) {
            let c = &s.cells[wi][ai];
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{},{}",
                w.name,
                a.name,
                c.runs,
                c.ok,
                num(c.median_s),
                num(ratio(c.median_s, g.median_s)),
                num(c.median_rss_kib),
                num(ratio(c.median_rss_kib, g.median_rss_kib)),
                num(c.median_cpu_s),
                num(ratio(c.median_cpu_s, g.median_cpu_s)),
                if c.mismatch { "MISMATCH" } else { "ok" }
            );
        }
    }
    write("summary.csv", csv)?;
    write("results.md", text.to_string())
}
