//! The allocators under comparison, where their libraries are, and a probe
//! that proves each one works and is really the `malloc` a process uses.

use crate::exec::{self, Spec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Allocator {
    pub name: String,
    /// Library to preload; `None` for glibc's own malloc.
    pub lib: Option<PathBuf>,
    /// Debian package that provides it (for the version in the report).
    pub package: Option<&'static str>,
    pub version: String,
    /// `Err(reason)` when it cannot be benchmarked in this run.
    pub usable: Result<(), String>,
    /// Extra environment for every run (`KAL_OPTIONS` for the KAL variants).
    pub env: Vec<(String, String)>,
}

/// Symbol the rmalloc library exports once its KAL engine exists.
pub const KAL_SYMBOL: &str = "rmalloc_kal_stats";
/// KAL's default scan interval (the contract), and the aggressive one measured
/// next to it.
pub const KAL_DEFAULT_INTERVAL_MS: u32 = 2000;
pub const KAL_AGGRESSIVE_INTERVAL_MS: u32 = 100;

/// The rmalloc variants with KAL on (reclaim mode, the mode users deploy to
/// bound a leak): (name, KAL_OPTIONS).
pub fn kal_variants() -> [(String, String); 2] {
    [
        (
            "rmalloc+KAL".to_string(),
            format!("mode=reclaim:interval_ms={KAL_DEFAULT_INTERVAL_MS}"),
        ),
        (
            format!("rmalloc+KAL@{KAL_AGGRESSIVE_INTERVAL_MS}ms"),
            format!("mode=reclaim:interval_ms={KAL_AGGRESSIVE_INTERVAL_MS}:max_overhead=0"),
        ),
    ]
}

/// (name, Debian package, shared object file name)
const PRELOADED: [(&str, &str, &str); 3] = [
    ("jemalloc", "libjemalloc2", "libjemalloc.so.2"),
    ("mimalloc", "libmimalloc2.0", "libmimalloc.so.2"),
    (
        "tcmalloc",
        "libtcmalloc-minimal4",
        "libtcmalloc_minimal.so.4",
    ),
];

/// glibc, the packaged allocators, and rmalloc from `rmalloc_lib`, filtered by
/// `only` (names) when given.  Nothing is probed yet.
pub fn discover(rmalloc_lib: &Path, only: Option<&[String]>) -> Vec<Allocator> {
    let mut all = vec![Allocator {
        name: "glibc".into(),
        lib: None,
        package: Some("libc6"),
        version: String::new(),
        usable: Ok(()),
        env: Vec::new(),
    }];
    for (name, pkg, file) in PRELOADED {
        let lib = find_in_package(pkg, file);
        let usable = match &lib {
            Some(_) => Ok(()),
            None => Err(format!("{file} not found (package {pkg} not installed?)")),
        };
        all.push(Allocator {
            name: name.into(),
            lib,
            package: Some(pkg),
            version: String::new(),
            usable,
            env: Vec::new(),
        });
    }
    let usable = if rmalloc_lib.exists() {
        Ok(())
    } else {
        Err(format!(
            "{} does not exist (run `make lib`)",
            rmalloc_lib.display()
        ))
    };
    let version = git_describe(rmalloc_lib);
    let kal = match &usable {
        Err(why) => Err(why.clone()),
        Ok(()) if !exports(rmalloc_lib, KAL_SYMBOL) => Err(format!(
            "KAL not in this build ({} does not export {KAL_SYMBOL})",
            rmalloc_lib.display()
        )),
        Ok(()) => Ok(()),
    };
    all.push(Allocator {
        name: "rmalloc".into(),
        lib: Some(rmalloc_lib.to_path_buf()),
        package: None,
        version: version.clone(),
        usable,
        env: Vec::new(),
    });
    for (name, options) in kal_variants() {
        all.push(Allocator {
            name,
            lib: Some(rmalloc_lib.to_path_buf()),
            package: None,
            version: format!("{version}, KAL_OPTIONS={options}"),
            usable: kal.clone(),
            env: vec![("KAL_OPTIONS".to_string(), options)],
        });
    }
    for a in &mut all {
        if let Some(pkg) = a.package {
            a.version = package_version(pkg);
        }
    }
    all.retain(|a| match only {
        None => true,
        Some(names) => a.name == "glibc" || names.contains(&a.name),
    });
    all
}

/// The path of `file` as installed by Debian package `pkg` (`dpkg -L`), or the
/// usual multiarch location if dpkg does not know it.
fn find_in_package(pkg: &str, file: &str) -> Option<PathBuf> {
    if let Ok(out) = Command::new("dpkg").args(["-L", pkg]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.ends_with(&format!("/{file}")) && Path::new(line).exists() {
                return Some(PathBuf::from(line));
            }
        }
    }
    let fallback = Path::new("/usr/lib/x86_64-linux-gnu").join(file);
    fallback.exists().then_some(fallback)
}

fn package_version(pkg: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// When the rmalloc library was built, and the commit checked out now.
fn git_describe(lib: &Path) -> String {
    let dir = lib.parent().unwrap_or(Path::new("."));
    let run = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let built = run(Command::new("date")
        .arg("-r")
        .arg(lib)
        .arg("+%Y-%m-%d %H:%M"));
    let head = run(Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(dir));
    format!("built {built}, HEAD {head}")
}

/// Run the probe program under `a`: it must exit 0 and report that `malloc`
/// resolves into the expected library (libc itself for glibc).
pub fn probe(a: &mut Allocator, launcher: &Path, probe_bin: &Path, log_dir: &Path) {
    if a.usable.is_err() {
        return;
    }
    let spec = Spec {
        program: probe_bin.to_path_buf(),
        preload: a.lib.clone(),
        env: a.env.clone(),
        ..Spec::default()
    };
    let log = log_dir.join(format!("probe-{}.stderr", a.name.replace(['+', '@'], "-")));
    let expect = match &a.lib {
        Some(lib) => lib
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        None => "libc.so".to_string(),
    };
    a.usable = match exec::run(&spec, launcher, Duration::from_secs(20), &log) {
        Err(e) => Err(format!("probe could not run: {e}")),
        Ok(o) if !o.status.ok() => Err(format!(
            "probe failed ({}): {}",
            o.status.describe(),
            first_line(&std::fs::read_to_string(&log).unwrap_or_default())
        )),
        Ok(o) if !o.stdout_tail.contains(&expect) => Err(format!(
            "not in use: probe reports {} (expected {expect})",
            o.stdout_tail.trim()
        )),
        Ok(_) if kal_refused(&log).is_some() => Err(format!(
            "KAL refused its options: {}",
            kal_refused(&log).unwrap_or_default()
        )),
        Ok(_) => Ok(()),
    };
}

/// The line in which KAL rejected `KAL_OPTIONS` (it then stays off), if any.
pub fn kal_refused(stderr_log: &Path) -> Option<String> {
    std::fs::read_to_string(stderr_log)
        .ok()?
        .lines()
        .find(|l| l.starts_with("KAL: ") && !l.contains("FALSE RECLAIM"))
        .map(str::to_string)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

/// Whether `lib` exports `symbol` in its dynamic symbol table (`nm -D`).
pub fn exports(lib: &Path, symbol: &str) -> bool {
    Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().last() == Some(symbol))
        })
        .unwrap_or(false)
}
