//! Snapshot backends behind one interface, and the result area a frozen
//! image's scan hands back.
//!
//! A backend freezes the process at one instant (threads stopped, their
//! registers recorded), lets the threads go, and runs [`super::scan`] over
//! the frozen image.  `fork` (any kernel) does it in a copy-on-write child;
//! `kernel` takes a `kal_snapshot` image on the patched kernel and scans it
//! from a task that shares the address space.
//!
//! The result area is a shared mapping, so the snapshot child can fill it
//! and the parent read it: a header and an array of unreachable chunks.

use core::sync::atomic::{AtomicU32, Ordering};

use rmalloc_sys as sys;

use super::mem;

/// Why a snapshot was thrown away; nothing is freed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// A thread could not be stopped in time.
    Stop,
    /// A thread was inside the allocator, a lock was held, or the heap did
    /// not dissect consistently.
    Heap,
    /// A root source could not be read.
    Roots,
    /// The engine ran out of memory or could not create the snapshot.
    Resources,
    /// The mark did not finish within `scan_timeout_ms`.
    Slow,
    /// The scanning task died, or was killed because it could not finish
    /// even by a generous margin.
    Killed,
}

// Every reason is in `Discard::ALL` (they are numbered from 0 in order).
const _: () = assert!(Discard::ALL.len() == Discard::Killed as usize + 1);

impl Discard {
    /// Every reason, to read one back from the result area.
    const ALL: [Discard; 6] = [
        Discard::Stop,
        Discard::Heap,
        Discard::Roots,
        Discard::Resources,
        Discard::Slow,
        Discard::Killed,
    ];

    pub fn why(self) -> &'static str {
        match self {
            Discard::Stop => "a thread could not be stopped",
            Discard::Heap => "the heap was mid-update or inconsistent",
            Discard::Roots => "a root source could not be read",
            Discard::Resources => "no memory or process for the snapshot",
            Discard::Slow => "the mark did not finish within scan_timeout_ms (no idle CPU for it)",
            Discard::Killed => "the scanning task was killed or died before it finished",
        }
    }
}

pub const ST_RUNNING: u32 = 0;
pub const ST_DONE: u32 = 1;
pub const ST_FAILED: u32 = 2;

/// Header of the result area.
#[repr(C)]
pub struct Header {
    /// Process whose scanner owns the area (set before each snapshot).
    pub owner: u32,
    pub status: AtomicU32,
    /// A [`Discard`] as u32 when status is ST_FAILED.
    pub reason: u32,
    pub found: u64,
    pub truncated: u64,
    pub chunks: u64,
    pub scanned: u64,
    pub mark_ns: u64,
}

/// One unreachable chunk.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Found {
    pub chunk: u64,
    pub size: u64,
    /// `dissect::MMAPPED | dissect::INDIRECT` bits.
    pub flags: u64,
    /// The owning arena (0 for an mmapped chunk), read in the image.
    pub arena: u64,
}

pub const CAPACITY: usize = 1 << 20;

pub struct Results {
    base: *mut u8,
    /// Its entry in the engine's mapping table.
    slot: usize,
}

impl Results {
    pub const fn none() -> Self {
        Results {
            base: core::ptr::null_mut(),
            slot: usize::MAX,
        }
    }

    /// Map the shared area (once per process).
    pub fn map() -> Option<Results> {
        let len = (core::mem::size_of::<Header>()
            + CAPACITY * core::mem::size_of::<Found>()
            + sys::PAGE_SIZE
            - 1)
            & !(sys::PAGE_SIZE - 1);
        // SAFETY: a fresh shared mapping we own for the process's life.
        let p = unsafe { sys::task::mmap_shared(len) }.ok()?;
        let slot = mem::note_internal(p as usize, len);
        Some(Results { base: p, slot })
    }

    /// Drop this process's view of the area (a fork child's copy of the
    /// parent's shared mapping), leaving the parent's untouched.
    pub fn forget(&mut self) {
        if !self.base.is_null() {
            let len = core::mem::size_of::<Header>() + CAPACITY * core::mem::size_of::<Found>();
            // SAFETY: unmapping our view of a shared mapping affects this
            // process only; nothing here uses it afterwards.
            let _ = unsafe { sys::munmap(self.base, len) };
            // No longer the engine's: whatever is mapped there next is the
            // program's, and must be scanned.
            mem::forget_internal(self.slot);
            self.base = core::ptr::null_mut();
            self.slot = usize::MAX;
        }
    }

