//! The engine's counters: updated by the scanner and the reclaim drain,
//! read by `rmalloc_kal_stats`, `malloc_stats` and `malloc_info`.
//!
//! All plain relaxed atomics: each counter is meaningful on its own, and a
//! reader that sees a scan half-accounted only sees a slightly stale total.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Stats {
    pub scans: AtomicU64,
    pub discarded: AtomicU64,
    pub discarded_stop: AtomicU64,
    pub discarded_heap: AtomicU64,
    pub discarded_roots: AtomicU64,
    pub scan_ns_last: AtomicU64,
    pub bytes_scanned: AtomicU64,
    pub chunks_last: AtomicU64,
    pub unreachable_chunks: AtomicU64,
    pub unreachable_bytes: AtomicU64,
    pub reclaimed_chunks: AtomicU64,
    pub reclaimed_bytes: AtomicU64,
    pub false_reclaims: AtomicU64,
    pub leaks_reported: AtomicU64,
    /// What the last scan cost the program (pause and copy-on-write), ns.
    pub cost_ns_last: AtomicU64,
    pub cost_ns_total: AtomicU64,
    /// The gap from the last scan's end to the next timer-driven one,
    /// after pacing, ns.
    pub interval_ns: AtomicU64,
}

pub static STATS: Stats = Stats {
    scans: AtomicU64::new(0),
    discarded: AtomicU64::new(0),
    discarded_stop: AtomicU64::new(0),
    discarded_heap: AtomicU64::new(0),
    discarded_roots: AtomicU64::new(0),
    scan_ns_last: AtomicU64::new(0),
    bytes_scanned: AtomicU64::new(0),
    chunks_last: AtomicU64::new(0),
    unreachable_chunks: AtomicU64::new(0),
    unreachable_bytes: AtomicU64::new(0),
    reclaimed_chunks: AtomicU64::new(0),
    reclaimed_bytes: AtomicU64::new(0),
    false_reclaims: AtomicU64::new(0),
    leaks_reported: AtomicU64::new(0),
    cost_ns_last: AtomicU64::new(0),
    cost_ns_total: AtomicU64::new(0),
    interval_ns: AtomicU64::new(0),
};

/// Pause samples: a ring of the last 1024, enough for p99.
const PAUSES: usize = 1024;
static PAUSE_RING: [AtomicU64; PAUSES] = [const { AtomicU64::new(0) }; PAUSES];
static PAUSE_N: AtomicU64 = AtomicU64::new(0);
static PAUSE_MAX: AtomicU64 = AtomicU64::new(0);
/// Pause time not yet charged to a scan's cost (see [`take_pause`]).
static PAUSE_UNCHARGED: AtomicU64 = AtomicU64::new(0);

/// The pause time noted since the last call.
pub fn take_pause() -> u64 {
    PAUSE_UNCHARGED.swap(0, Relaxed)
}

pub fn note_pause(ns: u64) {
    PAUSE_UNCHARGED.fetch_add(ns, Relaxed);
    let i = PAUSE_N.fetch_add(1, Relaxed);
    PAUSE_RING[(i as usize) % PAUSES].store(ns, Relaxed);
    PAUSE_MAX.fetch_max(ns, Relaxed);
}

/// (p50, p99, max) of the recorded pauses, in ns.
pub fn pauses() -> (u64, u64, u64) {
    let n = (PAUSE_N.load(Relaxed) as usize).min(PAUSES);
    if n == 0 {
        return (0, 0, 0);
    }
    let mut v = [0u64; PAUSES];
    for (d, s) in v.iter_mut().zip(PAUSE_RING.iter()).take(n) {
        *d = s.load(Relaxed);
    }
    let v = &mut v[..n];
    v.sort_unstable();
    let pct = |p: usize| v[((n - 1) * p).div_ceil(100)];
    (pct(50), pct(99), PAUSE_MAX.load(Relaxed))
}

/// The C view (`struct rmalloc_kal_stats` in rmalloc.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CStats {
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

// rmalloc.h and the `kal` tool's reader (rmalloc/cli/src/stats.rs) spell
// out the same layout: a field added here is added there too.
const _: () = assert!(core::mem::size_of::<CStats>() == 176);

