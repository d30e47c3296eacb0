//! Raw process, thread, signal and clock system calls for the leak scanner.
//!
//! The scanner runs on a thread that glibc does not know about and in a
//! copy-on-write child of the process, where libc's wrappers are off limits
//! (they touch `errno` in thread-local storage, and some allocate).  These
//! wrappers go straight to the kernel and report errors as `Err(errno)`.

use crate::{map, SysResult};
use syscalls::{syscall, Sysno};

pub const SIGKILL: usize = 9;
pub const SIG_BLOCK: usize = 0;
pub const SIG_SETMASK: usize = 2;
pub const WCLONE: usize = 0x8000_0000;
pub const ESRCH: i32 = 3;
pub const ENOENT: i32 = 2;
pub const EPERM: i32 = 1;
pub const EACCES: i32 = 13;
pub const ETIMEDOUT: i32 = 110;
pub const PR_SET_PDEATHSIG: usize = 1;
pub const PR_SET_NAME: usize = 15;
pub const MAP_SHARED: usize = 0x01;

/// `clone` flags of a thread unknown to glibc (no TLS of its own, no
/// `CLONE_SETTLS`): it shares the address space, the descriptor table (its
/// reports go to the program's stderr as it is now) and signal handlers,
/// but not the filesystem context (the program's `setns`/`unshare` of
/// mount namespaces are its own); the kernel clears `ctid` when it exits.
pub const THREAD_FLAGS: usize =
    0x100 | 0x400 | 0x800 | 0x10000 | 0x40000 | CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID;
pub const CLONE_CHILD_CLEARTID: usize = 0x0020_0000;
pub const CLONE_CHILD_SETTID: usize = 0x0100_0000;

/// A raw six-argument system call.
///
/// # Safety
/// The caller must uphold whatever the system call `nr` requires of its
/// arguments (valid pointers for the lengths given, owned mappings, ...).
#[inline]
pub unsafe fn raw(nr: usize, a: [usize; 6]) -> SysResult<usize> {
    let ret: isize;
    // SAFETY: the `syscall` instruction clobbers rcx and r11 only; the
    // argument contract is the caller's (function contract).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        );
    }
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret as usize)
    }
}

/// Monotonic clock in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: `ts` is a valid `struct timespec` to write.
    let _ = unsafe { syscall!(Sysno::clock_gettime, 1usize, ts.as_mut_ptr() as usize) };
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

/// CPU time of the calling thread in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: `ts` is a valid `struct timespec` to write.
    let _ = unsafe { syscall!(Sysno::clock_gettime, 3usize, ts.as_mut_ptr() as usize) };
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

/// `getrusage` of the whole process (every thread).
pub const RUSAGE_SELF: usize = 0;
/// `getrusage` of the calling thread.
pub const RUSAGE_THREAD: usize = 1;

/// System (kernel-mode) CPU time of `who` (`RUSAGE_SELF` or
/// `RUSAGE_THREAD`) in nanoseconds.  Reported in microseconds, but unless
/// the kernel accounts exactly, the split of a thread's time between user
/// and system mode is sampled at each tick and scaled: trust it over tens
/// of milliseconds, not over a few.
pub fn system_cpu_ns(who: usize) -> SysResult<u64> {
    // struct rusage: ru_utime and ru_stime (two timevals), then 14 longs.
    let mut ru = [0i64; 18];
    // SAFETY: `ru` is large enough for a `struct rusage` to write.
    map(unsafe { syscall!(Sysno::getrusage, who, ru.as_mut_ptr() as usize) })?;
    Ok(ru[2] as u64 * 1_000_000_000 + ru[3] as u64 * 1_000)
}

