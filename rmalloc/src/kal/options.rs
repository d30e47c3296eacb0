//! `KAL_OPTIONS`: the engine's settings, parsed once at start-up.
//!
//! The syntax is LeakSanitizer's `LSAN_OPTIONS`: `key=value` pairs separated
//! by `:` (or spaces), with LeakSanitizer's option names wherever the meaning
//! is the same.  Parsing is all-or-nothing: one unknown key or bad value
//! leaves KAL off and says why in one line, so a typo can neither kill nor
//! quietly half-configure a production service.
//!
//! Invariant: [`Options`] is written once, by the start-up constructor,
//! before the scanner thread exists; afterwards it is only read.

use core::fmt::Write;

use crate::fmt::FixedBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Off = 0,
    Detect = 1,
    Reclaim = 2,
}

/// How threads are stopped for the snapshot instant (fork backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMethod {
    /// ptrace where permitted, else the signal handshake.
    Auto,
    Ptrace,
    Signal,
}

/// Which allocations get their stack recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sites {
    Off,
    /// About one allocation per this many bytes allocated (per thread).
    Sample(u64),
    All,
}

/// Most frames kept per stack (`malloc_context_size`).
pub const MAX_CONTEXT: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Auto,
    Fork,
    Kernel,
}

/// Longest `log_path` kept (bytes, without the NUL and the `.<pid>` suffix).
pub const LOG_PATH_MAX: usize = 1000;

#[derive(Clone, Copy)]
pub struct Options {
    pub mode: Mode,
    pub interval_ms: u64,
    /// Share of the program's time that timer-driven scans may cost it
    /// (pause and copy-on-write work), in hundredths of a percent (the
    /// option is written in percent with up to two decimals); the gap
    /// between scans stretches beyond `interval_ms` to keep to it.
    /// 0: no pacing.
    pub max_overhead: u64,
    pub confirm_scans: u32,
    pub min_free_age_ms: u64,
    pub probation_ms: u64,
    pub backend: Backend,
    pub log_path: [u8; LOG_PATH_MAX + 1],
    pub log_path_len: usize,
    pub verbosity: u32,
    pub report_objects: bool,
    pub max_leaks: u64,
    pub use_registers: bool,
    pub use_stacks: bool,
    pub use_tls: bool,
    pub use_globals: bool,
    pub stop: StopMethod,
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
    /// A last scan and full report at exit; unset: in `detect` mode only
    /// (see [`Options::leak_check_at_exit`]).
    pub leak_check_at_exit: Option<bool>,
    /// Scanner at SCHED_IDLE rather than SCHED_BATCH nice 19.
    pub sched_idle: bool,
    /// Exit status when the exit-time check finds leaks (0: unchanged).
    pub exitcode: i32,
    /// A snapshot child still marking after this long is killed (discard).
    pub scan_timeout_ms: u64,
    /// Allocation stacks: off (the default), sampled (`malloc` counts every
    /// request down and records the one that runs the count out; about
    /// 1-2.4% more instructions at the default rate on allocation-bound
    /// programs, see the README) or all.
    pub sites: Sites,
    /// Frames kept per allocation stack (LeakSanitizer's name).
    pub malloc_context_size: u32,
    /// Frame pointers instead of DWARF call-frame information.
    pub fast_unwind_on_malloc: bool,
    /// `suppressions=FILE` (bytes, without NUL; empty: none).
    pub suppressions: [u8; LOG_PATH_MAX + 1],
    pub suppressions_len: usize,
}

