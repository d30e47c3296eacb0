//! C API tests: the C programs in `tests/c/` run against librmalloc.so.
//!
//! Every program is compiled with the system C compiler (`$CC`, default `cc`)
//! into this test's temp dir and run as a child process with
//! `LD_PRELOAD=librmalloc.so` (see `support.rs`).  Each case is one process,
//! so one misbehaving case cannot hide another.  Normal runs must leave an
//! rmalloc exit-stats line (so a silent fallback to glibc fails), and the C
//! side checks that `malloc` resolves into librmalloc and that
//! `rmalloc_check_heap()` returns 0 at the end.
//!
//! `RMALLOC_TEST_AGAINST_GLIBC=1 cargo test -p rmalloc-integration --test c_api`
//! runs the same expectations on plain glibc (the linking tests are skipped):
//! every expectation here is glibc 2.36's own behaviour.

use rmalloc_integration as support;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;
use support::{against_glibc, c_dir, cc, Output, TempDir};

/// Deadlock guard for the heavy programs (fork, threads, signals).
const HEAVY_TIMEOUT: Duration = Duration::from_secs(180);

fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_api")
}

/// The shared C flags, plus: misuse.c frees twice on purpose.
fn cflags(cmd: &mut Command) -> &mut Command {
    cmd.args(support::CFLAGS).arg("-Wno-use-after-free")
}

/// Compile `tests/c/<name>.c` (once per test run) and return the binary.
fn c_program(name: &str) -> PathBuf {
    build_program(name)
}

/// Compile `tests/c/<name>.c`, or `<name>.cpp` with the C++ compiler
/// (`$CXX`, default `c++`), once per test run.
fn build_program(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(name) {
        return p.clone();
    }
    let dir = build_dir();
    std::fs::create_dir_all(&dir).expect("create build dir");
    let exe = dir.join(name);
    let c_src = c_dir().join(format!("{name}.c"));
    let (src, mut cmd) = if c_src.is_file() {
        let mut cmd = Command::new(cc());
        cflags(&mut cmd);
        (c_src, cmd)
    } else {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
        let mut cmd = Command::new(cxx);
        cmd.args([
            "-std=c++17",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
        ]);
        (c_dir().join(format!("{name}.cpp")), cmd)
    };
    cmd.arg("-I")
        .arg(c_dir())
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-ldl");
    compile(&mut cmd, &src);
    map.insert(name.to_string(), exe.clone());
    exe
}

fn compile(cmd: &mut Command, src: &Path) {
    support::compile(cmd, &src.display().to_string());
}

/// A command for one of the C programs, set up for the allocator under test:
/// preloaded, asked to prove it is rmalloc, exit stats into `stats`, plus
/// `env` (allocator settings under test).
fn c_command_env(program: &Path, args: &[&str], stats: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for var in support::ALLOCATOR_ENV {
        cmd.env_remove(var);
    }
    if !against_glibc() {
        cmd.env("RMALLOC_TEST_REQUIRE_RMALLOC", "1");
    }
    cmd.envs(env.iter().copied());
    support::set_exit_stats(&mut cmd, stats);
    support::preload(&mut cmd);
    cmd
}

/// The stdout marker of t_start(): which allocator the program found.
#[track_caller]
fn assert_allocator(out: &Output) {
    let want = if against_glibc() {
        "allocator: glibc"
    } else {
        "allocator: rmalloc"
    };
    assert!(
        out.stdout.contains(want),
        "expected {want:?} on stdout\n{}",
        out.describe()
    );
}

/// Run a C program to a normal, successful end and prove rmalloc served it.
#[track_caller]
fn run_ok(name: &str, args: &[&str], timeout: Duration) -> Output {
    run_ok_env(name, args, &[], timeout)
}

#[track_caller]
fn run_ok_env(name: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    run_ok_stats(name, args, env, timeout).0
}

