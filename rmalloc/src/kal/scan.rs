//! One scan of a frozen image: dissect the heap, mark from every root,
//! classify what stayed unreached, and write it to the result area.
//!
//! The image is read through a [`MemView`]: the snapshot child's own
//! memory (`fork`), or a `kal_snapshot` image (`kernel`).  What the engine
//! recorded at the instant itself (registers, kernel-held roots, copies of
//! shared mappings, its own tables) comes in an [`Instant`].  Root ranges
//! are every mapping of the instant that can hold a pointer, minus the
//! heap, the engine's own memory and the kernel's special pages; a stack
//! mapping that holds a stopped thread's stack pointer is scanned from
//! 128 bytes below it (the red zone) to its end.

use rmalloc_sys as sys;

use crate::view::MemView;

use super::dissect::{self, Heap, Tables, CAND, INDIRECT, MARKED, MMAPPED, TENTATIVE};
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
    /// Bounce buffer for memory read in place (kernel backend).
    pub bounce: MVec<u8>,
}

impl Scratch {
    pub const fn new() -> Self {
        Scratch {
            heap: Heap::new(),
            marker: Marker::new(),
            maps: MVec::new(),
            excluded: MVec::new(),
            bounce: MVec::new(),
        }
    }
}

/// Copies of the writable shared mappings taken at the instant: the bytes,
/// and (start, length, offset into the bytes) per mapping.
pub type SharedCopy<'a> = (&'a [u8], &'a [(usize, usize, usize)]);

/// What the engine recorded at the instant, besides the image.
pub struct Instant<'a> {
    /// The stopped threads.
    pub slots: &'a [Slot],
    /// Kernel-held pointers and registered signal stacks.
    pub kroots: &'a [u64],
    /// Copies of the writable shared mappings, if they could all be made.
    pub shared: Option<SharedCopy<'a>>,
    /// `/proc/self/maps` at the instant.
    pub maps: &'a [u8],
    /// The engine's own mappings at the instant: never roots.  (The fork
    /// child adds its own, as they are when the roots are scanned.)
    pub internal: &'a [(usize, usize)],
    pub tables: Tables<'a>,
    /// Regions registered with `__lsan_register_root_region`.
    pub regions: &'a [(usize, usize)],
}

/// Where the image comes from, for what differs between backends.
pub enum Source<'a> {
    /// The fork child's own memory: its mappings are read from its smaps.
    Fork,
    /// A `kal_snapshot` image of these (sorted, disjoint) ranges.
    Kernel { captured: &'a [(usize, usize)] },
}

