//! Real programs under `LD_PRELOAD=librmalloc.so`.
//!
//! Each test runs a real workload twice, once on glibc's malloc (no preload)
//! and once with rmalloc preloaded, and asserts that
//! - both runs succeed and produce the same output (identical stdout for the
//!   deterministic workloads, equivalent results for redis), and
//! - rmalloc really served the rmalloc run: with `RMALLOC_EXIT_STATS` set,
//!   the main process (and for git every command run) must have appended an
//!   `rmalloc: pid=<pid> ... system_bytes=<n>` line with `n > 0`, so a silent
//!   fallback to glibc (library not loaded, symbols not interposed) fails.
//!
//! Programs: Debian's python3 (a multithreaded script and suites of its own
//! `test` package), git, perl, sqlite3, and redis-server driven by
//! redis-benchmark.  They are installed by `make test-integration` through
//! `scripts/need-apt` (see tests/tests.mk).  Workload scripts live in
//! `tests/programs/`.
//!
//! Knobs (see tests/support.rs): `RMALLOC_LIB` selects the library;
//! `RMALLOC_TEST_AGAINST_GLIBC=1` runs the "rmalloc" side without the preload
//! (a self-test of the harness: everything must pass except nothing checks
//! the exit stats).  Run with `--nocapture` to see per-run timings.

use rmalloc_integration::{self as support, ExitStats, Output, TempDir};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";
const GIT: &str = "/usr/bin/git";
const PERL: &str = "/usr/bin/perl";
const SQLITE3: &str = "/usr/bin/sqlite3";
const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "/usr/bin/redis-cli";
const REDIS_BENCHMARK: &str = "/usr/bin/redis-benchmark";

/// Hang detection only: far above any normal run time.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Suites of CPython's `test` package: allocation-heavy, quick (about 30 s
/// in total under glibc on 2 cores), not network- or timing-dependent.
/// Two groups, run as two tests so the harness can run them in parallel;
/// test_threading and test_thread also start threads and subprocesses.
const PYTHON_SUITES_CONTAINERS: &[&str] = &[
    "test_dict",
    "test_list",
    "test_tuple",
    "test_set",
    "test_deque",
    "test_collections",
    "test_array",
    "test_gc",
];
const PYTHON_SUITES_TEXT_THREADS: &[&str] = &[
    "test_unicode",
    "test_bytes",
    "test_codecs",
    "test_re",
    "test_json",
    "test_zlib",
    "test_thread",
    "test_threading",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alloc {
    Glibc,
    Rmalloc,
    /// rmalloc with KAL reclaiming at an aggressive interval.
    RmallocKalReclaim,
}

impl Alloc {
    fn name(self) -> &'static str {
        match self {
            Alloc::Glibc => "glibc",
            Alloc::Rmalloc => "rmalloc",
            Alloc::RmallocKalReclaim => "rmalloc-kal",
        }
    }
}

fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("programs")
}

fn script(name: &str) -> PathBuf {
    let p = programs_dir().join(name);
    assert!(p.is_file(), "missing workload script {}", p.display());
    p
}

fn require_program(path: &str) {
    assert!(
        Path::new(path).is_file(),
        "{path} is not installed; `make test-integration` installs it \
         (scripts/need-apt, see tests/tests.mk)"
    );
}

/// A command with a clean, reproducible environment: no inherited preload,
/// tunables or user configuration; HOME and TMPDIR inside the scratch dir.
fn command(program: &str, scratch: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", scratch)
        .env("TMPDIR", scratch)
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .current_dir(scratch);
    cmd
}

/// Make the child write its pid to `pid_file` right after fork (the pid of
/// the process that will exec `cmd`), so its exit-stats line can be found.
/// The child also gets SIGKILL if the thread that spawned it goes away.
fn record_pid(cmd: &mut Command, pid_file: &Path) {
    let file =
        fs::File::create(pid_file).unwrap_or_else(|e| panic!("create {}: {e}", pid_file.display()));
    // SAFETY: the hook only calls prctl, getpid and write (async-signal-safe) on a
    // stack buffer; `file` is owned by the closure and stays open until exec
    // (it is close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            // Die with the test thread that started us: no orphaned servers
            // or programs if the test process itself is killed.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut pid = libc::getpid() as u64;
            let mut buf = [0u8; 24];
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (pid % 10) as u8;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            libc::write(file.as_raw_fd(), buf[i..].as_ptr().cast(), buf.len() - i);
            Ok(())
        });
    }
}

fn read_pid(pid_file: &Path) -> u64 {
    let text = fs::read_to_string(pid_file).unwrap_or_default();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid recorded in {}", pid_file.display()))
}