/// [`run_ok_env`], also returning rmalloc's exit-stats lines (none against
/// glibc).
#[track_caller]
fn run_ok_stats(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (Output, Vec<support::ExitStats>) {
    let program = c_program(name);
    let tmp = TempDir::new(name);
    let stats = tmp.path().join("stats");
    let out = support::run(&mut c_command_env(&program, args, &stats, env), timeout);
    out.assert_success();
    assert_allocator(&out);
    assert!(
        out.stdout.lines().any(|l| l == "PASS"),
        "no PASS line\n{}",
        out.describe()
    );
    let lines = support::assert_rmalloc_was_used(&stats);
    (out, lines)
}

fn api_case(case: &str) -> Output {
    let out = run_ok("api", &[case], support::DEFAULT_TIMEOUT);
    assert!(
        out.stdout.contains(&format!("case {case}: ok")),
        "case {case} did not run\n{}",
        out.describe()
    );
    out
}

macro_rules! api_tests {
    ($($test:ident => $case:literal,)*) => {
        $(
            #[test]
            fn $test() {
                api_case($case);
            }
        )*
        /// Every case name of api.c, for the linked run.
        const API_CASES: &[&str] = &[$($case),*];
    };
}

api_tests! {
    api_malloc_zero => "malloc_zero",
    api_malloc_huge_enomem => "malloc_huge",
    api_calloc_overflow_enomem => "calloc_overflow",
    api_calloc_zeroed => "calloc_zeroed",
    api_realloc_null_is_malloc => "realloc_null",
    api_realloc_zero_frees => "realloc_zero",
    api_realloc_preserves_contents => "realloc_contents",
    api_reallocarray_overflow => "reallocarray",
    api_posix_memalign => "posix_memalign",
    api_memalign => "memalign",
    api_aligned_alloc => "aligned_alloc",
    api_valloc => "valloc",
    api_pvalloc => "pvalloc",
    api_malloc_usable_size => "usable_size",
    api_free_null_and_errno => "free_null_errno",
    api_cfree => "cfree",
    api_mallopt => "mallopt",
    api_mallinfo => "mallinfo",
    api_malloc_trim => "malloc_trim",
    api_malloc_info => "malloc_info",
    api_libc_aliases => "aliases",
    api_libc_interop => "libc_interop",
    api_dynamic_mmap_threshold => "dynamic_mmap_threshold",
    api_chunk_layout_boundary_tags => "chunk_layout",
    api_malloc_in_thread_exit_destructors => "thread_exit_destructors",
    api_free_list_links_protected => "safe_linking",
}

#[test]
fn api_malloc_stats_to_stderr() {
    let out = api_case("malloc_stats");
    for want in [
        "Arena 0:",
        "system bytes     =",
        "in use bytes     =",
        "Total (incl. mmap):",
        "max mmap regions =",
        "max mmap bytes   =",
    ] {
        assert!(
            out.stderr.contains(want),
            "malloc_stats: {want:?} missing on stderr\n{}",
            out.describe()
        );
    }
    assert!(
        !out.stdout.contains("Arena 0:"),
        "malloc_stats wrote to stdout\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------- misuse

fn misuse(case: &str, message: &str) {
    misuse_env(case, message, &[]);
}

fn misuse_env(case: &str, message: &str, env: &[(&str, &str)]) {
    let program = c_program("misuse");
    let tmp = TempDir::new("misuse");
    let stats = tmp.path().join("stats");
    let out = support::run(
        &mut c_command_env(&program, &[case], &stats, env),
        support::DEFAULT_TIMEOUT,
    );
    // The allocator marker is printed before the misuse (stdout unbuffered).
    assert_allocator(&out);
    out.assert_aborted_with(message);
}

#[test]
fn misuse_double_free_tcache() {
    misuse(
        "double_free_tcache",
        "free(): double free detected in tcache 2",
    );
}

/// While KAL records every allocation's stack (`sites=all`, or a sample
/// rate low enough to record in place), frees of cached sizes leave the
/// inlined path, and must still go through the cache and its check.
#[test]
fn misuse_double_free_tcache_while_recording_stacks() {
    for sites in ["all", "sample:4096"] {
        misuse_env(
            "double_free_tcache",
            "free(): double free detected in tcache 2",
            &[
                ("KAL_OPTIONS", &format!("mode=detect:sites={sites}")),
                ("RMALLOC_KAL_BENCH_NO_SCANNER", "1"),
            ],
        );
    }
}

#[test]
fn misuse_double_free_fastbin() {
    misuse("double_free_fasttop", "double free or corruption (fasttop)");
}

#[test]
fn misuse_double_free_smallbin() {
    misuse("double_free_smallbin", "double free or corruption (!prev)");
}

#[test]
fn misuse_free_invalid_pointer() {
    misuse("invalid_pointer", "free(): invalid pointer");
}

#[test]
fn misuse_free_invalid_size() {
    misuse("invalid_size", "free(): invalid size");
}

#[test]
fn misuse_free_wrapping_size() {
    misuse("invalid_size_huge", "free(): invalid pointer");
}

#[test]
fn misuse_realloc_invalid_pointer() {
    misuse("realloc_invalid_pointer", "realloc(): invalid pointer");
}

#[test]
fn misuse_overflow_into_next_fast_chunk() {
    misuse("invalid_next_size_fast", "free(): invalid next size (fast)");
}

#[test]
fn misuse_overflow_into_next_normal_chunk() {
    misuse(
        "invalid_next_size_normal",
        "free(): invalid next size (normal)",
    );
}

#[test]
fn misuse_corrupted_mmapped_chunk() {
    misuse("munmap_invalid_pointer", "munmap_chunk(): invalid pointer");
}

#[test]
fn misuse_corrupted_top_size() {
    misuse("corrupted_top_size", "malloc(): corrupted top size");
}

#[test]
fn misuse_double_free_with_tcache_disabled() {
    // With the per-thread cache turned off the chunk goes to a fastbin, and
    // the double free is caught there.
    misuse_env(
        "double_free_tcache",
        "double free or corruption (fasttop)",
        &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")],
    );
}

// ------------------------------------------- configuration from the env

/// Run a `config` probe and return the value of its `key=value` line.
#[track_caller]
fn probe(args: &[&str], env: &[(&str, &str)], key: &str) -> String {
    let out = run_ok_env("config", args, env, support::DEFAULT_TIMEOUT);
    let prefix = format!("{key}=");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= line\n{}", out.describe()))
        .to_string()
}

#[test]
fn config_arena_max() {
    // Eight threads allocating at once: each gets an arena of its own...
    let heaps: u32 = probe(&["heaps", "8"], &[], "heaps").parse().unwrap();
    assert!(heaps > 1, "8 concurrent threads share {heaps} arena(s)");
    // ...unless the arena limit says otherwise.
    for (probe_name, var, val, want) in [
        ("heaps", "MALLOC_ARENA_MAX", "1", 1),
        ("heaps", "GLIBC_TUNABLES", "glibc.malloc.arena_max=2", 2),
        ("heaps_mallopt", "", "", 2),
    ] {
        let env: Vec<(&str, &str)> = if var.is_empty() {
            vec![]
        } else {
            vec![(var, val)]
        };
        let (out, stats) =
            run_ok_stats("config", &[probe_name, "8"], &env, support::DEFAULT_TIMEOUT);
        let got = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("heaps="))
            .unwrap_or_else(|| panic!("no heaps= line\n{}", out.describe()));
        assert_eq!(got, want.to_string(), "{probe_name} with {var}={val}");
        // rmalloc's own count agrees.
        for s in &stats {
            assert!(
                s.arenas <= want,
                "{probe_name} with {var}={val}: exit stats {s:?}"
            );
        }
    }
}

#[test]
fn config_mmap_threshold_and_max() {
    for (size, var, val, want) in [
        ("100000", "", "", "0"),
        ("100000", "MALLOC_MMAP_THRESHOLD_", "65536", "1"),
        (
            "100000",
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=65536",
            "1",
        ),
        ("300000", "", "", "1"),
        ("300000", "MALLOC_MMAP_THRESHOLD_", "1048576", "0"),
        ("2000000", "MALLOC_MMAP_MAX_", "0", "0"),
        ("2000000", "GLIBC_TUNABLES", "glibc.malloc.mmap_max=0", "0"),
    ] {
        let env: Vec<(&str, &str)> = if var.is_empty() {
            vec![]
        } else {
            vec![(var, val)]
        };
        let got = probe(&["mmapped", size], &env, "mmapped");
        assert_eq!(got, want, "malloc({size}) mmapped with {var}={val}");
    }
}

#[test]
fn config_perturb() {
    assert_eq!(probe(&["perturb"], &[], "fresh"), "00");
    for (var, val) in [
        ("MALLOC_PERTURB_", "90"),
        ("GLIBC_TUNABLES", "glibc.malloc.perturb=90"),
    ] {
        // Fresh memory is filled with the complement of the perturb byte.
        assert_eq!(
            probe(&["perturb"], &[(var, val)], "fresh"),
            "a5",
            "{var}={val}"
        );
    }
}

#[test]
fn config_invalid_values_are_ignored() {
    run_ok_env(
        "config",
        &["smoke"],
        &[
            (
                "GLIBC_TUNABLES",
                "glibc.malloc.arena_max=abc:glibc.malloc.mmap_threshold=-5:\
                 glibc.malloc.tcache_count=99999:glibc.malloc.mxfast=100000:\
                 glibc.malloc.top_pad=zz:glibc.malloc.bogus=1:junk:=:glibc.malloc.",
            ),
            ("MALLOC_ARENA_MAX", "xyz"),
            ("MALLOC_TOP_PAD_", "-1"),
            ("MALLOC_MMAP_THRESHOLD_", "abc"),
            ("MALLOC_TRIM_THRESHOLD_", ""),
            ("MALLOC_PERTURB_", "999999999999999999999"),
            ("MALLOC_CHECK_", "7"),
        ],
        support::DEFAULT_TIMEOUT,
    );
}

// ----------------------------------------------- threads, fork, signals

#[test]
fn fork_in_multithreaded_program() {
    let out = run_ok("fork_threads", &["100"], HEAVY_TIMEOUT);
    assert!(out.stdout.contains("forks: 100"), "{}", out.describe());
}

/// Allocating atfork handlers registered before and after the allocator's
/// own (issue 8, bug 1): the allocator's locking must run after every
/// prepare handler and before every parent and child handler.
#[test]
fn fork_with_allocating_atfork_handlers() {
    let out = run_ok("fork_handlers", &["40"], HEAVY_TIMEOUT);
    assert!(out.stdout.contains("forks: 40"), "{}", out.describe());
}

/// fork from a signal handler that interrupted a whole-heap function of a
/// single-threaded program (issue 8, bug 2).
#[test]
fn fork_from_signal_handler_in_heap_functions() {
    let out = run_ok("fork_in_signal", &["200"], HEAVY_TIMEOUT);
    assert!(
        out.stdout.contains("forks from the handler: 200"),
        "{}",
        out.describe()
    );
}

/// Destructors that allocate after the allocator's thread-exit handler
/// (issue 8, bug 5): 300 threads end with glibc's arena count.
#[test]
fn late_tsd_destructors_release_arenas() {
    let out = run_ok("late_destructors", &["150", "15"], HEAVY_TIMEOUT);
    assert!(
        out.stdout.contains("threads: 300, arenas: 2 then"),
        "{}",
        out.describe()
    );
}

#[test]
fn thread_churn_5000_threads() {
    let out = run_ok("thread_churn", &["5000", "50"], HEAVY_TIMEOUT);
    assert!(
        out.stdout.contains("threads: 5000 (500 detached)"),
        "{}",
        out.describe()
    );
}

#[test]
fn whole_api_from_many_threads_with_heap_queries() {
    let out = run_ok("mt_stress", &["6", "10000"], HEAVY_TIMEOUT);
    // stderr stays connected during the threaded phase (an abort message
    // there must reach the report): malloc_stats' output arrives.
    assert!(
        out.stderr.contains("Total (incl. mmap):"),
        "{}",
        out.describe()
    );
}

#[test]
fn cxx_new_delete_exceptions_thread_locals() {
    let out = run_ok("cxx_app", &[], HEAVY_TIMEOUT);
    assert!(out.stdout.contains("in use before"), "{}", out.describe());
}

#[test]
fn signal_storm_while_allocating() {
    run_ok("signals", &["200000", "2000"], HEAVY_TIMEOUT);
}

#[test]
fn lifecycle_preinit_to_exit_with_busy_threads() {
    // Exiting while threads allocate is racy by nature: repeat it.
    for _ in 0..20 {
        run_ok("lifecycle", &[], support::DEFAULT_TIMEOUT);
    }
}

#[test]
fn enomem_under_rlimit_as() {
    let out = run_ok("enomem", &["256"], support::DEFAULT_TIMEOUT);
    assert!(out.stdout.contains("before ENOMEM"), "{}", out.describe());
}

#[test]
fn enomem_under_rlimit_as_in_threads() {
    let out = run_ok("enomem", &["512", "4"], support::DEFAULT_TIMEOUT);
    assert!(out.stdout.contains("recovered"), "{}", out.describe());
}

// ------------------------------------------------------------- linking

/// A directory holding the library under the name `-lrmalloc` looks for.
fn lib_dir(tmp: &TempDir) -> PathBuf {
    let lib = support::lib_path();
    if lib.file_name().is_some_and(|n| n == "librmalloc.so") {
        return lib.parent().unwrap().to_path_buf();
    }
    let dir = tmp.path().join("libdir");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&lib, dir.join("librmalloc.so")).unwrap();
    dir
}

/// Run a program linked with -lrmalloc (no LD_PRELOAD) and check that
/// rmalloc served it.
fn run_linked_app(exe: &Path, tmp: &TempDir) {
    let stats = tmp.path().join("stats");
    let mut cmd = Command::new(exe);
    cmd.env_remove("LD_PRELOAD");
    support::set_exit_stats(&mut cmd, &stats);
    let out = support::run(&mut cmd, support::DEFAULT_TIMEOUT);
    out.assert_success();
    for want in ["version: rmalloc", "sum: 499500", "check_heap: 0"] {
        assert!(out.stdout.contains(want), "{want:?}\n{}", out.describe());
    }
    support::assert_rmalloc_was_used(&stats);
}

fn skip_against_glibc(what: &str) -> bool {
    if against_glibc() {
        eprintln!("{what}: skipped against glibc (it tests linking rmalloc)");
    }
    against_glibc()
}

#[test]
fn link_with_lrmalloc() {
    if skip_against_glibc("link_with_lrmalloc") {
        return;
    }
    let tmp = TempDir::new("link");
    let dir = lib_dir(&tmp);
    let exe = tmp.path().join("app");
    let src = c_dir().join("link_app.c");
    let mut cmd = Command::new(cc());
    cmd.arg("-I")
        .arg(support::workspace_root().join("rmalloc/include"))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg(format!("-L{}", dir.display()))
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-lrmalloc")
        .arg("-ldl");
    compile(&mut cmd, &src);
    run_linked_app(&exe, &tmp);
}

#[test]
fn link_with_pkg_config_after_make_install() {
    if skip_against_glibc("link_with_pkg_config_after_make_install") {
        return;
    }
    let tmp = TempDir::new("install");
    let prefix = tmp.path().join("prefix");
    // `-o lib`: use the library that is already built (the test must not run
    // cargo inside cargo); LIB= installs the one under test.
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(support::workspace_root())
        .arg("-o")
        .arg("lib")
        .arg("install")
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("LIB={}", support::lib_path().display()))
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    let out = support::run(&mut make, Duration::from_secs(120));
    out.assert_success();
    for f in [
        "lib/librmalloc.so",
        "include/rmalloc.h",
        "lib/pkgconfig/rmalloc.pc",
    ] {
        assert!(prefix.join(f).is_file(), "make install did not install {f}");
    }

    let mut pc = Command::new("pkg-config");
    pc.args(["--cflags", "--libs", "rmalloc"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"));
    let out = support::run(&mut pc, support::DEFAULT_TIMEOUT);
    out.assert_success();
    let flags: Vec<String> = out.stdout.split_whitespace().map(String::from).collect();
    assert!(
        flags.iter().any(|f| f == "-lrmalloc"),
        "pkg-config flags: {flags:?}"
    );

    let exe = tmp.path().join("app");
    let src = c_dir().join("link_app.c");
    let mut cmd = Command::new(cc());
    cmd.arg("-o").arg(&exe).arg(&src).args(&flags).arg("-ldl");
    compile(&mut cmd, &src);
    run_linked_app(&exe, &tmp);
}

#[test]
fn api_cases_when_linked_with_lrmalloc() {
    if skip_against_glibc("api_cases_when_linked_with_lrmalloc") {
        return;
    }
    // The API program linked against the library instead of preloaded.
    let tmp = TempDir::new("api-linked");
    let dir = lib_dir(&tmp);
    let exe = tmp.path().join("api");
    let src = c_dir().join("api.c");
    let mut cmd = Command::new(cc());
    cflags(&mut cmd)
        .arg("-I")
        .arg(c_dir())
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg(format!("-L{}", dir.display()))
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-Wl,--no-as-needed")
        .arg("-lrmalloc")
        .arg("-ldl");
    compile(&mut cmd, &src);
    let mut failed = Vec::new();
    for case in API_CASES {
        let stats = tmp.path().join(format!("stats-{case}"));
        let mut cmd = Command::new(&exe);
        cmd.arg(case)
            .env_remove("LD_PRELOAD")
            .env("RMALLOC_TEST_REQUIRE_RMALLOC", "1");
        support::set_exit_stats(&mut cmd, &stats);
        let out = support::run(&mut cmd, support::DEFAULT_TIMEOUT);
        if !out.success() || !stats.is_file() {
            failed.push(format!("--- case {case} ---\n{}", out.describe()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed when linked:\n{}",
        failed.len(),
        API_CASES.len(),
        failed.join("\n")
    );
}

/// The standard output of `args` run on the library under test.
fn lib_tool(args: &[&str]) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]).arg(support::lib_path());
    let out = support::run(&mut cmd, support::DEFAULT_TIMEOUT);
    out.assert_success();
    out.stdout
}

/// The offset in the library of the exported function `name` (`nm -D`).
fn exported_offset(name: &str) -> u64 {
    lib_tool(&["nm", "-D", "--defined-only"])
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.last() == Some(&name))
                .then(|| u64::from_str_radix(f[0], 16).ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("{name} not exported"))
}

/// The address range of the library's section `name` (`readelf -S`).
fn section_range(name: &str) -> Option<std::ops::Range<u64>> {
    lib_tool(&["readelf", "-SW"]).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let i = f.iter().position(|w| *w == name)?;
        let addr = u64::from_str_radix(f.get(i + 2)?, 16).ok()?;
        let size = u64::from_str_radix(f.get(i + 4)?, 16).ok()?;
        Some(addr..addr + size)
    })
}