/// Scan the image `v` shows.
pub fn run<V: MemView>(
    v: &mut V,
    src: &Source,
    s: &mut Scratch,
    o: &Options,
    inst: &Instant,
    results: &mut Results,
) -> Result<(), Discard> {
    let (shared_copy, shared_index) = inst.shared.unwrap_or((&[], &[]));
    // CPU time, not wall time: the mark runs at background priority, and
    // the mark rate is quoted per core.
    let t0 = sys::task::thread_cpu_ns();
    let slots = inst.slots;
    dissect::dissect(v, &mut s.heap, slots, &inst.tables).map_err(|e| match e {
        dissect::DissectError::Inconsistent => Discard::Heap,
        dissect::DissectError::NoMemory => Discard::Resources,
    })?;
    let fork = matches!(src, Source::Fork);
    if fork {
        roots::read_file(c"/proc/self/smaps", &mut s.maps).map_err(|_| Discard::Roots)?;
        if dontfork_missing(s, inst.maps) {
            return Err(Discard::Roots);
        }
    }

    // What is not a root: the heap, our own memory.
    s.excluded.clear();
    let mut ok = true;
    for &r in s.heap.ranges.as_slice() {
        ok &= s.excluded.push(r);
    }
    for &r in inst.internal {
        ok &= s.excluded.push(r);
    }
    if fork {
        // The child's own tables, including what the dissection just grew.
        mem::for_each_internal(|a, b| ok &= s.excluded.push((a, b)));
    }
    // The allocator's and the engine's own state (the main arena's bins
    // and top pointer, the engine's tables) point at chunk boundaries or
    // at the bounds of the engine's mappings: not roots.
    ok &= s.excluded.push(super::own_data());
    ok &= s.excluded.push(mem::internal_table());
    ok &= s.excluded.push(super::scanner::engine_range());
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
            for &r in t.gregs.iter().chain(t.xmm.iter()) {
                m.root_value(h, r as usize);
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
    for &r in inst.kroots {
        m.root_value(h, r as usize);
    }
    // Regions the program registered (`__lsan_register_root_region`), as
    // far as they are mapped.
    for &(a, b) in inst.regions {
        let (a, b) = ((a + 7) & !7, b & !7);
        if b <= a {
            continue;
        }
        let ok = match src {
            Source::Fork => !mapped(a, b) || m.root_range(v, h, a, b),
            // The captured parts from the image.  The rest is shared memory
            // (scanned whole below, from its copy or in place), the engine's
            // own, or nothing.
            Source::Kernel { captured } => {
                let i0 = captured.partition_point(|&(_, e)| e <= a);
                captured[i0..]
                    .iter()
                    .take_while(|&&(s, _)| s < b)
                    .all(|&(s, e)| m.root_range(v, h, s.max(a), e.min(b)))
            }
        };
        if !ok {
            return Err(Discard::Roots);
        }
    }
    // Shared mappings are not copied on write: their contents were copied
    // at the instant, and the copies are the roots.
    for &(_, len, off) in shared_index {
        let bytes = &shared_copy[off..off + len];
        // SAFETY: the copy buffer is page aligned and `off` a multiple of
        // the page size, so the words are aligned; any bits are a usize.
        let w =
            unsafe { core::slice::from_raw_parts(bytes.as_ptr() as *const usize, bytes.len() / 8) };
        m.root_words(h, w);
    }

    let excluded = s.excluded.as_slice();
    let mut failed = false;
    let mut prev = Area::default();
    let text = if fork { s.maps.as_slice() } else { inst.maps };
    roots::for_each_area(text, |mut map| {
        let below = core::mem::replace(&mut prev, map);
        if failed || map.special {
            return;
        }
        if fork {
            // The list was read while this child grew its own tables, which
            // unmaps their old storage: skip what is no longer mapped (only
            // this child changes its address space).
            // SAFETY: MADV_NORMAL changes nothing; it fails with ENOMEM when
            // part of the range is unmapped.
            let gone = unsafe { sys::madvise(map.start as *mut u8, map.end - map.start, 0) };
            if gone == Err(sys::ENOMEM) {
                return;
            }
        } else {
            // The maps text of the instant carries no sizes: assume every
            // mapping holds data, so that none is skipped for being empty.
            map.rss_kb = usize::MAX;
            map.anon_kb = usize::MAX;
        }
        if map.shared && map.write && inst.shared.is_some() {
            return; // scanned from its copy, above
        }
        if map.shared && !fork {
            // Shared mappings are not in a kernel image: read them as they
            // are now, as the fork child does (without a fault: a file
            // mapping may have shrunk meanwhile).
            failed |= !live_roots(m, h, &mut s.bounce, map.start, map.end);
            return;
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
            if fork {
                // This child's copy only: make it readable to scan it.
                // SAFETY: mprotect of a mapping of this (snapshot) process.
                let r = unsafe {
                    sys::mprotect(map.start as *mut u8, map.end - map.start, sys::PROT_READ)
                };
                if r.is_err() {
                    failed = true;
                    return;
                }
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
            if a > at && !m.root_range(v, h, at, a.min(map.end)) {
                failed = true;
                return;
            }
            at = at.max(b);
            if at >= map.end {
                break;
            }
        }
        if at < map.end && !m.root_range(v, h, at, map.end) {
            failed = true;
        }
    });
    if failed {
        return Err(Discard::Roots);
    }
    if m.nomem {
        return Err(Discard::Resources);
    }
    if !m.drain(v, h) || !m.classify(v, h) {
        return Err(Discard::Heap);
    }
    if m.nomem {
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
                arena_of(v, p).ok_or(Discard::Heap)?
            };
            results.push(Found {
                chunk: p as u64,
                size: size as u64,
                flags: (f & (MMAPPED | INDIRECT | TENTATIVE)) as u64,
                arena: arena as u64,
            });
        }
    }
    results.header_mut().mark_ns = sys::task::thread_cpu_ns() - t0;
    Ok(())
}

/// A mapping the parent had at the instant but the fork child lacks was
/// marked MADV_DONTFORK: its contents cannot be scanned.
fn dontfork_missing(s: &mut Scratch, parent_maps: &[u8]) -> bool {
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
    missing
}

/// Mark from `[start, end)` of the process's memory as it is now, read with
/// `copy_from_self` through `buf`: no fault for memory that went away.
fn live_roots(m: &mut Marker, h: &mut Heap, buf: &mut MVec<u8>, start: usize, end: usize) -> bool {
    const PIECE: usize = 64 << 10;
    let short = PIECE.saturating_sub(buf.len());
    if short > 0 && !(buf.reserve(short) && buf.grow_len(short)) {
        return false;
    }
    let mut at = start;
    while at < end {
        let n = PIECE.min(end - at);
        let dst = buf.as_mut_slice().as_mut_ptr();
        // SAFETY: `buf` holds at least PIECE writable bytes.  A mapping
        // without read permission is read as a debugger would.
        let got = unsafe { sys::task::copy_from_self(dst, at, n) }.unwrap_or(0);
        if got != n {
            return false;
        }
        // SAFETY: the buffer is page aligned; any bits are a usize.
        let w = unsafe { core::slice::from_raw_parts(dst as *const usize, n / 8) };
        m.root_words(h, w);
        at += n;
    }
    true
}

/// Is all of `[a, b)` mapped in this (the fork child's) address space?
fn mapped(a: usize, b: usize) -> bool {
    // SAFETY: MADV_NORMAL changes nothing; it fails when part of the range
    // is unmapped.
    unsafe { sys::madvise((a & !4095) as *mut u8, b - (a & !4095), 0) }.is_ok()
}

/// The arena of heap chunk `p`, as the image says.
fn arena_of(v: &mut impl MemView, p: usize) -> Option<usize> {
    let size = v.word(p + core::mem::offset_of!(crate::chunk::Chunk, size))?;
    if size & crate::chunk::NON_MAIN_ARENA == 0 {
        return Some(crate::arena::main_arena() as usize);
    }
    let h = crate::heap::heap_for_ptr(p) as usize;
    v.word(h + core::mem::offset_of!(crate::heap::HeapInfo, ar_ptr))
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
