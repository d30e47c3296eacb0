//! redis-server under redis-benchmark: requests/s and p50/p99 latency with
//! KAL at its default interval and at an aggressive one, against KAL off and
//! the other allocators, in the same run (allocators interleaved, order
//! rotated per repetition).
//!
//! Debian's redis-server is linked against libjemalloc, so with no preload it
//! runs on jemalloc; the glibc column preloads libc.so.6, which puts glibc's
//! malloc ahead of jemalloc's in symbol lookup.

use crate::allocators::{self, Allocator};
use crate::Config;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/bin/redis-server";
const BENCHMARK: &str = "/usr/bin/redis-benchmark";
const TESTS: &str = "set,get,incr,lpush,lpop,hset,zadd,lrange_100";
const GLIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

/// (test, rps, p50 ms, p99 ms) from one redis-benchmark run.
type Lines = Vec<(String, f64, f64, f64)>;

struct Column {
    name: String,
    preload: Option<PathBuf>,
    env: Vec<(String, String)>,
    runs: Vec<Lines>,
    peak_rss_kib: Vec<u64>,
    failure: Option<String>,
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: plain syscall on the process group created for the server.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

impl Server {
    fn start(c: &Column, dir: &Path, log: &Path) -> Result<Server, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let logf = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(SERVER);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "yes", "--logfile", ""])
            .arg("--dir")
            .arg(dir)
            .env_remove("LD_PRELOAD")
            .env_remove("KAL_OPTIONS")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .process_group(0);
        if let Some(lib) = &c.preload {
            cmd.env("LD_PRELOAD", lib);
        }
        cmd.envs(c.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let mut server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "redis-server exited at start ({status}); see {}",
                    log.display()
                ));
            }
            if server.ping() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server not answering; see {}", log.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// Peak RSS (VmHWM) of the server so far.
    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    fn shutdown(mut self) -> Result<(), String> {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.write_all(b"SHUTDOWN NOSAVE\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("redis-server exited with {status}"))
                };
            }
            if Instant::now() > deadline {
                return Err("redis-server did not exit after SHUTDOWN".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn benchmark(port: u16, requests: u32) -> Result<Lines, String> {
    let out = Command::new(BENCHMARK)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "--csv", "-c", "20", "-r", "100000", "-d", "256", "-t", TESTS,
        ])
        .args(["-n", &requests.to_string()])
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = Vec::new();
    let mut header: Vec<String> = Vec::new();
    for l in text.lines() {
        let cells: Vec<String> = l
            .split(',')
            .map(|c| c.trim_matches('"').to_string())
            .collect();
        if cells.first().is_some_and(|c| c == "test") {
            header = cells;
            continue;
        }
        let col = |name: &str| -> f64 {
            header
                .iter()
                .position(|h| h == name)
                .and_then(|i| cells.get(i)?.parse().ok())
                .unwrap_or(f64::NAN)
        };
        if cells.len() >= 2 && !header.is_empty() {
            lines.push((
                cells[0].clone(),
                col("rps"),
                col("p50_latency_ms"),
                col("p99_latency_ms"),
            ));
        }
    }
    if lines.is_empty() {
        return Err(format!(
            "no results in redis-benchmark output: {}",
            text.trim()
        ));
    }
    Ok(lines)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
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

/// Run the comparison and return the Markdown section.
pub fn run(cfg: &Config, allocs: &[Allocator]) -> Result<String, String> {
    let mut out = String::from("## redis-server under redis-benchmark\n\n");
    println!("\nredis-benchmark:");
    if !Path::new(SERVER).exists() || !Path::new(BENCHMARK).exists() {
        let why = "not measured: redis-server / redis-benchmark not installed (packages redis-server, redis-tools)";
        println!("  {why}");
        let _ = writeln!(out, "{why}\n");
        return Ok(out);
    }
    let dir = cfg.out.join("redis");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let logs = cfg.out.join("logs");
    let requests: u32 = if cfg.quick { 10_000 } else { 50_000 };
    let reps = cfg.runs.min(3);

    let mut cols = vec![Column {
        name: "jemalloc (redis default)".into(),
        preload: None,
        env: vec![],
        runs: vec![],
        peak_rss_kib: vec![],
        failure: None,
    }];
    if Path::new(GLIBC).exists() {
        cols.push(Column {
            name: "glibc".into(),
            preload: Some(GLIBC.into()),
            env: vec![],
            runs: vec![],
            peak_rss_kib: vec![],
            failure: None,
        });
    }
    let mut notes = Vec::new();
    for a in allocs.iter().filter(|a| a.name.starts_with("rmalloc")) {
        match &a.usable {
            Ok(()) => cols.push(Column {
                name: a.name.clone(),
                preload: a.lib.clone(),
                env: a.env.clone(),
                runs: vec![],
                peak_rss_kib: vec![],
                failure: None,
            }),
            Err(why) => notes.push(format!("{}: not measured: {why}", a.name)),
        }
    }

    for rep in 0..reps {
        let mut line = format!("  repetition {}/{reps}:", rep + 1);
        for k in 0..cols.len() {
            let ci = (k + rep) % cols.len();
            let c = &mut cols[ci];
            if c.failure.is_some() {
                continue;
            }
            let tag: String = c
                .name
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
                .collect();
            let log = logs.join(format!("redis-{tag}-r{}.log", rep + 1));
            let result = Server::start(c, &dir, &log).and_then(|server| {
                let lines = benchmark(server.port, requests);
                let rss = server.peak_rss_kib();
                let stop = server.shutdown();
                let lines = lines?;
                stop?;
                if let Some(why) = allocators::kal_refused(&log) {
                    return Err(format!("KAL refused its options: {why}"));
                }
                Ok((lines, rss))
            });
            match result {
                Ok((lines, rss)) => {
                    let total: f64 = lines.iter().map(|l| l.1).sum();
                    let _ = write!(line, " {} {:.0} rps;", c.name, total / lines.len() as f64);
                    c.runs.push(lines);
                    c.peak_rss_kib.push(rss);
                }
                Err(why) => {
                    let _ = write!(line, " {} FAILED;", c.name);
                    c.failure = Some(why);
                }
            }
        }
        println!("{line}");
    }

    let _ = writeln!(
        out,
        "`redis-benchmark -c 20 -r 100000 -d 256 -n {requests} -t {TESTS}` against a fresh \
         `redis-server --save '' --appendonly no` per run; {reps} repetitions, medians shown; \
         allocators interleaved.  KAL runs in reclaim mode.\n"
    );
    let good: Vec<&Column> = cols.iter().filter(|c| !c.runs.is_empty()).collect();
    let tests: Vec<String> = good
        .first()
        .map(|c| c.runs[0].iter().map(|l| l.0.clone()).collect())
        .unwrap_or_default();
    let base = good.iter().position(|c| c.name == "rmalloc");
    let value = |c: &Column, t: &str, pick: usize| -> Option<f64> {
        median(
            c.runs
                .iter()
                .filter_map(|r| r.iter().find(|l| l.0 == t))
                .map(|l| match pick {
                    0 => l.1,
                    1 => l.2,
                    _ => l.3,
                })
                .collect(),
        )
    };
    for (title, pick) in [
        ("Requests per second (ratio to rmalloc with KAL off)", 0),
        ("Latency p50 / p99, ms", 1),
    ] {
        let _ = writeln!(out, "### {title}\n");
        let names: Vec<&str> = good.iter().map(|c| c.name.as_str()).collect();
        let _ = writeln!(out, "| test | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(good.len()));
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); good.len()];
        for t in &tests {
            let mut row = format!("| {t} |");
            for (i, c) in good.iter().enumerate() {
                let cell = if pick == 0 {
                    let v = value(c, t, 0);
                    let b = base.and_then(|b| value(good[b], t, 0));
                    match (v, b) {
                        (Some(v), Some(b)) if b > 0.0 => {
                            ratios[i].push(v / b);
                            format!("{v:.0} ({:.3}x)", v / b)
                        }
                        (Some(v), _) => format!("{v:.0}"),
                        _ => "-".into(),
                    }
                } else {
                    match (value(c, t, 1), value(c, t, 2)) {
                        (Some(a), Some(b)) => format!("{a:.3} / {b:.3}"),
                        _ => "-".into(),
                    }
                };
                let _ = write!(row, " {cell} |");
            }
            let _ = writeln!(out, "{row}");
        }
        if pick == 0 {
            let mut row = "| geometric mean of ratios |".to_string();
            for r in &ratios {
                if r.is_empty() {
                    row += " - |";
                } else {
                    let g = (r.iter().map(|x| x.ln()).sum::<f64>() / r.len() as f64).exp();
                    let _ = write!(row, " {g:.3}x |");
                }
            }
            let _ = writeln!(out, "{row}");
            let mut row = "| server peak RSS (median) |".to_string();
            for c in &good {
                let rss = median(c.peak_rss_kib.iter().map(|&k| k as f64).collect());
                let _ = write!(
                    row,
                    " {} |",
                    rss.map_or("-".into(), |k| format!("{:.1} MiB", k / 1024.0))
                );
            }
            let _ = writeln!(out, "{row}");
        }
        out.push('\n');
    }
    for c in &cols {
        if let Some(why) = &c.failure {
            notes.push(format!("{}: FAILED: {why}", c.name));
        }
    }
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    out.push('\n');
    Ok(out)
}
