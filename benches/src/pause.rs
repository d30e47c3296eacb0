//! KAL's snapshot pause and scan rate: `kal/kal_heap.c` builds 64 MiB, 256 MiB
//! and 1 GiB heaps of live linked objects and calls `rmalloc_kal_scan_now()`
//! repeatedly; the table shows the pause (threads stopped) percentiles and the
//! mark rate read back from `rmalloc_kal_stats()`, for every snapshot backend.

use crate::allocators::{self, KAL_SYMBOL};
use crate::exec::{self, Spec};
use crate::workloads;
use crate::Config;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const BACKENDS: [&str; 2] = ["fork", "kernel"];

struct Row {
    backend: &'static str,
    heap_mib: u64,
    result: Result<Vec<(String, String)>, String>,
}

/// Run the measurement and return the Markdown section.
pub fn run(cfg: &Config, launcher: &Path) -> Result<String, String> {
    let lib = &cfg.rmalloc;
    println!("\nKAL pause and scan rate (kal_heap):");
    let mut out = String::from("## KAL snapshot pause and scan rate\n\n");
    if !lib.exists() || !allocators::exports(lib, KAL_SYMBOL) {
        let why = format!(
            "not measured: {} does not export {KAL_SYMBOL} (KAL engine not in this build)",
            lib.display()
        );
        println!("  {why}");
        let _ = writeln!(out, "{why}\n");
        return Ok(out);
    }
    let bin = cfg.out.join("bin/kal_heap");
    let include = format!("-I{}", crate::demo::include_dir(&cfg.src).display());
    workloads::compile(&cfg.src.join("kal/kal_heap.c"), &bin, &[&include])?;
    let logs = cfg.out.join("logs");
    let sizes: &[(u64, u32)] = if cfg.quick {
        &[(16, 3), (64, 3)]
    } else {
        &[(64, 10), (256, 10), (1024, 5)]
    };

    let mut rows = Vec::new();
    for backend in BACKENDS {
        for &(heap_mib, scans) in sizes {
            let options =
                format!("mode=detect:interval_ms=3600000:backend={backend}:leak_check_at_exit=0");
            let spec = Spec {
                program: bin.clone(),
                args: vec![heap_mib.to_string(), scans.to_string()],
                env: vec![("KAL_OPTIONS".into(), options)],
                preload: Some(lib.clone()),
                ..Spec::default()
            };
            let log = logs.join(format!("kal_heap-{backend}-{heap_mib}.stderr"));
            let result: Result<Vec<(String, String)>, String> =
                match exec::run(&spec, launcher, Duration::from_secs(600), &log) {
                    Err(e) => Err(format!("could not run: {e}")),
                    Ok(o) if !o.status.ok() => Err(format!(
                        "FAILED ({}), see {}",
                        o.status.describe(),
                        log.display()
                    )),
                    Ok(o) => match o.stdout_tail.lines().find(|l| l.starts_with("result ")) {
                        Some(line) => Ok(line
                            .split_whitespace()
                            .filter_map(|w| w.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()),
                        None => Err(allocators::kal_refused(&log)
                            .or_else(|| {
                                o.stdout_tail
                                    .lines()
                                    .find(|l| l.starts_with("unavailable"))
                                    .map(str::to_string)
                            })
                            .unwrap_or_else(|| "no result line".into())),
                    },
                };
            match &result {
                Ok(f) => println!(
                    "  {backend:<6} {heap_mib:>5} MiB: pause p50 {} us, p99 {} us, rate {} GB/s",
                    get(f, "pause_p50_us"),
                    get(f, "pause_p99_us"),
                    get(f, "rate_gbs_median")
                ),
                Err(why) => println!("  {backend:<6} {heap_mib:>5} MiB: {why}"),
            }
            let unavailable = result.is_err();
            rows.push(Row {
                backend,
                heap_mib,
                result,
            });
            if unavailable {
                break; // the other sizes would say the same
            }
        }
    }

    let _ = writeln!(
        out,
        "`kal/kal_heap.c`: live objects of 32-1024 B (every one linked into one list and to a random \
         earlier one), `rmalloc_kal_scan_now()` called repeatedly with one word written in every 64th \
         object between calls; numbers from `rmalloc_kal_stats()`.  Pause = time the program's threads \
         were stopped; mark = `scan_ns_last`; rate = bytes marked through / mark time, one scanning core.\n"
    );
    let _ = writeln!(
        out,
        "| backend | heap | scans completed | pause p50 | pause p99 | pause max | mark (median) | scan rate (median) | scan_now() call (median) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        match &r.result {
            Ok(f) => {
                let _ = writeln!(
                    out,
                    "| {} | {} MiB | {}/{} | {} | {} | {} | {} ms | {} GB/s | {} ms |",
                    r.backend,
                    r.heap_mib,
                    get(f, "completed"),
                    get(f, "scans"),
                    us(get(f, "pause_p50_us")),
                    us(get(f, "pause_p99_us")),
                    us(get(f, "pause_max_us")),
                    get(f, "mark_ms_median"),
                    get(f, "rate_gbs_median"),
                    get(f, "call_ms_median"),
                );
                if get(f, "unreachable_chunks") != "0" {
                    let _ = writeln!(
                        out,
                        "| | WARNING: {} live chunks reported unreachable | | | | | | | |",
                        get(f, "unreachable_chunks")
                    );
                }
            }
            Err(why) => {
                let _ = writeln!(
                    out,
                    "| {} | {} MiB | not available: {} | | | | | | |",
                    r.backend,
                    r.heap_mib,
                    why.replace('|', "/")
                );
            }
        }
    }
    out.push('\n');
    Ok(out)
}

fn get<'a>(f: &'a [(String, String)], key: &str) -> &'a str {
    f.iter()
        .find(|(k, _)| k == key)
        .map_or("?", |(_, v)| v.as_str())
}

fn us(v: &str) -> String {
    match v.parse::<f64>() {
        Ok(x) if x >= 10_000.0 => format!("{:.1} ms", x / 1000.0),
        Ok(x) => format!("{x:.0} us"),
        Err(_) => v.to_string(),
    }
}
