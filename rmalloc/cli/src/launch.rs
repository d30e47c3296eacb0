//! `kal run` / `kal check`: find librmalloc.so, set LD_PRELOAD and
//! KAL_OPTIONS, run the program and pass its exit status through.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::{chart, Fail, EXIT_CANNOT_RUN, EXIT_NOT_FOUND};

/// The library's file name.
const LIB_NAME: &str = "librmalloc.so";

/// Signals sent to kal that it passes on to the program.  SIGINT and SIGQUIT
/// are not among them: the terminal sends those to the whole foreground
/// process group, so the program gets them anyway; kal ignores them and
/// reports how the program ended.
const FORWARDED: &[i32] = &[libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];

/// An I/O error without Rust's " (os error N)" suffix.
pub fn io_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

/// Characters that would split a KAL_OPTIONS value or an LD_PRELOAD list.
fn has_separator(s: &[u8]) -> bool {
    s.iter()
        .any(|&b| matches!(b, b':' | b',' | b' ' | b'\t' | b'\n'))
}

/// `--log DIR`: create DIR, and return the log_path prefix DIR/kal
/// (absolute, so a program that changes directory still finds it).
pub fn log_prefix(dir: &Path) -> Result<String, Fail> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Fail::kal(format!(
            "cannot create log directory {}: {}",
            dir.display(),
            io_msg(&e)
        ))
    })?;
    let abs = dir.canonicalize().map_err(|e| {
        Fail::kal(format!(
            "cannot use log directory {}: {}",
            dir.display(),
            io_msg(&e)
        ))
    })?;
    let prefix = abs.join("kal");
    let bytes = prefix.as_os_str().as_bytes();
    if has_separator(bytes) {
        return Err(Fail::kal(format!(
            "log directory {} contains ':', ',' or white space, which KAL_OPTIONS cannot carry",
            abs.display()
        )));
    }
    prefix
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| Fail::kal(format!("log directory {} is not UTF-8", abs.display())))
}

/// Where librmalloc.so is: $RMALLOC_LIB if set, else installed beside kal
/// (`<prefix>/bin/kal` and `<prefix>/lib/librmalloc.so`), else the build
/// tree (`target/release/kal` beside `target/release/librmalloc.so`).
pub fn find_library() -> Result<PathBuf, Fail> {
    let chosen = if let Some(p) = std::env::var_os("RMALLOC_LIB").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Fail::kal(format!(
                "RMALLOC_LIB={} is not a file",
                p.display()
            )));
        }
        p
    } else {
        let exe = std::env::current_exe()
            .and_then(|e| e.canonicalize())
            .map_err(|e| Fail::kal(format!("cannot find kal's own executable: {}", io_msg(&e))))?;
        let dir = exe.parent().unwrap_or(Path::new("/"));
        let candidates = [dir.join("../lib").join(LIB_NAME), dir.join(LIB_NAME)];
        match candidates.iter().find(|c| c.is_file()) {
            Some(c) => c.clone(),
            None => {
                return Err(Fail::kal(format!(
                "{LIB_NAME} not found (looked in {} and {}); set RMALLOC_LIB=/path/to/{LIB_NAME}",
                dir.join("../lib").display(),
                dir.display()
            )))
            }
        }
    };
    let abs = chosen
        .canonicalize()
        .map_err(|e| Fail::kal(format!("cannot use {}: {}", chosen.display(), io_msg(&e))))?;
    if has_separator(abs.as_os_str().as_bytes()) {
        return Err(Fail::kal(format!(
            "{} contains ':' or white space, which LD_PRELOAD cannot carry",
            abs.display()
        )));
    }
    Ok(abs)
}