/// Prepare `cmd` for a run on `alloc`: preload and exit stats for rmalloc,
/// nothing for glibc.  Returns the pid file to read after spawning.
fn prepare(cmd: &mut Command, alloc: Alloc, stats_file: &Path) -> PathBuf {
    cmd.env_remove("LD_PRELOAD")
        .env_remove(support::EXIT_STATS_ENV);
    cmd.env_remove("KAL_OPTIONS");
    if alloc != Alloc::Glibc {
        support::preload(cmd);
        cmd.env(support::EXIT_STATS_ENV, stats_file);
    }
    if alloc == Alloc::RmallocKalReclaim {
        cmd.env(
            "KAL_OPTIONS",
            "mode=reclaim:interval_ms=5:max_overhead=0:verbosity=1",
        );
    }
    let pid_file = stats_file.with_extension(format!(
        "pid{}",
        PID_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    record_pid(cmd, &pid_file);
    pid_file
}

static PID_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One finished program run.
struct Run {
    alloc: Alloc,
    what: String,
    out: Output,
    pid: u64,
}

impl Run {
    #[track_caller]
    fn assert_success(&self) -> &Self {
        assert!(
            self.out.success(),
            "{} failed under {}\n{}",
            self.what,
            self.alloc.name(),
            self.out.describe()
        );
        self
    }
}

/// Run `cmd` (stdin from `input`) on `alloc`; rmalloc runs append their exit
/// stats to `stats_file`.
fn run_on(
    alloc: Alloc,
    what: &str,
    cmd: &mut Command,
    input: Option<&[u8]>,
    stats_file: &Path,
) -> Run {
    let pid_file = prepare(cmd, alloc, stats_file);
    let out = support::run_with_input(cmd, input, TIMEOUT);
    let pid = read_pid(&pid_file);
    let _ = fs::remove_file(&pid_file);
    eprintln!(
        "[programs] {what} on {}: {:.2?}, {}",
        alloc.name(),
        out.elapsed,
        if out.success() { "ok" } else { "FAILED" }
    );
    Run {
        alloc,
        what: what.to_string(),
        out,
        pid,
    }
}

/// Assert that every process in `pids` left an rmalloc exit-stats line with
/// `system_bytes > 0` in `stats_file`; returns all lines of the file.
#[track_caller]
fn assert_served_by_rmalloc(stats_file: &Path, pids: &[(String, u64)]) -> Vec<ExitStats> {
    if support::against_glibc() {
        return Vec::new();
    }
    let stats = support::assert_rmalloc_was_used(stats_file);
    let text = fs::read_to_string(stats_file).unwrap_or_default();
    for (what, pid) in pids {
        let line = stats.iter().find(|s| s.pid == *pid);
        assert!(
            line.is_some_and(|s| s.system_bytes > 0),
            "{what} (pid {pid}) left no rmalloc exit-stats line with system_bytes > 0 \
             in {}: it did not run on rmalloc or did not exit normally.\nlines:\n{}",
            stats_file.display(),
            support_tail(&text)
        );
    }
    stats
}

fn support_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    lines[from..].join("\n")
}

/// Panic with the first difference if the two outputs differ.
#[track_caller]
fn assert_same_output(what: &str, glibc: &str, rmalloc: &str) {
    if glibc == rmalloc {
        return;
    }
    let g: Vec<&str> = glibc.lines().collect();
    let r: Vec<&str> = rmalloc.lines().collect();
    let first = g
        .iter()
        .zip(r.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(r.len()));
    let ctx = |v: &[&str]| {
        let lo = first.saturating_sub(3);
        let hi = (first + 4).min(v.len());
        v[lo..hi]
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{:6}: {}", lo + i + 1, truncate(l, 300)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{what}: output under rmalloc differs from glibc ({} vs {} lines, {} vs {} bytes); \
         first difference at line {}\n--- glibc ---\n{}\n--- rmalloc ---\n{}",
        g.len(),
        r.len(),
        glibc.len(),
        rmalloc.len(),
        first + 1,
        ctx(&g),
        ctx(&r)
    );
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Run the same deterministic workload under glibc and rmalloc; assert
/// success, identical stdout, and that rmalloc served the main process.
/// Returns the rmalloc run's exit stats.
fn compare_runs(
    what: &str,
    scratch: &Path,
    input: Option<&[u8]>,
    build: impl Fn(Alloc, &Path) -> Command,
) -> (Run, Run, Vec<ExitStats>) {
    let mut runs = Vec::new();
    for alloc in [Alloc::Glibc, Alloc::Rmalloc] {
        let dir = scratch.join(alloc.name());
        fs::create_dir_all(&dir).unwrap();
        let stats_file = scratch.join(format!("{}.stats", alloc.name()));
        let _ = fs::remove_file(&stats_file);
        let mut cmd = build(alloc, &dir);
        let run = run_on(alloc, what, &mut cmd, input, &stats_file);
        run.assert_success();
        runs.push((run, stats_file));
    }
    let (rm, rm_stats) = runs.pop().unwrap();
    let (gl, _) = runs.pop().unwrap();
    assert_same_output(what, &gl.out.stdout, &rm.out.stdout);
    let stats = assert_served_by_rmalloc(&rm_stats, &[(what.to_string(), rm.pid)]);
    report_stats(what, &stats, rm.pid);
    (gl, rm, stats)
}

fn report_stats(what: &str, stats: &[ExitStats], main_pid: u64) {
    if let Some(s) = stats.iter().find(|s| s.pid == main_pid) {
        eprintln!(
            "[programs] {what}: rmalloc exit stats of pid {}: arenas={} system_bytes={} \
             in_use_bytes={} ({} exit lines in all)",
            s.pid,
            s.arenas,
            s.system_bytes,
            s.in_use_bytes,
            stats.len()
        );
    }
}

// ---------------------------------------------------------------- python

fn python(dir: &Path) -> Command {
    require_program(PYTHON);
    let mut cmd = command(PYTHON, dir);
    // PYTHONMALLOC=malloc: every object goes through malloc/free/realloc
    // instead of pymalloc's private arenas, which multiplies the calls.
    cmd.env("PYTHONMALLOC", "malloc")
        .env("PYTHONHASHSEED", "0")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONFAULTHANDLER", "1")
        .arg("-s");
    cmd
}

#[test]
fn python_multithreaded_script() {
    let scratch = TempDir::new("py-threads");
    let (_, rm, _) = compare_runs("python3 py_threads.py", scratch.path(), None, |_, dir| {
        let mut cmd = python(dir);
        cmd.arg(script("py_threads.py"));
        cmd
    });
    assert!(
        rm.out.stdout.contains("\ndone\n"),
        "py_threads.py did not finish:\n{}",
        rm.out.describe()
    );
}

/// The same multithreaded script under rmalloc with glibc's malloc tunables
/// and environment variables: the output must still match glibc's default
/// run, and `arena_max` must show in the exit stats.
#[test]
fn python_multithreaded_script_with_tunables() {
    let scratch = TempDir::new("py-tunables");
    let baseline = {
        let dir = scratch.path().join("glibc");
        fs::create_dir_all(&dir).unwrap();
        let mut cmd = python(&dir);
        cmd.arg(script("py_threads.py"));
        let run = run_on(
            Alloc::Glibc,
            "python3 py_threads.py",
            &mut cmd,
            None,
            &dir.join("stats"),
        );
        run.assert_success();
        run.out.stdout
    };
    // (name, environment, largest arena count allowed)
    type Config<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<u64>);
    let configs: &[Config] = &[
        (
            "arena_max=1",
            &[("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")],
            Some(1),
        ),
        ("MALLOC_ARENA_MAX=2", &[("MALLOC_ARENA_MAX", "2")], Some(2)),
        (
            "no tcache, no fastbins, perturb",
            &[(
                "GLIBC_TUNABLES",
                "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0:glibc.malloc.perturb=165",
            )],
            None,
        ),
        (
            "low mmap and trim thresholds",
            &[(
                "GLIBC_TUNABLES",
                "glibc.malloc.mmap_threshold=16384:glibc.malloc.trim_threshold=0:\
                 glibc.malloc.top_pad=0",
            )],
            None,
        ),
    ];
    let mut problems = Vec::new();
    for (i, (name, env, max_arenas)) in configs.iter().enumerate() {
        let what = format!("python3 py_threads.py [{name}]");
        let dir = scratch.path().join(format!("rmalloc-{i}"));
        fs::create_dir_all(&dir).unwrap();
        let stats_file = dir.join("stats");
        let mut cmd = python(&dir);
        cmd.arg(script("py_threads.py"));
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
        let run = run_on(Alloc::Rmalloc, &what, &mut cmd, None, &stats_file);
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run.assert_success();
            assert_same_output(&what, &baseline, &run.out.stdout);
            let stats = assert_served_by_rmalloc(&stats_file, &[(what.clone(), run.pid)]);
            report_stats(&what, &stats, run.pid);
            if let (Some(max), Some(s)) = (max_arenas, stats.iter().find(|s| s.pid == run.pid)) {
                assert!(
                    s.arenas <= *max,
                    "{what}: {} arenas in the exit stats, the setting allows {max}",
                    s.arenas
                );
            }
        }));
        if let Err(e) = verdict {
            problems.push(panic_message(e));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} tunable settings failed:\n\n{}",
        problems.len(),
        configs.len(),
        problems.join("\n\n")
    );
}

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn python_test_suites_containers() {
    python_test_suites(PYTHON_SUITES_CONTAINERS);
}