    pub fn header(&self) -> &Header {
        // SAFETY: the area starts with a Header and lives for the process.
        unsafe { &*(self.base as *const Header) }
    }

    pub fn header_mut(&mut self) -> &mut Header {
        // SAFETY: as above, with exclusive access through `&mut self`.
        unsafe { &mut *(self.base as *mut Header) }
    }

    fn entries(&self) -> *mut Found {
        self.base.wrapping_add(core::mem::size_of::<Header>()) as *mut Found
    }

    pub fn reset(&mut self) {
        let h = self.header_mut();
        h.owner = sys::getpid() as u32;
        h.status.store(ST_RUNNING, Ordering::Relaxed);
        h.reason = 0;
        h.found = 0;
        h.truncated = 0;
        h.chunks = 0;
        h.scanned = 0;
        h.mark_ns = 0;
    }

    /// Append one entry (the snapshot child only).
    pub fn push(&mut self, f: Found) {
        let n = self.header().found as usize;
        if n >= CAPACITY {
            self.header_mut().truncated += 1;
            return;
        }
        // SAFETY: n < CAPACITY entries fit in the mapping.
        unsafe { self.entries().add(n).write(f) };
        self.header_mut().found += 1;
    }

    pub fn found(&self) -> &[Found] {
        let n = (self.header().found as usize).min(CAPACITY);
        // SAFETY: the first `n` entries were written by the child, which has
        // exited (its writes are visible after wait4).
        unsafe { core::slice::from_raw_parts(self.entries(), n) }
    }

    pub fn finish(&mut self, outcome: Result<(), Discard>) {
        let h = self.header_mut();
        match outcome {
            Ok(()) => h.status.store(ST_DONE, Ordering::Release),
            Err(d) => {
                h.reason = d as u32;
                h.status.store(ST_FAILED, Ordering::Release);
            }
        }
    }

    pub fn outcome(&self) -> Result<(), Discard> {
        let h = self.header();
        if h.owner != sys::getpid() as u32 {
            return Err(Discard::Resources);
        }
        match h.status.load(Ordering::Acquire) {
            ST_DONE => Ok(()),
            ST_FAILED => Err(Discard::ALL
                .into_iter()
                .find(|&d| d as u32 == h.reason)
                .unwrap_or(Discard::Resources)),
            _ => Err(Discard::Resources),
        }
    }
}

/// Which backend runs, as shown in the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Fork = 1,
    Kernel = 2,
}

/// The `kal_snapshot` ABI the kernel backend speaks.
const KERNEL_ABI: u32 = 1;

fn kernel_available() -> bool {
    sys::kal::probe() == Some(KERNEL_ABI)
}

/// Pick a backend for `wanted`; Err(message) when it cannot run here.
///
/// `auto` is `kernel` where the kernel has `kal_snapshot`, `fork`
/// elsewhere.  With the lazy page-table copy the kernel's capture no
/// longer grows with the heap: KAL's pause p50 kernel/fork in the TCG guest
/// (`make kernel-bench`) 16.4/20.4 ms at 64 MiB, 22.9/50.4 ms at 256 MiB,
/// 32.5/222.3 ms at 1 GiB.  Reading the image through `pread` marks about
/// 3 times slower (2.3/0.7 s, 9.1/3.1 s, 51.0/16.1 s), but the mark runs
/// beside the program; the pause stops it.
pub fn choose(wanted: super::options::Backend) -> Result<Kind, &'static str> {
    use super::options::Backend;
    match wanted {
        Backend::Fork => Ok(Kind::Fork),
        Backend::Auto if kernel_available() => Ok(Kind::Kernel),
        Backend::Auto => Ok(Kind::Fork),
        Backend::Kernel => {
            if kernel_available() {
                Ok(Kind::Kernel)
            } else if sys::kal::probe().is_some() {
                Err(
                    "KAL: backend=kernel: this kernel's kal_snapshot speaks another ABI version \
                     than this library (use backend=fork or auto); KAL stays off",
                )
            } else {
                Err(
                    "KAL: backend=kernel: this kernel has no kal_snapshot system call \
                     (a stock kernel; use backend=fork or auto); KAL stays off",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_result_area_is_no_longer_the_engines() {
        let mut r = Results::map().expect("map the result area");
        let (base, slot) = (r.base as usize, r.slot);
        let (start, len) = mem::internal_entry(slot);
        assert_eq!(start, base);
        r.forget();
        // Whatever the program maps there next must be scanned.  (Another
        // test may reuse the slot, but not for this very mapping.)
        assert_ne!(mem::internal_entry(slot), (start, len));
    }
}
