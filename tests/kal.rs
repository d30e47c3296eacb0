//! KAL engine tests: it never frees a live object, it does find (and in
//! reclaim mode free) dropped ones, it survives a false reclaim, it refuses
//! bad options without harming the program, its report has LeakSanitizer's
//! shape, and real programs run unchanged under aggressive reclaim.
//!
//! C programs (tests/c/kal_*.c) run as child processes with
//! `LD_PRELOAD=librmalloc.so` and `KAL_OPTIONS`; each case is one process.
//!
//! - `kal_roots CASE` keeps live objects reachable ONLY from one kind of root
//!   (a register of a busy thread, another thread's stack, the caller's own
//!   stack, static TLS, TLS and .bss of a dlopen'ed module, pthread keys >= 32,
//!   a global, an interior pointer, a pointer one past the end, a list and a
//!   tree hanging off a global, private and shared mmaps, epoll data.ptr, a
//!   POSIX timer's sigev_value, an alternate signal stack), mutated by threads
//!   while `rmalloc_kal_scan_now()` and the scanner thread (interval_ms=2)
//!   scan, with every object's pattern checked at the end.  Every root case
//!   runs in aggressive reclaim mode (must lose nothing) and, where an option
//!   can switch that root source off, as a negative control in detect mode
//!   with the source off (the objects must then be reported): the control
//!   proves the object really was held by that root alone, so the reclaim run
//!   could have failed.
//! - `kal_leaky` leaks a known set of objects: the report must match the
//!   contract, and LeakSanitizer's report of the same program (clang
//!   -fsanitize=leak, when clang is installed) line by line in shape.
//!
//! Backends: every root case runs once per backend available here: `fork`
//! always; `kernel` only when a probe run with `backend=kernel` reports the
//! kernel backend (the patched kernel with the `kal_snapshot` syscall, as in
//! `make kernel-test`); on a stock kernel only `fork` runs.
//!
//! Environment knobs:
//! - `KAL_TEST_BACKENDS=kernel` (a comma list of `fork`, `kernel`): run with
//!   exactly these backends.  A backend named there that does not work here
//!   fails the tests instead of being left out.  The tests that run KAL once
//!   without choosing a backend themselves then use the first one named;
//!   tests of one backend's own mechanism (the fork backend's thread-stop
//!   methods and mark time budget) are skipped when it is not named.
//!   `make kernel-test` runs these tests in the patched guest with `kernel`.
//! - `KAL_TEST_PREBUILT=1`: do not compile the C programs; expect them,
//!   already built by `programs_build`, in `build_dir()` (how the guest of
//!   `make kernel-test` runs them: it has no compiler).
//!
//! `RMALLOC_TEST_AGAINST_GLIBC=1` runs the same programs without the preload:
//! the KAL interface is then absent (the programs find it with dlsym), and
//! only the program-level expectations (patterns intact, output) are checked.

use rmalloc_integration::{self as support, against_glibc, c_dir, cc, compile, Output, TempDir};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Deadlock guard only.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Aggressive reclaim, as in the contract: a dropped object is freed by the
/// third scan after it was dropped, and reused at once.
const RECLAIM: &str =
    "mode=reclaim:interval_ms=2:max_overhead=0:confirm_scans=2:min_free_age_ms=0:probation_ms=0";

fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kal")
}

/// `KAL_TEST_PREBUILT=1`: use the programs already in `build_dir()`.
fn prebuilt() -> bool {
    std::env::var("KAL_TEST_PREBUILT").is_ok_and(|v| v == "1")
}

/// The test programs, built once per run.
struct Programs {
    roots: PathBuf,
    dso: PathBuf,
    leaky: PathBuf,
    /// kal_api.c, and the same built with its `kal_default_options`.
    api: PathBuf,
    api_defaults: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let dir = build_dir();
        if prebuilt() {
            let p = Programs {
                roots: dir.join("kal_roots"),
                dso: dir.join("kal_dso.so"),
                leaky: dir.join("kal_leaky"),
                api: dir.join("kal_api"),
                api_defaults: dir.join("kal_api_defaults"),
            };
            let missing: Vec<String> = [&p.roots, &p.dso, &p.leaky, &p.api, &p.api_defaults]
                .iter()
                .filter(|f| !f.is_file())
                .map(|f| f.display().to_string())
                .collect();
            assert!(
                missing.is_empty(),
                "KAL_TEST_PREBUILT=1 but these prebuilt test programs are missing: {missing:?} \
                 (build them with `cargo test --release -p rmalloc-integration --test kal -- \
                 --exact programs_build` without KAL_TEST_PREBUILT, and copy {} whole)",
                dir.display()
            );
            return p;
        }
        std::fs::create_dir_all(&dir).expect("create build dir");
        let include = support::workspace_root().join("rmalloc/include");
        let roots = dir.join("kal_roots");
        let mut cmd = Command::new(cc());
        cmd.args(support::CFLAGS)
            .arg("-I")
            .arg(c_dir())
            .arg("-I")
            .arg(&include)
            .arg("-o")
            .arg(&roots)
            .arg(c_dir().join("kal_roots.c"))
            .arg("-ldl");
        compile(&mut cmd, "kal_roots.c");
        let dso = dir.join("kal_dso.so");
        let mut cmd = Command::new(cc());
        cmd.args(["-O1", "-g", "-fPIC", "-shared", "-Wall", "-Werror", "-o"])
            .arg(&dso)
            .arg(c_dir().join("kal_dso.c"));
        compile(&mut cmd, "kal_dso.c");
        let leaky = dir.join("kal_leaky");
        let mut cmd = Command::new(cc());
        cmd.args([
            "-std=gnu11",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
        ])
        .arg(&leaky)
        .arg(c_dir().join("kal_leaky.c"))
        .arg("-ldl");
        compile(&mut cmd, "kal_leaky.c");
        let api = dir.join("kal_api");
        let api_defaults = dir.join("kal_api_defaults");
        for (exe, extra) in [
            (&api, &[][..]),
            (&api_defaults, &["-DKAL_API_DEFAULTS", "-rdynamic"][..]),
        ] {
            let mut cmd = Command::new(cc());
            cmd.args(["-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
                .args(extra)
                .arg("-I")
                .arg(&include)
                .arg("-o")
                .arg(exe)
                .arg(c_dir().join("kal_api.c"))
                .arg("-ldl");
            compile(&mut cmd, "kal_api.c");
        }
        Programs {
            roots,
            dso,
            leaky,
            api,
            api_defaults,
        }
    })
}

/// The C programs build (with `KAL_TEST_PREBUILT=1`: they are there).
/// `make kernel-test` runs this test alone on the host to build the
/// programs it copies into the guest.
#[test]
fn programs_build() {
    let p = programs();
    eprintln!(
        "[kal] test programs in {}",
        p.roots.parent().unwrap().display()
    );
}

/// A command for one of the C programs: preloaded (unless against glibc),
/// asked to prove rmalloc and the KAL interface are there, with `kal`
/// as KAL_OPTIONS (None: unset) and `env`.
fn kal_command(
    exe: &Path,
    args: &[&str],
    kal: Option<&str>,
    env: &[(&str, &str)],
    stats: &Path,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    for var in support::ALLOCATOR_ENV {
        cmd.env_remove(var);
    }
    if !against_glibc() {
        cmd.env("RMALLOC_TEST_REQUIRE_RMALLOC", "1")
            .env("KAL_TEST_REQUIRE_KAL", "1");
    }
    if let Some(k) = kal {
        cmd.env("KAL_OPTIONS", k);
    }
    cmd.env("KAL_TEST_DSO", &programs().dso);
    cmd.envs(env.iter().copied());
    support::set_exit_stats(&mut cmd, stats);
    support::preload(&mut cmd);
    cmd
}

/// Run `kal_roots CASE`.
fn run_roots(case: &str, kal: Option<&str>, env: &[(&str, &str)]) -> Output {
    let tmp = TempDir::new("kal");
    let stats = tmp.path().join("stats");
    let out = support::run(
        &mut kal_command(&programs().roots, &[case], kal, env, &stats),
        TIMEOUT,
    );
    eprintln!(
        "[kal] {case} KAL_OPTIONS={} {env:?}: {:.2?}, {}",
        kal.unwrap_or("(unset)"),
        out.elapsed,
        if out.success() { "ok" } else { "FAILED" }
    );
    out
}

