//! KAL's allocation stacks, suppressions and symbolized reports, with
//! programs built as Debian builds them (`-g -O1 -fomit-frame-pointer`: no
//! frame pointers, so only DWARF unwinding finds the callers):
//!
//! - `sites=all`: leaks are grouped by stack; `kal report` names the
//!   allocating function and line in the executable and in a shared
//!   library, and every caller up to `main`.
//! - The report, symbolized, matches LeakSanitizer's report of the same
//!   program (clang `-fsanitize=leak`, when clang is installed) line by
//!   line: same groups in the same order, same frames (function, file,
//!   line, column) from the allocation site to `main`, same frame count,
//!   same `max_leaks` lines, same "Suppressions used" block.
//! - `sites=off` reports say the stack was not recorded; a freed chunk's
//!   stack is not inherited by an unrecorded chunk at the same address.
//! - `fast_unwind_on_malloc=1` walks frame pointers where they exist.
//! - Suppressions (`suppressions=FILE`, `__lsan_default_suppressions`) by
//!   function and by module: the leak is neither reported nor reclaimed,
//!   and counted.
//! - A false reclaim quarantines its site only; `kal check` records all
//!   stacks unless `--sites off`; `kal report -` reads standard input.
//!
//! Each test was checked to fail with the code it guards broken (the
//! removal on free, the DWARF step, the frame-pointer walk, the context
//! limit, `max_leaks`' lines, the build-id, suppression counting, dynamic
//! symbol lookup, suppression at reclaim, per-site quarantine, `kal
//! check`'s default).

use rmalloc_integration::{self as support, c_dir, Output, TempDir, ALLOCATOR_ENV};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A compiled variant of kal_stacks.c and its library.
struct Build {
    exe: PathBuf,
}

fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kal_stacks")
}

/// Build kal_stacks with `compiler` and `flags` (the library too, without
/// sanitizer flags), into `tag`.
fn build(compiler: &str, tag: &str, flags: &[&str]) -> Result<Build, String> {
    let dir = build_dir().join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let lib = dir.join("libkalstk.so");
    let base = [
        "-g",
        "-O1",
        "-fomit-frame-pointer",
        "-pthread",
        "-Wall",
        "-Werror",
    ];
    let lib_flags: Vec<&str> = flags
        .iter()
        .copied()
        .filter(|f| !f.starts_with("-fsanitize") && *f != "-rdynamic")
        .collect();
    let mut cmd = Command::new(compiler);
    cmd.args(base)
        .args(&lib_flags)
        .args(["-fPIC", "-shared", "-o"])
        .arg(&lib)
        .arg(c_dir().join("kal_stacks_lib.c"));
    run_compiler(&mut cmd)?;
    let exe = dir.join("kal_stacks");
    let mut cmd = Command::new(compiler);
    cmd.args(base)
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(c_dir().join("kal_stacks.c"))
        .arg(format!("-L{}", dir.display()))
        .arg("-lkalstk")
        .arg(format!("-Wl,-rpath,{}", dir.display()));
    run_compiler(&mut cmd)?;
    Ok(Build { exe })
}