/// The library reaches its own functions and statics directly, not through
/// the GOT: building the crate as rlib and cdylib at once made every
/// internal call and every `PARAMS` load an indirect one (issue 8: 6.3M
/// more instructions on the small workload at scale 0.05).  The only GOT
/// slot allowed to hold the library's own address is the TLS offset
/// (`R_X86_64_TPOFF64`, not counted here).
#[test]
fn library_has_no_got_indirection_to_itself() {
    if skip_against_glibc("library_has_no_got_indirection_to_itself") {
        return;
    }
    let tool = lib_tool;
    let got = section_range(".got").expect("no .got section");
    let symbols: HashMap<u64, Vec<String>> =
        tool(&["nm"]).lines().fold(HashMap::new(), |mut m, l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 3 {
                if let Ok(a) = u64::from_str_radix(f[0], 16) {
                    m.entry(a).or_default().push(f[2].to_string());
                }
            }
            m
        });
    let mut own = Vec::new();
    for l in tool(&["readelf", "-rW"]).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 || f[2] != "R_X86_64_RELATIVE" {
            continue;
        }
        let (Ok(slot), Ok(target)) = (u64::from_str_radix(f[0], 16), u64::from_str_radix(f[3], 16))
        else {
            continue;
        };
        if !got.contains(&slot) {
            continue;
        }
        let names = symbols.get(&target).cloned().unwrap_or_default();
        own.push(format!("{target:#x} {names:?}"));
    }
    assert!(
        own.is_empty(),
        "{} GOT slot(s) hold the library's own addresses: {own:?}",
        own.len()
    );
}