/// One `kal-stats phase=P key=value ...` line of the program.
fn kal_stats(out: &Output, phase: &str) -> Option<HashMap<String, u64>> {
    let prefix = format!("kal-stats phase={phase} ");
    let line = out.stdout.lines().find(|l| l.starts_with(&prefix))?;
    if line.ends_with(" absent") {
        return None;
    }
    Some(
        line.split_whitespace()
            .filter_map(|f| {
                let (k, v) = f.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

#[track_caller]
fn stat(stats: &HashMap<String, u64>, key: &str, out: &Output) -> u64 {
    *stats
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in the kal-stats line\n{}", out.describe()))
}

/// `kal-stats` for `phase`, which must be there under rmalloc.
#[track_caller]
fn require_stats(out: &Output, phase: &str) -> HashMap<String, u64> {
    kal_stats(out, phase).unwrap_or_else(|| {
        panic!(
            "no `kal-stats phase={phase}` line with values (KAL interface missing?)\n{}",
            out.describe()
        )
    })
}

/// Every line that mentions a false reclaim, on stdout or stderr.
fn false_reclaim_lines(out: &Output) -> Vec<&str> {
    out.stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| l.contains("FALSE RECLAIM"))
        .collect()
}

/// The checks of a root case that must keep every object: clean exit, every
/// pattern intact, no false reclaim, and (under rmalloc) scans that really
/// completed and freed nothing.
#[track_caller]
fn assert_nothing_lost(case: &str, out: &Output) {
    assert_program_kept_everything(case, out);
    if against_glibc() {
        return;
    }
    assert_kal_freed_nothing(case, out);
}

/// The program's own view: clean exit, PASS, every `intact` line complete,
/// no false reclaim reported.
#[track_caller]
fn assert_program_kept_everything(case: &str, out: &Output) {
    let ctx = || format!("case {case}\n{}", out.describe());
    assert!(
        out.success(),
        "{} exited badly (a live object freed and reused?)",
        ctx()
    );
    assert!(
        out.stdout.lines().any(|l| l == "PASS"),
        "no PASS line (a pattern check failed: see CHECK FAILED on stderr)\n{}",
        ctx()
    );
    assert!(
        out.stdout.contains(&format!("case {case}: done")),
        "{}",
        ctx()
    );
    let intact: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("intact "))
        .collect();
    if !case.ends_with("register") || cfg!(target_arch = "x86_64") {
        assert!(!intact.is_empty(), "no `intact` line\n{}", ctx());
    }
    for l in &intact {
        let (a, b) = l
            .rsplit_once(' ')
            .and_then(|(_, r)| r.split_once('/'))
            .unwrap_or_else(|| panic!("bad intact line {l:?}"));
        assert_eq!(a, b, "{l}: objects damaged (freed while live)\n{}", ctx());
    }
    let fr = false_reclaim_lines(out);
    assert!(
        fr.is_empty(),
        "KAL reported a false reclaim of a live object: {fr:?}\n{}",
        ctx()
    );
}

/// KAL's counters: scans completed, nothing reclaimed, no false reclaim.
#[track_caller]
fn assert_kal_freed_nothing(case: &str, out: &Output) {
    let ctx = || format!("case {case}\n{}", out.describe());
    let live = require_stats(out, "live");
    let end = require_stats(out, "end");
    assert!(
        stat(&live, "scans", out) > 0,
        "no KAL scan completed during the scan phase ({} discarded: stop {}, heap {}, roots {})\n{}",
        stat(&live, "scans_discarded", out),
        stat(&live, "discarded_stop", out),
        stat(&live, "discarded_heap", out),
        stat(&live, "discarded_roots", out),
        ctx()
    );
    assert_eq!(
        stat(&end, "false_reclaims", out),
        0,
        "false_reclaims > 0\n{}",
        ctx()
    );
    // The program frees everything it allocates: nothing was ever
    // unreachable, so nothing may have been reclaimed.
    assert_eq!(
        stat(&end, "reclaimed_chunks", out),
        0,
        "KAL reclaimed chunks in a program that leaks nothing (every object it allocates \
         is held by the root under test until it frees it)\n{}",
        ctx()
    );
}

/// The objects the program printed (`obj GROUP I ADDR SIZE`): (group,
/// address, size).
fn printed_objects(out: &Output) -> Vec<(String, u64, u64)> {
    out.stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            if f.next()? != "obj" {
                return None;
            }
            let group = f.next()?.to_string();
            f.next()?;
            let addr = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            let size = f.next()?.parse().ok()?;
            Some((group, addr, size))
        })
        .collect()
}

/// Objects of `objs` that KAL's report (report_objects=1: `0xADDR (N
/// bytes)` lines) does not name, as `group:address`.
fn not_reported(out: &Output, objs: &[(String, u64, u64)]) -> Vec<String> {
    let report = out.stderr.to_lowercase();
    objs.iter()
        .filter(|(_, a, _)| {
            !report.contains(&format!("{a:#x} ")) && !report.contains(&format!("{:#x} ", a - 16))
        })
        .map(|(g, a, _)| format!("{g}:{a:#x}"))
        .collect()
}

/// Above glibc's default mmap threshold: a separately mmapped chunk.
const MMAPPED: u64 = 128 * 1024;

/// The backends named by `KAL_TEST_BACKENDS` (a comma list of `fork`,
/// `kernel`), or None when it is unset (every backend that works here).
fn selected_backends() -> Option<&'static [&'static str]> {
    static S: OnceLock<Result<Option<Vec<&'static str>>, String>> = OnceLock::new();
    let s = S.get_or_init(|| {
        let Ok(list) = std::env::var("KAL_TEST_BACKENDS") else {
            return Ok(None);
        };
        let mut names = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = match name {
                "fork" => "fork",
                "kernel" => "kernel",
                other => {
                    return Err(format!(
                    "KAL_TEST_BACKENDS={list:?}: unknown backend {other:?} (known: fork, kernel)"
                ))
                }
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Err(format!(
                "KAL_TEST_BACKENDS={list:?} names no backend (known: fork, kernel)"
            ));
        }
        Ok(Some(names))
    });
    match s {
        Ok(v) => v.as_deref(),
        Err(e) => panic!("{e}"),
    }
}

/// Whether the tests run with backend `name` (`fork` or `kernel`): always
/// when `KAL_TEST_BACKENDS` is unset.
fn backend_selected(name: &str) -> bool {
    match selected_backends() {
        None => true,
        Some(s) => s.contains(&name),
    }
}

/// Snapshot configurations to run with (KAL_OPTIONS suffixes): the fork
/// backend with each way of stopping threads (`stop=ptrace`, a helper that
/// attaches with ptrace; `stop=signal`, the signal handshake), plus
/// `backend=kernel` when the kernel has `kal_snapshot` (a probe run reports
/// backend 2; on a stock kernel it is left out).  `KAL_TEST_BACKENDS`
/// chooses instead, and then a named backend that does not work fails.
/// Against glibc: one run.
fn backends() -> &'static [&'static str] {
    static B: OnceLock<Result<Vec<&'static str>, String>> = OnceLock::new();
    let b = B.get_or_init(|| {
        if against_glibc() {
            return Ok(vec!["none"]);
        }
        let fork = ["backend=fork:stop=ptrace", "backend=fork:stop=signal"];
        let mut v = Vec::new();
        match selected_backends() {
            None => {
                v.extend(fork);
                if kernel_backend_available() {
                    v.push("backend=kernel");
                }
            }
            Some(names) => {
                for name in names {
                    match *name {
                        "fork" => v.extend(fork),
                        _ if kernel_backend_available() => v.push("backend=kernel"),
                        _ => {
                            return Err(format!(
                                "KAL_TEST_BACKENDS names `kernel`, but the kernel backend does \
                                 not work here: a probe run with KAL_OPTIONS=backend=kernel did \
                                 not report backend 2 (kernel without the kal_snapshot system \
                                 call, or a library that does not drive it)\n{}",
                                kernel_probe().describe()
                            ))
                        }
                    }
                }
            }
        }
        eprintln!("[kal] snapshot configurations: {v:?}");
        Ok(v)
    });
    match b {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// For a test that runs KAL once and chooses no backend itself: `opts` with
/// the first backend of `KAL_TEST_BACKENDS` added (unchanged when that is
/// unset, against glibc, or when `opts` names a backend).
fn with_selected_backend(opts: &str) -> String {
    match selected_backends() {
        Some(names) if !against_glibc() && !opts.contains("backend=") => {
            // Fails here if the backend does not work.
            backends();
            format!("{opts}:backend={}", names[0])
        }
        _ => opts.to_string(),
    }
}

/// The run that tells whether `backend=kernel` works here.
fn kernel_probe() -> &'static Output {
    static P: OnceLock<Output> = OnceLock::new();
    P.get_or_init(|| {
        run_roots(
            "basic",
            Some("mode=detect:interval_ms=100000:backend=kernel"),
            &[],
        )
    })
}

fn kernel_backend_available() -> bool {
    kal_stats(kernel_probe(), "end").is_some_and(|s| s.get("backend") == Some(&2))
}

/// `backend=auto` takes the kernel's `kal_snapshot` where it works (its
/// pause does not grow with the heap) and fork elsewhere.  On a stock
/// kernel this checks the fork side; `make kernel-test` checks the other.
#[test]
fn auto_backend_prefers_the_kernels_snapshot() {
    if against_glibc() {
        return;
    }
    let out = run_roots(
        "basic",
        Some("mode=detect:interval_ms=100000:backend=auto"),
        &[],
    );
    let want = if kernel_backend_available() { 2 } else { 1 };
    let got = kal_stats(&out, "end").and_then(|s| s.get("backend").copied());
    assert_eq!(
        got,
        Some(want),
        "backend=auto ran backend {got:?}, want {want} (1 fork, 2 kernel)"
    );
}

fn options(base: &str, backend: &str) -> String {
    if backend == "none" {
        base.to_string()
    } else {
        format!("{base}:{backend}")
    }
}

/// A negative control: detect mode with the root options `off` switched
/// off; the objects of the groups whose names start with one of `groups`
/// must then be reported.
struct Control {
    off: &'static str,
    groups: &'static [&'static str],
}

