//! `kal stat`: read a process's KAL statistics page,
//! `/dev/shm/kal-<pid>.stats`, without signalling or tracing it.
//!
//! Layout (little-endian): u64 magic "KALSTAT1", u32 version (1), u32 pid,
//! u64 start time (field 22 of /proc/<pid>/stat), u64 sequence (odd while
//! the engine writes), then `struct rmalloc_kal_stats` (rmalloc.h), whose
//! first u64 is its own length.

use std::fs::File;
use std::io::ErrorKind;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

use crate::launch::io_msg;
use crate::{out, Fail};

pub const MAGIC: u64 = u64::from_le_bytes(*b"KALSTAT1");
pub const VERSION: u32 = 1;
const HEADER: usize = 32;
const SEQ_OFFSET: usize = 24;

/// `struct rmalloc_kal_stats`, as far as this kal knows it; fields the
/// library did not fill in (an older library) read as 0.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub size: u64,
    pub mode: u32,
    pub backend: u32,
    pub scans: u64,
    pub scans_discarded: u64,
    pub discarded_stop: u64,
    pub discarded_heap: u64,
    pub discarded_roots: u64,
    pub pause_ns_p50: u64,
    pub pause_ns_p99: u64,
    pub pause_ns_max: u64,
    pub scan_ns_last: u64,
    pub bytes_scanned: u64,
    pub chunks_last: u64,
    pub unreachable_chunks: u64,
    pub unreachable_bytes: u64,
    pub reclaimed_chunks: u64,
    pub reclaimed_bytes: u64,
    pub false_reclaims: u64,
    pub leaks_reported: u64,
    pub cost_ns_last: u64,
    pub cost_ns_total: u64,
    pub interval_ns: u64,
}

/// Bytes of `struct rmalloc_kal_stats` this kal reads.
const STATS_LEN: usize = 176;

impl Stats {
    /// Decode the struct from `b` (which starts at its `size` field).
    fn decode(b: &[u8]) -> Stats {
        let size = u64_at(b, 0);
        let filled = (size as usize).min(b.len()).min(STATS_LEN);
        let u64f = |off: usize| {
            if off + 8 <= filled {
                u64_at(b, off)
            } else {
                0
            }
        };
        let u32f = |off: usize| {
            if off + 4 <= filled {
                u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or_default())
            } else {
                0
            }
        };
        Stats {
            size,
            mode: u32f(8),
            backend: u32f(12),
            scans: u64f(16),
            scans_discarded: u64f(24),
            discarded_stop: u64f(32),
            discarded_heap: u64f(40),
            discarded_roots: u64f(48),
            pause_ns_p50: u64f(56),
            pause_ns_p99: u64f(64),
            pause_ns_max: u64f(72),
            scan_ns_last: u64f(80),
            bytes_scanned: u64f(88),
            chunks_last: u64f(96),
            unreachable_chunks: u64f(104),
            unreachable_bytes: u64f(112),
            reclaimed_chunks: u64f(120),
            reclaimed_bytes: u64f(128),
            false_reclaims: u64f(136),
            leaks_reported: u64f(144),
            cost_ns_last: u64f(152),
            cost_ns_total: u64f(160),
            interval_ns: u64f(168),
        }
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Why a page could not be read.
#[derive(Debug)]
pub enum StatError {
    /// No process with this pid.
    Gone,
    /// The process runs without KAL (no page, or a stale one).
    NoKal(String),
    /// Anything else, with its message.
    Other(String),
}

impl StatError {
    fn into_fail(self, pid: u32) -> Fail {
        match self {
            StatError::Gone => Fail::new(1, format!("no process with PID {pid}")),
            StatError::NoKal(why) => Fail::new(
                1,
                format!(
                    "process {pid} ({}) is not running with KAL: {why}",
                    comm(pid)
                ),
            ),
            StatError::Other(m) => Fail::new(1, m),
        }
    }
}

pub fn page_path(pid: u32) -> String {
    format!("/dev/shm/kal-{pid}.stats")
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks), None when the
/// process is gone.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rfind(')')? + 2;
    s.get(after..)?.split(' ').nth(19)?.parse().ok()
}

