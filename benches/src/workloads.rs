//! The workloads: C programs compiled here, and real programs with the inputs
//! they need (generated once, under glibc, into the output directory).

use crate::exec;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub what: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Where things are and how big to make them.
pub struct Env<'a> {
    /// The `benches/` directory (sources of the workloads).
    pub src: &'a Path,
    /// Output directory: compiled programs in `bin/`, inputs in `data/`.
    pub out: &'a Path,
    pub quick: bool,
    /// Sizes for the callgrind pass: a fraction of the usual ones.
    pub callgrind: bool,
}

/// The SCALE argument of the workloads that take one.
pub fn scale(env: &Env) -> &'static str {
    match (env.callgrind, env.quick) {
        (true, true) => "0.01",
        (true, false) => "0.03",
        (false, true) => "0.1",
        (false, false) => "1",
    }
}

/// (name, source, threads, description) of the synthetic workloads.
const SYNTHETIC: [(&str, &str, u32, &str); 13] = [
    (
        "small-1t",
        "small",
        1,
        "16-128 B churn, random and LIFO frees",
    ),
    ("small-2t", "small", 2, "same work split over 2 threads"),
    (
        "mixed-1t",
        "mixed",
        1,
        "16 B-8 KiB, some 8-512 KiB, 10% calloc",
    ),
    ("mixed-2t", "mixed", 2, "same work split over 2 threads"),
    (
        "prodcons-2t",
        "prodcons",
        2,
        "one thread allocates, the other frees",
    ),
    (
        "realloc-1t",
        "realloc",
        1,
        "strings +1..64 B, vectors doubling to 4 MiB",
    ),
    ("realloc-2t", "realloc", 2, "same work split over 2 threads"),
    (
        "large-1t",
        "large",
        1,
        "128 KiB-8 MiB blocks, every page touched",
    ),
    ("large-2t", "large", 2, "same work split over 2 threads"),
    (
        "larson-4t",
        "larson",
        4,
        "Larson server: random replace, threads exit, successors free their blocks",
    ),
    (
        "xthread-8t",
        "xthread",
        8,
        "4 producers deal 16 B-2 KiB messages to 4 consumers that free them",
    ),
    (
        "scratch-2t",
        "scratch",
        2,
        "cache-scratch: write small blocks after freeing the main thread's (false sharing)",
    ),
    (
        "sizes-1t",
        "sizes",
        1,
        "cycles through 288 request sizes, 16 B-64 KiB, FIFO window",
    ),
];

/// Helper programs in `bin/` besides the workloads.
pub const PROBE: &str = "probe";
pub const LAUNCH: &str = "launch";

/// Compile the helper programs (the launcher, static when possible, and the
/// probe) into `out/bin`, returning the launcher's path.
pub fn helpers(src: &Path, out: &Path) -> Result<PathBuf, String> {
    let bin = out.join("bin");
    fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let dir = src.join("workloads");
    let launch = bin.join(LAUNCH);
    if compile(&dir.join("launch.c"), &launch, &["-static"]).is_err() {
        compile(&dir.join("launch.c"), &launch, &[])?;
    }
    compile(&dir.join("probe.c"), &bin.join(PROBE), &[])?;
    Ok(launch)
}

/// Compile the C programs and generate the inputs; return every workload
/// (filtered by name when `only` is given).
pub fn prepare(env: &Env, only: Option<&[String]>) -> Result<Vec<Workload>, String> {
    let bin = env.out.join("bin");
    let data = env.out.join("data");
    fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let wanted = |name: &str| only.is_none() || only.is_some_and(|o| o.iter().any(|n| n == name));
    let scale = scale(env);
    let dir = env.src.join("workloads");

    for prog in [
        "small", "mixed", "prodcons", "realloc", "large", "larson", "xthread", "scratch", "sizes",
    ] {
        compile(&dir.join(format!("{prog}.c")), &bin.join(prog), &[])?;
    }
    let mut list = Vec::new();
    for (name, prog, threads, what) in SYNTHETIC {
        if wanted(name) {
            list.push(Workload {
                name: name.into(),
                what,
                program: bin.join(prog),
                args: vec![threads.to_string(), scale.into()],
                env: vec![],
            });
        }
    }

    if wanted("python3") {
        list.push(Workload {
            name: "python3".into(),
            what: "records, JSON, sorting, strings (python_alloc.py)",
            program: system_program("python3")?,
            args: vec![path_arg(&dir.join("python_alloc.py")), scale.into()],
            env: vec![
                ("PYTHONHASHSEED".into(), "0".into()),
                ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ],
        });
    }
    if wanted("perl") {
        list.push(Workload {
            name: "perl".into(),
            what: "tokenize, hash counts, sort, regex (perl_alloc.pl)",
            program: system_program("perl")?,
            args: vec![path_arg(&dir.join("perl_alloc.pl")), scale.into()],
            env: vec![("PERL_HASH_SEED".into(), "0".into())],
        });
    }
    if wanted("sqlite3") {
        let db = sqlite_db(env, &dir, &data)?;
        list.push(Workload {
            name: "sqlite3".into(),
            what: "joins, GROUP BY, sorts, temp tables (sqlite_queries.sql)",
            program: system_program("sqlite3")?,
            args: vec![
                "-readonly".into(),
                path_arg(&db),
                format!(".read {}", path_arg(&dir.join("sqlite_queries.sql"))),
            ],
            env: vec![],
        });
    }
    if wanted("git") {
        let repo = git_repo(env, &dir, &data)?;
        list.push(Workload {
            name: "git".into(),
            what: "`git log -p --stat` over a generated history",
            program: system_program("git")?,
            args: ["-C", &path_arg(&repo), "--no-pager", "log", "-p", "--stat"]
                .map(String::from)
                .to_vec(),
            env: git_env(&data),
        });
    }
    if list.is_empty() {
        return Err("no workload matches BENCH_WORKLOADS".into());
    }
    Ok(list)
}

