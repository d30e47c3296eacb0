//! Heap statistics in glibc's shapes: `mallinfo`/`mallinfo2`,
//! `malloc_stats` (text on stderr), `malloc_info` (XML), and the optional
//! exit line requested with `RMALLOC_EXIT_STATS`.
//!
//! Each arena is summarised under its lock into a [`ArenaInfo`]; output is
//! written only after the lock is released, because writing to a stdio
//! stream may allocate.

use core::fmt::Write;
use core::sync::atomic::Ordering;

use crate::arena::{self, Arena};
use crate::bins::{NBINS, NFASTBINS};
use crate::chunk::{self, reveal_ptr, ChunkPtr};
use crate::fmt::{Out, Sink};
use crate::heap;
use crate::init;
use crate::mmap_chunk::{MAX_MMAPPED_MEM, MAX_N_MMAPS, MMAPPED_MEM, N_MMAPS};

#[derive(Clone, Copy, Default)]
pub(crate) struct SizeClass {
    pub from: usize,
    pub to: usize,
    pub total: usize,
    pub count: usize,
}

/// One arena's numbers, gathered under its lock.
#[derive(Clone, Copy)]
pub(crate) struct ArenaInfo {
    pub system_mem: usize,
    pub max_system_mem: usize,
    pub nfast: usize,
    pub fastavail: usize,
    /// Free chunks in bins (not counting top).
    pub nblocks: usize,
    pub binavail: usize,
    /// The same, summing raw size fields (what `malloc_info` prints).
    pub binraw: usize,
    pub top_size: usize,
    pub is_main: bool,
    pub heap_size: usize,
    pub heap_mprotect: usize,
    pub heap_count: usize,
    /// Fastbins first, then bins 1..NBINS (index NFASTBINS is unsorted).
    pub sizes: [SizeClass; NFASTBINS + NBINS - 1],
}

/// Summarise `a`.  Caller holds its lock.
///
/// # Safety
/// For `arena_info`, `a` is an initialised arena whose lock the caller
/// holds; for `malloc_info`, `fp` is a valid open `FILE`.
pub(crate) unsafe fn arena_info(a: *mut Arena) -> ArenaInfo {
    // SAFETY: the caller upholds the contract under `# Safety`.
    unsafe {
        let mut info = ArenaInfo {
            system_mem: (*a).system_mem(),
            max_system_mem: (*a).max_system_mem,
            nfast: 0,
            fastavail: 0,
            nblocks: 0,
            binavail: 0,
            binraw: 0,
            top_size: chunk::size((*a).top),
            is_main: (*a).is_main(),
            heap_size: 0,
            heap_mprotect: 0,
            heap_count: 0,
            sizes: [SizeClass::default(); NFASTBINS + NBINS - 1],
        };
        for i in 0..NFASTBINS {
            let mut p: ChunkPtr = (*a).fastbins[i].load(core::sync::atomic::Ordering::Acquire);
            let mut size = 0;
            let mut count = 0;
            while !p.is_null() {
                if !chunk::aligned_ok(p as usize) {
                    break;
                }
                size = chunk::size(p);
                count += 1;
                p = reveal_ptr(
                    core::ptr::addr_of!((*p).fd) as *const u8,
                    (*p).fd as *mut u8,
                ) as ChunkPtr;
            }
            info.sizes[i] = SizeClass {
                from: size.saturating_sub(chunk::ALIGN - 1),
                to: size,
                total: count * size,
                count,
            };
            info.nfast += count;
            info.fastavail += count * size;
        }
        for i in 1..NBINS {
            let bin = (*a).bin_at(i);
            let mut p = (*bin).fd;
            let mut sc = SizeClass {
                from: usize::MAX,
                ..Default::default()
            };
            while p != bin {
                // malloc_info reports the raw size field, flag bits included,
                // as glibc does; mallinfo counts plain sizes.
                let s = chunk::size_nomask(p);
                sc.count += 1;
                sc.total += s;
                sc.from = sc.from.min(s);
                sc.to = sc.to.max(s);
                info.binavail += chunk::size(p);
                p = (*p).fd;
            }
            if sc.count == 0 {
                sc.from = 0;
            }
            info.nblocks += sc.count;
            info.binraw += sc.total;
            info.sizes[NFASTBINS - 1 + i] = sc;
        }
        if !info.is_main {
            let mut h = heap::heap_for_ptr((*a).top as usize);
            while !h.is_null() {
                info.heap_size += (*h).size;
                info.heap_mprotect += (*h).mprotect_size;
                info.heap_count += 1;
                h = (*h).prev;
            }
        }
        info
    }
}

