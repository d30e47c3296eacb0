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

use super::dissect::{self, Heap, CAND, INDIRECT, MARKED, MMAPPED, TENTATIVE};
use super::mark::Marker;
use super::mem::{self, MVec};
use super::options::Options;
use super::roots::{self, Area};
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

/// Copies of the writable shared mappings taken at the instant: the bytes,
/// and (start, length, offset into the bytes) per mapping.
pub type SharedCopy<'a> = (&'a [u8], &'a [(usize, usize, usize)]);

/// Scan the frozen image.  `kroots` are the kernel-held pointers read at
/// the instant.
///
/// # Safety
/// Only in the snapshot child: the memory must not change while it runs.
pub unsafe fn run(
    s: &mut Scratch,
    o: &Options,
    kroots: &[u64],
    shared: Option<SharedCopy>,
    parent_maps: &[u8],
    results: &mut Results,
) -> Result<(), Discard> {
    let shared_copied = shared.is_some();
    let (shared_copy, shared_index) = shared.unwrap_or((&[], &[]));
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
    roots::read_file(c"/proc/self/smaps", &mut s.maps).map_err(|_| Discard::Roots)?;

    // A mapping the parent had at the instant but this child lacks was
    // marked MADV_DONTFORK: its contents cannot be scanned.
    s.excluded.clear();
    let mut ok = true;
    roots::for_each_mapping(s.maps.as_slice(), |cm| {
        ok &= s.excluded.push((cm.start, cm.end))
    });
    let mine = s.excluded.as_slice(); // sorted: the kernel lists by address
    let mut missing = !ok;
    roots::for_each_mapping(parent_maps, |pm| {
        if missing || !pm.read || pm.special {
            return;
        }
        let i = mine.partition_point(|&(_, e)| e <= pm.start);
        missing |= !(i < mine.len() && mine[i].0 <= pm.start);
    });
    if missing {
        return Err(Discard::Roots);
    }

    // What is not a root: the heap, our own memory.
    s.excluded.clear();
    let mut ok = true;
    for &r in s.heap.ranges.as_slice() {
        ok &= s.excluded.push(r);
    }
    mem::for_each_internal(|a, b| ok &= s.excluded.push((a, b)));
    // The main arena's own state (top, bins, last remainder) points at
    // chunk boundaries, which would keep the chunk below each alive.
    ok &= s.excluded.push(mem::internal_table());
    let ma = crate::arena::main_arena() as usize;
    ok &= s
        .excluded
        .push((ma, ma + core::mem::size_of::<crate::arena::Arena>()));
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
            m.root_value(h, t.sigval as usize);
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
    for v in super::altstacks() {
        m.root_value(h, v);
    }
    // Regions the program registered (`__lsan_register_root_region`), as
    // far as they are mapped.
    // SAFETY: frozen image.
    let (_, regions) = unsafe { super::lsan::frozen() };
    for &(a, b) in regions {
        let (a, b) = ((a + 7) & !7, b & !7);
        if b > a
            // SAFETY: MADV_NORMAL changes nothing; it tells whether the
            // range is mapped.
            && unsafe { sys::madvise((a & !4095) as *mut u8, b - (a & !4095), 0) }.is_ok()
        {
            // SAFETY: mapped (checked) and frozen.
            unsafe { m.root_range(h, a, b) };
        }
    }
    // Shared mappings are not copied on write: their contents were copied
    // at the instant, and the copies are the roots.
    for &(_, len, off) in shared_index {
        let base = shared_copy.as_ptr() as usize + off;
        // SAFETY: [base, base + len) lies inside the copy buffer.
        unsafe { m.root_range(h, base, base + len) };
    }

    let excluded = s.excluded.as_slice();
    let mut failed = false;
    let mut prev = Area::default();
    roots::for_each_area(s.maps.as_slice(), |map| {
        let below = core::mem::replace(&mut prev, map);
        if failed || map.special {
            return;
        }
        // The list was read while this child grew its own tables, which
        // unmaps their old storage: skip what is no longer mapped (only
        // this child changes its address space).
        // SAFETY: MADV_NORMAL changes nothing; it fails with ENOMEM when
        // part of the range is unmapped.
        let gone = unsafe { sys::madvise(map.start as *mut u8, map.end - map.start, 0) };
        if gone == Err(sys::ENOMEM) {
            return;
        }
        if map.shared && map.write && shared_copied {
            return; // scanned from its copy, above
        }
        // A mapping the fork child sees wiped cannot be read as it was.
        if map.wipe_on_fork {
            failed = true;
            return;
        }
        // Anything that can hold a pointer: all anonymous memory, and the
        // file mappings the process wrote to (data, bss, RELRO) or may
        // write to.  Read-only and no-access memory counts too: a program
        // may mprotect its tables after filling them.
        if map.file && !map.write && map.anon_kb == 0 {
            return;
        }
        if !map.read {
            if map.rss_kb == 0 {
                return; // nothing was ever put there
            }
            // This child's copy only: make it readable to scan it.
            // SAFETY: mprotect of a mapping of this (snapshot) process.
            let r =
                unsafe { sys::mprotect(map.start as *mut u8, map.end - map.start, sys::PROT_READ) };
            if r.is_err() {
                failed = true;
                return;
            }
        }
        let stack = stack_start(slots, &map, &below);
        if stack.is_some() && !o.use_stacks {
            return;
        }
        if !o.use_globals && stack.is_none() && map.file {
            return;
        }
        let start = stack.unwrap_or(map.start);
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
                flags: (f & (MMAPPED | INDIRECT | TENTATIVE)) as u64,
                arena,
            });
        }
    }
    results.header_mut().mark_ns = sys::task::thread_cpu_ns() - t0;
    Ok(())
}

/// If `map` is a thread's stack, where its live part starts: 128 bytes
/// (the red zone) below the lowest stack pointer of a stopped thread in it.
/// Only real stacks are trimmed: the main thread's `[stack]`, and a glibc
/// thread stack, recognised by its guard page right below and the thread's
/// own TCB at its top.  A stack the program placed inside its data or
/// inside a larger mapping is scanned whole, since the memory below it is
/// not dead stack.
fn stack_start(slots: &[Slot], map: &Area, below: &Area) -> Option<usize> {
    let mut lo = None::<usize>;
    for t in slots.iter().filter(|t| stop::stopped(t)) {
        let sp = t.gregs[REG_RSP] as usize;
        if !(map.start <= sp && sp < map.end) {
            continue;
        }
        let fs = t.fs as usize;
        let glibc_stack =
            !map.file && below.none && below.end == map.start && sp <= fs && fs < map.end;
        if !(map.main_stack || glibc_stack) {
            return None;
        }
        let s = sp.saturating_sub(128).max(map.start);
        lo = Some(lo.map_or(s, |l| l.min(s)));
    }
    lo
}
