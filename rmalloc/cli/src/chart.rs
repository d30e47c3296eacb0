//! `kal run --chart FILE.png`: sample the program's RSS and KAL's reclaimed
//! bytes while it runs, then draw RSS over time with reclaim events marked.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::launch::io_msg;
use crate::{stats, Fail};

/// How often the sampler reads /proc and the stats page.
const PERIOD: Duration = Duration::from_millis(100);

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the program started.
    pub t: f64,
    /// VmRSS in bytes.
    pub rss: u64,
    /// Bytes KAL had reclaimed so far (None without a stats page).
    pub reclaimed: Option<u64>,
}

/// The sampling thread of a running program.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut v = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = stats::rss_bytes(pid).filter(|&r| r > 0) {
                    let reclaimed = stats::read(pid).ok().map(|s| s.reclaimed_bytes);
                    v.push(Sample {
                        t: t0.elapsed().as_secs_f64(),
                        rss,
                        reclaimed,
                    });
                }
                std::thread::sleep(PERIOD);
            }
            v
        });
        Sampler { stop, thread }
    }

    /// Stop sampling (call before the child is reaped) and return the samples.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Refuse an unusable chart path before the program runs, not after.
pub fn check_output(path: &Path) -> Result<(), Fail> {
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !png {
        return Err(Fail::new(
            crate::EXIT_USAGE,
            format!(
                "--chart {}: the chart is a PNG file; name it *.png",
                path.display()
            ),
        ));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| {
            Fail::kal(format!(
                "cannot write chart {}: {}",
                path.display(),
                io_msg(&e)
            ))
        })?;
    load_font()?;
    Ok(())
}

fn load_font() -> Result<(), Fail> {
    kal::plot::load_font().map_err(Fail::kal)
}

const MIB: f64 = (1u64 << 20) as f64;

/// Times at which KAL's reclaimed total grew, with the RSS then.
fn reclaim_events(samples: &[Sample]) -> Vec<(f64, f64)> {
    let mut last = 0u64;
    let mut ev = Vec::new();
    for s in samples {
        if let Some(r) = s.reclaimed {
            if r > last {
                ev.push((s.t, s.rss as f64 / MIB));
            }
            last = last.max(r);
        }
    }
    ev
}

/// Draw the chart to `path`: RSS and KAL's reclaimed total over time, with
/// the moments reclaim happened marked.
pub fn draw(path: &Path, title: &str, samples: &[Sample]) -> Result<(), Fail> {
    let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.rss as f64 / MIB)).collect();
    let reclaimed: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.reclaimed.map(|r| (s.t, r as f64 / MIB)))
        .collect();
    let mut series = vec![("RSS (VmRSS)".to_string(), rss)];
    if reclaimed.iter().any(|p| p.1 > 0.0) {
        series.push(("freed by KAL reclaim (total)".to_string(), reclaimed));
    }
    let events = reclaim_events(samples);
    kal::plot::lines_with_markers(
        path,
        title,
        "MiB",
        &series,
        Some(("reclaim event", &events)),
    )
    .map_err(Fail::kal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_where_reclaimed_grows() {
        let s = |t, r| Sample {
            t,
            rss: 1 << 20,
            reclaimed: r,
        };
        let v = [
            s(0.0, None),
            s(0.1, Some(0)),
            s(0.2, Some(5)),
            s(0.3, Some(5)),
            s(0.4, Some(9)),
        ];
        let e = reclaim_events(&v);
        assert_eq!(e.iter().map(|e| e.0).collect::<Vec<_>>(), [0.2, 0.4]);
    }
}