fn for_each_info(mut f: impl FnMut(&ArenaInfo)) {
    init::ensure();
    arena::for_each_arena(|a| {
        // SAFETY: arenas live forever; the lock is held while reading.
        let info = unsafe {
            let held = (*a).lock();
            let i = arena_info(a);
            (*a).unlock(held);
            i
        };
        f(&info);
    });
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Mallinfo2 {
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    pub uordblks: usize,
    pub fordblks: usize,
    pub keepcost: usize,
}

/// glibc's legacy `struct mallinfo` (fields truncated to `int`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Mallinfo {
    pub arena: i32,
    pub ordblks: i32,
    pub smblks: i32,
    pub hblks: i32,
    pub hblkhd: i32,
    pub usmblks: i32,
    pub fsmblks: i32,
    pub uordblks: i32,
    pub fordblks: i32,
    pub keepcost: i32,
}

pub fn mallinfo2() -> Mallinfo2 {
    let mut m = Mallinfo2::default();
    for_each_info(|i| {
        let avail = i.top_size + i.fastavail + i.binavail;
        m.smblks += i.nfast;
        m.ordblks += i.nblocks + 1;
        m.fordblks += avail;
        m.uordblks += i.system_mem - avail;
        m.arena += i.system_mem;
        m.fsmblks += i.fastavail;
        if i.is_main {
            m.keepcost = i.top_size;
        }
    });
    m.hblks = N_MMAPS.load(Ordering::Relaxed);
    m.hblkhd = MMAPPED_MEM.load(Ordering::Relaxed);
    m
}

pub fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    Mallinfo {
        arena: m.arena as i32,
        ordblks: m.ordblks as i32,
        smblks: m.smblks as i32,
        hblks: m.hblks as i32,
        hblkhd: m.hblkhd as i32,
        usmblks: m.usmblks as i32,
        fsmblks: m.fsmblks as i32,
        uordblks: m.uordblks as i32,
        fordblks: m.fordblks as i32,
        keepcost: m.keepcost as i32,
    }
}

extern "C" {
    static stderr: *mut libc::FILE;
}

/// `malloc_stats`: per-arena and total figures on the `stderr` stream (so a
/// program that reopens or replaces `stderr` sees them where glibc's go).
pub fn malloc_stats() {
    // SAFETY: libc's `stderr` is initialised before any user code runs.
    let err = unsafe { stderr };
    let mut out = Out::<1024>::new(if err.is_null() {
        Sink::Fd(2)
    } else {
        Sink::File(err)
    });
    let (mut system, mut in_use) = (0usize, 0usize);
    let mut n = 0;
    for_each_info(|i| {
        let avail = i.top_size + i.fastavail + i.binavail;
        let used = i.system_mem - avail;
        let _ = write!(
            out,
            "Arena {}:\nsystem bytes     = {:>10}\nin use bytes     = {:>10}\n",
            n, i.system_mem as u32, used as u32
        );
        system += i.system_mem;
        in_use += used;
        n += 1;
    });
    let mm = MMAPPED_MEM.load(Ordering::Relaxed);
    let _ = write!(
        out,
        "Total (incl. mmap):\nsystem bytes     = {:>10}\nin use bytes     = {:>10}\nmax mmap regions = {:>10}\nmax mmap bytes   = {:>10}\n",
        (system + mm) as u32,
        (in_use + mm) as u32,
        MAX_N_MMAPS.load(Ordering::Relaxed) as u32,
        MAX_MMAPPED_MEM.load(Ordering::Relaxed)
    );
    // Only with KAL on, so the KAL-off output stays byte-identical to glibc's.
    if crate::kal::mode() != crate::kal::options::Mode::Off {
        let _ = crate::kal::stats::write_text(&mut out, crate::kal::mode_name());
    }
}