#[test]
fn python_test_suites_text_and_threads() {
    python_test_suites(PYTHON_SUITES_TEXT_THREADS);
}

/// Run each suite under glibc and rmalloc; per-test outcomes must match.
fn python_test_suites(suites: &[&str]) {
    require_program(PYTHON);
    let probe = support::run(
        command(PYTHON, Path::new("/")).args(["-c", "import test.test_dict"]),
        TIMEOUT,
    );
    assert!(
        probe.success(),
        "CPython's test package is missing (Debian package libpython3.11-testsuite; \
         `make test-integration` installs it):\n{}",
        probe.describe()
    );
    let scratch = TempDir::new("py-suites");
    let mut problems = Vec::new();
    for suite in suites {
        let what = format!("python3 -m test {suite}");
        let mut runs = Vec::new();
        for alloc in [Alloc::Glibc, Alloc::Rmalloc] {
            let dir = scratch.path().join(format!("{suite}-{}", alloc.name()));
            fs::create_dir_all(&dir).unwrap();
            let stats_file = dir.with_extension("stats");
            let mut cmd = python(&dir);
            cmd.arg(script("py_suites.py")).arg(suite);
            let run = run_on(alloc, &what, &mut cmd, None, &stats_file);
            runs.push((run, stats_file));
        }
        let (rm, rm_stats) = &runs[1];
        let (gl, _) = &runs[0];
        // Collect every suite's verdict before failing, to report them all.
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gl.assert_success();
            rm.assert_success();
            assert_same_output(&what, &gl.out.stdout, &rm.out.stdout);
            let stats = assert_served_by_rmalloc(rm_stats, &[(what.clone(), rm.pid)]);
            report_stats(&what, &stats, rm.pid);
        }));
        let summary = rm
            .out
            .stdout
            .lines()
            .rfind(|l| l.starts_with("suite "))
            .unwrap_or("(no summary)")
            .to_string();
        match verdict {
            Ok(()) => eprintln!("[programs] {what}: same results ({summary})"),
            Err(e) => problems.push(panic_message(e)),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} python test suites failed:\n\n{}",
        problems.len(),
        suites.len(),
        problems.join("\n\n")
    );
}