/// One root case: aggressive reclaim with every backend; then, if `control`
/// names root options that switch this root off, the negative control.
/// The control runs once, with the first configuration: it checks the
/// program, not the engine.
fn root_case(case: &str, control: Option<Control>) {
    for (i, backend) in backends().iter().enumerate() {
        let out = run_roots(case, Some(&options(RECLAIM, backend)), &[]);
        assert_nothing_lost(case, &out);
        if let (Some(c), false, 0) = (&control, against_glibc(), i) {
            negative_control(case, backend, c);
        }
    }
}

/// Detect mode with the root source under test switched off and no
/// mutation: every object the program printed must be unreachable and
/// listed (report_objects=1).  If this fails, the object was also held by
/// some other root, and the reclaim run proved less than it claims.
///
/// Mmapped objects are left out here: the topmost mmapped chunk is kept by
/// a pointer to the mapping above it (one past its end), see
/// `dropped_last_allocations_are_found`.
fn negative_control(case: &str, backend: &str, c: &Control) {
    // interval_ms=1000, not longer: a lost scan_now request waits for the
    // next periodic scan (see scan_now_answers_promptly_with_a_long_interval).
    let opts = options(
        &format!(
            "mode=detect:interval_ms=1000:confirm_scans=2:report_objects=1:\
             leak_check_at_exit=0:{}",
            c.off
        ),
        backend,
    );
    let out = run_roots(case, Some(&opts), &[("KAL_TEST_MUTATE", "0")]);
    let ctx = || format!("negative control of {case} ({opts})\n{}", out.describe());
    assert!(out.success(), "{}", ctx());
    let objs: Vec<_> = printed_objects(&out)
        .into_iter()
        .filter(|(g, _, size)| *size < MMAPPED && c.groups.iter().any(|p| g.starts_with(p)))
        .collect();
    assert!(!objs.is_empty(), "no obj lines\n{}", ctx());
    let live = require_stats(&out, "live");
    let unreachable = stat(&live, "unreachable_chunks", &out);
    assert!(
        unreachable >= objs.len() as u64,
        "with {} the {} objects held only by that root should be unreachable, the last \
         scan found {unreachable} unreachable chunks\n{}",
        c.off,
        objs.len(),
        ctx()
    );
    let missing = not_reported(&out, &objs);
    assert!(
        missing.is_empty(),
        "with {} and report_objects=1, {} of {} objects are not named in KAL's report: \
         {:?}...\n{}",
        c.off,
        missing.len(),
        objs.len(),
        &missing[..missing.len().min(8)],
        ctx()
    );
}

// ---------------------------------------------------------------- roots

#[test]
fn roots_register_of_a_busy_thread() {
    // A signal-based stop saves the registers on the thread's stack, so both
    // sources are switched off in the control.
    root_case(
        "register",
        Some(Control {
            off: "use_registers=0:use_stacks=0",
            groups: &["register"],
        }),
    );
}

/// The thread calling `rmalloc_kal_scan_now()` keeps the only pointer in a
/// callee-saved register (r13) that nothing on the way to the wait spills.
#[test]
fn roots_register_of_the_thread_calling_scan_now() {
    root_case(
        "own_register",
        Some(Control {
            off: "use_registers=0",
            groups: &["own-register"],
        }),
    );
}

#[test]
fn roots_another_threads_stack() {
    root_case(
        "thread_stack",
        Some(Control {
            off: "use_stacks=0",
            groups: &["worker-stack"],
        }),
    );
}

#[test]
fn roots_stack_of_the_thread_calling_scan_now() {
    root_case(
        "own_stack",
        Some(Control {
            off: "use_stacks=0",
            groups: &["own-stack"],
        }),
    );
}

#[test]
fn roots_static_tls_of_main_and_worker() {
    // The engine's use_tls=0 drops only the thread pointer as a root; a
    // worker's static TLS, DTV and key blocks are reached through its stack
    // mapping, so the control also switches stacks and globals off.  The
    // main thread's TLS lives in memory ld.so allocated (an anonymous
    // mapping, always scanned): no option removes it, no control for it.
    root_case(
        "tls",
        Some(Control {
            off: "use_tls=0:use_stacks=0:use_globals=0",
            groups: &["worker-tls"],
        }),
    );
}

#[test]
fn roots_tls_of_a_dlopened_module() {
    // The engine's use_tls=0 drops only the thread pointer as a root; a
    // worker's static TLS, DTV and key blocks are reached through its stack
    // mapping, so the control also switches stacks and globals off.  The
    // main thread's TLS lives in memory ld.so allocated (an anonymous
    // mapping, always scanned): no option removes it, no control for it.
    root_case(
        "tls_dlopen",
        Some(Control {
            off: "use_tls=0:use_stacks=0:use_globals=0",
            groups: &["worker-dso-tls"],
        }),
    );
}

#[test]
fn roots_pthread_keys_above_32() {
    // The engine's use_tls=0 drops only the thread pointer as a root; a
    // worker's static TLS, DTV and key blocks are reached through its stack
    // mapping, so the control also switches stacks and globals off.  The
    // main thread's TLS lives in memory ld.so allocated (an anonymous
    // mapping, always scanned): no option removes it, no control for it.
    root_case(
        "pthread_key",
        Some(Control {
            off: "use_tls=0:use_stacks=0:use_globals=0",
            groups: &["worker-keys"],
        }),
    );
}

#[test]
fn roots_global() {
    root_case(
        "global",
        Some(Control {
            off: "use_globals=0",
            groups: &["global"],
        }),
    );
}

#[test]
fn roots_bss_of_a_dlopened_module() {
    root_case(
        "dso_global",
        Some(Control {
            off: "use_globals=0",
            groups: &["dso-bss"],
        }),
    );
}

#[test]
fn roots_interior_pointer() {
    root_case(
        "interior",
        Some(Control {
            off: "use_globals=0",
            groups: &["interior"],
        }),
    );
}

#[test]
fn roots_pointer_one_past_the_end() {
    root_case(
        "one_past_end",
        Some(Control {
            off: "use_globals=0",
            groups: &["one-past-end"],
        }),
    );
}

#[test]
fn roots_linked_list_from_a_global() {
    root_case(
        "list",
        Some(Control {
            off: "use_globals=0",
            groups: &["list"],
        }),
    );
}

#[test]
fn roots_tree_from_a_global() {
    root_case(
        "tree",
        Some(Control {
            off: "use_globals=0",
            groups: &["tree"],
        }),
    );
}

// No option switches these roots off, so they have no negative control.

#[test]
fn roots_private_mmap() {
    root_case("mmap_private", None);
}

#[test]
fn roots_shared_mmap_mutated_during_the_scan() {
    root_case("mmap_shared", None);
}

#[test]
fn roots_epoll_data_ptr() {
    root_case("epoll", None);
}

#[test]
fn roots_posix_timer_sigev_value() {
    root_case("timer", None);
}

/// A queued real-time signal's value: only the kernel backend, on a kernel
/// that records kernel-held roots in its images, can see it (from `/proc`
/// a queued value is invisible, and the scan proves nothing); skipped
/// elsewhere, saying so.
#[test]
fn roots_queued_signal_value() {
    if against_glibc() {
        // The program itself, without KAL.
        assert_nothing_lost("sigqueue", &run_roots("sigqueue", None, &[]));
        return;
    }
    if !backends().contains(&"backend=kernel") {
        eprintln!("SKIPPED roots_queued_signal_value: no kernel backend here");
        return;
    }
    let out = run_roots("sigqueue", Some(&options(RECLAIM, "backend=kernel")), &[]);
    assert_nothing_lost("sigqueue", &out);
}

#[test]
fn roots_alternate_signal_stack() {
    root_case("altstack", None);
}

/// ptrace denied (seccomp, as in containers and sandboxes): the fork
/// backend must fall back to its signal handshake and still lose nothing
/// (and the kernel backend, which needs no ptrace, too, when
/// `KAL_TEST_BACKENDS` names it).
#[test]
fn roots_with_ptrace_denied() {
    // stop=auto (the default): ptrace refused, the signal handshake.
    let cfgs: Vec<&str> = if against_glibc() {
        vec!["none"]
    } else if selected_backends().is_none() {
        vec!["backend=fork"]
    } else {
        // Fails here if a named backend does not work.
        backends();
        ["fork", "kernel"]
            .into_iter()
            .filter(|b| backend_selected(b))
            .map(|b| {
                if b == "fork" {
                    "backend=fork"
                } else {
                    "backend=kernel"
                }
            })
            .collect()
    };
    for cfg in cfgs {
        for case in ["register", "thread_stack"] {
            let out = run_roots(
                case,
                Some(&options(RECLAIM, cfg)),
                &[("KAL_TEST_DENY_PTRACE", "1")],
            );
            assert!(
                out.stdout.contains("ptrace denied by seccomp"),
                "{}",
                out.describe()
            );
            assert_nothing_lost(case, &out);
        }
    }
}

/// A test of the fork backend's own mechanism: false (and says so) when
/// `KAL_TEST_BACKENDS` leaves the fork backend out.
fn fork_backend_tested(test: &str) -> bool {
    if backend_selected("fork") {
        return true;
    }
    eprintln!("[kal] {test}: the fork backend's own mechanism, not in KAL_TEST_BACKENDS: skipped");
    false
}