/// Compile one C source with `cc -O2` (or $CC) unless the binary is newer than
/// it and the shared header.
pub fn compile(src: &Path, out: &Path, extra: &[&str]) -> Result<(), String> {
    let header = src.with_file_name("common.h");
    let newest = [src, header.as_path()]
        .iter()
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
    let built = fs::metadata(out).and_then(|m| m.modified()).ok();
    if let (Some(src_time), Some(bin_time)) = (newest, built) {
        if bin_time > src_time {
            return Ok(());
        }
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    exec::setup(
        Command::new(&cc)
            .args(["-O2", "-Wall", "-pthread"])
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(src)
            .arg("-ldl"),
        &format!("compiling {}", src.display()),
    )
}

/// The distribution's program (not a pyenv/virtualenv shim): /usr/bin first.
fn system_program(name: &str) -> Result<PathBuf, String> {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!("{name} not found (install it: scripts/need-apt)"))
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The generated SQLite database (built once; quick mode uses a smaller one).
fn sqlite_db(env: &Env, dir: &Path, data: &Path) -> Result<PathBuf, String> {
    let (orders, customers) = if env.quick || env.callgrind {
        (20_000, 2_000)
    } else {
        (150_000, 15_000)
    };
    let db = data.join(format!("orders-{orders}.db"));
    if db.exists() {
        return Ok(db);
    }
    let template = fs::read_to_string(dir.join("sqlite_gen.sql")).map_err(|e| e.to_string())?;
    let sql = template
        .replace("{ORDERS}", &orders.to_string())
        .replace("{CUSTOMERS}", &customers.to_string());
    let tmp = data.join("orders.db.tmp");
    let _ = fs::remove_file(&tmp);
    let script = data.join("sqlite_gen.sql");
    fs::write(&script, sql).map_err(|e| e.to_string())?;
    println!("setup: generating {} ...", db.display());
    exec::setup(
        Command::new(system_program("sqlite3")?)
            .arg(&tmp)
            .arg(format!(".read {}", path_arg(&script))),
        "generating the sqlite database",
    )?;
    fs::rename(&tmp, &db).map_err(|e| e.to_string())?;
    Ok(db)
}

/// Isolate git from the user's and the system's configuration.
fn git_env(data: &Path) -> Vec<(String, String)> {
    vec![
        ("HOME".into(), path_arg(data)),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ("GIT_PAGER".into(), "cat".into()),
        ("LC_ALL".into(), "C".into()),
    ]
}

/// The generated git repository (built once with `git fast-import`).
fn git_repo(env: &Env, dir: &Path, data: &Path) -> Result<PathBuf, String> {
    let commits = if env.quick || env.callgrind {
        150
    } else {
        1000
    };
    let repo = data.join(format!("git-{commits}"));
    if repo.join(".git/bench-complete").exists() {
        return Ok(repo);
    }
    let _ = fs::remove_dir_all(&repo);
    println!("setup: generating {} ...", repo.display());
    let git = system_program("git")?;
    exec::setup(
        Command::new(&git)
            .args(["init", "-q", "-b", "main"])
            .arg(&repo)
            .envs(git_env(data)),
        "git init",
    )?;
    let stream = Command::new(system_program("python3")?)
        .arg(dir.join("git_gen.py"))
        .arg(commits.to_string())
        .output()
        .map_err(|e| format!("git_gen.py: {e}"))?;
    if !stream.status.success() {
        return Err(format!(
            "git_gen.py failed: {}",
            String::from_utf8_lossy(&stream.stderr)
        ));
    }
    let stream_file = data.join("git-stream");
    fs::write(&stream_file, &stream.stdout).map_err(|e| e.to_string())?;
    exec::setup(
        Command::new(&git)
            .arg("-C")
            .arg(&repo)
            .args(["fast-import", "--quiet"])
            .stdin(fs::File::open(&stream_file).map_err(|e| e.to_string())?)
            .envs(git_env(data)),
        "git fast-import",
    )?;
    let _ = fs::remove_file(&stream_file);
    fs::write(repo.join(".git/bench-complete"), "").map_err(|e| e.to_string())?;
    Ok(repo)
}
