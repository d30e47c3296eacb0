//! `kal`: run programs under rmalloc's KAL leak engine, check them for
//! leaks in CI, watch a running process's live statistics, and chart RSS.
//!
//! Every failure of kal itself is one line on stderr starting with `kal: `
//! and a non-zero status: 2 for a bad command line, 125 for kal's own
//! errors, 126 for a program that cannot be run (or is refused), 127 for a
//! program that does not exist.  Otherwise `run` and `check` exit with the
//! program's status (128+N when a signal N killed it).

mod chart;
mod launch;
mod stats;
mod symbolize;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit status for a bad command line (as clap and most tools use).
pub const EXIT_USAGE: i32 = 2;
/// Exit status for kal's own failures (as `env` and `nice` use).
pub const EXIT_KAL: i32 = 125;
/// The program exists but cannot be run (or kal refuses to).
pub const EXIT_CANNOT_RUN: i32 = 126;
/// The program does not exist.
pub const EXIT_NOT_FOUND: i32 = 127;

/// A failure of kal itself: one line for stderr and an exit status.
#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl Fail {
    pub fn new(code: i32, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
    }
    pub fn kal(msg: impl Into<String>) -> Fail {
        Fail::new(EXIT_KAL, msg)
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "kal",
    version,
    about = "Run programs under rmalloc's KAL leak engine: find and reclaim leaks, check for leaks in CI, watch live statistics",
    after_help = "See kal(1) and the README's KAL section for KAL_OPTIONS."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a program with librmalloc.so preloaded and KAL on
    Run(RunArgs),
    /// Run a program once in detect mode; exit 23 (--exitcode) if it leaked
    Check(CheckArgs),
    /// Show a running process's live KAL statistics
    Stat(StatArgs),
    /// Print KAL leak reports with their stacks symbolized (function file:line)
    Report(ReportArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Report leaks
    Detect,
    /// Report leaks and free them
    Reclaim,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// fork today; the kernel snapshot once it is driven
    Auto,
    /// fork-based snapshots (any kernel)
    Fork,
    /// the patched kernel's kal_snapshot system call
    Kernel,
}

/// Options shared by `run` and `check`.
#[derive(Args, Debug)]
struct EngineArgs {
    /// Time between scans, e.g. 2s, 500ms, 1m
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    interval: Option<Duration>,
    /// Write reports to DIR/kal.<pid> instead of stderr (DIR is created)
    #[arg(long, value_name = "DIR")]
    log: Option<PathBuf>,
    /// Snapshot backend
    #[arg(long, value_enum, value_name = "BACKEND")]
    backend: Option<Backend>,
    /// Allocation stacks: off, all, or sample:N (about one allocation per
    /// N bytes). Default: off for run, all for check
    #[arg(long, value_name = "off|all|sample:N", value_parser = parse_sites)]
    sites: Option<String>,
    /// Percent of the program's time scans may cost it (up to two
    /// decimals; 0: scan every interval whatever it costs). Default: 1
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    max_overhead: Option<String>,
}

/// `--max-overhead`: as the library's `max_overhead=` option, a percentage
/// from 0 to 100 with at most two decimals.
fn parse_percent(s: &str) -> Result<String, String> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|c| c.is_ascii_digit());
    let ok = (1..=3).contains(&int.len())
        && digits(int)
        && frac.len() <= 2
        && digits(frac)
        && (s.len() == int.len() || !frac.is_empty())
        && s.parse::<f64>().is_ok_and(|v| v <= 100.0);
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected a percentage from 0 to 100 with at most two decimals".to_string())
    }
}

/// `--sites`: as the library's `sites=` option.
fn parse_sites(s: &str) -> Result<String, String> {
    let ok = match s {
        "off" | "all" => true,
        _ => s
            .strip_prefix("sample:")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| (1..=1u64 << 40).contains(&n)),
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected off, all or sample:N (N bytes, 1 to 2^40)".to_string())
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// detect: report leaks; reclaim: also free them
    #[arg(long, value_enum, default_value = "detect")]
    mode: Mode,
    #[command(flatten)]
    engine: EngineArgs,
    /// Sample the program's RSS every ~100 ms and draw it to this PNG at exit
    #[arg(long, value_name = "FILE.png")]
    chart: Option<PathBuf>,
    /// The program to run and its arguments (after `--`)
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Exit status when the exit-time check finds leaks
    #[arg(long, value_name = "N", default_value_t = 23,
          value_parser = clap::value_parser!(u8).range(1..))]
    exitcode: u8,
    #[command(flatten)]
    engine: EngineArgs,
    /// The program to run and its arguments (after `--`)
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct StatArgs {
    /// Refresh every second until the process exits
    #[arg(long, short)]
    watch: bool,
    /// Process ID of a program running with KAL
    #[arg(value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pid: u32,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Report files (log_path.<pid>) to print; - reads standard input
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// `--interval`: a duration with a unit (humantime syntax), at least 1 ms.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".to_string());
    }
    if d.as_millis() > u128::from(u32::MAX) {
        return Err("is too long".to_string());
    }
    Ok(d)
}