// ---------------------------------------------------------------- perl

#[test]
fn perl_workload() {
    require_program(PERL);
    let scratch = TempDir::new("perl");
    let (_, rm, _) = compare_runs("perl perl_workload.pl", scratch.path(), None, |_, dir| {
        let mut cmd = command(PERL, dir);
        cmd.arg(script("perl_workload.pl"));
        cmd
    });
    assert!(rm.out.stdout.ends_with("done\n"), "{}", rm.out.describe());
}

// ---------------------------------------------------------------- sqlite3

#[test]
fn sqlite3_generated_database() {
    require_program(SQLITE3);
    let scratch = TempDir::new("sqlite");
    let sql = fs::read(script("sqlite_workload.sql")).unwrap();
    let (_, rm, _) = compare_runs("sqlite3 workload", scratch.path(), Some(&sql), |_, dir| {
        let mut cmd = command(SQLITE3, dir);
        cmd.arg("-batch").arg(dir.join("work.db"));
        cmd
    });
    assert!(
        rm.out.stdout.contains("integrity_check\nok\n"),
        "{}",
        rm.out.describe()
    );
    // The database file written under rmalloc must read back under glibc.
    let check = support::run_with_input(
        command(SQLITE3, scratch.path())
            .arg("-batch")
            .arg(scratch.path().join("rmalloc/work.db")),
        Some(b"PRAGMA integrity_check;\nSELECT count(*), sum(amount) FROM orders;\n"),
        TIMEOUT,
    );
    check.assert_success();
    assert_eq!(
        check.stdout, "ok\n109061|5454475467\n",
        "database written under rmalloc reads back wrong under glibc"
    );
}

// ---------------------------------------------------------------- git

/// Small deterministic PRNG (xorshift64*), for generated inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn word(&mut self, min: u64, max: u64) -> String {
        const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let len = min + self.below(max - min + 1);
        (0..len)
            .map(|_| ALPHA[self.below(ALPHA.len() as u64) as usize] as char)
            .collect()
    }
}

struct GitSession {
    alloc: Alloc,
    repo: PathBuf,
    home: PathBuf,
    stats_file: PathBuf,
    /// Every git command run, with its pid.
    pids: Vec<(String, u64)>,
    /// Everything the commands printed, compared across allocators.
    transcript: String,
    clock: u64,
}

impl GitSession {
    fn git(&mut self, args: &[&str]) -> String {
        let mut cmd = command(GIT, &self.repo);
        let date = format!("@{} +0000", self.clock);
        cmd.env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "A U Thor")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "C O Mitter")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .env("GIT_PAGER", "cat")
            .env("GIT_TERMINAL_PROMPT", "0")
            .args([
                "-c",
                "gc.auto=0",
                "-c",
                "pack.threads=4",
                "-c",
                "core.fsync=none",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args);
        let what = format!("git {}", args.join(" "));
        let run = run_on(self.alloc, &what, &mut cmd, None, &self.stats_file);
        run.assert_success();
        self.pids.push((what.clone(), run.pid));
        writeln!(self.transcript, "$ {what}\n{}", run.out.stdout).unwrap();
        run.out.stdout
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.repo.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn commit(&mut self, msg: &str) {
        self.clock += 3600;
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
    }
}

fn random_file(rng: &mut Rng, lines: u64) -> String {
    let mut s = String::new();
    for _ in 0..lines {
        let words = 1 + rng.below(12);
        let line: Vec<String> = (0..words).map(|_| rng.word(1, 10)).collect();
        s.push_str(&line.join(" "));
        s.push('\n');
    }
    s
}