/// Find PROGRAM as the shell would (PATH search when it has no '/'), and
/// refuse what cannot or must not be run.
pub fn resolve_program(prog: &OsStr) -> Result<PathBuf, Fail> {
    let shown = prog.to_string_lossy();
    if prog.is_empty() {
        return Err(Fail::new(EXIT_NOT_FOUND, "empty program name"));
    }
    let path = if prog.as_bytes().contains(&b'/') {
        let p = PathBuf::from(prog);
        if let Err(e) = std::fs::metadata(&p) {
            return Err(Fail::new(
                if e.kind() == std::io::ErrorKind::NotFound {
                    EXIT_NOT_FOUND
                } else {
                    EXIT_CANNOT_RUN
                },
                format!("{shown}: {}", io_msg(&e)),
            ));
        }
        p
    } else {
        let search = std::env::var_os("PATH")
            .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
        let found = std::env::split_paths(&search)
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".").join(prog)
                } else {
                    d.join(prog)
                }
            })
            .find(|c| {
                std::fs::metadata(c)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
        match found {
            Some(p) => p,
            None => {
                return Err(Fail::new(
                    EXIT_NOT_FOUND,
                    format!("{shown}: command not found"),
                ))
            }
        }
    };
    let meta = std::fs::metadata(&path)
        .map_err(|e| Fail::new(EXIT_CANNOT_RUN, format!("{shown}: {}", io_msg(&e))))?;
    if !meta.is_file() {
        return Err(Fail::new(
            EXIT_CANNOT_RUN,
            format!("{shown}: not a regular file"),
        ));
    }
    let mode = meta.permissions().mode();
    if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
        let what = if mode & libc::S_ISUID != 0 {
            "set-user-ID"
        } else {
            "set-group-ID"
        };
        return Err(Fail::new(
            EXIT_CANNOT_RUN,
            format!(
                "refusing to run {}: it is {what}, and a privileged program must not run with a preloaded allocator",
                path.display()
            ),
        ));
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Fail::new(EXIT_CANNOT_RUN, format!("{shown}: bad file name")))?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
        return Err(Fail::new(
            EXIT_CANNOT_RUN,
            format!("{shown}: permission denied"),
        ));
    }
    Ok(path)
}

/// LD_PRELOAD for the program: the library first, then whatever was there.
pub fn preload_value(lib: &Path, existing: Option<&OsStr>) -> OsString {
    let mut v = OsString::from(lib.as_os_str());
    if let Some(old) = existing.filter(|o| !o.is_empty()) {
        let already = old
            .as_bytes()
            .split(|&b| b == b':' || b == b' ')
            .any(|e| e == lib.as_os_str().as_bytes());
        if already {
            return old.to_os_string();
        }
        v.push(":");
        v.push(old);
    }
    v
}

/// KAL_OPTIONS for the program: any the user set, then kal's (the engine
/// takes the last value of a key, so the command line wins).
pub fn kal_options_value(opts: &[(&str, String)], existing: Option<&OsStr>) -> OsString {
    let ours: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut v = OsString::new();
    if let Some(old) = existing.filter(|o| !o.is_empty()) {
        v.push(old);
        v.push(":");
    }
    v.push(ours.join(":"));
    v
}

/// Exit status as a shell reports it: the code, or 128+N for signal N.
fn shell_status(st: std::process::ExitStatus) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 128,
    }
}