/// The command name of a process ("?" if unknown).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// VmRSS of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A consistent copy of the page's stats, validated against the process.
pub fn read(pid: u32) -> Result<Stats, StatError> {
    let start = proc_start_time(pid).ok_or(StatError::Gone)?;
    let path = page_path(pid);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(StatError::NoKal(format!("no {path}")))
        }
        Err(e) => {
            return Err(StatError::Other(format!(
                "cannot open {path}: {}{}",
                io_msg(&e),
                if e.kind() == ErrorKind::PermissionDenied {
                    " (the page is readable by the process's user and root)"
                } else {
                    ""
                }
            )))
        }
    };
    let len = file
        .metadata()
        .map_err(|e| StatError::Other(format!("cannot stat {path}: {}", io_msg(&e))))?
        .len() as usize;
    if len < HEADER + 16 {
        return Err(StatError::Other(format!(
            "{path} is too short ({len} bytes) to be a KAL statistics page"
        )));
    }
    // SAFETY: a read-only shared mapping; the engine writes it concurrently,
    // which the sequence protocol below makes safe to read.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| StatError::Other(format!("cannot map {path}: {}", io_msg(&e))))?;
    let want = len.min(HEADER + STATS_LEN);
    let mut buf = vec![0u8; want];
    let base = map.as_ptr();
    // SAFETY: the mapping is page-aligned and at least HEADER bytes long, so
    // the sequence word is in bounds and 8-byte aligned.
    let seq = unsafe { &*(base.add(SEQ_OFFSET) as *const AtomicU64) };
    let mut tries = 0u32;
    loop {
        let s1 = seq.load(Ordering::Acquire);
        if s1 % 2 == 0 {
            for (i, b) in buf.iter_mut().enumerate() {
                // SAFETY: i < want <= len, inside the mapping.
                *b = unsafe { std::ptr::read_volatile(base.add(i)) };
            }
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == s1 {
                break;
            }
        }
        tries += 1;
        if tries > 2000 {
            return Err(StatError::Other(format!(
                "{path} stayed mid-update for 2 s; the process may have stopped while writing it"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let magic = u64_at(&buf, 0);
    if magic != MAGIC {
        return Err(StatError::Other(format!(
            "{path} is not a KAL statistics page (bad magic {magic:#x})"
        )));
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().unwrap_or_default());
    if version != VERSION {
        return Err(StatError::Other(format!(
            "{path} has layout version {version}; this kal reads version {VERSION}"
        )));
    }
    let page_pid = u32::from_le_bytes(buf[12..16].try_into().unwrap_or_default());
    let page_start = u64_at(&buf, 16);
    if page_pid != pid || page_start != start {
        return Err(StatError::NoKal(format!(
            "{path} is stale (left by an earlier process)"
        )));
    }
    Ok(Stats::decode(&buf[HEADER..]))
}

fn mib(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

/// The text `kal stat` prints for one reading.
pub fn render(pid: u32, s: &Stats, rss: Option<u64>) -> String {
    let mode = match s.mode {
        0 => "off",
        1 => "detect",
        2 => "reclaim",
        _ => "?",
    };
    let backend = match s.backend {
        0 => "none",
        1 => "fork",
        2 => "kernel",
        _ => "?",
    };
    let mut t = String::new();
    t += &format!("pid {pid} ({}): KAL {mode}, {backend} backend\n", comm(pid));
    t += &format!(
        "scans:          {} completed, {} discarded (thread stop {}, heap {}, roots {})\n",
        s.scans, s.scans_discarded, s.discarded_stop, s.discarded_heap, s.discarded_roots
    );
    t += &format!(
        "pause:          p50 {}, p99 {}, max {}\n",
        ms(s.pause_ns_p50),
        ms(s.pause_ns_p99),
        ms(s.pause_ns_max)
    );
    t += &format!(
        "last scan:      {} CPU, {} chunks in use, {} unreachable ({})\n",
        ms(s.scan_ns_last),
        s.chunks_last,
        s.unreachable_chunks,
        mib(s.unreachable_bytes)
    );
    if s.size as usize >= STATS_LEN {
        t += &format!(
            "cost:           last scan {}, all scans {}; next scan {} after the last\n",
            ms(s.cost_ns_last),
            ms(s.cost_ns_total),
            ms(s.interval_ns)
        );
    }
    t += &format!("leaks reported: {} chunks\n", s.leaks_reported);
    t += &format!(
        "reclaimed:      {} chunks, {}\n",
        s.reclaimed_chunks,
        mib(s.reclaimed_bytes)
    );
    t += &format!("false reclaims: {}\n", s.false_reclaims);
    t += &format!(
        "RSS:            {}\n",
        rss.map_or_else(|| "?".to_string(), mib)
    );
    t
}

/// `kal stat [--watch] PID`.
pub fn stat_command(pid: u32, watch: bool) -> Result<i32, Fail> {
    let s = read(pid).map_err(|e| e.into_fail(pid))?;
    out(&render(pid, &s, rss_bytes(pid)))?;
    if !watch {
        return Ok(0);
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        match read(pid) {
            Ok(s) => {
                let text = render(pid, &s, rss_bytes(pid));
                if tty {
                    out(&format!("\x1b[H\x1b[2J{text}"))?;
                } else {
                    out(&format!("\n{text}"))?;
                }
            }
            // The page is unlinked at exit, a little before the process ends.
            Err(StatError::Gone) | Err(StatError::NoKal(_)) => {
                if proc_start_time(pid).is_none() {
                    out(&format!("process {pid} exited\n"))?;
                    return Ok(0);
                }
            }
            Err(e) => return Err(e.into_fail(pid)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_is_kalstat1() {
        assert_eq!(MAGIC, 0x3154_4154_534c_414b);
    }

    #[test]
    fn decode_honours_size() {
        let mut b = vec![0u8; STATS_LEN];
        b[0..8].copy_from_slice(&24u64.to_le_bytes());
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[16..24].copy_from_slice(&7u64.to_le_bytes());
        b[24..32].copy_from_slice(&9u64.to_le_bytes()); // beyond size: ignored
        let s = Stats::decode(&b);
        assert_eq!((s.mode, s.scans, s.scans_discarded), (2, 7, 0));
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(proc_start_time(std::process::id()).is_some());
    }
}
