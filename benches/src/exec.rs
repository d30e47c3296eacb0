//! Running one program as a whole process and measuring it.
//!
//! The program is started through `launch` (workloads/launch.c), which forks
//! it from a tiny process, times it with the monotonic clock around
//! fork/exec/`wait4`, and reports `wait4`'s rusage (peak RSS, CPU times).  A
//! child forked directly from this runner would inherit the runner's own peak
//! RSS (Linux copies the high-water mark at fork), which would swamp the small
//! workloads.  Standard output is hashed as it streams (a workload's checksum is
//! its whole output), standard error goes to a log file.  A run that exceeds
//! its timeout is killed with its whole process group.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Shared object to put in `LD_PRELOAD` (none: the system allocator).
    pub preload: Option<PathBuf>,
    /// Print each line of standard output as it arrives, with this prefix.
    pub echo: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Signaled(i32),
    TimedOut,
}

impl Status {
    pub fn ok(self) -> bool {
        self == Status::Exited(0)
    }

    pub fn describe(self) -> String {
        match self {
            Status::Exited(c) => format!("exit {c}"),
            Status::Signaled(s) => format!("signal {s}{}", signal_name(s)),
            Status::TimedOut => "timed out".to_string(),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGILL => " (SIGILL)",
        libc::SIGFPE => " (SIGFPE)",
        _ => "",
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: Status,
    pub wall: Duration,
    pub user: Duration,
    pub sys: Duration,
    pub maxrss_kib: u64,
    /// FNV-1a 64 of the whole standard output.
    pub stdout_hash: u64,
    pub stdout_bytes: u64,
    /// The last 64 KiB of standard output.
    pub stdout_tail: String,
}

const TAIL: usize = 64 << 10;

/// Run `spec` through `launcher`, killing it after `timeout`; standard error
/// goes to `stderr_log`.
pub fn run(
    spec: &Spec,
    launcher: &Path,
    timeout: Duration,
    stderr_log: &Path,
) -> io::Result<Outcome> {
    let result_file = stderr_log.with_extension("result");
    let _ = std::fs::remove_file(&result_file);
    let mut cmd = Command::new(launcher);
    cmd.arg(&result_file)
        .arg(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(stderr_log)?)
        .env_remove("LD_PRELOAD")
        .env_remove("BENCH_PRELOAD")
        .process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    if let Some(lib) = &spec.preload {
        cmd.env("BENCH_PRELOAD", lib);
    }

    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().expect("stdout is piped");
    let echo = spec.echo.clone();
    let reader = thread::spawn(move || read_output(stdout, echo));

    // The watchdog kills the process group unless told the child is done.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || match done_rx.recv_timeout(timeout) {
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // SAFETY: plain syscall; -pid names the child's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            true
        }
        _ => false,
    });

    let launcher_status = child.wait()?;
    let runner_wall = start.elapsed();
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let (stdout_hash, stdout_bytes, stdout_tail) = reader.join().unwrap_or((0, 0, String::new()));

    // wall_ns maxrss_kib user_us sys_us wait_status, as written by launch.c
    let report = std::fs::read_to_string(&result_file).unwrap_or_default();
    let _ = std::fs::remove_file(&result_file);
    let v: Vec<i64> = report
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let micros = |x: i64| Duration::from_micros(x.max(0) as u64);
    let (status, wall, maxrss_kib, user, sys) = match v[..] {
        _ if timed_out => (
            Status::TimedOut,
            runner_wall,
            0,
            Duration::ZERO,
            Duration::ZERO,
        ),
        [wall_ns, rss, user_us, sys_us, ws] => {
            let status = if libc::WIFSIGNALED(ws as i32) {
                Status::Signaled(libc::WTERMSIG(ws as i32))
            } else {
                Status::Exited(libc::WEXITSTATUS(ws as i32))
            };
            let wall = Duration::from_nanos(wall_ns.max(0) as u64);
            (
                status,
                wall,
                rss.max(0) as u64,
                micros(user_us),
                micros(sys_us),
            )
        }
        _ => {
            return Err(io::Error::other(format!(
                "launcher failed ({launcher_status}) and wrote no result; see {}",
                stderr_log.display()
            )))
        }
    };
    Ok(Outcome {
        status,
        wall,
        user,
        sys,
        maxrss_kib,
        stdout_hash,
        stdout_bytes,
        stdout_tail,
    })
}

/// Hash and count everything, keep the tail, echo whole lines if asked.
fn read_output(mut src: impl Read, echo: Option<String>) -> (u64, u64, String) {
    let mut hash = Fnv::new();
    let mut total = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut echoed = 0; // bytes of `tail` already echoed
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        hash.update(&buf[..n]);
        total += n as u64;
        tail.extend_from_slice(&buf[..n]);
        if let Some(prefix) = &echo {
            while let Some(nl) = tail[echoed..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&tail[echoed..echoed + nl]);
                println!("{prefix}{line}");
                echoed += nl + 1;
            }
        }
        if tail.len() > 2 * TAIL {
            let cut = tail.len() - TAIL;
            tail.drain(..cut);
            echoed = echoed.saturating_sub(cut);
        }
    }
    if tail.len() > TAIL {
        tail.drain(..tail.len() - TAIL);
    }
    (hash.0, total, String::from_utf8_lossy(&tail).into_owned())
}

/// FNV-1a, 64-bit: cheap, streaming, and plenty to tell outputs apart.
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Run a setup command to completion (no measurement), failing on error.
pub fn setup(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Seconds since boot spent busy and in total, summed over all CPUs (from /proc/stat).
pub fn cpu_times() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total: f64 = v.iter().take(8).sum();
    let idle = v[3] + v[4]; // idle + iowait
    Some(((total - idle) / hz, total / hz))
}