/// `malloc_info(0, fp)`: glibc's XML description of every arena; any
/// other `options` value is refused with `EINVAL` (returned, as glibc).
///
/// # Safety
/// `fp` must be an open stdio stream.
pub unsafe fn malloc_info(options: i32, fp: *mut libc::FILE) -> i32 {
    if options != 0 {
        // glibc returns the error number itself and leaves errno alone.
        return libc::EINVAL;
    }
    let mut out = Out::<2048>::new(Sink::File(fp));
    let _ = out.write_str("<malloc version=\"1\">\n");
    // Like glibc, emit the header before looking at the arenas: a stream's
    // first write allocates its buffer, and that allocation belongs in the
    // picture.
    out.flush();
    let (mut tf, mut tfs, mut tn, mut ta, mut ts, mut tms, mut tsp, mut tmp) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    let mut n = 0;
    for_each_info(|i| {
        let _ = write!(out, "<heap nr=\"{}\">\n<sizes>\n", n);
        n += 1;
        for (k, s) in i.sizes.iter().enumerate() {
            if s.count != 0 && k != NFASTBINS {
                let _ = writeln!(
                    out,
                    "  <size from=\"{}\" to=\"{}\" total=\"{}\" count=\"{}\"/>",
                    s.from, s.to, s.total, s.count
                );
            }
        }
        let u = &i.sizes[NFASTBINS];
        if u.count != 0 {
            let _ = writeln!(
                out,
                "  <unsorted from=\"{}\" to=\"{}\" total=\"{}\" count=\"{}\"/>",
                u.from, u.to, u.total, u.count
            );
        }
        let _ = write!(
        out,
        "</sizes>\n<total type=\"fast\" count=\"{}\" size=\"{}\"/>\n<total type=\"rest\" count=\"{}\" size=\"{}\"/>\n<system type=\"current\" size=\"{}\"/>\n<system type=\"max\" size=\"{}\"/>\n",
        i.nfast, i.fastavail, i.nblocks + 1, i.binraw + i.top_size, i.system_mem, i.max_system_mem
    );
        if i.is_main {
            let _ = write!(
                out,
                "<aspace type=\"total\" size=\"{}\"/>\n<aspace type=\"mprotect\" size=\"{}\"/>\n",
                i.system_mem, i.system_mem
            );
            tsp += i.system_mem;
            tmp += i.system_mem;
        } else {
            let _ = write!(
            out,
            "<aspace type=\"total\" size=\"{}\"/>\n<aspace type=\"mprotect\" size=\"{}\"/>\n<aspace type=\"subheaps\" size=\"{}\"/>\n",
            i.heap_size, i.heap_mprotect, i.heap_count
        );
            tsp += i.heap_size;
            tmp += i.heap_mprotect;
        }
        let _ = out.write_str("</heap>\n");
        tf += i.nfast;
        tfs += i.fastavail;
        // "rest" includes the top chunk, which always exists.
        tn += i.nblocks + 1;
        ta += i.binraw + i.top_size;
        ts += i.system_mem;
        tms += i.max_system_mem;
    });
    let _ = write!(
    out,
    "<total type=\"fast\" count=\"{}\" size=\"{}\"/>\n<total type=\"rest\" count=\"{}\" size=\"{}\"/>\n<total type=\"mmap\" count=\"{}\" size=\"{}\"/>\n<system type=\"current\" size=\"{}\"/>\n<system type=\"max\" size=\"{}\"/>\n<aspace type=\"total\" size=\"{}\"/>\n<aspace type=\"mprotect\" size=\"{}\"/>\n",
    tf,
    tfs,
    tn,
    ta,
    N_MMAPS.load(Ordering::Relaxed),
    MMAPPED_MEM.load(Ordering::Relaxed),
    ts,
    tms,
    tsp,
    tmp
);
    if crate::kal::mode() != crate::kal::options::Mode::Off {
        let _ = crate::kal::stats::write_xml(&mut out, crate::kal::mode_name());
    }
    let _ = out.write_str("</malloc>\n");
    out.flush();
    if out.failed {
        -1
    } else {
        0
    }
}

/// Append the `RMALLOC_EXIT_STATS` line, if requested.  Runs from the
/// library's destructor at process exit.
#[cfg_attr(test, allow(dead_code))]
pub(crate) fn write_exit_stats() {
    let Some(path) = crate::options::exit_stats_path() else {
        return;
    };
    let mut arenas = 0;
    let (mut system, mut in_use) = (0usize, 0usize);
    for_each_info(|i| {
        arenas += 1;
        system += i.system_mem;
        in_use += i.system_mem - (i.top_size + i.fastavail + i.binavail);
    });
    let mm = MMAPPED_MEM.load(Ordering::Relaxed);
    // SAFETY: `path` is a valid NUL-terminated string.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return;
    }
    {
        let mut out = Out::<256>::new(Sink::Fd(fd));
        let _ = writeln!(
            out,
            "rmalloc: pid={} arenas={} system_bytes={} in_use_bytes={}",
            rmalloc_sys::getpid(),
            arenas,
            system + mm,
            in_use + mm
        );
    }
    rmalloc_sys::close(fd);
}
