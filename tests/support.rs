//! Shared helpers for the process-level integration tests (`tests/c_api.rs`,
//! `tests/programs.rs`): where the library is, running a child process under
//! `LD_PRELOAD` with a timeout, and proving that rmalloc really served it.
//!
//! Environment knobs:
//! - `RMALLOC_LIB=/path/to/librmalloc.so` overrides the library under test
//!   (default: `<workspace>/target/release/librmalloc.so`, built by `make lib`).
//! - `RMALLOC_TEST_AGAINST_GLIBC=1` runs the same expectations without the
//!   preload, to show they are glibc's own behaviour; checks that only make
//!   sense for rmalloc (exit stats, rmalloc symbols) are then skipped.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous deadline for one child process: only there to turn a deadlock
/// into a failure, never a performance threshold.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variable read by rmalloc: at exit it appends one line
/// `rmalloc: pid=<pid> arenas=<n> system_bytes=<n> in_use_bytes=<n>`.
pub const EXIT_STATS_ENV: &str = "RMALLOC_EXIT_STATS";

/// The workspace root (parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The C sources of the tests (`tests/c`).
pub fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("c")
}

/// The C compiler: `$CC`, default `cc`.
pub fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_string())
}

/// Flags for the C test programs: warnings as errors, and no builtin
/// malloc/free folding (the calls under test must happen).
/// `mallinfo`/`valloc`/`pvalloc` are deprecated but tested.
pub const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O1",
    "-g",
    "-fno-builtin",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-deprecated-declarations",
    "-pthread",
];

/// Run a compiler command; panics with its output if it fails.
pub fn compile(cmd: &mut Command, what: &str) {
    let out = run(cmd, Duration::from_secs(120));
    assert!(out.success(), "compiling {what} failed\n{}", out.describe());
}

/// Environment variables that change the allocator's or KAL's behaviour,
/// cleared before a test program runs (a test sets what it means to).
pub const ALLOCATOR_ENV: &[&str] = &[
    "GLIBC_TUNABLES",
    "MALLOC_CHECK_",
    "MALLOC_PERTURB_",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
    "LD_PRELOAD",
    "KAL_OPTIONS",
    "LSAN_OPTIONS",
];

/// True when `RMALLOC_TEST_AGAINST_GLIBC=1`: run without the preload.
pub fn against_glibc() -> bool {
    std::env::var("RMALLOC_TEST_AGAINST_GLIBC").is_ok_and(|v| v == "1")
}

/// Absolute path of the `librmalloc.so` under test. Panics with a clear
/// message when it does not exist.
pub fn lib_path() -> PathBuf {
    let path = match std::env::var_os("RMALLOC_LIB") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/release/librmalloc.so"),
    };
    if !path.is_file() {
        panic!(
            "librmalloc.so not found at {}: run `make lib` in {} first \
             (or set RMALLOC_LIB=/path/to/librmalloc.so)",
            path.display(),
            workspace_root().display()
        );
    }
    path.canonicalize().expect("canonicalize library path")
}

/// Set `LD_PRELOAD` to the library under test (unless running against glibc).
pub fn preload(cmd: &mut Command) -> &mut Command {
    if !against_glibc() {
        cmd.env("LD_PRELOAD", lib_path());
    }
    cmd
}

/// What a finished (or killed) child process did.
#[derive(Debug)]
pub struct Output {
    /// Program and arguments, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The deadline passed and the process group was killed.
    pub timed_out: bool,
    pub elapsed: Duration,
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// Status and the tails of stdout and stderr, for failure messages.
    pub fn describe(&self) -> String {
        let status = if self.timed_out {
            format!(
                "TIMED OUT after {:.1?} (deadlock or hang?), killed",
                self.elapsed
            )
        } else if let Some(sig) = self.signal() {
            format!("killed by signal {sig} ({})", signal_name(sig))
        } else {
            format!("exit code {:?}", self.code())
        };
        format!(
            "command: {}\nstatus: {status}\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.command,
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }

    /// Panic unless the process exited with status 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "expected success\n{}", self.describe());
        self
    }

    /// Panic unless the process was killed by `sig`.
    #[track_caller]
    pub fn assert_signal(&self, sig: i32) -> &Self {
        assert!(
            !self.timed_out && self.signal() == Some(sig),
            "expected death by signal {sig} ({})\n{}",
            signal_name(sig),
            self.describe()
        );
        self
    }

    /// Panic unless the process died of SIGABRT and stderr contains `message`.
    #[track_caller]
    pub fn assert_aborted_with(&self, message: &str) -> &Self {
        self.assert_signal(libc::SIGABRT);
        assert!(
            self.stderr.contains(message),
            "expected {message:?} on stderr before the abort\n{}",
            self.describe()
        );
        self
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        _ => "?",
    }
}