fn edit_file(rng: &mut Rng, old: &str) -> String {
    let mut lines: Vec<String> = old.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(lines.len() as u64 + 1) as usize;
        match rng.below(3) {
            0 if at < lines.len() => {
                lines.remove(at);
            }
            1 if at < lines.len() => lines[at] = rng.word(5, 40),
            _ => lines.insert(at, rng.word(1, 60)),
        }
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// init, ~40 commits over a generated tree, a branch and a merge, a tag,
/// log/diff/blame/grep, `gc --aggressive` (threaded pack-objects), fsck.
fn git_workload(alloc: Alloc, scratch: &Path) -> GitSession {
    let root = scratch.join(alloc.name());
    let repo = root.join("repo");
    let home = root.join("home");
    fs::create_dir_all(&repo).unwrap();
    fs::create_dir_all(&home).unwrap();
    let mut s = GitSession {
        alloc,
        stats_file: root.join("git.stats"),
        repo,
        home,
        pids: Vec::new(),
        transcript: String::new(),
        clock: 1_700_000_000,
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    s.git(&["init", "-q"]);
    let mut files: Vec<String> = Vec::new();
    for d in 0..12 {
        for f in 0..25 {
            let name = format!("src/dir{d:02}/file{f:03}.txt");
            let lines = 5 + rng.below(150);
            s.write(&name, &random_file(&mut rng, lines));
            files.push(name);
        }
    }
    s.commit("initial import");
    for i in 1..=30 {
        for _ in 0..15 {
            let name = &files[rng.below(files.len() as u64) as usize];
            let old = fs::read_to_string(s.repo.join(name)).unwrap();
            s.write(name, &edit_file(&mut rng, &old));
        }
        if i % 5 == 0 {
            let name = format!("src/new/added{i:03}.txt");
            s.write(&name, &random_file(&mut rng, 40));
            files.push(name);
        }
        if i % 7 == 0 {
            let gone = files.remove(rng.below(files.len() as u64) as usize);
            fs::remove_file(s.repo.join(&gone)).unwrap();
        }
        s.commit(&format!("change {i}: edit 15 files"));
        if i == 20 {
            s.git(&["tag", "-a", "v1.0", "-m", "release 1.0"]);
        }
    }
    s.git(&["checkout", "-q", "-b", "feature", "main~8"]);
    for i in 1..=6 {
        let name = format!("feature/part{i}.txt");
        s.write(&name, &random_file(&mut rng, 60));
        s.commit(&format!("feature part {i}"));
    }
    s.git(&["checkout", "-q", "main"]);
    s.clock += 3600;
    s.git(&["merge", "-q", "--no-ff", "-m", "merge feature", "feature"]);
    s.git(&[
        "log",
        "--graph",
        "--stat",
        "--format=%H %an <%ae> %ad %s",
        "--date=raw",
    ]);
    s.git(&["diff", "--stat", "v1.0", "main"]);
    s.git(&["rev-list", "--all", "--count"]);
    s.git(&["blame", "-s", "src/dir03/file007.txt"]);
    s.git(&["grep", "-c", "-e", "ab", "main"]);
    s.git(&["gc", "--aggressive", "--prune=now", "-q"]);
    s.git(&["fsck", "--full", "--strict", "--no-progress"]);
    let counts = s.git(&["count-objects", "-v"]);
    // Pack sizes depend on the threaded delta search; object counts do not.
    let counts: Vec<&str> = counts
        .lines()
        .filter(|l| l.starts_with("count:") || l.starts_with("in-pack:") || l.starts_with("packs:"))
        .collect();
    writeln!(s.transcript, "counts: {}", counts.join(", ")).unwrap();
    s.git(&["cat-file", "--batch-all-objects", "--batch-check"]);
    s.git(&["log", "-p", "--format=%H %s", "-n", "12"]);
    s
}

#[test]
fn git_generated_repository() {
    require_program(GIT);
    let scratch = TempDir::new("git");
    let gl = git_workload(Alloc::Glibc, scratch.path());
    let rm = git_workload(Alloc::Rmalloc, scratch.path());
    assert_same_output("git workload transcript", &gl.transcript, &rm.transcript);
    assert!(
        rm.transcript.contains("in-pack:") && rm.transcript.contains("merge feature"),
        "unexpected git transcript:\n{}",
        truncate(&rm.transcript, 4000)
    );
    let stats = assert_served_by_rmalloc(&rm.stats_file, &rm.pids);
    if !support::against_glibc() {
        // gc runs helper processes (repack, pack-objects, prune, ...): they
        // inherit the preload and must have exited on rmalloc too.
        let helpers = stats
            .iter()
            .filter(|s| !rm.pids.iter().any(|(_, p)| *p == s.pid))
            .count();
        assert!(
            helpers > 0,
            "no exit-stats line from any git helper process (git gc spawns several)"
        );
        eprintln!(
            "[programs] git: {} commands and {helpers} helper processes ran on rmalloc",
            rm.pids.len()
        );
    }
}

// ---------------------------------------------------------------- redis

/// A redis-server child; killed (whole process group) if still running when
/// dropped, so a failing test never leaves it behind.
struct RedisServer {
    child: Child,
    port: u16,
    pid: u64,
    log: PathBuf,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: plain syscall on the group created for this child.
            unsafe {
                libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

impl RedisServer {
    fn start(alloc: Alloc, dir: &Path, stats_file: &Path) -> RedisServer {
        require_program(REDIS_SERVER);
        let mut last_log = String::new();
        for attempt in 0..5 {
            // A free loopback port: bind port 0, note it, release it.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind 127.0.0.1:0")
                .port();
            let log = dir.join(format!("redis-{attempt}.log"));
            let mut cmd = command(REDIS_SERVER, dir);
            cmd.env("LC_ALL", "C")
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--protected-mode", "yes", "--databases", "4", "--dir"])
                .arg(dir)
                .args(["--logfile", ""])
                // The lazy-free thread frees what FLUSHDB ASYNC drops.  (No
                // --io-threads: they busy-wait, far too slow on 2 loaded cores.)
                .args(["--lazyfree-lazy-user-flush", "yes"]);
            let pid_file = prepare(&mut cmd, alloc, stats_file);
            let logf = fs::File::create(&log).unwrap();
            cmd.stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf)
                .process_group(0);
            let child = cmd.spawn().expect("start redis-server");
            let pid = read_pid(&pid_file);
            let mut server = RedisServer {
                child,
                port,
                pid,
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    last_log = fs::read_to_string(&server.log).unwrap_or_default();
                    eprintln!("[programs] redis-server exited early ({status}); retrying");
                    break;
                }
                if server.ping() {
                    return server;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server ({}) not answering on 127.0.0.1:{port} after 60 s\n{}",
                    alloc.name(),
                    server.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("redis-server would not start:\n{last_log}");
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    fn cli(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = command(REDIS_CLI, Path::new("/"));
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args);
        let out = support::run_with_input(&mut cmd, input, TIMEOUT);
        assert!(
            out.success(),
            "redis-cli failed\n{}\n--- server log ---\n{}",
            out.describe(),
            self.log_text()
        );
        out
    }

    /// SHUTDOWN NOSAVE and wait for a clean exit (status 0).
    fn shutdown(mut self) {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.write_all(b"SHUTDOWN NOSAVE\r\n");
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = s.read_to_end(&mut sink);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not exit within 60 s of SHUTDOWN\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "redis-server exited with {status:?} (signal {:?})\n{}",
            status.signal(),
            self.log_text()
        );
    }
}

fn resp(out: &mut Vec<u8>, args: &[&str]) {
    write!(out, "*{}\r\n", args.len()).unwrap();
    for a in args {
        write!(out, "${}\r\n{a}\r\n", a.len()).unwrap();
    }
}

/// Deterministic data set: RESP commands that load it, redis-cli commands
/// that read it back, and the exact `redis-cli --raw` output they must give.
struct RedisData {
    load: Vec<u8>,
    verify: String,
    expected: String,
    payload_bytes: u64,
}

fn redis_data() -> RedisData {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let mut d = RedisData {
        load: Vec::new(),
        verify: String::new(),
        expected: String::new(),
        payload_bytes: 0,
    };
    // Strings of 1 B .. 8 KiB (all below any mmap threshold): ~16 MB.
    let n_strings = 4000;
    let mut values = Vec::new();
    for i in 0..n_strings {
        let v = rng.word(1, 8192);
        d.payload_bytes += v.len() as u64;
        resp(&mut d.load, &["SET", &format!("str:{i}"), &v]);
        values.push(v);
    }
    for chunk in (0..n_strings).collect::<Vec<_>>().chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("str:{i}")).collect();
        writeln!(d.verify, "MGET {}", keys.join(" ")).unwrap();
        for i in chunk {
            writeln!(d.expected, "{}", values[*i]).unwrap();
        }
    }
    for i in 0..100 {
        let key = format!("list:{i}");
        let items: Vec<String> = (0..300)
            .map(|j| format!("{j}-{}", rng.word(1, 30)))
            .collect();
        let mut args = vec!["RPUSH", &key];
        args.extend(items.iter().map(String::as_str));
        resp(&mut d.load, &args);
        writeln!(d.verify, "LRANGE {key} 0 -1").unwrap();
        for it in &items {
            writeln!(d.expected, "{it}").unwrap();
        }
    }
    for i in 0..100 {
        let key = format!("hash:{i}");
        let fields: Vec<(String, String)> = (0..150)
            .map(|j| (format!("f{j}"), rng.word(1, 64)))
            .collect();
        let mut args = vec!["HSET", &key];
        for (f, v) in &fields {
            args.push(f);
            args.push(v);
        }
        resp(&mut d.load, &args);
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        writeln!(d.verify, "HMGET {key} {}", names.join(" ")).unwrap();
        for (_, v) in &fields {
            writeln!(d.expected, "{v}").unwrap();
        }
    }
    for i in 0..50 {
        let key = format!("set:{i}");
        let mut members: Vec<String> = (0..200)
            .map(|j| format!("m{j}x{}", rng.word(1, 12)))
            .collect();
        let mut args = vec!["SADD", &key];
        args.extend(members.iter().map(String::as_str));
        resp(&mut d.load, &args);
        members.sort();
        members.dedup();
        writeln!(d.verify, "SORT {key} ALPHA").unwrap();
        for m in &members {
            writeln!(d.expected, "{m}").unwrap();
        }
    }
    for i in 0..50 {
        let key = format!("zset:{i}");
        let mut entries: Vec<(u64, String)> = (0..200)
            .map(|j| (rng.below(1_000_000), format!("z{j}")))
            .collect();
        let mut args = vec!["ZADD".to_string(), key.clone()];
        for (score, m) in &entries {
            args.push(score.to_string());
            args.push(m.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        resp(&mut d.load, &args);
        entries.sort();
        writeln!(d.verify, "ZRANGE {key} 0 -1 WITHSCORES").unwrap();
        for (score, m) in &entries {
            writeln!(d.expected, "{m}\n{score}").unwrap();
        }
    }
    writeln!(d.verify, "DBSIZE").unwrap();
    writeln!(d.expected, "{}", n_strings + 300).unwrap();
    d
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
}

fn info_u64(info: &str, name: &str) -> u64 {
    info_field(info, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO memory has no numeric {name}:\n{info}"))
}

/// What one redis run observed.
struct RedisResult {
    verified: String,
    benchmarks: Vec<String>,
    mem_allocator: String,
    used_memory: u64,
    allocator_allocated: u64,
    pid: u64,
}

const REDIS_TESTS: &str =
    "set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,lrange_100,mset";

fn redis_run(alloc: Alloc, scratch: &Path, data: &RedisData, stats_file: &Path) -> RedisResult {
    let dir = scratch.join(alloc.name());
    fs::create_dir_all(&dir).unwrap();
    let server = RedisServer::start(alloc, &dir, stats_file);
    let started = Instant::now();
    // Make sure we talk to our own server (the port was free a moment ago).
    let server_info = server.cli(&["INFO", "server"], None).stdout;
    assert_eq!(
        info_field(&server_info, "process_id"),
        Some(server.pid.to_string().as_str()),
        "the server on 127.0.0.1:{} is not the redis-server we started",
        server.port
    );

    // 1. Load the data set through the pipe protocol.
    let load = server.cli(&["--pipe"], Some(&data.load));
    assert!(
        load.stdout.contains("errors: 0"),
        "redis-cli --pipe reported errors\n{}",
        load.describe()
    );

    // 2. Benchmarks in database 1 (database 0 holds the data set): small
    //    values over many types, then big values (100 KB) overwritten often.
    let mut benchmarks = Vec::new();
    for args in [
        vec![
            "-n",
            "20000",
            "-c",
            "20",
            "-r",
            "100000",
            "-d",
            "256",
            "-t",
            REDIS_TESTS,
        ],
        vec![
            "-n", "2000", "-c", "8", "-r", "200", "-d", "100000", "-t", "set,get",
        ],
    ] {
        let mut full = vec!["--dbnum", "1", "-q"];
        full.extend(args);
        let mut cmd = command(REDIS_BENCHMARK, Path::new("/"));
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(server.port.to_string())
            .args(&full);
        let out = support::run(&mut cmd, TIMEOUT);
        assert!(
            out.success() && !out.stdout.contains("ERR") && !out.stderr.contains("rror"),
            "redis-benchmark failed against redis-server on {}\n{}\n--- server log ---\n{}",
            alloc.name(),
            out.describe(),
            server.log_text()
        );
        // `-q` prints lines like "SET: 51282.05 requests per second, p50=..."
        // (with carriage-return progress updates before them).
        for line in out.stdout.split(['\n', '\r']) {
            if let Some((name, _)) = line.split_once(": ") {
                if line.contains("requests per second") {
                    benchmarks.push(name.trim().to_string());
                }
            }
        }
    }

    // 3. Drop the benchmark's data in the background (freed by the lazy-free
    //    thread, allocated by the main thread), then read everything back.
    let flushed = server.cli(&["-n", "1", "FLUSHDB", "ASYNC"], None);
    assert_eq!(flushed.stdout.trim(), "OK", "{}", flushed.describe());
    let before = server.cli(&["INFO", "memory"], None).stdout;
    let verified = server.cli(&["--raw", "-n", "0"], Some(data.verify.as_bytes()));

    // The lazy-free thread must finish (a thread stuck in free() would not).
    let deadline = Instant::now() + Duration::from_secs(120);
    let info = loop {
        let info = server.cli(&["INFO", "memory"], None).stdout;
        if info_u64(&info, "lazyfree_pending_objects") == 0 {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "redis' lazy-free thread has not freed the flushed database after 120 s \
             on {} (stuck in free()?)\n{info}\n--- server log ---\n{}",
            alloc.name(),
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "[programs] redis on {}: FLUSHDB ASYNC: used_memory {} -> {}",
        alloc.name(),
        info_u64(&before, "used_memory"),
        info_u64(&info, "used_memory"),
    );

    // 4. Which allocator does redis think it has, and who holds the data?
    let result = RedisResult {
        verified: verified.stdout,
        benchmarks,
        mem_allocator: info_field(&info, "mem_allocator")
            .unwrap_or("?")
            .to_string(),
        used_memory: info_u64(&info, "used_memory"),
        allocator_allocated: info_u64(&info, "allocator_allocated"),
        pid: server.pid,
    };
    server.shutdown();
    eprintln!(
        "[programs] redis on {}: {:.2?}; mem_allocator={} used_memory={} \
         jemalloc allocator_allocated={}",
        alloc.name(),
        started.elapsed(),
        result.mem_allocator,
        result.used_memory,
        result.allocator_allocated
    );
    result
}

/// Debian's redis-server is linked against the shared libjemalloc.so.2 and
/// calls plain `malloc`/`free`/`realloc`/`calloc`/`malloc_usable_size`, so the
/// preload does take those over; only jemalloc's extra API (`mallctl`,
/// `nallocx`, `malloc_stats_print`) and C++ new/delete still reach jemalloc.
/// `INFO memory` keeps reporting `mem_allocator:jemalloc-<version>` (a
/// compile-time string) either way, so the proof that rmalloc held the data
/// is (a) the exit-stats line of the server process, whose bytes must cover
/// the loaded data set, and (b) jemalloc's own counter
/// (`allocator_allocated`, from `mallctl stats.allocated`) staying far below
/// the data set, while under plain jemalloc it covers it.
#[test]
fn redis_server_with_redis_benchmark() {
    for p in [REDIS_SERVER, REDIS_CLI, REDIS_BENCHMARK] {
        require_program(p);
    }
    let scratch = TempDir::new("redis");
    let data = redis_data();
    let gl_stats = scratch.path().join("glibc.stats");
    let rm_stats = scratch.path().join("rmalloc.stats");
    let gl = redis_run(Alloc::Glibc, scratch.path(), &data, &gl_stats);
    let rm = redis_run(Alloc::Rmalloc, scratch.path(), &data, &rm_stats);

    assert_same_output("redis read-back (native)", &data.expected, &gl.verified);
    assert_same_output("redis read-back (rmalloc)", &data.expected, &rm.verified);
    assert_eq!(
        gl.benchmarks, rm.benchmarks,
        "benchmarks that completed differ"
    );
    assert!(
        rm.benchmarks.len() >= REDIS_TESTS.split(',').count(),
        "not every benchmark reported a result: {:?}",
        rm.benchmarks
    );
    assert_eq!(
        gl.mem_allocator, rm.mem_allocator,
        "mem_allocator is compiled in and should not change"
    );
    // The check below must be able to tell the two apart: natively, jemalloc
    // holds at least the data set.
    assert!(
        gl.allocator_allocated >= data.payload_bytes,
        "natively jemalloc should hold the {} B data set, reports {}",
        data.payload_bytes,
        gl.allocator_allocated
    );
    if !support::against_glibc() {
        let stats = assert_served_by_rmalloc(&rm_stats, &[("redis-server".to_string(), rm.pid)]);
        report_stats("redis-server", &stats, rm.pid);
        let s = stats.iter().find(|s| s.pid == rm.pid).unwrap();
        assert!(
            s.in_use_bytes >= data.payload_bytes && s.system_bytes >= data.payload_bytes,
            "redis-server's rmalloc exit stats ({s:?}) do not cover the {} B data set it \
             still held at SHUTDOWN: the data was not allocated by rmalloc",
            data.payload_bytes
        );
        assert!(
            rm.allocator_allocated < data.payload_bytes,
            "under the preload jemalloc still reports {} B allocated (data set {} B): \
             redis' allocations did not go to rmalloc",
            rm.allocator_allocated,
            data.payload_bytes
        );
        assert!(
            rm.used_memory > data.payload_bytes,
            "redis used_memory {} (measured with rmalloc's malloc_usable_size) is below \
             the data set {}",
            rm.used_memory,
            data.payload_bytes
        );
    }
}

/// cargo under rmalloc builds and runs a small crate; the program it built
/// (also on rmalloc, as a child) must print what the glibc-built one does.
/// cargo is a multithreaded Rust program on the system allocator (job
/// server, worker threads, a file-lock and fingerprint layer full of small
/// strings): a classic allocator breaker.  cargo imports `malloc` from libc,
/// so the preload serves it; rustc carries jemalloc and defines `malloc` in
/// its own binary, so the preload does not reach it.  On Unix `cargo run`
/// execs the built program in cargo's own process, so the exit-stats line
/// checked for the main pid is the program's, written in the same process
/// (and environment) that cargo ran in.
#[test]
fn cargo_builds_and_runs_a_crate() {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc is needed to build this project");
    assert!(sysroot.status.success());
    let bin = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("bin");
    let cargo = bin.join("cargo").to_str().expect("utf-8 path").to_string();
    let rustc = bin.join("rustc");
    require_program(&cargo);
    let scratch = TempDir::new("cargo");
    let (_, rm, _) = compare_runs("cargo run", scratch.path(), None, |_, dir| {
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"prog\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        )
        .unwrap();
        fs::write(dir.join("src/main.rs"), CARGO_PROGRAM).unwrap();
        let mut cmd = command(&cargo, dir);
        cmd.args(["run", "-q", "--release", "--offline"])
            .env("CARGO_HOME", dir.join(".cargo"))
            .env("RUSTC", &rustc)
            .env("CARGO_TERM_COLOR", "never");
        cmd
    });
    assert!(
        rm.out.stdout.starts_with("5003 200000"),
        "{}",
        rm.out.describe()
    );
}

const CARGO_PROGRAM: &str = r#"use std::collections::{BTreeMap, HashMap};
fn main() {
    let mut words: HashMap<String, usize> = HashMap::new();
    let mut order = BTreeMap::new();
    for i in 0..200_000u64 {
        let w = format!("w{}", (i * 2654435761) % 5003);
        *words.entry(w.clone()).or_default() += 1;
        order.insert(w, i);
    }
    let mut v: Vec<_> = words.into_iter().collect();
    v.sort();
    let sum: usize = v.iter().map(|(_, c)| *c).sum();
    println!("{} {} {:?} {:?}", v.len(), sum, v.first(), order.iter().next_back());
}
"#;

/// redis-server under KAL reclaim at a 5 ms interval, through the same data
/// load, benchmarks, lazy frees and read-back: every value reads back
/// intact, every benchmark completes, no false reclaim, and KAL did scan.
#[test]
fn redis_server_under_kal_reclaim() {
    if support::against_glibc() {
        return;
    }
    for p in [REDIS_SERVER, REDIS_CLI, REDIS_BENCHMARK] {
        require_program(p);
    }
    let scratch = TempDir::new("redis-kal");
    let data = redis_data();
    let stats = scratch.path().join("kal.stats");
    let run = redis_run(Alloc::RmallocKalReclaim, scratch.path(), &data, &stats);
    assert_same_output(
        "redis read-back (KAL reclaim)",
        &data.expected,
        &run.verified,
    );
    assert!(
        run.benchmarks.len() >= REDIS_TESTS.split(',').count(),
        "not every benchmark reported a result: {:?}",
        run.benchmarks
    );
    let mut log = String::new();
    for e in fs::read_dir(scratch.path().join("rmalloc-kal"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("redis-") {
            log.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    assert!(
        !log.contains("FALSE RECLAIM"),
        "false reclaim under redis:\n{log}"
    );
    let scans = log.lines().filter(|l| l.contains("KAL: scan:")).count();
    assert!(scans > 0, "KAL did not scan redis-server:\n{log}");
    eprintln!("[redis] under KAL reclaim: {scans} scans logged");
}