/// Wait until the child has exited without reaping it, so its pid stays
/// valid (not reusable) until kal has stopped using it.
fn wait_exited(pid: u32) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting on our own child with a valid siginfo pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Run `command` with the library preloaded and `opts` in KAL_OPTIONS;
/// return the status to exit with.
pub fn launch(
    command: &[OsString],
    opts: &[(&str, String)],
    chart_path: Option<&Path>,
) -> Result<i32, Fail> {
    let (prog, args) = command
        .split_first()
        .ok_or_else(|| Fail::new(crate::EXIT_USAGE, "no program given"))?;
    if let Some(c) = chart_path {
        chart::check_output(c)?;
    }
    let lib = find_library()?;
    let path = resolve_program(prog)?;

    let mut cmd = Command::new(&path);
    cmd.arg0(prog).args(args);
    cmd.env(
        "LD_PRELOAD",
        preload_value(&lib, std::env::var_os("LD_PRELOAD").as_deref()),
    );
    cmd.env(
        "KAL_OPTIONS",
        kal_options_value(opts, std::env::var_os("KAL_OPTIONS").as_deref()),
    );
    // SAFETY: signal() with SIG_DFL is async-signal-safe; it undoes the
    // SIG_IGN kal sets for itself below (ignored signals survive exec).
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    // SAFETY: setting dispositions of kal's own process.
    let (old_int, old_quit) = unsafe {
        (
            libc::signal(libc::SIGINT, libc::SIG_IGN),
            libc::signal(libc::SIGQUIT, libc::SIG_IGN),
        )
    };
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // SAFETY: restoring what was there.
            unsafe {
                libc::signal(libc::SIGINT, old_int);
                libc::signal(libc::SIGQUIT, old_quit);
            }
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            };
            return Err(Fail::new(
                code,
                format!("cannot run {}: {}", prog.to_string_lossy(), io_msg(&e)),
            ));
        }
    };
    let pid = child.id();

    // Pass kal's termination signals on to the program while it lives.
    let live = Arc::new(Mutex::new(pid as libc::pid_t));
    let mut signals = signal_hook::iterator::Signals::new(FORWARDED).ok();
    let handle = signals.as_ref().map(|s| s.handle());
    let forwarder = signals.take().map(|mut s| {
        let live = Arc::clone(&live);
        std::thread::spawn(move || {
            for sig in s.forever() {
                let p = *live.lock().unwrap_or_else(|e| e.into_inner());
                if p > 0 {
                    // SAFETY: our child, not yet reaped (see below).
                    unsafe { libc::kill(p, sig) };
                }
            }
        })
    });

    let sampler = chart_path.map(|_| chart::Sampler::start(pid));
    wait_exited(pid);
    let samples = sampler.map(chart::Sampler::stop);
    *live.lock().unwrap_or_else(|e| e.into_inner()) = 0;
    let status = child
        .wait()
        .map_err(|e| Fail::kal(format!("waiting for the program: {}", io_msg(&e))))?;
    if let Some(h) = handle {
        h.close();
    }
    if let Some(f) = forwarder {
        let _ = f.join();
    }
    let code = shell_status(status);

    if let (Some(c), Some(samples)) = (chart_path, samples) {
        let mode = opts
            .iter()
            .find(|(k, _)| *k == "mode")
            .map_or("detect", |(_, v)| v.as_str());
        let title = format!("kal run --mode {mode} {}", prog.to_string_lossy());
        match chart::draw(c, &title, &samples) {
            Ok(()) => eprintln!("kal: chart written to {}", c.display()),
            Err(f) => {
                eprintln!("kal: {}", f.msg);
                // The program's status matters more, unless it succeeded.
                if code == 0 {
                    return Ok(f.code);
                }
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_keeps_existing_entries() {
        let lib = Path::new("/x/librmalloc.so");
        assert_eq!(preload_value(lib, None), "/x/librmalloc.so");
        assert_eq!(
            preload_value(lib, Some(OsStr::new("/a.so /b.so"))),
            "/x/librmalloc.so:/a.so /b.so"
        );
        assert_eq!(
            preload_value(lib, Some(OsStr::new("/a.so:/x/librmalloc.so"))),
            "/a.so:/x/librmalloc.so"
        );
    }

    #[test]
    fn kal_options_command_line_last() {
        let o = vec![("mode", "detect".to_string()), ("exitcode", "23".into())];
        assert_eq!(kal_options_value(&o, None), "mode=detect:exitcode=23");
        assert_eq!(
            kal_options_value(&o, Some(OsStr::new("verbosity=1"))),
            "verbosity=1:mode=detect:exitcode=23"
        );
    }
}