/// The code a typical program runs stays in one place: every text page the
/// `footprint` program (threads, small and mmapped blocks, calloc, realloc,
/// the aligned allocators, fork) makes resident lies in the 64 KiB
/// windows around `.text.hot` and `.text.warm`, the kernel's fault-around
/// unit (its default `fault_around_bytes`).  Scattered, the same code kept
/// 164-228 KiB of text resident in every process (issue 8: peak RSS of
/// small programs); `library_pages_a_program_touches` checks the tighter
/// layout of `rmalloc/layout.ld`.  Also checks the link flags `build.rs`
/// relies on: no `DT_INIT` from the C start files, and `NODELETE`.
#[test]
fn hot_code_shares_the_fewest_text_windows() {
    if skip_against_glibc("hot_code_shares_the_fewest_text_windows") {
        return;
    }
    let tool = lib_tool;
    let dynamic = tool(&["readelf", "-dW"]);
    assert!(
        !dynamic.contains("(INIT)"),
        "DT_INIT present: linked with the C start files\n{dynamic}"
    );
    assert!(
        dynamic
            .lines()
            .any(|l| l.contains("FLAGS_1") && l.contains("NODELETE")),
        "not linked with -z nodelete\n{dynamic}"
    );
    // lld (Rust's default linker here) with `-z keep-text-section-prefix`
    // gives the hot code an output section of its own.
    let hot = section_range(".text.hot").expect("no .text.hot output section");
    let out = run_ok("footprint", &[], HEAVY_TIMEOUT);
    let field = |l: &str, key: &str| {
        l.strip_prefix(key)
            .and_then(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
    };
    let base = out
        .stdout
        .lines()
        .find_map(|l| field(l, "base "))
        .expect("no base line");
    let resident: Vec<u64> = out
        .stdout
        .lines()
        .filter_map(|l| field(l, "resident "))
        .collect();
    assert!(
        !resident.is_empty(),
        "no resident text page\n{}",
        out.describe()
    );
    const WINDOW: u64 = 64 << 10;
    let lo = ((base + hot.start) & !(WINDOW - 1)) - base;
    let hi = ((base + hot.end + WINDOW - 1) & !(WINDOW - 1)) - base;
    // The code many programs run but not all (realloc, the aligned
    // allocators, fork handlers: this program runs them) is `.text.warm`.
    let warm = section_range(".text.warm").expect("no .text.warm output section");
    let w_lo = ((base + warm.start) & !(WINDOW - 1)) - base;
    let w_hi = ((base + warm.end + WINDOW - 1) & !(WINDOW - 1)) - base;
    // The test programs print which allocator they run on with
    // `rmalloc_version` (cold code, as it should be): its window is the
    // scaffolding's, not the program's.  Whether it is a window of its own
    // depends on where the loader put the library (1 run in 8 here).
    let version = exported_offset("rmalloc_version");
    let v_lo = ((base + version) & !(WINDOW - 1)) - base;
    let v_hi = v_lo + WINDOW;
    let outside: Vec<String> = resident
        .iter()
        .filter(|&&p| p + 4096 <= lo || p >= hi)
        .filter(|&&p| p + 4096 <= w_lo || p >= w_hi)
        .filter(|&&p| p + 4096 <= v_lo || p >= v_hi)
        .map(|p| format!("{p:#x}"))
        .collect();
    assert!(
        outside.is_empty(),
        "{} text page(s) resident outside the windows {lo:#x}..{hi:#x} around .text.hot {:#x}..{:#x}: {outside:?}",
        outside.len(),
        hot.start,
        hot.end
    );
}

/// The library's loadable segments (`readelf -lW`): address range, whether
/// writable, and the sections each holds, in program-header order.
fn load_segments() -> Vec<Segment> {
    let text = lib_tool(&["readelf", "-lW"]);
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut loads = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"LOAD") {
            let (vaddr, memsz) = (hex(f[2]).unwrap(), hex(f[5]).unwrap());
            let flags = f[6..f.len() - 1].concat();
            loads.push((vaddr..vaddr + memsz, flags.contains('W'), Vec::new()));
        }
    }
    // "Section to Segment mapping": "  NN     .sec .sec ...", one line per
    // program header, in the order of the headers.
    let types: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("Program Headers:"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mapping: Vec<Vec<String>> = text
        .lines()
        .skip_while(|l| !l.contains("Section to Segment mapping"))
        .skip(2)
        .map(|l| l.split_whitespace().skip(1).map(String::from).collect())
        .collect();
    let mut i = 0;
    for (t, secs) in types.iter().zip(mapping) {
        if *t == "LOAD" {
            loads[i].2 = secs;
            i += 1;
        }
    }
    loads
}

