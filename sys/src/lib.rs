//! Raw Linux system calls for code that must not re-enter `malloc`.
//!
//! The allocator calls into the kernel on paths where libc may not be
//! usable yet (the dynamic loader's first `malloc`) or where a libc wrapper
//! could allocate or take a lock that the allocator itself holds (after
//! `fork`, inside error reporting).  Everything here is a thin, allocation-free
//! wrapper over the `syscall` instruction; errors come back as `Err(errno)`
//! instead of through libc's thread-local `errno`, so callers decide what the
//! user-visible `errno` becomes.
//!
//! Invariants: no function in this crate allocates, takes a lock, or touches
//! thread-local storage.
#![cfg_attr(not(test), no_std)]

use syscalls::{syscall, Errno, Sysno};
pub mod kal;
pub mod task;

/// Result of a raw system call: the kernel's return value or its errno.
pub type SysResult<T> = Result<T, i32>;

#[inline]
pub(crate) fn map(r: Result<usize, Errno>) -> SysResult<usize> {
    r.map_err(|e| e.into_raw())
}

pub const PROT_NONE: usize = 0;
pub const PROT_READ: usize = 1;
pub const PROT_WRITE: usize = 2;
pub const MAP_PRIVATE: usize = 0x02;
pub const MAP_FIXED: usize = 0x10;
pub const MAP_ANONYMOUS: usize = 0x20;
pub const MAP_NORESERVE: usize = 0x4000;
pub const MREMAP_MAYMOVE: usize = 1;
pub const MADV_DONTNEED: usize = 4;
pub const MADV_HUGEPAGE: usize = 14;
pub const MADV_NOHUGEPAGE: usize = 15;
pub const ENOMEM: i32 = 12;
pub const EINVAL: i32 = 22;
pub const EAGAIN: i32 = 11;
pub const EINTR: i32 = 4;

/// Anonymous private mapping of `len` bytes with protection `prot`.
///
/// # Safety
/// With `MAP_FIXED` in `extra_flags` the call replaces whatever was mapped at
/// `addr`; the caller must own that range.
#[inline]
pub unsafe fn mmap_anon(
    addr: usize,
    len: usize,
    prot: usize,
    extra_flags: usize,
) -> SysResult<*mut u8> {
    let flags = MAP_PRIVATE | MAP_ANONYMOUS | extra_flags;
    // SAFETY: arguments are plain integers; the kernel validates them.  The
    // caller upholds the MAP_FIXED contract documented above.
    map(unsafe { syscall!(Sysno::mmap, addr, len, prot, flags, usize::MAX, 0) })
        .map(|p| p as *mut u8)
}

/// # Safety
/// The range must be a mapping the caller owns and no longer uses.
#[inline]
pub unsafe fn munmap(addr: *mut u8, len: usize) -> SysResult<()> {
    // SAFETY: the caller owns the range (function contract).
    map(unsafe { syscall!(Sysno::munmap, addr as usize, len) }).map(|_| ())
}

/// # Safety
/// The range must be a mapping the caller owns.
#[inline]
pub unsafe fn mprotect(addr: *mut u8, len: usize, prot: usize) -> SysResult<()> {
    // SAFETY: the caller owns the range (function contract).
    map(unsafe { syscall!(Sysno::mprotect, addr as usize, len, prot) }).map(|_| ())
}

/// # Safety
/// The range must be a mapping the caller owns; with `MADV_DONTNEED` its
/// contents are discarded.
#[inline]
pub unsafe fn madvise(addr: *mut u8, len: usize, advice: usize) -> SysResult<()> {
    // SAFETY: the caller owns the range (function contract).
    map(unsafe { syscall!(Sysno::madvise, addr as usize, len, advice) }).map(|_| ())
}