fn run_compiler(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

/// The program built with gcc (`cc`) as Debian builds.
fn gcc_build() -> &'static Build {
    static B: OnceLock<Build> = OnceLock::new();
    B.get_or_init(|| {
        let b = build(&support::cc(), "gcc", &[]);
        b.unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The line number of the source line holding `marker`.
fn line_of(file: &str, marker: &str) -> usize {
    let text = std::fs::read_to_string(c_dir().join(file)).expect("read C source");
    text.lines()
        .position(|l| l.contains(&format!("/* {marker} */")))
        .unwrap_or_else(|| panic!("{marker} not in {file}"))
        + 1
}

/// Run `exe` preloaded with KAL options `kal` (plus a log path); returns
/// the run and the report file's text.
fn run_kal(exe: &Path, args: &[&str], kal: &str, env: &[(&str, &str)]) -> (Output, String) {
    let tmp = TempDir::new("kal-stacks");
    let log = tmp.path().join("log");
    let mut cmd = Command::new(exe);
    cmd.args(args);
    for v in ALLOCATOR_ENV {
        cmd.env_remove(v);
    }
    cmd.env("KAL_OPTIONS", format!("{kal}:log_path={}", log.display()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = support::run_preloaded(&mut cmd, TIMEOUT);
    let mut text = String::new();
    for e in std::fs::read_dir(tmp.path())
        .expect("read log dir")
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("log.") {
            text += &std::fs::read_to_string(e.path()).expect("read log");
        }
    }
    assert!(
        out.stdout.contains("stacks: done"),
        "the program did not finish: {}",
        out.describe()
    );
    (out, text)
}

/// `kal report` of a report text.
fn kal_report(text: &str) -> String {
    let tmp = TempDir::new("kal-stacks-report");
    let f = tmp.path().join("report");
    std::fs::write(&f, text).expect("write report");
    let kal = support::workspace_root().join("target/release/kal");
    assert!(
        kal.is_file(),
        "build target/release/kal (cargo build --release -p kal)"
    );
    let out = support::run(Command::new(&kal).arg("report").arg(&f), TIMEOUT);
    out.assert_success();
    // The same from standard input (`kal check ... 2>&1 | kal report -`).
    let piped = support::run_with_input(
        Command::new(&kal).args(["report", "-"]),
        Some(text.as_bytes()),
        TIMEOUT,
    );
    assert_eq!(
        piped.stdout, out.stdout,
        "kal report - reads standard input"
    );
    out.stdout.clone()
}

/// One leak group: its header line and its frame lines (frame number
/// and address removed).
#[derive(Debug, Clone, PartialEq)]
struct Group {
    header: String,
    frames: Vec<String>,
}

/// The groups of the last report in `text`, and its trailing lines (from
/// after the last group to the SUMMARY line, frames excluded).
fn groups(text: &str) -> (Vec<Group>, Vec<String>) {
    let start = text
        .rfind("==ERROR: ")
        .unwrap_or_else(|| panic!("no report in:\n{text}"));
    let mut gs: Vec<Group> = Vec::new();
    let mut tail = Vec::new();
    for l in text[start..].lines().skip(1) {
        if l.contains(" leak of ") && l.ends_with("allocated from:") {
            gs.push(Group {
                header: l.to_string(),
                frames: Vec::new(),
            });
            tail.clear();
        } else if let Some(rest) = l.trim_start().strip_prefix('#') {
            let g = gs.last_mut().expect("frame before any group");
            // "N 0xPC rest" -> "rest" ("N (...)" -> "(...)")
            let mut it = rest.splitn(3, ' ');
            let (_, second, third) = (it.next(), it.next().unwrap_or(""), it.next());
            let rest = if second.starts_with("0x") {
                third.unwrap_or("").trim().to_string()
            } else {
                format!("{second} {}", third.unwrap_or(""))
                    .trim()
                    .to_string()
            };
            g.frames.push(rest);
        } else {
            tail.push(l.to_string());
            if l.starts_with("SUMMARY: ") {
                break;
            }
        }
    }
    (gs, tail)
}

/// The frames of a symbolized group from the allocation site to `main`
/// (LeakSanitizer's and KAL's allocator frames and libc's start-up frames
/// differ in name).
fn program_frames(g: &Group) -> Vec<String> {
    let end = g
        .frames
        .iter()
        .position(|f| f.starts_with("in main "))
        .unwrap_or_else(|| panic!("no `main` frame in {g:?}"));
    g.frames[1..=end].to_vec()
}

#[test]
fn stacks_name_function_and_line_in_executable_and_shared_library() {
    let b = gcc_build();
    let (_, raw) = run_kal(&b.exe, &[], "mode=detect:sites=all", &[]);
    let (raw_groups, _) = groups(&raw);
    assert_eq!(raw_groups.len(), 3, "three stacks, three groups:\n{raw}");
    for g in &raw_groups {
        // LeakSanitizer's unsymbolized frame: `(module+0xoff) (BuildId: hex)`.
        let shaped = |f: &str| {
            let Some((loc, id)) = f.split_once(") (BuildId: ") else {
                return false;
            };
            loc.starts_with('(')
                && loc.contains("+0x")
                && id
                    .strip_suffix(')')
                    .is_some_and(|h| h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit()))
        };
        assert!(
            !g.frames.is_empty() && g.frames.iter().all(|f| shaped(f)),
            "raw frames are `0xPC  (module+0xoff) (BuildId: hex)`: {g:?}"
        );
    }
    let sym = kal_report(&raw);
    let (gs, tail) = groups(&sym);
    let headers: Vec<&str> = gs.iter().map(|g| g.header.as_str()).collect();
    assert_eq!(
        headers,
        [
            "Direct leak of 2040 byte(s) in 1 object(s) allocated from:",
            "Direct leak of 984 byte(s) in 3 object(s) allocated from:",
            "Direct leak of 504 byte(s) in 1 object(s) allocated from:",
        ],
        "{sym}"
    );
    let exe_c = c_dir().join("kal_stacks.c");
    let lib_c = c_dir().join("kal_stacks_lib.c");
    let at =
        |f: &Path, marker: &str, file: &str| format!("{}:{}:", f.display(), line_of(file, marker));
    let want = [
        vec![format!(
            "in exe_leak_a {}",
            at(&exe_c, "KAL_STACKS_EXE_A", "kal_stacks.c")
        )],
        vec![format!(
            "in exe_leak_b {}",
            at(&exe_c, "KAL_STACKS_EXE_B", "kal_stacks.c")
        )],
        vec![
            format!(
                "in lib_leak_inner {}",
                at(&lib_c, "KAL_STACKS_LIB_LINE", "kal_stacks_lib.c")
            ),
            format!("in lib_leak {}", lib_c.display()),
        ],
    ];
    for (g, want) in gs.iter().zip(want) {
        let frames = program_frames(g);
        for (i, w) in want.iter().enumerate() {
            assert!(
                frames[i].starts_with(w.as_str()),
                "frame {} of `{}` should start with `{w}`: {frames:?}\n{sym}",
                i + 1,
                g.header
            );
        }
        assert!(
            frames.last().unwrap().contains("kal_stacks.c:"),
            "{frames:?}"
        );
    }
    assert_eq!(
        tail.last().map(String::as_str),
        Some("SUMMARY: KAL: 3528 byte(s) leaked in 5 allocation(s)."),
        "{sym}"
    );
}

/// `kal check` records every stack by default; `--sites off` turns it off.
#[test]
fn kal_check_records_stacks() {
    let b = gcc_build();
    let kal = support::workspace_root().join("target/release/kal");
    for (args, stacks) in [(&[][..], true), (&["--sites", "off"][..], false)] {
        let mut cmd = Command::new(&kal);
        cmd.arg("check").args(args).arg("--").arg(&b.exe);
        for v in ALLOCATOR_ENV {
            cmd.env_remove(v);
        }
        let out = support::run(&mut cmd, TIMEOUT);
        assert_eq!(out.code(), Some(23), "{}", out.describe());
        let (gs, _) = groups(&out.stderr);
        assert_eq!(gs.len(), 3, "{}", out.describe());
        for g in &gs {
            let recorded = g.frames.iter().all(|f| f.contains("+0x"));
            assert_eq!(recorded, stacks, "{args:?}: {g:?}");
        }
    }
}

#[test]
fn sites_off_says_the_stack_was_not_recorded() {
    let b = gcc_build();
    let (_, raw) = run_kal(&b.exe, &[], "mode=detect:sites=off", &[]);
    let (gs, _) = groups(&raw);
    assert!(!gs.is_empty(), "{raw}");
    for g in &gs {
        assert_eq!(g.frames, ["(allocation stack not recorded)"], "{raw}");
    }
}

/// A chunk recorded, freed, and its address reused by an allocation that
/// is not recorded (sampling) must not keep the old stack.
#[test]
fn a_freed_chunks_stack_is_forgotten() {
    let b = gcc_build();
    // sample:2^40: only each thread's first allocation is recorded.
    let (_, raw) = run_kal(
        &b.exe,
        &["reuse"],
        "mode=detect:sites=sample:1099511627776:leak_check_at_exit=0",
        &[],
    );
    let (gs, _) = groups(&raw);
    let g = gs
        .iter()
        .find(|g| g.header.starts_with("Direct leak of 88 byte(s)"))
        .unwrap_or_else(|| panic!("no 88-byte leak:\n{raw}"));
    assert_eq!(
        g.frames,
        ["(allocation stack not recorded)"],
        "the reused chunk inherited the freed chunk's stack:\n{raw}"
    );
}

/// `sites=sample:N` records about one allocation per N bytes a thread
/// allocates, counted on `malloc`'s fast path too, and reports a sampled
/// block at the size it asked for.  From `sample:65536` up the allocator
/// makes a sampled block too big for the thread cache (so that its `free`
/// can forget the stack); below, it records in place and every `free`
/// goes out of line.  32000 blocks of 64 bytes (80-byte chunks: 2.56 MB),
/// half of them leaked: about 1.28 MB / N leaked blocks recorded.
#[test]
fn sampling_records_about_one_allocation_per_n_bytes() {
    let b = gcc_build();
    for rate in [16384usize, 65536] {
        let (_, raw) = run_kal(
            &b.exe,
            &["sample"],
            &format!("mode=detect:sites=sample:{rate}:leak_check_at_exit=0"),
            &[],
        );
        let (gs, _) = groups(&raw);
        let sym = kal_report(&raw);
        let parse = |h: &str| -> (usize, usize) {
            let n = |s: &str| s.split_whitespace().next().and_then(|w| w.parse().ok());
            let bytes = h.split(" leak of ").nth(1).and_then(n).expect("bytes");
            let objs = h.split(" in ").nth(1).and_then(n).expect("objects");
            (bytes, objs)
        };
        // The unrecorded 64-byte blocks: their usable size per object.
        let plain = gs
            .iter()
            .find(|g| g.frames == ["(allocation stack not recorded)"] && parse(&g.header).1 > 1000)
            .unwrap_or_else(|| panic!("no group of unrecorded 64-byte leaks:\n{raw}"));
        let (pb, po) = parse(&plain.header);
        // The recorded ones: one group, whose stack names sample_leaks.
        let mut hdr = None;
        let mut cur = "";
        for l in sym.lines() {
            if l.contains(" leak of ") && l.ends_with("allocated from:") {
                cur = l;
            } else if l.trim_start().starts_with('#') && l.contains("sample_leaks") {
                hdr = Some(cur);
            }
        }
        let hdr =
            hdr.unwrap_or_else(|| panic!("sample:{rate}: no group from sample_leaks:\n{sym}"));
        let (sb, so) = parse(hdr);
        let expected = 1_280_000 / rate;
        assert!(
            (expected / 2..=expected * 2).contains(&so),
            "sample:{rate}: {so} of 16000 leaked blocks recorded (about {expected} expected)\n{sym}"
        );
        assert_eq!(
            sb / so,
            pb / po,
            "sample:{rate}: a sampled block is reported at another size than an unsampled one\n{sym}"
        );
        assert_eq!(
            po + so,
            16000,
            "sample:{rate}: every leaked block is reported once\n{sym}"
        );
    }
    // A sampled block's chunk beyond what it asked for is cleared: old
    // pointers there would keep leaks alive for the marker.
    let (out, _) = run_kal(
        &b.exe,
        &["sample_tail"],
        "mode=detect:sites=sample:65536:leak_check_at_exit=0",
        &[],
    );
    let line = result_line(&out, "sample_tail:");
    assert!(
        !line.contains("sampled=0 ") && line.ends_with("dirty=0"),
        "{line}"
    );
}

/// The line of the program's output that starts with `prefix`.
#[track_caller]
fn result_line<'a>(out: &'a Output, prefix: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line\n{}", out.describe()))
}

/// A signal handler that allocates and frees (not async-signal-safe, but
/// programs do it) while its thread records or forgets a stack under
/// `sites=all` skips the side table, rather than wait for a lock its own
/// thread holds.
#[test]
fn a_handler_that_allocates_inside_the_side_table_does_not_deadlock() {
    let b = gcc_build();
    let (out, _) = run_kal(
        &b.exe,
        &["signal"],
        "mode=detect:sites=all:leak_check_at_exit=0",
        &[],
    );
    let line = result_line(&out, "signal:");
    assert!(!line.starts_with("signal: 0 "), "{line}");
}

/// KAL's reclaim forgets the stack of the chunk it frees: a chunk later
/// allocated (unrecorded) at the same address and leaked shows no stack,
/// not the reclaimed one's.
#[test]
fn a_reclaimed_chunks_stack_is_forgotten() {
    let b = gcc_build();
    // sample:2^40: only each thread's first allocation is recorded.
    let (out, raw) = run_kal(
        &b.exe,
        &["reclaim_reuse"],
        "mode=reclaim:interval_ms=3600000:confirm_scans=1:min_free_age_ms=0:probation_ms=0:\
         sites=sample:1099511627776",
        &[],
    );
    assert!(
        out.stdout.contains("reclaim_reuse: address reused"),
        "no 88-byte block landed where the reclaimed one was:\n{}",
        out.describe()
    );
    // Each 88-byte group (reclaimed, or left at exit), with its frames.
    let sym = kal_report(&raw);
    let mut stacks: Vec<Vec<String>> = Vec::new();
    let mut in_group = false;
    for l in sym.lines() {
        if l.starts_with("Reclaimed 88 byte(s)") || l.starts_with("Direct leak of 88 byte(s)") {
            stacks.push(Vec::new());
            in_group = true;
        } else if let (true, Some(f)) = (in_group, l.trim_start().strip_prefix('#')) {
            let s = stacks.last_mut().expect("a group");
            s.push(f.split_once(' ').map_or("", |x| x.1).to_string());
        } else {
            in_group = false;
        }
    }
    assert_eq!(stacks.len(), 2, "two 88-byte groups:\n{sym}");
    assert!(
        stacks[0].iter().any(|f| f.contains("leak_first")),
        "the first was recorded:\n{sym}"
    );
    assert_eq!(
        stacks[1],
        ["(allocation stack not recorded)"],
        "the chunk at the reclaimed address inherited its stack:\n{sym}"
    );
}

#[test]
fn fast_unwind_walks_frame_pointers() {
    let b = build(&support::cc(), "gcc-fp", &["-fno-omit-frame-pointer"])
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, raw) = run_kal(
        &b.exe,
        &[],
        "mode=detect:sites=all:fast_unwind_on_malloc=1",
        &[],
    );
    let sym = kal_report(&raw);
    let (gs, _) = groups(&sym);
    let g = gs
        .iter()
        .find(|g| g.header.contains(" 504 byte(s)"))
        .unwrap_or_else(|| panic!("{sym}"));
    let frames = program_frames(g);
    assert!(
        frames[0].starts_with("in lib_leak_inner ") && frames[1].starts_with("in lib_leak "),
        "{frames:?}\n{sym}"
    );
}

#[test]
fn malloc_context_size_limits_frames() {
    let b = gcc_build();
    let (_, raw) = run_kal(
        &b.exe,
        &[],
        "mode=detect:sites=all:malloc_context_size=2",
        &[],
    );
    let (gs, _) = groups(&raw);
    for g in &gs {
        assert_eq!(g.frames.len(), 2, "{raw}");
    }
}

fn suppressions_file(dir: &Path, lines: &str) -> PathBuf {
    let f = dir.join("supp.txt");
    std::fs::write(&f, lines).expect("write suppressions");
    f
}

#[test]
fn suppressed_leaks_are_not_reported_and_are_counted() {
    let b = gcc_build();
    let tmp = TempDir::new("kal-supp");
    // By exported function name (dynamic symbol table) ...
    let f = suppressions_file(tmp.path(), "# comment\nleak:lib_leak_inner\n");
    let (_, raw) = run_kal(
        &b.exe,
        &[],
        &format!("mode=detect:sites=all:suppressions={}", f.display()),
        &[],
    );
    let (gs, tail) = groups(&raw);
    assert!(gs.iter().all(|g| !g.header.contains(" 504 ")), "{raw}");
    assert_eq!(gs.len(), 2, "{raw}");
    let want_block = [
        "-----------------------------------------------------",
        "Suppressions used:",
        "  count      bytes template",
        "      1        504 lib_leak_inner",
        "-----------------------------------------------------",
        "",
        "SUMMARY: KAL: 3024 byte(s) leaked in 4 allocation(s).",
    ];
    assert!(
        tail.ends_with(&want_block.map(String::from)),
        "{tail:#?}\n{raw}"
    );
    // ... and by module, with LeakSanitizer's anchors and wildcard.
    let f = suppressions_file(tmp.path(), "leak:*/libkal*.so$\n");
    let (_, raw) = run_kal(
        &b.exe,
        &[],
        &format!("mode=detect:sites=all:suppressions={}", f.display()),
        &[],
    );
    assert!(raw.contains("      1        504 */libkal*.so$"), "{raw}");
    assert!(!raw.contains("Direct leak of 504"), "{raw}");
}

#[test]
fn default_suppressions_of_the_program_apply() {
    let b = build(
        &support::cc(),
        "gcc-supp",
        &["-DKAL_STACKS_SUPPRESS", "-rdynamic"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (_, raw) = run_kal(&b.exe, &[], "mode=detect:sites=all", &[]);
    assert!(!raw.contains("Direct leak of 504"), "{raw}");
    assert!(raw.contains("      1        504 libkalstk"), "{raw}");
}

#[test]
fn suppressed_leaks_are_never_reclaimed() {
    let b = gcc_build();
    let tmp = TempDir::new("kal-supp-reclaim");
    let f = suppressions_file(tmp.path(), "leak:lib_leak\n");
    let (out, raw) = run_kal(
        &b.exe,
        &["scan"],
        &format!(
            "mode=reclaim:interval_ms=2:max_overhead=0:confirm_scans=1:min_free_age_ms=0:probation_ms=0:\
             sites=all:suppressions={}",
            f.display()
        ),
        &[],
    );
    assert!(
        raw.contains("Reclaimed 2040 byte(s)"),
        "the unsuppressed leaks are reclaimed:\n{raw}"
    );
    assert!(!raw.contains("Reclaimed 504 byte(s)"), "{raw}");
    // The report leaves suppressed chunks out either way: count them.
    assert!(
        out.stderr.contains("KAL reclaimed:       4 chunks"),
        "the 4 unsuppressed leaks and not the suppressed one:\n{}",
        out.describe()
    );
}

/// A false reclaim quarantines its site (size class and stack) only when
/// the stack is known: a leak of the same size from another site is still
/// reclaimed.
#[test]
fn false_reclaim_quarantines_the_site_only() {
    let b = gcc_build();
    let (out, raw) = run_kal(
        &b.exe,
        &["quarantine"],
        "mode=reclaim:interval_ms=60000:confirm_scans=1:min_free_age_ms=0:probation_ms=60000:\
         sites=all",
        &[],
    );
    assert!(
        out.stderr.contains("reclaim of this site is stopped"),
        "the hidden block's false reclaim:\n{}\n{raw}",
        out.describe()
    );
    let reclaimed_200 = raw
        .lines()
        .filter(|l| l.starts_with("Reclaimed 200 byte(s) in 1 object(s)"))
        .count();
    assert_eq!(
        reclaimed_200, 2,
        "site A's block, then site B's block of the same size class:\n{raw}"
    );
}

#[test]
fn bad_suppressions_give_one_line_and_kal_stays_off() {
    let b = gcc_build();
    let tmp = TempDir::new("kal-supp-bad");
    let f = suppressions_file(tmp.path(), "leak:ok\nrace:foo\n");
    for (opts, want) in [
        (
            format!("mode=detect:suppressions={}", f.display()),
            "line 2: expected leak:PATTERN",
        ),
        (
            "mode=detect:suppressions=/nonexistent/x".to_string(),
            "cannot read suppressions",
        ),
        (
            "mode=detect:sites=sometimes".to_string(),
            "bad value 'sometimes' for sites",
        ),
    ] {
        let (out, raw) = run_kal(&b.exe, &[], &opts, &[]);
        let kal: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("KAL:"))
            .collect();
        assert!(
            kal.len() == 1 && kal[0].contains(want) && kal[0].ends_with("KAL stays off"),
            "{opts}: {kal:?}"
        );
        assert!(raw.is_empty(), "KAL stayed off, so no report: {raw}");
    }
}

/// Build with clang -fsanitize=leak, or say why not.
fn lsan_build() -> Result<&'static Build, String> {
    static B: OnceLock<Result<Build, String>> = OnceLock::new();
    B.get_or_init(|| build("clang", "lsan", &["-fsanitize=leak"]))
        .as_ref()
        .map_err(Clone::clone)
}

fn clang_build() -> Result<&'static Build, String> {
    static B: OnceLock<Result<Build, String>> = OnceLock::new();
    B.get_or_init(|| build("clang", "clang", &[]))
        .as_ref()
        .map_err(Clone::clone)
}