/// The pages of its own that a typical program makes resident, mapping by
/// mapping (issue 8: peak RSS at most 1.05x glibc's, on programs of
/// 1.4-3.4 MiB where the library's own pages were most of the gap).  The
/// kernel maps up to 16 cached pages around a read fault on a file
/// mapping, clipped to the mapping, so the layout (rmalloc/layout.ld) gives
/// the hot code and the hot statics mappings of their own, and keeps the
/// unwind tables out of the loader's read-only segment.
#[test]
fn library_pages_a_program_touches() {
    if skip_against_glibc("library_pages_a_program_touches") {
        return;
    }
    let loads = load_segments();
    let holding = |name: &str| {
        loads
            .iter()
            .find(|(_, _, secs)| secs.iter().any(|s| s == name))
            .unwrap_or_else(|| panic!("no segment holds {name}: {loads:?}"))
    };
    // The layout itself, whatever the load address.
    let hot = holding(".text.hot");
    let warm = holding(".text.warm");
    for (name, seg) in [(".text.hot", hot), (".text.warm", warm)] {
        assert_eq!(seg.2, [name], "{name} shares its segment: {loads:?}");
        let below = loads
            .iter()
            .filter(|(r, _, _)| r.end <= seg.0.start)
            .map(|(r, _, _)| r.end)
            .max()
            .expect("no segment below");
        assert!(
            below.div_ceil(4096) < seg.0.start / 4096,
            "no page between {name} and the code below ({below:#x}, {:#x}): one mapping",
            seg.0.start
        );
    }
    let dynsym = holding(".dynsym");
    for unwind in [".eh_frame", ".eh_frame_hdr"] {
        assert!(
            !dynsym.2.iter().any(|s| s == unwind),
            "{unwind} in the loader's read-only segment: {loads:?}"
        );
    }
    let data_hot = holding(".data.hot");
    assert!(
        data_hot
            .2
            .iter()
            .all(|s| s == ".data.hot" || s == ".bss.hot"),
        "hot statics share their segment: {loads:?}"
    );

    // What a program that runs the common paths maps, and one that only
    // mallocs, callocs and frees (from several threads).
    for basic in [false, true] {
        let args: &[&str] = if basic { &["basic"] } else { &[] };
        let out = run_ok("footprint", args, HEAVY_TIMEOUT);
        let code = if basic { vec![hot] } else { vec![hot, warm] };
        check_pages_mapped(&loads, &code, &out);
    }
}