/// # Safety
/// `old` must be a mapping of `old_len` bytes that the caller owns.
#[inline]
pub unsafe fn mremap(
    old: *mut u8,
    old_len: usize,
    new_len: usize,
    flags: usize,
) -> SysResult<*mut u8> {
    // SAFETY: the caller owns the old mapping (function contract).
    map(unsafe { syscall!(Sysno::mremap, old as usize, old_len, new_len, flags) })
        .map(|p| p as *mut u8)
}

/// Current program break, or the new one after asking for `addr`.
///
/// The raw `brk` system call never fails with an errno: it returns the old
/// break when it cannot move it, so callers compare the result with `addr`.
///
/// # Safety
/// Moving the break down releases memory that the caller must own.
#[inline]
pub unsafe fn brk(addr: usize) -> usize {
    // SAFETY: brk only changes the data segment's end; the caller owns any
    // memory it gives back (function contract).
    unsafe { syscall!(Sysno::brk, addr) }.unwrap_or(0)
}

/// Write all of `buf` to `fd`, retrying on short writes and `EINTR`.
pub fn write_all(fd: i32, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice for its length.
        match map(unsafe { syscall!(Sysno::write, fd as usize, buf.as_ptr() as usize, buf.len()) })
        {
            Ok(n) => buf = &buf[n..],
            Err(EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

const FUTEX_WAIT_PRIVATE: usize = 128;
const FUTEX_WAKE_PRIVATE: usize = 129;

/// Sleep while `*word == expected` (spurious wake-ups possible).
#[inline]
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned u32 for the duration of the call.
    let _ = unsafe {
        syscall!(
            Sysno::futex,
            word.as_ptr() as usize,
            FUTEX_WAIT_PRIVATE,
            expected as usize,
            0usize
        )
    };
}

/// Wake up to `n` waiters sleeping on `word`.
#[inline]
pub fn futex_wake(word: &core::sync::atomic::AtomicU32, n: u32) {
    // SAFETY: `word` is a live, aligned u32; waking never touches memory.
    let _ = unsafe {
        syscall!(
            Sysno::futex,
            word.as_ptr() as usize,
            FUTEX_WAKE_PRIVATE,
            n as usize
        )
    };
}

#[inline]
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { syscall!(Sysno::gettid) }.unwrap_or(0) as i32
}

#[inline]
pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { syscall!(Sysno::getpid) }.unwrap_or(0) as i32
}

/// Read up to `buf.len()` bytes from `fd`.
pub fn read(fd: i32, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a valid writable slice for its length.
    map(unsafe {
        syscall!(
            Sysno::read,
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len()
        )
    })
}

/// Open a NUL-terminated `path` read-only with `O_CLOEXEC`.
pub fn open_rdonly(path: &core::ffi::CStr) -> SysResult<i32> {
    const O_CLOEXEC: usize = 0o2000000;
    const AT_FDCWD: isize = -100;
    // SAFETY: `path` is a valid NUL-terminated string.
    map(unsafe {
        syscall!(
            Sysno::openat,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            O_CLOEXEC
        )
    })
    .map(|fd| fd as i32)
}

pub fn close(fd: i32) {
    // SAFETY: closing an fd number has no memory-safety effect on us.
    let _ = unsafe { syscall!(Sysno::close, fd as usize) };
}

pub const PAGE_SIZE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap_write_unmap() {
        // SAFETY: fresh anonymous mapping owned by this test.
        unsafe {
            let p = mmap_anon(0, 8192, PROT_READ | PROT_WRITE, 0).unwrap();
            p.write(7);
            assert_eq!(p.read(), 7);
            munmap(p, 8192).unwrap();
        }
    }

    #[test]
    fn mmap_errors_are_errnos() {
        // SAFETY: a zero-length mapping is rejected before touching memory.
        let r = unsafe { mmap_anon(0, 0, PROT_READ, 0) };
        assert_eq!(r, Err(EINVAL));
    }

    #[test]
    fn brk_query_returns_current_break() {
        // SAFETY: brk(0) only queries.
        let b = unsafe { brk(0) };
        assert!(b > 0);
    }
}