fn reader<R: Read + Send + 'static>(
    mut r: R,
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Sender<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
        let _ = done.send(());
    })
}

fn kill_group(pgid: u32) {
    // SAFETY: plain syscall; the group was created for this child alone.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), libc::SIGKILL);
    }
}

/// Run `cmd` to completion with stdin from `input` (or /dev/null), capturing
/// stdout and stderr. The child gets its own process group; when `timeout`
/// passes the whole group is killed with SIGKILL and `timed_out` is set.
/// Whatever is still left in the group after the child exits (a forked
/// straggler holding the pipes) is killed too once the deadline passes.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let command = format!("{cmd:?}");
    let start = Instant::now();
    let deadline = start + timeout;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    // Programs start with SIGINT and SIGQUIT at their defaults, as from a
    // terminal, whatever `make test` was started from: a shell's background
    // job ignores them, and the ignoring is inherited (CPython's
    // `test_interrupt_main_*` then fail under glibc too).  Reset here, in
    // the test process, rather than between fork and exec: a `pre_exec`
    // hook turns the spawn into fork + exec, and the longer window lets
    // another test's child hold a just-written executable open ("Text file
    // busy").
    static DEFAULT_SIGNALS: std::sync::Once = std::sync::Once::new();
    DEFAULT_SIGNALS.call_once(|| {
        // SAFETY: setting two dispositions to their defaults; no handler
        // of this process is replaced.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
        }
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    let pgid = child.id();

    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    reader(child.stdout.take().unwrap(), out.clone(), tx.clone());
    reader(child.stderr.take().unwrap(), err.clone(), tx);

    let mut timed_out = false;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            kill_group(pgid);
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    };
    // Wait for both pipes to close, but not past the deadline.
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if rx
            .recv_timeout(left.max(Duration::from_millis(100)))
            .is_err()
        {
            kill_group(pgid);
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    Output {
        command,
        status,
        stdout: text(&out),
        stderr: text(&err),
        timed_out,
        elapsed: start.elapsed(),
    }
}

/// [`run_with_input`] without input.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout)
}

/// Run `cmd` with `LD_PRELOAD` of the library under test (see [`preload`]).
pub fn run_preloaded(cmd: &mut Command, timeout: Duration) -> Output {
    preload(cmd);
    run(cmd, timeout)
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "rmalloc-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One `rmalloc: pid=... arenas=... system_bytes=... in_use_bytes=...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStats {
    pub pid: u64,
    pub arenas: u64,
    pub system_bytes: u64,
    pub in_use_bytes: u64,
}

/// Parse one exit-stats line; `None` for anything else.
pub fn parse_exit_stats(line: &str) -> Option<ExitStats> {
    let rest = line.trim().strip_prefix("rmalloc:")?;
    let (mut pid, mut arenas, mut system, mut in_use) = (None, None, None, None);
    for field in rest.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match key {
            "pid" => pid = Some(value),
            "arenas" => arenas = Some(value),
            "system_bytes" => system = Some(value),
            "in_use_bytes" => in_use = Some(value),
            _ => {}
        }
    }
    Some(ExitStats {
        pid: pid?,
        arenas: arenas?,
        system_bytes: system?,
        in_use_bytes: in_use?,
    })
}

/// Set `RMALLOC_EXIT_STATS` for `cmd` to `stats_file` (removing an old one).
pub fn set_exit_stats<'a>(cmd: &'a mut Command, stats_file: &Path) -> &'a mut Command {
    let _ = std::fs::remove_file(stats_file);
    cmd.env(EXIT_STATS_ENV, stats_file)
}

/// Check that `stats_file` (the `RMALLOC_EXIT_STATS` target of a finished
/// run) has at least one rmalloc exit line with `system_bytes > 0`, so a
/// silent fallback to glibc cannot pass. Returns the parsed lines.
/// Against glibc this checks nothing and returns an empty list.
#[track_caller]
pub fn assert_rmalloc_was_used(stats_file: &Path) -> Vec<ExitStats> {
    if against_glibc() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(stats_file).unwrap_or_else(|e| {
        panic!(
            "no rmalloc exit stats at {} ({e}): the program did not run on rmalloc \
             (silent fallback to glibc, or it never exited normally)",
            stats_file.display()
        )
    });
    let stats: Vec<ExitStats> = text.lines().filter_map(parse_exit_stats).collect();
    assert!(
        stats.iter().any(|s| s.system_bytes > 0),
        "no rmalloc exit-stats line with system_bytes > 0 in {}:\n{text}",
        stats_file.display()
    );
    stats
}