/// A thread that blocks every signal cannot be stopped by the signal
/// handshake: with stop=signal each snapshot must be discarded (counted,
/// logged at verbosity=1) and nothing freed, not even the 64 objects the
/// main thread really dropped; ptrace stops it anyway, and then the dropped
/// objects are freed.  Its own objects survive either way.
#[test]
fn thread_blocking_all_signals() {
    if !fork_backend_tested("thread_blocking_all_signals") {
        return;
    }
    if against_glibc() {
        let out = run_roots("blocked_signals", None, &[("KAL_TEST_ROUNDS", "10")]);
        out.assert_success();
        return;
    }
    let out = run_roots(
        "blocked_signals",
        Some(&format!(
            "{RECLAIM}:backend=fork:stop=signal:stop_timeout_ms=20:verbosity=1"
        )),
        &[("KAL_TEST_ROUNDS", "10")],
    );
    assert_program_kept_everything("blocked_signals", &out);
    let live = require_stats(&out, "live");
    assert!(
        stat(&live, "discarded_stop", &out) >= 10,
        "stop=signal with a thread blocking every signal: expected every scan discarded \
         (discarded_stop >= 10)\n{}",
        out.describe()
    );
    assert_eq!(
        stat(&live, "reclaimed_chunks", &out),
        0,
        "chunks freed although no snapshot could be taken\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("KAL: snapshot discarded:"),
        "no `KAL: snapshot discarded:` line at verbosity=1\n{}",
        out.describe()
    );

    let out = run_roots(
        "blocked_signals",
        Some(&format!("{RECLAIM}:backend=fork:stop=ptrace")),
        &[("KAL_TEST_ROUNDS", "10")],
    );
    assert_program_kept_everything("blocked_signals", &out);
    let live = require_stats(&out, "live");
    assert!(
        stat(&live, "scans", &out) > 0 && stat(&live, "reclaimed_chunks", &out) >= 48,
        "stop=ptrace stops a thread whatever its signal mask: scans should complete and \
         the dropped objects be freed\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------- dropped

/// `Direct|Indirect leak of B byte(s) in N object(s)` and `Reclaimed [of] B
/// byte(s) in N object(s)` lines: (kind, bytes, objects), kind being the
/// words before the byte count (`Direct leak`, `Reclaimed`, ...).
fn leak_lines(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (head, rest) = l.split_once(" byte(s) in ")?;
            let (kind, bytes) = head.trim().rsplit_once(' ')?;
            let kind = kind.trim().trim_end_matches(" of").trim();
            let (objs, _) = rest.split_once(" object(s)")?;
            Some((kind.to_string(), bytes.parse().ok()?, objs.parse().ok()?))
        })
        .collect()
}

#[test]
fn dropped_objects_are_found_in_detect_mode() {
    for backend in backends() {
        let out = run_roots(
            "dropped",
            Some(&options(
                "mode=detect:interval_ms=1000:confirm_scans=2:report_objects=1",
                backend,
            )),
            &[],
        );
        out.assert_success();
        if against_glibc() {
            continue;
        }
        let missing = not_reported(&out, &printed_objects(&out));
        assert!(
            missing.is_empty(),
            "dropped objects not named in the report (report_objects=1): {missing:?}\n{}",
            out.describe()
        );
        let live = require_stats(&out, "live");
        assert!(
            stat(&live, "unreachable_chunks", &out) >= 64,
            "64 dropped objects, the last scan found fewer unreachable\n{}",
            out.describe()
        );
        assert!(
            stat(&live, "leaks_reported", &out) >= 64,
            "64 dropped objects, fewer reported\n{}",
            out.describe()
        );
        assert_eq!(
            stat(&live, "reclaimed_chunks", &out),
            0,
            "detect mode freed"
        );
        let lines = leak_lines(&out.stderr);
        // 48 x 72 bytes, 12 x 5000 bytes; 40-byte chain head and two
        // indirect 40-byte links.
        let has = |kind: &str, size: u64, min: u64| {
            lines
                .iter()
                .any(|(k, b, n)| k.ends_with(kind) && *n >= min && *b == size * n)
        };
        assert!(
            has("Direct leak", 72, 48) && has("Direct leak", 5000, 12),
            "expected `Direct leak of 3456 byte(s) in 48 object(s)` and `... 60000 byte(s) in \
             12 object(s)` in the report; found {lines:?}\n{}",
            out.describe()
        );
        assert!(
            has("Indirect leak", 40, 2),
            "expected `Indirect leak of 80 byte(s) in 2 object(s)`; found {lines:?}\n{}",
            out.describe()
        );
        assert!(out.stderr.contains("SUMMARY: KAL: "), "{}", out.describe());
    }
}

/// The most recent allocations, dropped: the heap chunk that borders the
/// top chunk and the mmapped chunk that borders the mapping above it must be
/// found like any other.  (The arena's pointer to the top chunk points into
/// the last 8 bytes of the usable size of the chunk below, and a pointer to
/// a mapping's base is one past the end of the mmapped chunk below it: if
/// such pointers in the allocator's or the engine's own state count as
/// roots, the most recent leak is never found.)
#[test]
fn dropped_last_allocations_are_found() {
    for backend in backends() {
        let out = run_roots(
            "dropped_last",
            Some(&options(
                "mode=detect:interval_ms=1000:confirm_scans=2:report_objects=1:\
                 leak_check_at_exit=0",
                backend,
            )),
            &[],
        );
        out.assert_success();
        if against_glibc() {
            continue;
        }
        let objs = printed_objects(&out);
        assert_eq!(objs.len(), 8, "{}", out.describe());
        let missing = not_reported(&out, &objs);
        assert!(
            missing.is_empty(),
            "dropped objects never reported: {missing:?} (4 mmapped chunks of 200000 bytes \
             allocated first, then 4 heap chunks of 100000 bytes; the first mmapped one borders \
             the mapping above it, the last heap one borders the top chunk)\n{}",
            out.describe()
        );
    }
}

/// `rmalloc_kal_scan_now()` must not wait for the next periodic scan: with
/// interval_ms=100000, `kal_leaky scan` (3 calls, the first right after
/// start-up, while the scanner thread is being started) must end at once.
#[test]
fn scan_now_answers_promptly_with_a_long_interval() {
    if against_glibc() {
        return;
    }
    for i in 0..10 {
        let tmp = TempDir::new("kal-prompt");
        let stats = tmp.path().join("stats");
        let out = support::run(
            &mut kal_command(
                &programs().leaky,
                &["scan"],
                // verbosity=1: a discarded snapshot says why.
                Some(&with_selected_backend(
                    "mode=detect:interval_ms=100000:leak_check_at_exit=0:verbosity=1",
                )),
                &[],
                &stats,
            ),
            Duration::from_secs(8),
        );
        assert!(
            out.success() && out.elapsed < Duration::from_secs(5),
            "run {i}: 3 scan_now calls took {:.1?} with interval_ms=100000 (a scan request \
             made while the scanner thread starts is lost and served only by the next \
             periodic scan?)\n{}",
            out.elapsed,
            out.describe()
        );
        for k in 0..3 {
            assert!(
                out.stdout.contains(&format!("scan {k}: 1")),
                "scan_now call {k} did not complete\n{}",
                out.describe()
            );
        }
    }
}

#[test]
fn dropped_objects_are_freed_in_reclaim_mode() {
    for backend in backends() {
        let out = run_roots("dropped", Some(&options(RECLAIM, backend)), &[]);
        out.assert_success();
        assert!(
            out.stdout.lines().any(|l| l == "PASS"),
            "{}",
            out.describe()
        );
        if against_glibc() {
            continue;
        }
        let live = require_stats(&out, "live");
        let bytes: i64 = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("dropped objects=64 bytes="))
            .and_then(|v| v.parse().ok())
            .expect("dropped line");
        assert!(
            stat(&live, "reclaimed_chunks", &out) >= 64,
            "64 dropped objects, fewer reclaimed\n{}",
            out.describe()
        );
        assert!(
            stat(&live, "reclaimed_bytes", &out) as i64 >= bytes,
            "{bytes} bytes dropped, fewer reclaimed\n{}",
            out.describe()
        );
        // Independent of KAL's own counters: mallinfo2 in-use bytes fell.
        let released: i64 = out
            .stdout
            .lines()
            .find_map(|l| l.split("released=").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .expect("in-use line");
        assert!(
            released >= bytes / 10 * 9,
            "mallinfo2 shows {released} bytes released, {bytes} were dropped (90% required: \
             later allocations, chunks left in a thread cache)\n{}",
            out.describe()
        );
        assert!(
            leak_lines(&out.stderr)
                .iter()
                .any(|(k, _, _)| k.starts_with("Reclaimed")),
            "no `Reclaimed ...` line in the reclaim-mode report\n{}",
            out.describe()
        );
        assert!(false_reclaim_lines(&out).is_empty(), "{}", out.describe());
        assert_eq!(stat(&live, "false_reclaims", &out), 0);
    }
}

// ---------------------------------------------------------------- false reclaim