impl EngineArgs {
    /// KAL_OPTIONS settings for these flags.
    fn options(&self) -> Result<Vec<(&'static str, String)>, Fail> {
        let mut o = Vec::new();
        if let Some(d) = self.interval {
            o.push(("interval_ms", d.as_millis().to_string()));
        }
        if let Some(p) = &self.max_overhead {
            o.push(("max_overhead", p.clone()));
        }
        if let Some(dir) = &self.log {
            o.push(("log_path", launch::log_prefix(dir)?));
        }
        if let Some(b) = self.backend {
            let b = match b {
                Backend::Auto => "auto",
                Backend::Fork => "fork",
                Backend::Kernel => "kernel",
            };
            o.push(("backend", b.to_string()));
        }
        if let Some(sites) = &self.sites {
            o.push(("sites", sites.clone()));
        }
        Ok(o)
    }
}

/// Turn a clap error into one line (help and version are printed whole).
fn usage_error(err: clap::Error, argv: &[OsString]) -> Fail {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            std::process::exit(0);
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            return Fail::new(
                EXIT_USAGE,
                "missing command: run, check, stat or report (see 'kal --help')",
            );
        }
        _ => {}
    }
    let text = err.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let msg = first.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    let sub = argv
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| ["run", "check", "stat", "report"].contains(a));
    let help = match sub {
        Some(s) => format!("kal {s} --help"),
        None => "kal --help".to_string(),
    };
    Fail::new(EXIT_USAGE, format!("{msg} (see '{help}')"))
}

/// Write to stdout; a closed pipe ends kal quietly instead of panicking.
pub fn out(s: &str) -> Result<(), Fail> {
    let mut o = std::io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(Fail::kal(format!("cannot write to standard output: {e}"))),
    }
}

fn real_main() -> Result<i32, Fail> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::try_parse_from(&argv).map_err(|e| usage_error(e, &argv))?;
    match cli.command {
        Cmd::Run(a) => {
            let mut opts = vec![(
                "mode",
                match a.mode {
                    Mode::Detect => "detect",
                    Mode::Reclaim => "reclaim",
                }
                .to_string(),
            )];
            opts.extend(a.engine.options()?);
            launch::launch(&a.command, &opts, a.chart.as_deref())
        }
        Cmd::Check(a) => {
            let mut opts = vec![
                ("mode", "detect".to_string()),
                ("leak_check_at_exit", "1".to_string()),
                ("exitcode", a.exitcode.to_string()),
                ("sites", "all".to_string()),
            ];
            opts.extend(a.engine.options()?);
            launch::launch(&a.command, &opts, None)
        }
        Cmd::Stat(a) => stats::stat_command(a.pid, a.watch),
        Cmd::Report(a) => report(&a.files),
    }
}

/// `kal report`: the reports with their raw frames symbolized.
fn report(files: &[PathBuf]) -> Result<i32, Fail> {
    let mut status = 0;
    let mut sym = symbolize::Symbolizer::default();
    for (i, f) in files.iter().enumerate() {
        let read = if f.as_os_str() == "-" {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map(|_| b)
        } else {
            std::fs::read(f)
        };
        match read {
            Ok(bytes) => {
                if files.len() > 1 {
                    out(&format!(
                        "{}==> {} <==\n",
                        if i > 0 { "\n" } else { "" },
                        f.display()
                    ))?;
                }
                out(&sym.text(&String::from_utf8_lossy(&bytes)))?;
            }
            Err(e) => {
                eprintln!("kal: cannot read {}: {}", f.display(), launch::io_msg(&e));
                status = 1;
            }
        }
    }
    Ok(status)
}

fn main() {
    let code = match real_main() {
        Ok(code) => code,
        Err(f) => {
            eprintln!("kal: {}", f.msg);
            f.code
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_overhead_flag_takes_what_the_library_takes() {
        for ok in ["0", "1", "0.25", "0.5", "2.05", "100", "100.00"] {
            assert_eq!(parse_percent(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "", ".5", "1.", "0.125", "100.01", "101", "1e2", "-1", "1.2.3", " 1",
        ] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }
}