pub fn snapshot(mode: u32, backend: u32) -> CStats {
    let s = &STATS;
    let (p50, p99, max) = pauses();
    CStats {
        size: core::mem::size_of::<CStats>() as u64,
        mode,
        backend,
        scans: s.scans.load(Relaxed),
        scans_discarded: s.discarded.load(Relaxed),
        discarded_stop: s.discarded_stop.load(Relaxed),
        discarded_heap: s.discarded_heap.load(Relaxed),
        discarded_roots: s.discarded_roots.load(Relaxed),
        pause_ns_p50: p50,
        pause_ns_p99: p99,
        pause_ns_max: max,
        scan_ns_last: s.scan_ns_last.load(Relaxed),
        bytes_scanned: s.bytes_scanned.load(Relaxed),
        chunks_last: s.chunks_last.load(Relaxed),
        unreachable_chunks: s.unreachable_chunks.load(Relaxed),
        unreachable_bytes: s.unreachable_bytes.load(Relaxed),
        reclaimed_chunks: s.reclaimed_chunks.load(Relaxed),
        reclaimed_bytes: s.reclaimed_bytes.load(Relaxed),
        false_reclaims: s.false_reclaims.load(Relaxed),
        leaks_reported: s.leaks_reported.load(Relaxed),
        cost_ns_last: s.cost_ns_last.load(Relaxed),
        cost_ns_total: s.cost_ns_total.load(Relaxed),
        interval_ns: s.interval_ns.load(Relaxed),
    }
}

/// Reset after `fork`: the child starts its own history.
pub fn reset() {
    let s = &STATS;
    for c in [
        &s.scans,
        &s.discarded,
        &s.discarded_stop,
        &s.discarded_heap,
        &s.discarded_roots,
        &s.scan_ns_last,
        &s.bytes_scanned,
        &s.chunks_last,
        &s.unreachable_chunks,
        &s.unreachable_bytes,
        &s.reclaimed_chunks,
        &s.reclaimed_bytes,
        &s.false_reclaims,
        &s.leaks_reported,
        &s.cost_ns_last,
        &s.cost_ns_total,
        &s.interval_ns,
    ] {
        c.store(0, Relaxed);
    }
    PAUSE_N.store(0, Relaxed);
    PAUSE_MAX.store(0, Relaxed);
    PAUSE_UNCHARGED.store(0, Relaxed);
}

/// Write the statistics as text (for `malloc_stats`).
pub fn write_text(w: &mut dyn core::fmt::Write, mode: &str) -> core::fmt::Result {
    let c = snapshot(0, 0);
    writeln!(w, "KAL mode:            {mode}")?;
    writeln!(
        w,
        "KAL scans:           {} (discarded {}: stop {}, heap {}, roots {})",
        c.scans, c.scans_discarded, c.discarded_stop, c.discarded_heap, c.discarded_roots
    )?;
    writeln!(
        w,
        "KAL pause ns:        p50 {} p99 {} max {}",
        c.pause_ns_p50, c.pause_ns_p99, c.pause_ns_max
    )?;
    writeln!(
        w,
        "KAL last scan:       {} ns, {} chunks; {} bytes scanned in all",
        c.scan_ns_last, c.chunks_last, c.bytes_scanned
    )?;
    writeln!(
        w,
        "KAL cost:            last scan {} ns, all scans {} ns; {} ms from a scan to the next",
        c.cost_ns_last,
        c.cost_ns_total,
        c.interval_ns / 1_000_000
    )?;
    writeln!(
        w,
        "KAL unreachable:     {} chunks, {} bytes (last scan)",
        c.unreachable_chunks, c.unreachable_bytes
    )?;
    writeln!(
        w,
        "KAL reclaimed:       {} chunks, {} bytes; false reclaims {}",
        c.reclaimed_chunks, c.reclaimed_bytes, c.false_reclaims
    )
}

/// Write the statistics as one XML element (for `malloc_info`).
pub fn write_xml(w: &mut dyn core::fmt::Write, mode: &str) -> core::fmt::Result {
    let c = snapshot(0, 0);
    writeln!(
        w,
        "<kal mode=\"{mode}\" scans=\"{}\" discarded=\"{}\" pause_p50_ns=\"{}\" pause_p99_ns=\"{}\" \
         pause_max_ns=\"{}\" bytes_scanned=\"{}\" unreachable_chunks=\"{}\" unreachable_bytes=\"{}\" \
         reclaimed_chunks=\"{}\" reclaimed_bytes=\"{}\" false_reclaims=\"{}\" cost_ns_total=\"{}\" \
         interval_ns=\"{}\"/>",
        c.scans,
        c.scans_discarded,
        c.pause_ns_p50,
        c.pause_ns_p99,
        c.pause_ns_max,
        c.bytes_scanned,
        c.unreachable_chunks,
        c.unreachable_bytes,
        c.reclaimed_chunks,
        c.reclaimed_bytes,
        c.false_reclaims,
        c.cost_ns_total,
        c.interval_ns
    )
}