impl Options {
    pub const fn defaults() -> Options {
        Options {
            mode: Mode::Off,
            interval_ms: 2000,
            max_overhead: 100,
            confirm_scans: 2,
            min_free_age_ms: 1000,
            probation_ms: 1000,
            backend: Backend::Auto,
            log_path: [0; LOG_PATH_MAX + 1],
            log_path_len: 0,
            verbosity: 0,
            report_objects: false,
            max_leaks: 0,
            use_registers: true,
            use_stacks: true,
            use_tls: true,
            use_globals: true,
            stop: StopMethod::Auto,
            stop_signal: 61,
            stop_timeout_ms: 100,
            leak_check_at_exit: None,
            sched_idle: false,
            exitcode: 0,
            scan_timeout_ms: 30_000,
            sites: Sites::Off,
            malloc_context_size: 30,
            fast_unwind_on_malloc: false,
            suppressions: [0; LOG_PATH_MAX + 1],
            suppressions_len: 0,
        }
    }

    pub fn suppressions(&self) -> Option<&[u8]> {
        (self.suppressions_len > 0).then(|| &self.suppressions[..self.suppressions_len])
    }

    pub fn log_path(&self) -> Option<&[u8]> {
        (self.log_path_len > 0).then(|| &self.log_path[..self.log_path_len])
    }

    /// Whether exit runs a last scan and a full report.  LeakSanitizer's
    /// default (on) in `detect` mode; off in `reclaim` mode, where nothing
    /// is left to free at exit and the scan costs every process, however
    /// short, a few milliseconds (8 ms for `/bin/true` here), unless the
    /// option says otherwise.
    pub fn leak_check_at_exit(&self) -> bool {
        self.leak_check_at_exit.unwrap_or(self.mode == Mode::Detect)
    }

    /// Every root source is on: the only configuration reclaim may use.
    pub fn all_roots(&self) -> bool {
        self.use_registers && self.use_stacks && self.use_tls && self.use_globals
    }
}

/// Why an option string was refused: one line for stderr.
pub type ParseError = FixedBuf<256>;

fn err(args: core::fmt::Arguments) -> ParseError {
    let mut e = ParseError::new();
    let _ = e.write_fmt(args);
    e
}

/// A percentage from 0 to 100 with at most two decimals ("1", "0.25"), in
/// hundredths.
fn hundredths(key: &str, v: &[u8]) -> Result<u64, ParseError> {
    let (int, frac) = match v.iter().position(|&c| c == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    let digits = |d: &[u8]| d.iter().all(u8::is_ascii_digit);
    let ok = !int.is_empty()
        && int.len() <= 3
        && digits(int)
        && frac.len() <= 2
        && digits(frac)
        && (v.len() == int.len() || !frac.is_empty());
    let value = ok.then(|| {
        let whole = int.iter().fold(0u64, |n, &c| n * 10 + (c - b'0') as u64);
        let cents = frac.iter().fold(0u64, |n, &c| n * 10 + (c - b'0') as u64)
            * if frac.len() == 1 { 10 } else { 1 };
        whole * 100 + cents
    });
    match value {
        Some(n) if n <= 10_000 => Ok(n),
        _ => Err(err(format_args!(
            "KAL: bad value '{}' for {key} (expected a percentage from 0 to 100, at most two \
             decimals); KAL stays off",
            Shown(v)
        ))),
    }
}

fn num(key: &str, v: &[u8], min: u64, max: u64) -> Result<u64, ParseError> {
    let s = core::str::from_utf8(v).unwrap_or("");
    match s.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(err(format_args!(
            "KAL: bad value '{}' for {key} (expected a whole number from {min} to {max}); KAL stays off",
            Shown(v)
        ))),
    }
}

fn flag(key: &str, v: &[u8]) -> Result<bool, ParseError> {
    match v {
        b"0" | b"false" => Ok(false),
        b"1" | b"true" => Ok(true),
        _ => Err(err(format_args!(
            "KAL: bad value '{}' for {key} (expected 0 or 1); KAL stays off",
            Shown(v)
        ))),
    }
}

/// Bytes shown in a message, cut short and with non-printing bytes as `?`.
struct Shown<'a>(&'a [u8]);