/// A loadable segment: address range, writable, its sections.
type Segment = (std::ops::Range<u64>, bool, Vec<String>);

/// The checks of [`library_pages_a_program_touches`] on one run of the
/// footprint program: code pages only in the segments `code`, no unwind
/// table page, at most 3 writable pages.
fn check_pages_mapped(loads: &[Segment], code: &[&Segment], out: &Output) {
    // Resident pages; the shared zero page (a read of untouched bss) is
    // mapped but not resident memory of ours.
    let pages: Vec<(String, u64)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("page ")?.split_whitespace();
            let perms = f.next()?.to_string();
            let off = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
            (f.next()? == "1").then_some((perms, off))
        })
        .collect();
    assert!(!pages.is_empty(), "no page listed\n{}", out.describe());
    // Code: only the pages of the segments `code`, and those of the cold
    // code around rmalloc_version, which the test scaffolding calls (one
    // 64 KiB window at most).
    let base = out
        .stdout
        .lines()
        .find_map(|l| {
            u64::from_str_radix(l.strip_prefix("base ")?.trim_start_matches("0x"), 16).ok()
        })
        .expect("no base line");
    let version = exported_offset("rmalloc_version");
    const WINDOW: u64 = 64 << 10;
    let v_lo = ((base + version) & !(WINDOW - 1)) - base;
    let allowed: Vec<std::ops::Range<u64>> = code
        .iter()
        .map(|(r, _, _)| (r.start & !4095)..r.end)
        .collect();
    let other_code: Vec<String> = pages
        .iter()
        .filter(|(p, off)| p.contains('x') && !allowed.iter().any(|r| r.contains(off)))
        .filter(|(_, off)| !(v_lo..v_lo + WINDOW).contains(off))
        .map(|(_, off)| format!("{off:#x}"))
        .collect();
    assert!(
        other_code.is_empty(),
        "code pages outside {allowed:#x?} mapped: {other_code:?}\n{}",
        out.describe()
    );
    let unwind = section_range(".eh_frame_hdr")
        .expect("no .eh_frame_hdr")
        .start
        & !4095..section_range(".eh_frame").expect("no .eh_frame").end;
    let unwind_pages: Vec<String> = pages
        .iter()
        .filter(|(_, off)| unwind.contains(off))
        .map(|(_, off)| format!("{off:#x}"))
        .collect();
    assert!(
        unwind_pages.is_empty(),
        "unwind table pages {unwind:#x?} mapped: {unwind_pages:?}"
    );
    // Writable: the RELRO page the loader relocates and the two of the hot
    // statics.  Scattered over .data and .bss they were five more.
    let writable: Vec<String> = pages
        .iter()
        .filter(|(_, off)| {
            loads
                .iter()
                .any(|(r, w, _)| *w && r.start & !4095 <= *off && *off < r.end)
        })
        .map(|(p, off)| format!("{p} {off:#x}"))
        .collect();
    assert!(
        writable.len() <= 3,
        "{} writable pages of the library's mapped, at most 3 expected: {writable:?}",
        writable.len()
    );
}