/// LeakSanitizer's report of the clang build (symbolized by
/// llvm-symbolizer when it is installed; unsymbolized otherwise).
fn lsan_report(b: &Build, lsan_options: &str) -> String {
    let mut cmd = Command::new(&b.exe);
    for v in ALLOCATOR_ENV {
        cmd.env_remove(v);
    }
    cmd.env(
        "LSAN_OPTIONS",
        format!("fast_unwind_on_malloc=0:{lsan_options}"),
    );
    let out = support::run(&mut cmd, TIMEOUT);
    assert!(out.stdout.contains("stacks: done"), "{}", out.describe());
    out.stderr.clone()
}

/// Compare KAL's symbolized report with LeakSanitizer's, line by line.
fn compare_with_lsan(kal_opts: &str, lsan_opts: &str, supp: Option<&str>) {
    let (lsan, clang) = match (lsan_build(), clang_build()) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("SKIPPED: clang -fsanitize=leak cannot build: {e}");
            return;
        }
    };
    let tmp = TempDir::new("kal-stacks-lsan");
    let (kal_opts, lsan_opts) = match supp {
        Some(lines) => {
            let f = suppressions_file(tmp.path(), lines);
            (
                format!("{kal_opts}:suppressions={}", f.display()),
                format!("{lsan_opts}:suppressions={}", f.display()),
            )
        }
        None => (kal_opts.to_string(), lsan_opts.to_string()),
    };
    let theirs = lsan_report(lsan, &lsan_opts);
    let (_, raw) = run_kal(
        &clang.exe,
        &[],
        &format!("mode=detect:sites=all:{kal_opts}"),
        &[],
    );
    let ours = kal_report(&raw);
    let (tg, ttail) = groups(&theirs);
    let (og, otail) = groups(&ours);
    let heads = |g: &[Group]| g.iter().map(|g| g.header.clone()).collect::<Vec<_>>();
    assert_eq!(
        heads(&og),
        heads(&tg),
        "groups\nKAL:\n{ours}\nLSan:\n{theirs}"
    );
    let symbolized = tg
        .iter()
        .all(|g| g.frames.iter().any(|f| f.starts_with("in main ")));
    for (o, t) in og.iter().zip(&tg) {
        assert_eq!(
            o.frames.len(),
            t.frames.len(),
            "frame count of `{}`\nKAL:\n{ours}\nLSan:\n{theirs}",
            o.header
        );
        // The outermost frame (`_start`, no debug information): a module
        // location with the build-id in both.
        let shape = |f: &str| (f.contains("+0x"), f.contains(") (BuildId: "));
        assert_eq!(
            shape(o.frames.last().unwrap()),
            shape(t.frames.last().unwrap()),
            "last frame of `{}`\nKAL:\n{ours}\nLSan:\n{theirs}",
            o.header
        );
        if symbolized {
            assert_eq!(
                program_frames(o),
                program_frames(t),
                "frames of `{}`\nKAL:\n{ours}\nLSan:\n{theirs}",
                o.header
            );
        }
    }
    let norm = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|l| l.replace("LeakSanitizer", "KAL"))
            .filter(|l| !l.is_empty())
            .collect()
    };
    assert_eq!(
        norm(&otail),
        norm(&ttail),
        "tail\nKAL:\n{ours}\nLSan:\n{theirs}"
    );
    // The lines before the first group: blank, or max_leaks' header.
    let lead = |s: &str| -> Vec<String> {
        let from = s.rfind("==ERROR: ").unwrap();
        s[from..]
            .lines()
            .skip(1)
            .take_while(|l| !l.contains(" leak of "))
            .map(String::from)
            .collect()
    };
    assert_eq!(lead(&ours), lead(&theirs), "lines before the groups");
}

#[test]
fn symbolized_report_matches_leak_sanitizer_line_by_line() {
    compare_with_lsan("", "", None);
}

#[test]
fn max_leaks_matches_leak_sanitizer() {
    compare_with_lsan("max_leaks=2", "max_leaks=2", None);
}

#[test]
fn suppressions_match_leak_sanitizer() {
    compare_with_lsan("", "", Some("leak:lib_leak_inner\n"));
}