/// A pointer hidden XOR-encoded is reclaimed; the program later frees one
/// object and reallocs the other.  It must keep running correctly, and the
/// false reclaim must be reported (both of them), loudly, with the address.
#[test]
fn false_reclaim_is_reported_and_the_program_survives() {
    for backend in backends() {
        let opts = options(
            "mode=reclaim:interval_ms=2:max_overhead=0:confirm_scans=2:min_free_age_ms=0:probation_ms=60000",
            backend,
        );
        let out = run_roots("false_reclaim", Some(&opts), &[]);
        let ctx = || out.describe();
        assert!(out.success(), "{}", ctx());
        assert!(out.stdout.lines().any(|l| l == "PASS"), "{}", ctx());
        assert!(
            out.stdout
                .contains("program kept running after the false reclaim"),
            "{}",
            ctx()
        );
        if against_glibc() {
            continue;
        }
        assert!(
            out.stdout.contains("hidden objects reclaimed"),
            "KAL never reclaimed the two objects whose pointers are XOR-hidden\n{}",
            ctx()
        );
        let lines = false_reclaim_lines(&out);
        assert!(
            lines.iter().any(|l| l.contains("KAL: FALSE RECLAIM")),
            "no `KAL: FALSE RECLAIM` line\n{}",
            ctx()
        );
        let end = require_stats(&out, "end");
        assert!(
            stat(&end, "false_reclaims", &out) >= 2,
            "free() and realloc() of two reclaimed chunks: expected false_reclaims >= 2\n{}",
            ctx()
        );
        // The line names the chunk (user or chunk address).
        for l in out
            .stdout
            .lines()
            .filter(|l| l.starts_with("hidden 0 ") || l.starts_with("hidden 1 "))
        {
            let addr = l
                .split_whitespace()
                .nth(2)
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .expect("hidden line");
            let named = lines.iter().any(|fl| {
                let fl = fl.to_lowercase();
                fl.contains(&format!("{addr:x}")) || fl.contains(&format!("{:x}", addr - 16))
            });
            assert!(
                named,
                "no FALSE RECLAIM line names {addr:#x}: {lines:?}\n{}",
                ctx()
            );
        }
    }
}

/// With allocation stacks recorded, a false reclaim names the allocation
/// site (symbolized by `kal report`: the function that allocated it) and
/// stops reclaim at that site rather than in the whole size class.
#[test]
fn false_reclaim_names_the_allocation_site() {
    if against_glibc() {
        return;
    }
    let out = run_roots(
        "false_reclaim",
        Some(&with_selected_backend(
            "mode=reclaim:interval_ms=2:max_overhead=0:confirm_scans=2:min_free_age_ms=0:probation_ms=60000:sites=all",
        )),
        &[],
    );
    assert!(out.success(), "{}", out.describe());
    let stderr = &out.stderr;
    let at = stderr
        .find("KAL: FALSE RECLAIM")
        .unwrap_or_else(|| panic!("no false reclaim\n{}", out.describe()));
    let report = &stderr[at..];
    let first = report.lines().next().unwrap_or("");
    assert!(
        first.ends_with("reclaim of this site is stopped"),
        "{first}\n{}",
        out.describe()
    );
    let mut lines = report.lines().skip(1);
    assert_eq!(lines.next(), Some("allocated from:"), "{}", out.describe());
    let frames: Vec<&str> = lines.take_while(|l| l.starts_with("    #")).collect();
    assert!(frames.len() >= 2, "{frames:?}\n{}", out.describe());
    let tmp = TempDir::new("kal-fr-site");
    let f = tmp.path().join("report");
    std::fs::write(&f, frames.join("\n") + "\n").unwrap();
    let kal = support::workspace_root().join("target/release/kal");
    let sym = support::run(Command::new(kal).arg("report").arg(&f), TIMEOUT);
    assert!(
        sym.stdout.contains(" in hide_make "),
        "the site is kal_roots.c's hide_make:\n{}",
        sym.stdout
    );
}

/// Pacing: timer-driven scans of a heap the program keeps rewriting cost it
/// a copy-on-write fault per page; KAL measures that cost (more than the
/// pause alone) and, at the default `max_overhead=1`, waits 100 times the
/// cost before the next scan instead of `interval_ms`.  `max_overhead=0`
/// keeps the interval.
#[test]
fn scans_are_paced_by_what_they_cost_the_program() {
    if against_glibc() {
        return;
    }
    let interval_ms = 20u64;
    let run = |extra: &str, scans: &str| {
        let opts = format!("mode=detect:interval_ms={interval_ms}:leak_check_at_exit=0{extra}");
        let out = run_roots("pacing", Some(&opts), &[("KAL_TEST_PACING_SCANS", scans)]);
        out.assert_success();
        let s = kal_stats(&out, "live").unwrap_or_else(|| panic!("no stats\n{}", out.describe()));
        eprintln!(
            "[kal] pacing{extra}: scans {} pause max {} us, last cost {} us, wait {} ms",
            s["scans"],
            s["pause_ns_max"] / 1000,
            s["cost_ns_last"] / 1000,
            s["interval_ns"] / 1_000_000
        );
        // Where the time went (set-up, the scan waited for), for slow runs.
        for l in out.stdout.lines().filter(|l| l.starts_with("pacing: ")) {
            eprintln!("[kal] {l}");
        }
        (s, out)
    };
    let ms = 1_000_000;
    let (paced, out) = run("", "1");
    assert!(
        paced["scans"] >= 1 && paced["cost_ns_last"] > 0,
        "no timer-driven scan measured\n{}",
        out.describe()
    );
    // 100 times the cost, or more by the time it takes to measure this
    // one's cost (up to 1 s, then 200 ms of the rate after it) and the next
    // scan's usual rate (200 ms), and a scheduler's delay to spare.
    let want = (paced["cost_ns_last"] * 100).max(interval_ms * ms);
    assert!(
        (want..=want + 1_600 * ms).contains(&paced["interval_ns"]),
        "the wait {} ns is not 100 times the cost ({want} ns) at max_overhead=1\n{}",
        paced["interval_ns"],
        out.describe()
    );
    assert!(paced["interval_ns"] > interval_ms * ms);
    // A scan that costs the program tens of milliseconds is followed by
    // seconds of rewriting without another: besides the one waited for,
    // one more fits at most (the next, once its cost is measured, is 100
    // times that away).  Scans during the set-up do not count: how many
    // fit there depends on the machine's speed.
    // A number of the program's "pacing: ..." line, by its place from the
    // end and its unit.
    let pacing = |out: &Output, suffix: &str, nth_from_end: usize| -> i64 {
        out.stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("pacing: ")?
                    .rsplit(", ")
                    .nth(nth_from_end)?
                    .strip_suffix(suffix)
            })
            .and_then(|n| n.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no pacing line\n{}", out.describe()))
    };
    assert!(
        pacing(&out, " ms", 2) >= 0,
        "no timer-driven scan during the rewriting\n{}",
        out.describe()
    );
    let before = pacing(&out, " scans before", 1) as u64;
    assert!(
        paced["scans"] - before <= 2,
        "pacing did not space the scans out\n{}",
        out.describe()
    );
    // Without pacing, scans follow each other while the program rewrites
    // 16384 pages: over the rewriting (not the set-up, whose first-touch
    // faults would count too), what the scans cost is well above their
    // pauses, about the scans' number times the median pause: the
    // copy-on-write faults.  (Not the last scan's cost alone: it may have
    // run while the program slept between passes.)
    let (free, out) = run(":max_overhead=0", "2");
    let scans = free["scans"] - pacing(&out, " scans before", 1) as u64;
    let cost = free["cost_ns_total"] - pacing(&out, " ns cost before", 0) as u64;
    assert!(
        scans > 0 && cost > 2 * scans * free["pause_ns_p50"],
        "the cost does not count the copy-on-write work: {cost} ns over {scans} scans \
         (median pause {} ns)\n{}",
        free["pause_ns_p50"],
        out.describe()
    );
    assert_eq!(
        free["interval_ns"],
        interval_ms * ms,
        "max_overhead=0 changed the interval\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------- bad input

/// The `basic` workload's checksum on glibc, to compare against.
fn basic_baseline() -> &'static str {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        let mut cmd = Command::new(&programs().roots);
        cmd.arg("basic").env_remove("LD_PRELOAD");
        let out = support::run(&mut cmd, TIMEOUT);
        out.assert_success();
        out.stdout
            .lines()
            .find(|l| l.starts_with("checksum "))
            .expect("checksum")
            .to_string()
    })
}

fn kal_lines(out: &Output) -> Vec<&str> {
    out.stderr
        .lines()
        // Configuration messages start the line; reports (`==PID==ERROR:
        // KAL: ...`, `SUMMARY: KAL: ...`) are the engine working.
        .filter(|l| l.starts_with("KAL: "))
        .collect()
}