#[test]
fn exit_stats_line_parses() {
    let s =
        support::parse_exit_stats("rmalloc: pid=12 arenas=3 system_bytes=135168 in_use_bytes=42")
            .expect("parses");
    assert_eq!(
        (s.pid, s.arenas, s.system_bytes, s.in_use_bytes),
        (12, 3, 135168, 42)
    );
    assert!(support::parse_exit_stats("rmalloc: pid=12").is_none());
    assert!(support::parse_exit_stats("something else").is_none());
}

#[test]
fn runner_kills_a_hung_process_group() {
    // A child that would hang, with a grandchild holding the pipes open.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 1000 & sleep 1000"]);
    let out = support::run(&mut cmd, Duration::from_secs(2));
    assert!(out.timed_out, "{}", out.describe());
    assert!(!out.success());
    assert_eq!(out.signal(), Some(libc::SIGKILL), "{}", out.describe());
}

#[test]
fn runner_reports_abort_and_stderr() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo 'free(): invalid pointer' >&2; kill -ABRT $$"]);
    let out = support::run(&mut cmd, support::DEFAULT_TIMEOUT);
    out.assert_aborted_with("free(): invalid pointer");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo out; exit 3"]);
    let out = support::run(&mut cmd, support::DEFAULT_TIMEOUT);
    assert_eq!((out.code(), out.stdout.as_str()), (Some(3), "out\n"));
}

