//! The per-process statistics page: `/dev/shm/kal-<pid>.stats`, a small
//! shared file that `kal stat PID` reads without signalling or tracing the
//! process.
//!
//! Layout (little-endian): magic "KALSTAT1", u32 version, u32 pid, u64
//! start time (field 22 of `/proc/<pid>/stat`, so a reader can tell a stale
//! file of an earlier process with the same pid), u64 sequence (odd while
//! an update is being written), then `struct rmalloc_kal_stats`.
//!
//! Invariant: only the scanner thread writes the page (and start-up or a
//! fork child before any scanner exists); no descriptor stays open.

use core::fmt::Write;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use rmalloc_sys as sys;

use crate::fmt::FixedBuf;

use super::stats::CStats;

pub const MAGIC: u64 = u64::from_le_bytes(*b"KALSTAT1");
pub const VERSION: u32 = 1;

#[repr(C)]
struct Page {
    magic: u64,
    version: u32,
    pid: u32,
    start_time: u64,
    seq: AtomicU64,
    stats: CStats,
}

const LEN: usize = 4096;
static PAGE: AtomicPtr<Page> = AtomicPtr::new(core::ptr::null_mut());

fn path(pid: i32) -> FixedBuf<64> {
    let mut b = FixedBuf::new();
    let _ = write!(b, "/dev/shm/kal-{pid}.stats\0");
    b
}

/// This process's start time in clock ticks (0 if unreadable).
fn start_time() -> u64 {
    let mut buf = super::mem::MVec::new();
    if super::roots::read_file(c"/proc/self/stat", &mut buf).is_err() {
        return 0;
    }
    // Field 22, counted after the command name's closing parenthesis.
    let text = buf.as_slice();
    let after = text.iter().rposition(|&b| b == b')').map_or(0, |i| i + 2);
    let v = text[after.min(text.len())..]
        .split(|&b| b == b' ')
        .nth(19)
        .and_then(|f| core::str::from_utf8(f).ok())
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    buf.release();
    v
}

/// Create the page for this process.  Best effort: without /dev/shm the
/// statistics are still available in-process.
pub fn create() {
    let pid = sys::getpid();
    let name = path(pid);
    let Ok(cpath) = core::ffi::CStr::from_bytes_until_nul(name.as_bytes()) else {
        return;
    };
    let Ok(fd) = sys::task::create_rw(cpath) else {
        return;
    };
    let ok = sys::task::ftruncate(fd, LEN).is_ok();
    // SAFETY: a fresh shared mapping of our own file.
    let p = if ok {
        unsafe { sys::task::mmap_file_shared(fd, LEN) }.ok()
    } else {
        None
    };
    sys::close(fd);
    let Some(p) = p else {
        sys::task::unlink(cpath);
        return;
    };
    let page = p as *mut Page;
    // SAFETY: a fresh, zeroed, page-sized mapping owned by us.
    unsafe {
        (*page).magic = MAGIC;
        (*page).version = VERSION;
        (*page).pid = pid as u32;
        (*page).start_time = start_time();
    }
    PAGE.store(page, Ordering::Release);
}

/// Publish the current statistics.
pub fn update(s: &CStats) {
    let page = PAGE.load(Ordering::Acquire);
    if page.is_null() {
        return;
    }
    // SAFETY: the page is ours and only the scanner writes it; readers in
    // other processes retry while `seq` is odd or changes.
    unsafe {
        (*page).seq.fetch_add(1, Ordering::AcqRel);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*page).stats), *s);
        (*page).seq.fetch_add(1, Ordering::AcqRel);
    }
}

/// Normal exit: remove the file.
pub fn remove() {
    if !PAGE.swap(core::ptr::null_mut(), Ordering::AcqRel).is_null() {
        let name = path(sys::getpid());
        if let Ok(cpath) = core::ffi::CStr::from_bytes_until_nul(name.as_bytes()) {
            sys::task::unlink(cpath);
        }
    }
}

/// Fork child: the inherited mapping is the parent's page; make our own.
pub fn after_fork_child() {
    let old = PAGE.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: unmapping our view of the parent's page affects only us.
        let _ = unsafe { sys::munmap(old as *mut u8, LEN) };
        create();
    }
}