/// Sleep for `ns` nanoseconds (returns early on a signal).
pub fn sleep_ns(ns: u64) {
    let ts = [(ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64];
    // SAFETY: `ts` is a valid timespec; no output is written.
    let _ = unsafe { syscall!(Sysno::nanosleep, ts.as_ptr() as usize, 0usize) };
}

/// `futex_wait` with a relative timeout in nanoseconds.
pub fn futex_wait_timeout(word: &core::sync::atomic::AtomicU32, expected: u32, ns: u64) {
    let ts = [(ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64];
    // SAFETY: `word` is a live aligned u32 and `ts` a valid timespec.
    let _ = unsafe {
        syscall!(
            Sysno::futex,
            word.as_ptr() as usize,
            128usize,
            expected as usize,
            ts.as_ptr() as usize
        )
    };
}

/// Queue signal `sig` with value `val` to thread `tid` of process `tgid`.
pub fn tgsigqueue(tgid: i32, tid: i32, sig: i32, val: usize) -> SysResult<()> {
    // siginfo_t: si_signo, si_errno, si_code, pad, si_pid, si_uid, si_value.
    let mut info = [0u32; 32];
    info[0] = sig as u32;
    info[2] = (-1i32) as u32; // SI_QUEUE
    info[4] = tgid as u32;
    info[6] = val as u32;
    info[7] = (val >> 32) as u32;
    // SAFETY: `info` is a 128-byte siginfo_t the kernel only reads.
    map(unsafe {
        syscall!(
            Sysno::rt_tgsigqueueinfo,
            tgid as usize,
            tid as usize,
            sig as usize,
            info.as_ptr() as usize
        )
    })
    .map(|_| ())
}

/// Does thread `tid` of `tgid` still exist?
pub fn thread_alive(tgid: i32, tid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { syscall!(Sysno::tgkill, tgid as usize, tid as usize, 0usize) }.is_ok()
}

/// Replace the calling thread's signal mask; returns the old one.
pub fn sigmask(how: usize, set: u64) -> u64 {
    let mut old = 0u64;
    // SAFETY: both masks are 8-byte sigsets owned by this frame.
    let _ = unsafe {
        syscall!(
            Sysno::rt_sigprocmask,
            how,
            &set as *const u64 as usize,
            &mut old as *mut u64 as usize,
            8usize
        )
    };
    old
}

/// The calling thread's alternate signal stack: (base, size, flags).
pub fn sigaltstack_query() -> (usize, usize, i32) {
    let mut ss = [0usize; 3];
    // SAFETY: `ss` is a valid stack_t (sp, flags+pad, size) to write.
    let _ = unsafe { syscall!(Sysno::sigaltstack, 0usize, ss.as_mut_ptr() as usize) };
    (ss[0], ss[2], ss[1] as i32)
}

/// `fork` without atfork handlers and without `SIGCHLD`: the child is a
/// "clone child" that only `wait4(.., __WCLONE)` reaps, so the program's own
/// `wait`/`SIGCHLD` handling never sees it.  Returns 0 in the child.
///
/// # Safety
/// The child is a copy of this process with only the calling thread; it
/// must confine itself to raw system calls and memory it owns, and end with
/// [`exit_now`].
pub unsafe fn fork_raw() -> SysResult<i32> {
    // SAFETY: clone without CLONE_VM and without a new stack behaves like
    // fork: the child continues on a copy of this stack (function contract).
    unsafe { raw(Sysno::clone as usize, [0, 0, 0, 0, 0, 0]) }.map(|p| p as i32)
}

/// Wait for clone child `pid`; returns its raw wait status.
pub fn wait_clone(pid: i32) -> SysResult<i32> {
    let mut status = 0i32;
    loop {
        // SAFETY: `status` is a valid int to write; no rusage.
        match map(unsafe {
            syscall!(
                Sysno::wait4,
                pid as usize,
                &mut status as *mut i32 as usize,
                WCLONE,
                0usize
            )
        }) {
            Ok(_) => return Ok(status),
            Err(crate::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Wait for clone child `pid` at most `timeout_ns`; then kill it (SIGKILL)
/// and reap it.  Returns its wait status, or `Err(ETIMEDOUT)` if it had to
/// be killed.
pub fn wait_clone_timeout(pid: i32, timeout_ns: u64) -> SysResult<i32> {
    let deadline = now_ns().saturating_add(timeout_ns);
    let mut pause = 100_000u64;
    loop {
        let mut status = 0i32;
        // SAFETY: `status` is a valid int to write; no rusage.
        match map(unsafe {
            syscall!(
                Sysno::wait4,
                pid as usize,
                &mut status as *mut i32 as usize,
                WCLONE | 1, // WNOHANG
                0usize
            )
        }) {
            Ok(0) => {}
            Ok(_) => return Ok(status),
            Err(crate::EINTR) => continue,
            Err(e) => return Err(e),
        }
        if now_ns() >= deadline {
            kill(pid, SIGKILL);
            let _ = wait_clone(pid);
            return Err(ETIMEDOUT);
        }
        sleep_ns(pause);
        pause = (pause * 2).min(20_000_000);
    }
}

/// Send `sig` to process `pid`.
pub fn kill(pid: i32, sig: usize) {
    // SAFETY: sending a signal has no memory effects on us.
    let _ = unsafe { syscall!(Sysno::kill, pid as usize, sig) };
}

/// End the calling process at once (no atexit handlers, no flushing).
pub fn exit_now(code: i32) -> ! {
    loop {
        // SAFETY: exit_group does not return.
        let _ = unsafe { syscall!(Sysno::exit_group, code as usize) };
    }
}

/// Ask for SIGKILL when the parent goes away, and end at once if it has
/// already gone (it may have died before the request was made).  `parent`
/// is the creator's process id, taken before the `clone`.
pub fn die_with_parent(parent: i32) {
    let _ = prctl(PR_SET_PDEATHSIG, SIGKILL);
    if !parent_is(parent) {
        exit_now(0);
    }
}

/// Is `parent` still this process's parent?
pub fn parent_is(parent: i32) -> bool {
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { syscall!(Sysno::getppid) }.is_ok_and(|p| p as i32 == parent)
}

/// `prctl` with one argument.
pub fn prctl(option: usize, arg: usize) -> SysResult<usize> {
    // SAFETY: the options used here take integers or a short string pointer
    // that the caller keeps alive.
    map(unsafe { syscall!(Sysno::prctl, option, arg, 0usize, 0usize, 0usize) })
}

/// Read directory entries of `fd` into `buf` (`getdents64`).
pub fn getdents(fd: i32, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a valid writable slice for its length.
    map(unsafe {
        syscall!(
            Sysno::getdents64,
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len()
        )
    })
}

/// Open a directory (`O_RDONLY | O_DIRECTORY | O_CLOEXEC`).
pub fn open_dir(path: &core::ffi::CStr) -> SysResult<i32> {
    // SAFETY: `path` is a valid NUL-terminated string.
    map(unsafe {
        syscall!(
            Sysno::openat,
            (-100isize) as usize,
            path.as_ptr() as usize,
            0o2000000usize | 0o200000
        )
    })
    .map(|fd| fd as i32)
}

/// Open `path` for appending, creating it with mode 0644.
pub fn open_append(path: &core::ffi::CStr) -> SysResult<i32> {
    // O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC
    // SAFETY: `path` is a valid NUL-terminated string.
    map(unsafe {
        syscall!(
            Sysno::openat,
            (-100isize) as usize,
            path.as_ptr() as usize,
            0o1 | 0o100 | 0o2000 | 0o2000000usize,
            0o644usize
        )
    })
    .map(|fd| fd as i32)
}

/// `readlinkat(AT_FDCWD, path)` into `buf`; returns the length.
pub fn readlink(path: &core::ffi::CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `path` is NUL-terminated and `buf` writable for its length.
    map(unsafe {
        syscall!(
            Sysno::readlinkat,
            (-100isize) as usize,
            path.as_ptr() as usize,
            buf.as_mut_ptr() as usize,
            buf.len()
        )
    })
}

/// A shared anonymous mapping (visible to a forked child and its parent).
///
/// # Safety
/// None beyond owning the returned mapping.
pub unsafe fn mmap_shared(len: usize) -> SysResult<*mut u8> {
    // SAFETY: a fresh mapping at an address the kernel picks.
    map(unsafe {
        syscall!(
            Sysno::mmap,
            0usize,
            len,
            crate::PROT_READ | crate::PROT_WRITE,
            MAP_SHARED | crate::MAP_ANONYMOUS | crate::MAP_NORESERVE,
            usize::MAX,
            0usize
        )
    })
    .map(|p| p as *mut u8)
}

/// Start a thread unknown to glibc on `stack_top`, running `f(arg)`; all
/// signals are blocked in it.  Returns its tid, which is also stored in
/// `ctid` (cleared, with a futex wake-up, when the thread exits).
///
/// # Safety
/// As [`spawn_raw`]; `ctid` must stay valid while the thread runs.
pub unsafe fn spawn_raw_thread(
    stack_top: *mut u8,
    f: extern "C" fn(usize) -> !,
    arg: usize,
    ctid: &core::sync::atomic::AtomicU32,
) -> SysResult<i32> {
    // SAFETY: forwarded contract; the kernel sets `ctid` before the thread
    // runs (CLONE_CHILD_SETTID) and clears it when it exits.
    unsafe { spawn_raw_ctid(THREAD_FLAGS, stack_top, f, arg, ctid.as_ptr() as usize) }
}

/// End the calling thread only (not the process).
pub fn exit_thread() -> ! {
    loop {
        // SAFETY: exit does not return.
        let _ = unsafe { syscall!(Sysno::exit, 0usize) };
    }
}

/// `clone(flags)` onto a fresh stack, running `f(arg)` with every signal
/// blocked.  Returns the new task's id.
///
/// # Safety
/// `stack_top` must be the 16-byte aligned end of a writable mapping that
/// stays mapped while the task runs; `f` must never return and must not
/// touch thread-local storage (the new task shares the creator's thread
/// pointer) or anything else that assumes a glibc thread.
pub unsafe fn spawn_raw(
    flags: usize,
    stack_top: *mut u8,
    f: extern "C" fn(usize) -> !,
    arg: usize,
) -> SysResult<i32> {
    // SAFETY: forwarded contract.
    unsafe { spawn_raw_ctid(flags, stack_top, f, arg, 0) }
}

/// [`spawn_raw`] with a `child_tid` word for `CLONE_CHILD_CLEARTID`.
///
/// # Safety
/// As [`spawn_raw`]; `ctid` (if not 0) must stay valid while the task runs.
unsafe fn spawn_raw_ctid(
    flags: usize,
    stack_top: *mut u8,
    f: extern "C" fn(usize) -> !,
    arg: usize,
    ctid: usize,
) -> SysResult<i32> {
    let old = sigmask(SIG_SETMASK, !0);
    let ret: isize;
    // SAFETY: clone with a fresh stack: the child starts with this
    // thread's registers except rax (0) and rsp (the new stack); it calls
    // `f` from r12/r13, which the syscall preserves.  The parent falls
    // through with the child's id in rax.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") Sysno::clone as isize => ret,
            in("rdi") flags,
            in("rsi") stack_top as usize,
            in("rdx") 0usize,
            in("r10") ctid,
            in("r8") 0usize,
            in("r12") arg,
            in("r13") f as usize,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    sigmask(SIG_SETMASK, old);
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret as i32)
    }
}

/// Copy `len` bytes at `src` in this process into `dst`, without a fault
/// signal for memory that cannot be read (a file mapping past its end): the
/// kernel reports that as an error instead.  Reads through `/proc/self/mem`
/// (the kernel walks the pages with a plain reference), not
/// `process_vm_readv`, which pins the pages it reads: one pin marks the
/// process as a user of DMA pins for good (`MMF_HAS_PINNED`), after which
/// `kal_snapshot` must copy every page table at the instant.  Where
/// `/proc/self/mem` cannot be opened, `process_vm_readv` does the copy.
/// Returns the number of bytes copied.
///
/// # Safety
/// `dst` must be writable for `len` bytes.
pub unsafe fn copy_from_self(dst: *mut u8, src: usize, len: usize) -> SysResult<usize> {
    // SAFETY: forwarded contract.
    match unsafe { read_self_mem(dst, src, len) } {
        Err(e) if e == ENOENT || e == EACCES || e == EPERM => {}
        r => return r,
    }
    let local = [dst as usize, len];
    let remote = [src, len];
    // SAFETY: two single-element iovec arrays; the kernel checks `src`.
    map(unsafe {
        syscall!(
            Sysno::process_vm_readv,
            crate::getpid() as usize,
            local.as_ptr() as usize,
            1usize,
            remote.as_ptr() as usize,
            1usize,
            0usize
        )
    })
}

/// Copy `len` bytes at `src` in this process into `dst` through
/// `/proc/self/mem`, which reads what `ptrace` would: also memory mapped
/// without read permission.  Returns the number of bytes copied.
///
/// # Safety
/// `dst` must be writable for `len` bytes.
pub unsafe fn read_self_mem(dst: *mut u8, src: usize, len: usize) -> SysResult<usize> {
    let fd = crate::open_rdonly(c"/proc/self/mem")?;
    let mut done = 0;
    while done < len {
        // SAFETY: `dst + done` is writable for `len - done` bytes (contract).
        let n = map(unsafe {
            syscall!(
                Sysno::pread64,
                fd as usize,
                dst as usize + done,
                len - done,
                src + done
            )
        });
        match n {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) => {
                crate::close(fd);
                return if done > 0 { Ok(done) } else { Err(e) };
            }
        }
    }
    crate::close(fd);
    Ok(done)
}

/// Create `path` (which must not exist) for reading and writing, mode 0600.
pub fn create_rw(path: &core::ffi::CStr) -> SysResult<i32> {
    // O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW
    let flags = 0o2 | 0o100 | 0o200 | 0o2000000 | 0o400000usize;
    // SAFETY: `path` is a valid NUL-terminated string.
    map(unsafe {
        syscall!(
            Sysno::openat,
            (-100isize) as usize,
            path.as_ptr() as usize,
            flags,
            0o600usize
        )
    })
    .map(|fd| fd as i32)
}

/// Set the length of the file behind `fd`.
pub fn ftruncate(fd: i32, len: usize) -> SysResult<()> {
    // SAFETY: no memory is passed.
    map(unsafe { syscall!(Sysno::ftruncate, fd as usize, len) }).map(|_| ())
}

/// Remove `path`.
pub fn unlink(path: &core::ffi::CStr) {
    // SAFETY: `path` is a valid NUL-terminated string.
    let _ = unsafe {
        syscall!(
            Sysno::unlinkat,
            (-100isize) as usize,
            path.as_ptr() as usize,
            0usize
        )
    };
}

/// Map `len` bytes of the file behind `fd`, shared and writable.
///
/// # Safety
/// None beyond owning the returned mapping.
pub unsafe fn mmap_file_shared(fd: i32, len: usize) -> SysResult<*mut u8> {
    // SAFETY: a fresh mapping at an address the kernel picks.
    map(unsafe {
        syscall!(
            Sysno::mmap,
            0usize,
            len,
            crate::PROT_READ | crate::PROT_WRITE,
            MAP_SHARED,
            fd as usize,
            0usize
        )
    })
    .map(|p| p as *mut u8)
}
