//! rmalloc-bench: whole-process allocator comparison and the `make demo` driver.
//!
//! ```text
//! rmalloc-bench bench [--rmalloc LIB] [--out DIR] [--src DIR]
//! rmalloc-bench demo  [--rmalloc LIB] [--out DIR] [--src DIR]
//! rmalloc-bench kal   [--rmalloc LIB] [--out DIR] [--src DIR]
//! ```
//! `bench` is the allocator comparison (with rmalloc+KAL columns when the
//! library has KAL), then redis-benchmark and KAL's pause/scan-rate table;
//! `kal` runs only those last two.
//! Environment: `BENCH_RUNS` (repetitions, default 5), `BENCH_QUICK=1` (reduced
//! sizes for a smoke run), `BENCH_WORKLOADS` / `BENCH_ALLOCATORS` (comma-separated
//! names to restrict the run; glibc, the baseline, always runs), `BENCH_KAL=0`
//! (skip the redis and pause sections of `bench`), `BENCH_CALLGRIND=1` (add
//! each pair's instruction count under `valgrind --tool=callgrind`, at a
//! reduced size: slow, but repeatable on a busy machine).

mod allocators;
mod bench;
mod callgrind;
mod demo;
mod exec;
mod pacing;
mod pause;
mod redis;
mod report;
mod workloads;

use std::path::PathBuf;

pub struct Config {
    /// The `benches/` directory: workload sources.
    pub src: PathBuf,
    /// Where binaries, generated inputs, logs and results go.
    pub out: PathBuf,
    /// The rmalloc shared library.
    pub rmalloc: PathBuf,
    pub runs: usize,
    pub quick: bool,
    pub only_workloads: Option<Vec<String>>,
    pub only_allocators: Option<Vec<String>>,
    /// Run the redis and KAL pause sections after the comparison.
    pub kal_sections: bool,
    /// Add callgrind instruction counts (slow, so opt-in).
    pub callgrind: bool,
}

const USAGE: &str = "usage: rmalloc-bench (bench|demo|kal) [--rmalloc LIB] [--out DIR] [--src DIR]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = config(&args).and_then(|(cmd, cfg)| match cmd.as_str() {
        "bench" => bench::run(&cfg),
        "demo" => demo::run(&cfg),
        "kal" => bench::run_kal(&cfg),
        _ => Err(USAGE.into()),
    });
    if let Err(e) = result {
        eprintln!("rmalloc-bench: {e}");
        std::process::exit(1);
    }
}

fn config(args: &[String]) -> Result<(String, Config), String> {
    let src_default = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = src_default.parent().map(PathBuf::from).unwrap_or_default();
    let mut cfg = Config {
        src: src_default,
        out: root.join("target/bench"),
        rmalloc: root.join("target/release/librmalloc.so"),
        runs: env_number("BENCH_RUNS", 5)?,
        quick: std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0"),
        only_workloads: env_list("BENCH_WORKLOADS"),
        only_allocators: env_list("BENCH_ALLOCATORS"),
        kal_sections: std::env::var("BENCH_KAL").map_or(true, |v| v != "0"),
        callgrind: std::env::var("BENCH_CALLGRIND").is_ok_and(|v| !v.is_empty() && v != "0"),
    };
    let mut it = args.iter();
    let cmd = it.next().ok_or(USAGE)?.clone();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--rmalloc" => cfg.rmalloc = PathBuf::from(value),
            "--out" => cfg.out = PathBuf::from(value),
            "--src" => cfg.src = PathBuf::from(value),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if cfg.runs == 0 {
        return Err("BENCH_RUNS must be at least 1".into());
    }
    Ok((cmd, cfg))
}

fn env_number(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v}: not a number")),
        _ => Ok(default),
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    let v = std::env::var(name).ok()?;
    let names: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!names.is_empty()).then_some(names)
}