#[test]
fn bad_options_give_one_clear_line_and_a_running_program() {
    if against_glibc() {
        return;
    }
    let bad = [
        ("mode=detect:bogus_key=1", "bogus_key"),
        ("mode=sometimes", "sometimes"),
        ("mode=detect:interval_ms=abc", "interval_ms"),
        ("mode=detect:interval_ms=0", "interval_ms"),
        ("mode=detect:confirm_scans=65", "confirm_scans"),
        ("mode=detect:confirm_scans=0", "confirm_scans"),
        ("mode=detect:verbosity=7", "verbosity"),
        ("mode=detect:backend=magic", "backend"),
        ("mode=reclaim:use_stacks=0", "use_stacks"),
        ("mode=reclaim:use_registers=0", "use_registers"),
        ("garbage_without_equals", "garbage_without_equals"),
    ];
    let mut problems = Vec::new();
    for (opts, word) in bad {
        let out = run_roots("basic", Some(opts), &[]);
        let lines = kal_lines(&out);
        let mut why = Vec::new();
        if !out.success() {
            why.push("the program did not run to a clean exit".to_string());
        }
        if !out.stdout.contains(basic_baseline()) {
            why.push(format!(
                "output differs from glibc's ({})",
                basic_baseline()
            ));
        }
        if lines.len() != 1 || !lines[0].starts_with("KAL: ") {
            why.push(format!(
                "expected exactly one stderr line starting `KAL: `, got {lines:?}"
            ));
        } else if !lines[0].contains(word) {
            why.push(format!(
                "the KAL line does not name {word:?}: {:?}",
                lines[0]
            ));
        }
        if !out.stdout.contains("kal: mode=off") {
            why.push("KAL did not stay off".to_string());
        }
        if !why.is_empty() {
            problems.push(format!(
                "KAL_OPTIONS={opts}: {}\n{}",
                why.join("; "),
                out.describe()
            ));
        }
    }
    // The same checks accept a good setting: a valid detect-mode line
    // (root sources may be switched off in detect mode) gives no KAL line.
    let out = run_roots(
        "basic",
        Some("mode=detect:use_stacks=0:interval_ms=5:max_overhead=0"),
        &[],
    );
    out.assert_success();
    if !kal_lines(&out).is_empty() || !out.stdout.contains("kal: mode=detect") {
        problems.push(format!(
            "a valid KAL_OPTIONS was refused or not applied\n{}",
            out.describe()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn backend_kernel_forced_on_a_stock_kernel() {
    if against_glibc() {
        return;
    }
    if kernel_backend_available() {
        eprintln!("[kal] this kernel has kal_snapshot: backend=kernel works, nothing to refuse");
        return;
    }
    let out = run_roots(
        "basic",
        Some("mode=detect:interval_ms=5:max_overhead=0:backend=kernel"),
        &[],
    );
    out.assert_success();
    assert!(
        out.stdout.contains(basic_baseline()),
        "output differs from glibc's\n{}",
        out.describe()
    );
    let lines = kal_lines(&out);
    assert!(
        lines.iter().any(|l| l.contains("kernel")),
        "backend=kernel on a kernel without kal_snapshot: expected a clear `KAL: ...kernel...` \
         line, got {lines:?}\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------- report format

/// One report line reduced to its shape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    Separator,
    Error(String),
    Blank,
    Leak(String, u64, u64),
    Frames,
    Summary(String, u64, u64),
}

fn shape_of(line: &str) -> Option<Shape> {
    let l = line.trim_end();
    if !l.is_empty() && l.chars().all(|c| c == '=') && l.len() >= 60 {
        return Some(Shape::Separator);
    }
    if l.is_empty() {
        return Some(Shape::Blank);
    }
    if let Some(rest) = l.strip_prefix("==") {
        let (pid, rest) = rest.split_once("==ERROR: ")?;
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let tool = rest.strip_suffix(": detected memory leaks")?;
        return Some(Shape::Error(tool.to_string()));
    }
    if let Some(rest) = l.strip_prefix("    #") {
        let (n, _) = rest.split_once(' ')?;
        n.parse::<u32>().ok()?;
        return Some(Shape::Frames);
    }
    if let Some(rest) = l.strip_prefix("SUMMARY: ") {
        let (tool, rest) = rest.split_once(": ")?;
        let (bytes, rest) = rest.split_once(" byte(s) leaked in ")?;
        let allocs = rest.strip_suffix(" allocation(s).")?;
        return Some(Shape::Summary(
            tool.to_string(),
            bytes.parse().ok()?,
            allocs.parse().ok()?,
        ));
    }
    let (kind, rest) = l.split_once(" leak of ")?;
    let (bytes, rest) = rest.split_once(" byte(s) in ")?;
    let objs = rest.strip_suffix(" object(s) allocated from:")?;
    if kind != "Direct" && kind != "Indirect" {
        return None;
    }
    Some(Shape::Leak(
        kind.to_string(),
        bytes.parse().ok()?,
        objs.parse().ok()?,
    ))
}

/// The last report in `text`, as shapes (consecutive frames collapsed).
/// Panics, naming the line, on any line inside the report that has none of
/// the known shapes.
fn last_report(text: &str, what: &str) -> Vec<Shape> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.contains("==ERROR: ") && l.ends_with("detected memory leaks"))
        .unwrap_or_else(|| {
            panic!("{what}: no `==PID==ERROR: ...: detected memory leaks` line:\n{text}")
        });
    assert!(
        start > 0 && shape_of(lines[start - 1]) == Some(Shape::Separator),
        "{what}: the ERROR line is not preceded by the ===... separator:\n{text}"
    );
    let mut out = vec![Shape::Separator];
    for l in &lines[start..] {
        let s = shape_of(l)
            .unwrap_or_else(|| panic!("{what}: report line of unknown shape: {l:?}\n{text}"));
        if s == Shape::Frames && out.last() == Some(&Shape::Frames) {
            continue;
        }
        let summary = matches!(s, Shape::Summary(..));
        out.push(s);
        if summary {
            return out;
        }
    }
    panic!("{what}: report without a SUMMARY line:\n{text}");
}

/// Leak groups of a report, sorted, and the report with them blanked out:
/// LeakSanitizer groups by allocation stack and sorts by size; KAL groups
/// by size.  The program makes the two groupings coincide.
fn split_groups(report: &[Shape]) -> (Vec<Shape>, Vec<Shape>) {
    let mut groups: Vec<Shape> = report
        .iter()
        .filter(|s| matches!(s, Shape::Leak(..)))
        .cloned()
        .collect();
    groups.sort();
    let skeleton = report
        .iter()
        .map(|s| match s {
            Shape::Leak(..) => Shape::Leak(String::new(), 0, 0),
            Shape::Error(_) => Shape::Error(String::new()),
            Shape::Summary(_, b, n) => Shape::Summary(String::new(), *b, *n),
            other => other.clone(),
        })
        .collect();
    (groups, skeleton)
}

fn expected_leaky_groups() -> Vec<Shape> {
    let mut v = vec![
        Shape::Leak("Direct".into(), 4088, 1),
        Shape::Leak("Direct".into(), 72, 3),
        Shape::Leak("Direct".into(), 56, 1),
        Shape::Leak("Indirect".into(), 80, 2),
    ];
    v.sort();
    v
}

/// Direct groups come before indirect ones, as in LeakSanitizer.
fn assert_direct_first(report: &[Shape], what: &str) {
    let kinds: Vec<&str> = report
        .iter()
        .filter_map(|s| match s {
            Shape::Leak(k, ..) => Some(k.as_str()),
            _ => None,
        })
        .collect();
    let first_indirect = kinds.iter().position(|k| *k == "Indirect");
    if let Some(i) = first_indirect {
        assert!(
            kinds[i..].iter().all(|k| *k == "Indirect"),
            "{what}: a Direct group after an Indirect one: {kinds:?}"
        );
    }
}

fn run_leaky(args: &[&str], kal: &str) -> Output {
    let kal = &with_selected_backend(kal);
    let tmp = TempDir::new("kal-leaky");
    let stats = tmp.path().join("stats");
    let out = support::run(
        &mut kal_command(&programs().leaky, args, Some(kal), &[], &stats),
        TIMEOUT,
    );
    eprintln!(
        "[kal] kal_leaky {args:?} KAL_OPTIONS={kal}: {:.2?}",
        out.elapsed
    );
    out
}

/// Check one KAL report against the contract and the program's leaks;
/// returns its shape.
#[track_caller]
fn check_kal_report(out: &Output, what: &str) -> Vec<Shape> {
    out.assert_success();
    assert!(out.stdout.contains("leaky: done"), "{}", out.describe());
    let report = last_report(&out.stderr, what);
    assert_direct_first(&report, what);
    assert_eq!(
        split_groups(&report).0,
        expected_leaky_groups(),
        "{what}: KAL's leak groups (the live 1000-byte object must not be among them)\n{}",
        out.describe()
    );
    assert!(
        report.contains(&Shape::Error("KAL".into()))
            && report.contains(&Shape::Summary("KAL".into(), 4296, 7)),
        "{what}: expected `==PID==ERROR: KAL: detected memory leaks` and `SUMMARY: KAL: 4296 \
         byte(s) leaked in 7 allocation(s).`; got {report:?}\n{}",
        out.describe()
    );
    // Contract: every group is followed by its stack lines and a blank line.
    for w in report.windows(3) {
        if let Shape::Leak(..) = w[0] {
            assert_eq!(
                (&w[1], &w[2]),
                (&Shape::Frames, &Shape::Blank),
                "{what}: a leak group must be followed by `    #0 ...` line(s) and a blank \
                 line: {report:?}"
            );
        }
    }
    report
}

/// The report written after `rmalloc_kal_scan_now()` in detect mode follows
/// the contract, and has LeakSanitizer's shape line by line (same groups,
/// same line kinds in the same order) when clang -fsanitize=leak can build
/// the same program.
#[test]
fn report_format_after_scan_now_matches_leak_sanitizer() {
    if against_glibc() {
        return;
    }
    // (interval_ms=1000, not longer: see
    // scan_now_answers_promptly_with_a_long_interval)
    let out = run_leaky(
        &["scan"],
        "mode=detect:interval_ms=1000:leak_check_at_exit=0",
    );
    let report = check_kal_report(&out, "KAL report after scan_now");
    let (groups, skeleton) = split_groups(&report);
    match lsan_build() {
        Err(why) => eprintln!("[kal] LeakSanitizer comparison skipped: {why}"),
        Ok(exe) => {
            let mut cmd = Command::new(&exe);
            cmd.env_remove("LD_PRELOAD")
                .env_remove("KAL_OPTIONS")
                .env("LSAN_OPTIONS", "exitcode=23");
            let lsan = support::run(&mut cmd, TIMEOUT);
            assert_eq!(lsan.code(), Some(23), "{}", lsan.describe());
            let lr = last_report(&lsan.stderr, "LeakSanitizer report");
            assert!(lr.contains(&Shape::Error("LeakSanitizer".into())));
            assert_direct_first(&lr, "LeakSanitizer");
            let (lgroups, lskel) = split_groups(&lr);
            assert_eq!(
                lgroups, groups,
                "leak groups differ between LeakSanitizer and KAL\n--- LSan ---\n{}\n--- KAL \
                 ---\n{}",
                lsan.stderr, out.stderr
            );
            assert_eq!(
                lskel, skeleton,
                "report shapes differ line by line\n--- LSan ---\n{}\n--- KAL ---\n{}",
                lsan.stderr, out.stderr
            );
            eprintln!("[kal] KAL's report has LeakSanitizer's shape");
        }
    }
}

/// mode=detect alone (leak_check_at_exit=1 by default): a short program
/// that leaks gets its report at exit, every time (10 runs).
#[test]
fn report_at_exit_in_detect_mode() {
    if against_glibc() {
        return;
    }
    for i in 0..10 {
        let out = run_leaky(&[], "mode=detect");
        check_kal_report(&out, &format!("KAL exit report, run {i}"));
    }
}

/// mode=reclaim leaves the exit check out unless asked: nothing is left to
/// free at exit, and a scan would cost every process, however short, a few
/// milliseconds.  With leak_check_at_exit=1 the report comes as in detect
/// mode.
#[test]
fn no_exit_check_in_reclaim_mode_unless_asked() {
    if against_glibc() {
        return;
    }
    let out = run_leaky(&[], "mode=reclaim");
    out.assert_success();
    assert!(
        !out.stderr.contains("SUMMARY: KAL: "),
        "reclaim mode ran the exit check by default\n{}",
        out.describe()
    );
    let out = run_leaky(&[], "mode=reclaim:leak_check_at_exit=1");
    check_kal_report(&out, "KAL exit report in reclaim mode, asked for");
}

/// Build kal_leaky with clang -fsanitize=leak (clang and libclang-rt-14-dev:
/// `scripts/need-apt clang libclang-rt-14-dev`, done by tests/tests.mk when
/// possible).
fn lsan_build() -> Result<PathBuf, String> {
    static L: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut l = L.lock().unwrap_or_else(|e| e.into_inner());
    l.get_or_insert_with(|| {
        let exe = build_dir().join("kal_leaky_lsan");
        std::fs::create_dir_all(build_dir()).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("clang");
        cmd.args(["-O1", "-g", "-fsanitize=leak", "-o"])
            .arg(&exe)
            .arg(c_dir().join("kal_leaky.c"))
            .arg("-ldl");
        match cmd.output() {
            Err(e) => Err(format!("clang not installed ({e})")),
            Ok(o) if !o.status.success() => Err(format!(
                "clang -fsanitize=leak failed (libclang-rt-14-dev missing?): {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Ok(_) => Ok(exe),
        }
    })
    .clone()
}

// ---------------------------------------------------------------- real programs

/// Reclaim mode with a scan every 5 ms, verbose so that the log proves the
/// scans ran.
fn program_kal_options(log: &Path) -> String {
    format!(
        "mode=reclaim:interval_ms=5:max_overhead=0:verbosity=1:log_path={}",
        log.display()
    )
}

/// Run a real program on glibc and on rmalloc + aggressive KAL reclaim; the
/// outputs must be identical, no false reclaim may be reported, and the KAL
/// log must show scans.
fn real_program(what: &str, input: Option<&[u8]>, build: impl Fn(&Path) -> Command) {
    let scratch = TempDir::new("kal-prog");
    let mut outs = Vec::new();
    for kal in [false, true] {
        let dir = scratch.path().join(if kal { "kal" } else { "glibc" });
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = build(&dir);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &dir)
            .env("TMPDIR", &dir)
            .env("LC_ALL", "C.UTF-8")
            .env("TZ", "UTC")
            .current_dir(&dir);
        let log = scratch.path().join("kal-log");
        if kal {
            support::preload(&mut cmd);
            cmd.env("KAL_OPTIONS", program_kal_options(&log));
        }
        let out = support::run_with_input(&mut cmd, input, Duration::from_secs(240));
        eprintln!(
            "[kal] {what} on {}: {:.2?}",
            if kal { "rmalloc+KAL reclaim" } else { "glibc" },
            out.elapsed
        );
        assert!(
            out.success(),
            "{what} failed (kal={kal})\n{}",
            out.describe()
        );
        outs.push(out);
    }
    let (gl, rm) = (&outs[0], &outs[1]);
    assert!(
        gl.stdout == rm.stdout,
        "{what}: output under KAL reclaim differs from glibc's\n--- glibc ---\n{}\n--- KAL ---\n{}",
        tail(&gl.stdout),
        tail(&rm.stdout)
    );
    let fr = false_reclaim_lines(rm);
    assert!(fr.is_empty(), "{what}: {fr:?}\n{}", rm.describe());
    if against_glibc() {
        return;
    }
    // log_path.<pid> files: no false reclaim there either, and scans ran.
    let mut log_text = String::new();
    for e in std::fs::read_dir(scratch.path()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("kal-log.") {
            log_text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    assert!(
        !log_text.contains("FALSE RECLAIM"),
        "{what}: false reclaim in the KAL log:\n{}",
        tail(&log_text)
    );
    assert!(
        !log_text.is_empty(),
        "{what}: no KAL log (log_path.<pid>) with verbosity=1: did KAL run?\n{}",
        rm.describe()
    );
    eprintln!(
        "[kal] {what}: {} KAL log lines, {} mentioning a discarded snapshot",
        log_text.lines().count(),
        log_text.lines().filter(|l| l.contains("discarded")).count()
    );
}

fn tail(s: &str) -> &str {
    let n = s.len();
    let mut start = n.saturating_sub(3000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("programs")
        .join(name)
}

fn have(path: &str) -> bool {
    if Path::new(path).is_file() {
        return true;
    }
    eprintln!("[kal] {path} not installed (make test-integration installs it): skipped");
    false
}

/// A short multithreaded Python run: threads building and dropping
/// containers, cross-thread handoff through a queue.
const PY_SCRIPT: &str = r#"
import threading, queue, hashlib, zlib
q = queue.Queue(maxsize=64)
results = []
def producer(seed):
    for i in range(3000):
        d = {str(j): [j] * (j % 7) for j in range((seed + i) % 50)}
        q.put((i, d, b"x" * ((i * 37) % 4000)))
    q.put(None)
def consumer():
    digests = []
    done = 0
    while done < 3:
        item = q.get()
        if item is None:
            done += 1
            continue
        i, d, b = item
        digests.append(hashlib.sha256(zlib.compress(b + repr(sorted(d.items())).encode())).hexdigest())
    # arrival order depends on scheduling: hash the sorted digests
    results.append(hashlib.sha256("".join(sorted(digests)).encode()).hexdigest())
ts = [threading.Thread(target=producer, args=(s,)) for s in range(3)]
c = threading.Thread(target=consumer)
for t in ts + [c]:
    t.start()
for t in ts + [c]:
    t.join()
print(results[0])
print(sum(len(str(list(range(i)))) for i in range(2000)))
print("done")
"#;

#[test]
fn real_program_python3_threads_under_reclaim() {
    if !have("/usr/bin/python3") {
        return;
    }
    real_program("python3 threads", None, |_| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-s", "-c", PY_SCRIPT]);
        cmd.env("PYTHONMALLOC", "malloc")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    });
}

/// CPython's own test suites (a few, chosen to allocate a lot: containers,
/// JSON, strings) under reclaim at 5 ms: the same verdicts as under glibc.
#[test]
fn real_program_python3_test_suites_under_reclaim() {
    if !have("/usr/bin/python3") {
        return;
    }
    real_program("python3 test suites", None, |_| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg("-s").arg(workload("py_suites.py")).args([
            "test_dict",
            "test_list",
            "test_json",
            "test_string",
        ]);
        cmd.env("PYTHONMALLOC", "malloc")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    });
}

#[test]
fn real_program_perl_under_reclaim() {
    if !have("/usr/bin/perl") {
        return;
    }
    real_program("perl perl_workload.pl", None, |_| {
        let mut cmd = Command::new("/usr/bin/perl");
        cmd.arg(workload("perl_workload.pl"));
        cmd
    });
}

#[test]
fn real_program_sqlite3_under_reclaim() {
    if !have("/usr/bin/sqlite3") {
        return;
    }
    let sql = std::fs::read(workload("sqlite_workload.sql")).expect("sqlite workload");
    real_program("sqlite3 workload", Some(&sql), |dir| {
        let mut cmd = Command::new("/usr/bin/sqlite3");
        cmd.arg("-batch").arg(dir.join("work.db"));
        cmd
    });
}

#[test]
fn real_program_git_under_reclaim() {
    if !have("/usr/bin/git") {
        return;
    }
    // One shell script of git commands, so every git process runs under the
    // same environment (the preload and KAL_OPTIONS are inherited).
    let script = r#"
set -e
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_AUTHOR_NAME=A GIT_AUTHOR_EMAIL=a@x
export GIT_COMMITTER_NAME=C GIT_COMMITTER_EMAIL=c@x GIT_AUTHOR_DATE='@1700000000 +0000'
export GIT_COMMITTER_DATE='@1700000000 +0000'
g() { git -c init.defaultBranch=main -c gc.auto=0 -c core.fsync=none "$@"; }
mkdir repo && cd repo && g init -q
for c in 1 2 3 4 5 6; do
  for d in 1 2 3 4 5 6 7 8; do
    mkdir -p d$d
    seq $((c * d)) $((c * d * 40 + 300)) | sed "s/^/line $c $d /" > d$d/f$c.txt
  done
  g add -A && g commit -q -m "commit $c"
done
g log --stat --format='%H %s' | head -200
g diff --stat HEAD~5 HEAD
g gc --aggressive --prune=now -q
g fsck --strict 2>&1
g rev-list --all --count
"#;
    real_program("git session", None, |_| {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        cmd
    });
}

/// Self-test of the harness: a live object freed behind the program's back
/// (what a wrong reclaim does) must fail `assert_nothing_lost`.  Runs the
/// program without the preload, so it also works before the engine exists.
#[test]
fn harness_notices_a_live_object_freed_behind_the_programs_back() {
    let mut cmd = Command::new(&programs().roots);
    cmd.arg("global")
        .env_remove("LD_PRELOAD")
        .env_remove("KAL_OPTIONS")
        .env("KAL_TEST_SABOTAGE", "1");
    let out = support::run(&mut cmd, TIMEOUT);
    assert!(
        out.stdout.contains("sabotage: freeing"),
        "{}",
        out.describe()
    );
    // Only the program-level checks: there is no KAL here.
    let verdict = std::panic::catch_unwind(|| assert_program_kept_everything("global", &out));
    assert!(
        verdict.is_err(),
        "a freed live object went unnoticed\n{}",
        out.describe()
    );
}

/// Self-check of the report parser on LeakSanitizer's documented shape.
#[test]
fn report_parser_accepts_the_lsan_shape() {
    let text = "\
=================================================================
==1234==ERROR: KAL: detected memory leaks

Direct leak of 4096 byte(s) in 1 object(s) allocated from:
    #0 (allocation stack not recorded)

Indirect leak of 64 byte(s) in 2 object(s) allocated from:
    #0 (allocation stack not recorded)

SUMMARY: KAL: 4160 byte(s) leaked in 3 allocation(s).
";
    let r = last_report(text, "contract example");
    assert_eq!(
        split_groups(&r).0,
        vec![
            Shape::Leak("Direct".into(), 4096, 1),
            Shape::Leak("Indirect".into(), 64, 2)
        ]
    );
    assert_eq!(r.last(), Some(&Shape::Summary("KAL".into(), 4160, 3)));
    assert!(shape_of("Direct leak of 4096 byte(s) in 1 object(s)").is_none());
    let groups: BTreeMap<_, _> = leak_lines(text)
        .into_iter()
        .map(|(k, b, n)| (k, (b, n)))
        .collect();
    assert_eq!(groups["Direct leak"], (4096, 1));
}

/// Run one case of kal_api.c with `kal` as KAL_OPTIONS.
fn api_case(exe: &Path, case: &str, kal: Option<&str>) -> Output {
    let kal = kal.map(with_selected_backend);
    let kal = kal.as_deref();
    let tmp = TempDir::new("kal-api");
    let out = support::run(
        &mut kal_command(exe, &[case], kal, &[], &tmp.path().join("stats")),
        TIMEOUT,
    );
    eprintln!(
        "[kal] api {case} KAL_OPTIONS={}: {:.2?}",
        kal.unwrap_or("(unset)"),
        out.elapsed
    );
    out
}

const API_RECLAIM: &str =
    "mode=reclaim:confirm_scans=2:min_free_age_ms=0:probation_ms=0:leak_check_at_exit=0";

/// LeakSanitizer's interface does what it says: an ignored object is neither
/// reported nor reclaimed, a root region keeps what it points to, disable
/// holds reports and reclaim back until enable, the recoverable check
/// answers whether there are leaks.
#[test]
fn lsan_interface_has_its_effects() {
    if against_glibc() {
        return;
    }
    let p = programs();
    for (case, opts) in [
        ("ignore", API_RECLAIM),
        ("disable", API_RECLAIM),
        ("recover", API_RECLAIM),
        ("region", "mode=detect:confirm_scans=2:leak_check_at_exit=0"),
    ] {
        let out = api_case(&p.api, case, Some(opts));
        assert!(
            out.success() && out.stdout.contains("PASS"),
            "case {case}\n{}",
            out.describe()
        );
    }
}

/// `exitcode=23` with leaks at exit: the report, then status 23, with the
/// program's buffered output flushed; without the option the status stays 0.
#[test]
fn exitcode_when_leaks_are_found_at_exit() {
    if against_glibc() {
        return;
    }
    let p = programs();
    let out = api_case(&p.api, "exitcode", Some("mode=detect:exitcode=23"));
    assert_eq!(out.status.code(), Some(23), "{}", out.describe());
    assert!(
        out.stdout.contains("PASS"),
        "stdout lost\n{}",
        out.describe()
    );
    assert!(out.stderr.contains("Direct leak of"), "{}", out.describe());
    let out = api_case(&p.api, "exitcode", Some("mode=detect"));
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
}

/// A program's own `kal_default_options` turns KAL on without KAL_OPTIONS
/// (and its `__lsan_default_options`, with LeakSanitizer-only keys, is
/// accepted alongside).
#[test]
fn program_default_options_are_read() {
    if against_glibc() {
        return;
    }
    let out = api_case(&programs().api_defaults, "defaults", None);
    assert!(
        out.success() && out.stdout.contains("mode detect") && !out.stderr.contains("KAL: "),
        "{}",
        out.describe()
    );
}

/// The statistics page exists while KAL runs, with its header, counts scans,
/// and is removed at exit.
#[test]
fn stats_page_is_published_and_removed() {
    if against_glibc() {
        return;
    }
    let out = api_case(
        &programs().api,
        "statpage",
        Some("mode=detect:leak_check_at_exit=0"),
    );
    assert!(
        out.success() && out.stdout.contains("PASS"),
        "{}",
        out.describe()
    );
    let path = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("statpage "))
        .expect("the program names its page");
    assert!(!Path::new(path).exists(), "{path} left behind after exit");
}

/// `unshare(CLONE_NEWUSER)` needs a single-threaded process: the scanner
/// steps aside for it and is back afterwards.  Skipped where user
/// namespaces are not permitted at all (as without KAL) or the kernel has
/// none (the `make kernel-test` guest).
#[test]
fn unshare_of_a_user_namespace_works_under_kal() {
    if against_glibc() {
        return;
    }
    let out = api_case(
        &programs().api,
        "unshare",
        Some("mode=detect:leak_check_at_exit=0"),
    );
    if out.status.code() == Some(3) {
        eprintln!(
            "[kal] user namespaces not permitted or not in this kernel: skipped\n{}",
            out.describe()
        );
        return;
    }
    assert!(
        out.success() && out.stdout.contains("PASS"),
        "{}",
        out.describe()
    );
}

/// A mark that does not finish within `scan_timeout_ms` is abandoned (its
/// child killed, so its copy-on-write pages cannot pile up), the snapshot
/// discarded with a reason, and the program unaffected.
#[test]
fn a_mark_over_its_time_budget_is_abandoned() {
    if against_glibc() || !fork_backend_tested("a_mark_over_its_time_budget_is_abandoned") {
        return;
    }
    let out = api_case(
        &programs().api,
        "slow",
        Some("mode=detect:scan_timeout_ms=1:verbosity=1:leak_check_at_exit=0:backend=fork"),
    );
    assert!(
        out.success() && out.stdout.contains("PASS"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("did not finish within scan_timeout_ms"),
        "{}",
        out.describe()
    );
}

/// The scanner is a thread glibc does not know: a single-threaded program
/// keeps `__libc_single_threaded` set (and so its lock elision) under KAL.
#[test]
fn single_threaded_programs_stay_single_threaded_for_glibc() {
    if against_glibc() {
        return;
    }
    let out = api_case(
        &programs().api,
        "single",
        Some("mode=detect:leak_check_at_exit=0"),
    );
    assert!(
        out.success() && out.stdout.contains("PASS"),
        "{}",
        out.describe()
    );
}