#[test]
fn exit_stats_to_an_unwritable_path_is_harmless() {
    let program = c_program("api");
    let mut cmd = c_command_env(
        &program,
        &["malloc_zero"],
        Path::new("/nonexistent-dir/stats"),
        &[],
    );
    let out = support::run(&mut cmd, support::DEFAULT_TIMEOUT);
    out.assert_success();
    assert_allocator(&out);
}

/// The same deterministic allocation history under glibc and rmalloc gives
/// byte-identical output: every block's offset from the first, usable sizes,
/// `mallinfo2`, `malloc_info`, `malloc_stats` and `malloc_trim`'s result.
/// This holds rmalloc to ptmalloc's placement policy, not just its API.
#[test]
fn heap_layout_and_statistics_match_glibc() {
    let program = c_program("same_as_glibc");
    let tmp = TempDir::new("same_as_glibc");
    let stats = tmp.path().join("stats");
    let plain = |cmd: &mut Command| {
        for var in [
            "GLIBC_TUNABLES",
            "MALLOC_PERTURB_",
            "MALLOC_ARENA_MAX",
            "MALLOC_TOP_PAD_",
            "LD_PRELOAD",
        ] {
            cmd.env_remove(var);
        }
    };
    let mut glibc = Command::new(&program);
    plain(&mut glibc);
    let reference = support::run(&mut glibc, support::DEFAULT_TIMEOUT);
    reference.assert_success();
    assert!(
        reference.stdout.contains("<malloc version=\"1\">"),
        "{}",
        reference.describe()
    );
    if against_glibc() {
        return;
    }
    let mut ours = Command::new(&program);
    plain(&mut ours);
    support::set_exit_stats(&mut ours, &stats);
    support::preload(&mut ours);
    let got = support::run(&mut ours, support::DEFAULT_TIMEOUT);
    got.assert_success();
    support::assert_rmalloc_was_used(&stats);
    if got.stdout != reference.stdout || got.stderr != reference.stderr {
        let first = reference
            .stdout
            .lines()
            .zip(got.stdout.lines())
            .position(|(a, b)| a != b)
            .map(|i| {
                format!(
                    "first difference at stdout line {}: glibc {:?}, rmalloc {:?}",
                    i + 1,
                    reference.stdout.lines().nth(i).unwrap_or(""),
                    got.stdout.lines().nth(i).unwrap_or("")
                )
            })
            .unwrap_or_else(|| "stdout equal; stderr (malloc_stats) differs".to_string());
        panic!(
            "rmalloc's heap diverged from glibc's\n{first}\n--- glibc stderr ---\n{}\n--- rmalloc stderr ---\n{}",
            reference.stderr, got.stderr
        );
    }
}

/// A program that moves the break itself between allocations, then runs
/// into RLIMIT_DATA: the heap continues past the program's memory and then
/// in mmap regions, with every block intact and the heap consistent.
#[test]
fn foreign_sbrk_and_brk_exhaustion() {
    run_ok("foreign_sbrk", &[], support::DEFAULT_TIMEOUT);
}
