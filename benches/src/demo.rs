//! `make demo`: a leaky server-like program (demo/leaky_server.c) under glibc,
//! rmalloc, and rmalloc with KAL reclaiming, side by side.
//!
//! Every number shown is measured in this run.  A column whose allocator is
//! missing or broken, or whose library does not export the KAL entry point,
//! says so instead of showing numbers.

use crate::allocators::{self, Allocator};
use crate::exec::{self, Outcome, Spec};
use crate::workloads;
use crate::Config;
use std::path::Path;
use std::time::Duration;

/// Symbol the rmalloc library exports once its KAL engine exists.
const KAL_SYMBOL: &str = "rmalloc_kal_mode";
const LEAK_PER_MILLE: u32 = 20;

struct Column {
    label: &'static str,
    result: Result<Measured, String>,
}

struct Measured {
    outcome: Outcome,
    malloc_from: String,
    /// RSS after the first tenth of the requests and at the end, MiB.
    rss_first: f64,
    rss_last: f64,
    rate: f64,
    leaked_mib: f64,
    checksum: String,
}

pub fn run(cfg: &Config) -> Result<(), String> {
    let launcher = workloads::helpers(&cfg.src, &cfg.out)?;
    let server = cfg.out.join("bin/leaky_server");
    workloads::compile(&cfg.src.join("demo/leaky_server.c"), &server, &[])?;
    let logs = cfg.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let requests: u64 = if cfg.quick { 200_000 } else { 2_000_000 };

    let mut allocs = allocators::discover(&cfg.rmalloc, Some(&["rmalloc".to_string()]));
    let probe_bin = cfg.out.join("bin").join(workloads::PROBE);
    for a in &mut allocs {
        allocators::probe(a, &launcher, &probe_bin, &logs);
    }
    let (glibc, rmalloc) = (&allocs[0], &allocs[1]);

    println!(
        "make demo: a server-like program handling {requests} requests, leaking {}% of its request buffers.",
        LEAK_PER_MILLE as f64 / 10.0
    );
    println!("Run under glibc, rmalloc and rmalloc+KAL; progress lines show throughput and RSS over time.\n");
    let run_one = |label: &'static str, a: &Allocator, env: Vec<(String, String)>| {
        let spec = Spec {
            program: server.clone(),
            args: vec![requests.to_string(), LEAK_PER_MILLE.to_string()],
            env,
            preload: a.lib.clone(),
            echo: Some(format!("[{label:<11}] ")),
            ..Spec::default()
        };
        let log = logs.join(format!("demo-{}.stderr", label.replace('+', "-")));
        let result = measure(&spec, &launcher, &log);
        println!();
        Column { label, result }
    };

    let mut columns = vec![run_one("glibc", glibc, vec![])];
    let kal_note;
    match &rmalloc.usable {
        Ok(()) => {
            columns.push(run_one("rmalloc", rmalloc, vec![]));
            let lib = rmalloc.lib.as_deref().unwrap_or(Path::new(""));
            if allocators::exports(lib, KAL_SYMBOL) {
                kal_note = None;
                let env = vec![("RMALLOC_KAL".to_string(), "reclaim".to_string())];
                columns.push(run_one("rmalloc+KAL", rmalloc, env));
            } else {
                kal_note = Some(format!(
                    "rmalloc+KAL: not available in this build (KAL engine not implemented yet: \
                     {} does not export {KAL_SYMBOL})",
                    lib.display()
                ));
            }
        }
        Err(why) => {
            columns.push(Column {
                label: "rmalloc",
                result: Err(format!("not working in this build: {why}")),
            });
            kal_note = Some("rmalloc+KAL: not available (rmalloc itself does not work yet)".into());
        }
    }
    print_summary(&columns, kal_note.as_deref(), requests);
    Ok(())
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
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key).map(str::to_string))
    };
    let rss = tick_values(&text, "rss=");
    let summary = text
        .lines()
        .find(|l| l.starts_with("summary"))
        .ok_or("no summary line")?;
    let num = |key: &str| {
        field(summary, key)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Measured {
        malloc_from: text
            .lines()
            .find_map(|l| l.strip_prefix("malloc from "))
            .unwrap_or("?")
            .to_string(),
        rss_first: rss.first().copied().unwrap_or(f64::NAN),
        rss_last: rss.last().copied().unwrap_or(f64::NAN),
        rate: num("rate="),
        leaked_mib: num("leaked_mib="),
        checksum: field(summary, "checksum=").unwrap_or_default(),
        outcome: o,
    })
}

/// The numbers printed after `key` (padded: `rss=   18.7 MiB`) on the tick lines.
fn tick_values(text: &str, key: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with("tick"))
        .filter_map(|l| {
            let rest = &l[l.find(key)? + key.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Formats one row's value for one column.
type Show = dyn Fn(&Measured) -> String;

fn print_summary(columns: &[Column], kal_note: Option<&str>, requests: u64) {
    let rows: [(&str, &Show); 7] = [
        ("malloc resolved to", &|m| {
            Path::new(&m.malloc_from)
                .file_name()
                .map_or(m.malloc_from.clone(), |f| f.to_string_lossy().into_owned())
        }),
        ("wall time", &|m| {
            format!("{:.2} s", m.outcome.wall.as_secs_f64())
        }),
        ("throughput", &|m| format!("{:.0} req/s", m.rate)),
        ("peak RSS", &|m| {
            format!("{:.1} MiB", m.outcome.maxrss_kib as f64 / 1024.0)
        }),
        ("RSS growth (10% -> end)", &|m| {
            format!("{:+.1} MiB", m.rss_last - m.rss_first)
        }),
        ("leaked by the program", &|m| {
            format!("{:.1} MiB", m.leaked_mib)
        }),
        ("output checksum", &|m| m.checksum.clone()),
    ];
    println!("=== Summary: {requests} requests ===\n");
    let mut header = format!("{:<26}", "");
    for c in columns {
        header += &format!("{:>22}", c.label);
    }
    println!("{header}");
    for (name, show) in rows {
        let mut line = format!("{name:<26}");
        for c in columns {
            let cell = match &c.result {
                Ok(m) => show(m),
                Err(_) => "-".into(),
            };
            line += &format!("{cell:>22}");
        }
        println!("{line}");
    }
    println!();
    for c in columns {
        if let Err(why) = &c.result {
            println!("{}: {why}", c.label);
        }
    }
    if let Some(note) = kal_note {
        println!("{note}");
    }
    let sums: Vec<&str> = columns
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .map(|m| m.checksum.as_str())
        .collect();
    if sums.windows(2).any(|w| w[0] != w[1]) {
        println!("WARNING: the runs computed different results (checksums differ): an allocator is broken.");
    }
}
