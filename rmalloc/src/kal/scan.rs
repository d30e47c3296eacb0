//! One scan of a frozen image: dissect the heap, mark from every root,
//! classify what stayed unreached, and write it to the result area.
//!
//! Runs in the snapshot child, where the process's memory is a
//! copy-on-write image of the instant the threads were stopped and nothing
//! else runs.  Root ranges are every readable, writable mapping minus the
//! heap, the engine's own memory and the kernel's special pages; a stack
//! mapping that holds a stopped thread's stack pointer is scanned from
//! 128 bytes below it (the red zone) to its end.

use rmalloc_sys as sys;

use super::dissect::{self, Heap, CAND, INDIRECT, MARKED, MMAPPED};
use super::mark::Marker;
use super::mem::{self, MVec};
use super::options::Options;
use super::roots::{self, Mapping};
use super::snapshot::{Discard, Found, Results};
use super::stop::{self, Slot, REG_RSP};

/// Scratch memory of a scan, reused across scans.
pub struct Scratch {
    pub heap: Heap,
    pub marker: Marker,
    pub maps: MVec<u8>,
    pub excluded: MVec<(usize, usize)>,
}

impl Scratch {
    pub const fn new() -> Self {
        Scratch {
            heap: Heap::new(),
            marker: Marker::new(),
            maps: MVec::new(),
            excluded: MVec::new(),
        }
    }
}

/// Scan the frozen image.  `kroots` are the kernel-held pointers read at
/// the instant.
///
/// # Safety
/// Only in the snapshot child: the memory must not change while it runs.
pub unsafe fn run(
    s: &mut Scratch,
    o: &Options,
    kroots: &[u64],
    results: &mut Results,
) -> Result<(), Discard> {
    // CPU time, not wall time: the child runs at background priority, and
    // the mark rate is quoted per core.
    let t0 = sys::task::thread_cpu_ns();
    let slots = stop::slots();
    // SAFETY: frozen image (function contract).
    unsafe {
        dissect::dissect(
            &mut s.heap,
            slots,
            super::registry::frozen(),
            super::reclaim::frozen_probation(),
        )
    }
    .map_err(|e| match e {
        dissect::DissectError::Inconsistent => Discard::Heap,
        dissect::DissectError::NoMemory => Discard::Resources,
    })?;
    roots::read_file(c"/proc/self/maps", &mut s.maps).map_err(|_| Discard::Roots)?;

    // What is not a root: the heap, our own memory.
    s.excluded.clear();
    let mut ok = true;
    for &r in s.heap.ranges.as_slice() {
        ok &= s.excluded.push(r);
    }
    mem::for_each_internal(|a, b| ok &= s.excluded.push((a, b)));
    if !ok {
        return Err(Discard::Resources);
    }
    s.excluded.as_mut_slice().sort_unstable();

    let h = &mut s.heap;
    let m = &mut s.marker;
    m.begin(h);

    if o.use_registers {
        for t in slots.iter().filter(|t| stop::stopped(t)) {
            for &v in t.gregs.iter().chain(t.xmm.iter()) {
                m.root_value(h, v as usize);
            }
            m.root_value(h, t.alt_sp as usize);
        }
    }
    if o.use_tls {
        for t in slots.iter().filter(|t| stop::stopped(t)) {
            m.root_value(h, t.fs as usize);
        }
    }
    for &v in kroots {
        m.root_value(h, v as usize);
    }

    let excluded = s.excluded.as_slice();
    let mut failed = false;
    roots::for_each_mapping(s.maps.as_slice(), |map| {
        if failed || !map.read || !map.write || map.special {
            return;
        }
        let start = match stack_start(slots, &map) {
            Some(_) if !o.use_stacks => return,
            Some(sp) => sp,
            None => map.start,
        };
        if !o.use_globals && stack_start(slots, &map).is_none() && is_file_backed(&s.maps, &map) {
            return;
        }
        // Scan the parts of [start, end) outside the excluded ranges.
        let mut at = start;
        let i0 = excluded.partition_point(|&(_, e)| e <= at);
        for &(a, b) in &excluded[i0..] {
            if a >= map.end {
                break;
            }
            if a > at {
                // SAFETY: part of a readable mapping of the frozen image.
                unsafe { m.root_range(h, at, a.min(map.end)) };
            }
            at = at.max(b);
            if at >= map.end {
                break;
            }
        }
        if at < map.end {
            // SAFETY: as above.
            unsafe { m.root_range(h, at, map.end) };
        }
    });
    if failed {
        return Err(Discard::Roots);
    }
    failed = m.nomem;
    // SAFETY: frozen image.
    unsafe {
        m.drain(h);
        m.classify(h);
    }
    if failed || m.nomem {
        return Err(Discard::Resources);
    }

    let hdr = results.header_mut();
    hdr.chunks = h.chunks.len() as u64;
    hdr.scanned = m.scanned;
    for (i, &(p, size)) in h.chunks.as_slice().iter().enumerate() {
        let f = h.flags.as_slice()[i];
        if f & (CAND | MARKED) == CAND {
            let arena = if f & MMAPPED != 0 {
                0
            } else {
                // SAFETY: an in-use heap chunk of the frozen image.
                unsafe { crate::arena::arena_for_chunk(p as crate::chunk::ChunkPtr) as u64 }
            };
            results.push(Found {
                chunk: p as u64,
                size: size as u64,
                flags: (f & (MMAPPED | INDIRECT)) as u64,
                arena,
            });
        }
    }
    results.header_mut().mark_ns = sys::task::thread_cpu_ns() - t0;
    Ok(())
}

/// If `map` holds a stopped thread's stack pointer, where its live part
/// starts (the lowest such pointer, less the red zone).
fn stack_start(slots: &[Slot], map: &Mapping) -> Option<usize> {
    let mut lo = None::<usize>;
    for t in slots.iter().filter(|t| stop::stopped(t)) {
        let sp = t.gregs[REG_RSP] as usize;
        if map.start <= sp && sp < map.end {
            let s = sp.saturating_sub(128).max(map.start);
            lo = Some(lo.map_or(s, |l| l.min(s)));
        }
    }
    // The scanning thread itself runs on the engine's own stack, which is
    // excluded as internal memory.
    lo
}

fn is_file_backed(maps: &MVec<u8>, map: &Mapping) -> bool {
    for line in maps.as_slice().split(|&b| b == b'\n') {
        if let Some(m) = roots::parse_maps_line(line) {
            if m.start == map.start {
                return line.contains(&b'/');
            }
        }
    }
    false
}