impl core::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        for &b in self.0.iter().take(64) {
            let c = if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            };
            f.write_char(c)?;
        }
        if self.0.len() > 64 {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Parse a `KAL_OPTIONS` value alone (start-up layers the program's
/// defaults under it with [`parse_into`]).
#[cfg(test)]
pub fn parse(s: &[u8]) -> Result<Options, ParseError> {
    let mut o = Options::defaults();
    parse_into(&mut o, s, false)?;
    check(&o)?;
    Ok(o)
}

/// Apply the settings of `s` to `o`.  With `lenient` (a program's
/// `__lsan_default_options`, written for LeakSanitizer), keys KAL does not
/// know are skipped instead of refused.
pub fn parse_into(o: &mut Options, s: &[u8], lenient: bool) -> Result<(), ParseError> {
    let mut items = s
        .split(|&b| b == b':' || b == b' ' || b == b'\t' || b == b',')
        .peekable();
    while let Some(item) = items.next() {
        if item.is_empty() {
            continue;
        }
        // `sites=sample:N`: the ':' that separates options also separates
        // the rate, so the next item is the rate when it is a bare number.
        if item == b"sites=sample" {
            let n = items.next_if(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit));
            let mut v = [0u8; 40];
            let mut len = 0;
            for &b in b"sample:".iter().chain(n.unwrap_or(b"")) {
                if len < v.len() {
                    v[len] = b;
                    len += 1;
                }
            }
            o.sites = sites(&v[..len])?;
            continue;
        }
        let Some(eq) = item.iter().position(|&b| b == b'=') else {
            return Err(err(format_args!(
                "KAL: option '{}' has no '=value'; KAL stays off",
                Shown(item)
            )));
        };
        let (k, v) = (&item[..eq], &item[eq + 1..]);
        let key = core::str::from_utf8(k).unwrap_or("?");
        match k {
            b"mode" => {
                o.mode = match v {
                    b"off" => Mode::Off,
                    b"detect" => Mode::Detect,
                    b"reclaim" => Mode::Reclaim,
                    _ => {
                        return Err(err(format_args!(
                            "KAL: bad value '{}' for mode (expected off, detect or reclaim); KAL stays off",
                            Shown(v)
                        )))
                    }
                }
            }
            b"backend" => {
                o.backend = match v {
                    b"auto" => Backend::Auto,
                    b"fork" => Backend::Fork,
                    b"kernel" => Backend::Kernel,
                    _ => {
                        return Err(err(format_args!(
                            "KAL: bad value '{}' for backend (expected auto, fork or kernel); KAL stays off",
                            Shown(v)
                        )))
                    }
                }
            }
            b"stop" => {
                o.stop = match v {
                    b"auto" => StopMethod::Auto,
                    b"ptrace" => StopMethod::Ptrace,
                    b"signal" => StopMethod::Signal,
                    _ => {
                        return Err(err(format_args!(
                            "KAL: bad value '{}' for stop (expected auto, ptrace or signal); KAL stays off",
                            Shown(v)
                        )))
                    }
                }
            }
            b"interval_ms" => o.interval_ms = num(key, v, 1, 86_400_000)?,
            b"max_overhead" => o.max_overhead = hundredths(key, v)?,
            b"confirm_scans" => o.confirm_scans = num(key, v, 1, 64)? as u32,
            b"min_free_age_ms" => o.min_free_age_ms = num(key, v, 0, 86_400_000)?,
            b"probation_ms" => o.probation_ms = num(key, v, 0, 86_400_000)?,
            b"verbosity" => o.verbosity = num(key, v, 0, 3)? as u32,
            b"max_leaks" => o.max_leaks = num(key, v, 0, u32::MAX as u64)?,
            b"stop_signal" => o.stop_signal = num(key, v, 1, 64)? as i32,
            b"stop_timeout_ms" => o.stop_timeout_ms = num(key, v, 1, 60_000)?,
            b"report_objects" => o.report_objects = flag(key, v)?,
            b"use_registers" => o.use_registers = flag(key, v)?,
            b"use_stacks" => o.use_stacks = flag(key, v)?,
            b"use_tls" => o.use_tls = flag(key, v)?,
            b"use_globals" => o.use_globals = flag(key, v)?,
            b"leak_check_at_exit" => o.leak_check_at_exit = Some(flag(key, v)?),
            b"sched_idle" => o.sched_idle = flag(key, v)?,
            b"exitcode" => o.exitcode = num(key, v, 0, 255)? as i32,
            b"scan_timeout_ms" => o.scan_timeout_ms = num(key, v, 1, 86_400_000)?,
            b"sites" => o.sites = sites(v)?,
            b"malloc_context_size" => {
                o.malloc_context_size = num(key, v, 1, MAX_CONTEXT as u64)? as u32
            }
            b"fast_unwind_on_malloc" => o.fast_unwind_on_malloc = flag(key, v)?,
            b"suppressions" => {
                if v.is_empty() || v.len() > LOG_PATH_MAX || v.contains(&0) {
                    return Err(err(format_args!(
                        "KAL: bad suppressions path (empty or longer than {LOG_PATH_MAX} bytes); KAL stays off"
                    )));
                }
                o.suppressions[..v.len()].copy_from_slice(v);
                o.suppressions_len = v.len();
            }
            b"log_path" => {
                if v.is_empty() || v.len() > LOG_PATH_MAX || v.contains(&0) {
                    return Err(err(format_args!(
                        "KAL: bad log_path (empty or longer than {LOG_PATH_MAX} bytes); KAL stays off"
                    )));
                }
                o.log_path[..v.len()].copy_from_slice(v);
                o.log_path_len = v.len();
            }
            _ if lenient => {}
            _ => {
                return Err(err(format_args!(
                    "KAL: unknown option '{}'; KAL stays off",
                    Shown(k)
                )))
            }
        }
    }
    Ok(())
}

/// `sites=off|all|sample:N` (N in bytes, 1 to 2^40).
fn sites(v: &[u8]) -> Result<Sites, ParseError> {
    match v {
        b"off" => return Ok(Sites::Off),
        b"all" => return Ok(Sites::All),
        _ => {}
    }
    if let Some(n) = v.strip_prefix(b"sample:") {
        if let Ok(n) = num("sites=sample:N", n, 1, 1 << 40) {
            return Ok(Sites::Sample(n));
        }
    }
    Err(err(format_args!(
        "KAL: bad value '{}' for sites (expected off, all or sample:N with N bytes from 1 to 2^40); KAL stays off",
        Shown(v)
    )))
}

/// Refuse combinations that could not work or would be unsafe.
pub fn check(o: &Options) -> Result<(), ParseError> {
    if matches!(o.stop_signal, 9 | 19) {
        return Err(err(format_args!(
            "KAL: stop_signal cannot be SIGKILL or SIGSTOP; KAL stays off"
        )));
    }
    if o.mode == Mode::Reclaim && !o.all_roots() {
        return Err(err(format_args!(
            "KAL: use_registers/use_stacks/use_tls/use_globals=0 would free live memory in \
             mode=reclaim (allowed with mode=detect only); KAL stays off"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<Options, ParseError>) -> std::string::String {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => std::string::String::from_utf8(e.as_bytes().to_vec()).unwrap(),
        }
    }

    #[test]
    fn defaults_are_off() {
        let o = parse(b"").unwrap();
        assert_eq!(o.mode, Mode::Off);
        assert_eq!(o.confirm_scans, 2);
        assert_eq!(o.interval_ms, 2000);
    }

    #[test]
    fn the_exit_check_is_on_in_detect_mode_only_unless_set() {
        let at_exit = |s: &[u8]| parse(s).unwrap().leak_check_at_exit();
        assert!(at_exit(b"mode=detect"));
        assert!(!at_exit(b"mode=reclaim"));
        assert!(at_exit(b"mode=reclaim:leak_check_at_exit=1"));
        assert!(!at_exit(b"mode=detect:leak_check_at_exit=0"));
        // The later setting wins, whatever the order of the keys.
        assert!(at_exit(b"leak_check_at_exit=1:mode=reclaim"));
    }

    #[test]
    fn lsan_style_list() {
        let o = parse(b"mode=reclaim:interval_ms=5:confirm_scans=3:log_path=/tmp/x:verbosity=1")
            .unwrap();
        assert_eq!(o.mode, Mode::Reclaim);
        assert_eq!(o.interval_ms, 5);
        assert_eq!(o.confirm_scans, 3);
        assert_eq!(o.log_path(), Some(&b"/tmp/x"[..]));
        assert_eq!(o.verbosity, 1);
        let o = parse(b"mode=detect use_stacks=0 report_objects=1").unwrap();
        assert!(!o.use_stacks && o.report_objects);
    }

    #[test]
    fn max_overhead_is_a_percentage_with_two_decimals() {
        assert_eq!(parse(b"").unwrap().max_overhead, 100);
        for (text, hundredths) in [
            (&b"0"[..], 0),
            (b"1", 100),
            (b"0.25", 25),
            (b"0.5", 50),
            (b"2.05", 205),
            (b"100", 10_000),
            (b"100.00", 10_000),
        ] {
            let o = parse(&[&b"max_overhead="[..], text].concat()).unwrap();
            assert_eq!(
                o.max_overhead,
                hundredths,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        for bad in [
            &b""[..],
            b".5",
            b"1.",
            b"0.125",
            b"100.01",
            b"101",
            b"1e2",
            b"-1",
            b"1.2.3",
        ] {
            let r = parse(&[&b"max_overhead="[..], bad].concat());
            assert!(
                msg(r).contains("for max_overhead (expected a percentage"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn stack_options() {
        let o = parse(b"").unwrap();
        assert_eq!(o.sites, Sites::Off);
        assert_eq!(o.malloc_context_size, 30);
        let o = parse(b"sites=all:malloc_context_size=5:fast_unwind_on_malloc=1:suppressions=/x")
            .unwrap();
        assert_eq!(o.sites, Sites::All);
        assert_eq!(o.malloc_context_size, 5);
        assert!(o.fast_unwind_on_malloc);
        assert_eq!(o.suppressions(), Some(&b"/x"[..]));
        assert_eq!(
            parse(b"sites=sample:4096").unwrap().sites,
            Sites::Sample(4096)
        );
        assert_eq!(parse(b"sites=off").unwrap().sites, Sites::Off);
    }

    #[test]
    fn bad_settings_are_refused_with_one_line() {
        assert!(msg(parse(b"mode=on")).contains("bad value 'on' for mode"));
        assert!(msg(parse(b"colour=blue")).contains("unknown option 'colour'"));
        assert!(msg(parse(b"interval_ms=0")).contains("interval_ms"));
        assert!(msg(parse(b"interval_ms=-5")).contains("interval_ms"));
        assert!(msg(parse(b"mode")).contains("no '=value'"));
        assert!(msg(parse(b"mode=reclaim:use_stacks=0")).contains("mode=detect only"));
        assert!(msg(parse(b"stop_signal=9")).contains("SIGKILL"));
        assert!(msg(parse(b"sites=some")).contains("bad value 'some' for sites"));
        assert!(msg(parse(b"sites=sample:0")).contains("for sites"));
        assert!(msg(parse(b"malloc_context_size=0")).contains("malloc_context_size"));
        assert!(msg(parse(b"malloc_context_size=65")).contains("malloc_context_size"));
        for m in [msg(parse(b"mode=x")), msg(parse(b"x=1"))] {
            assert!(m.starts_with("KAL: ") && !m.contains('\n'));
        }
    }
}
