//! Stopping every other thread for the snapshot instant (fork backend).
//!
//! A signal handshake: the scanner queues `stop_signal` to each thread with
//! `rt_tgsigqueueinfo`, carrying (generation, slot) in `si_value`.  The
//! handler, on that thread, records its registers (general-purpose and
//! SSE), thread pointer, thread-cache and arena slots and alternate signal
//! stack into its slot, publishes the slot, and sleeps on a futex until the
//! scanner releases the generation.  Threads created meanwhile are found by
//! listing `/proc/self/task` again once everyone known has stopped.
//!
//! What the program can observe: its threads run a signal handler, so
//! calls that are never restarted after a handler (`epoll_wait`, `poll`,
//! `nanosleep`, `sigtimedwait`, ...; see signal(7)) return `EINTR`, exactly
//! as for any other signal.  A thread that blocks the signal, or is stopped
//! by a debugger, does not answer within `stop_timeout_ms`: the snapshot is
//! then discarded.
//!
//! Invariants: the slot array is mapped once and never unmapped, so a late
//! handler (a signal delivered after its round was abandoned) always writes
//! to valid memory; a slot counts as stopped only when its `state` holds the
//! current generation; the handler never allocates, locks or touches
//! `errno` (raw system calls only).

use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use rmalloc_sys as sys;
use sys::task;

use super::mem;
use crate::tls;

/// Most threads one snapshot can stop; a process with more has its
/// snapshots discarded.
pub const MAX_THREADS: usize = 8192;

/// One thread's state at the instant, written by its own signal handler.
#[repr(C)]
pub struct Slot {
    pub tid: AtomicI32,
    /// Generation the thread stopped in; 0 while pending.
    pub state: AtomicU32,
    pub gregs: [u64; 23],
    pub xmm: [u64; 32],
    /// Thread pointer (`%fs` base): its TCB, DTV and static TLS hang off it.
    pub fs: u64,
    pub tcache: u64,
    pub arena: u64,
    pub alt_sp: u64,
    pub alt_size: u64,
    /// The thread was interrupted inside the allocator's own code.
    pub in_allocator: u32,
    /// `si_value` of a queued signal the thread was stopped delivering
    /// (ptrace stop only): the kernel holds it for the program.
    pub sigval: u64,
}

pub const REG_RSP: usize = 15;
pub const REG_RIP: usize = 16;

pub(super) static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(core::ptr::null_mut());
pub(super) static NSLOTS: AtomicUsize = AtomicUsize::new(0);
pub(super) static GEN: AtomicU32 = AtomicU32::new(0);
static RELEASED: AtomicU32 = AtomicU32::new(0);
/// Wake-up hint for the scanner; correctness rests on the slots' `state`.
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// Threads waiting for a requested scan inside the library: interrupted in
/// our code, but holding no lock and in the middle of no update.
static WAITERS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

/// Note `tid` as waiting for a scan (if the table is full, the thread just
/// counts as inside the allocator, which only discards snapshots).
pub fn add_waiter(tid: i32) {
    for w in WAITERS.iter() {
        if w.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

pub fn remove_waiter(tid: i32) {
    for w in WAITERS.iter() {
        if w.load(Ordering::Relaxed) == tid {
            w.store(0, Ordering::Release);
            return;
        }
    }
}

pub(super) fn is_waiter(tid: i32) -> bool {
    WAITERS.iter().any(|w| w.load(Ordering::Acquire) == tid)
}
/// The allocator's own code, [start, end).
pub static TEXT: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));

/// Map the slot array (once per process; a forked child inherits it).
pub fn init() -> bool {
    if !SLOTS.load(Ordering::Acquire).is_null() {
        return true;
    }
    let Some((p, _, _)) = mem::map(MAX_THREADS * core::mem::size_of::<Slot>()) else {
        return false;
    };
    SLOTS.store(p as *mut Slot, Ordering::Release);
    true
}

/// The slots of the last stop, `[0, n)`.
pub fn slots() -> &'static [Slot] {
    let p = SLOTS.load(Ordering::Acquire);
    if p.is_null() {
        return &[];
    }
    // SAFETY: the array is mapped for MAX_THREADS slots and never unmapped;
    // NSLOTS <= MAX_THREADS.  Fields written by handlers are read by the
    // scanner only after their `state` was published with Release.
    unsafe { core::slice::from_raw_parts(p, NSLOTS.load(Ordering::Acquire)) }
}

pub(super) fn slot_mut(i: usize) -> *mut Slot {
    SLOTS.load(Ordering::Acquire).wrapping_add(i)
}

#[inline(always)]
pub(super) fn thread_pointer() -> u64 {
    let v: u64;
    // SAFETY: on x86-64 Linux, %fs:0 holds the TCB's own address (glibc's
    // `tcbhead_t.tcb`); the load has no side effects.
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) v,
                         options(nostack, readonly, preserves_flags))
    };
    v
}

/// The handler of `stop_signal`.
pub extern "C" fn on_signal(_sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; si_value of a queued
    // signal sits at offset 24 on x86-64.
    let val = unsafe { (info as *const u8).add(24).cast::<u64>().read_unaligned() };
    // SAFETY: si_code at offset 8.
    let code = unsafe { (info as *const u8).add(8).cast::<i32>().read() };
    let gen = (val >> 32) as u32;
    let idx = (val & 0xffff_ffff) as usize;
    if code != -1 || gen == 0 || gen != GEN.load(Ordering::Acquire) || idx >= MAX_THREADS {
        return;
    }
    let slot = slot_mut(idx);
    if slot.is_null() {
        return;
    }
    let me = sys::gettid();
    // SAFETY: `slot` is inside the never-unmapped array; only this thread
    // writes its slot's register fields while the state is pending, and
    // the scanner reads them only after the Release store of `state`.
    unsafe {
        if (*slot).tid.load(Ordering::Acquire) != me || (*slot).state.load(Ordering::Acquire) != 0 {
            return;
        }
        let ctx = uc as *const libc::ucontext_t;
        for (d, s) in (*slot)
            .gregs
            .iter_mut()
            .zip((*ctx).uc_mcontext.gregs.iter())
        {
            *d = *s as u64;
        }
        let fp = (*ctx).uc_mcontext.fpregs;
        if !fp.is_null() {
            let xmm = core::ptr::addr_of!((*fp)._xmm) as *const u64;
            for (i, d) in (*slot).xmm.iter_mut().enumerate() {
                *d = xmm.add(i).read_unaligned();
            }
        }
        (*slot).fs = thread_pointer();
        (*slot).tcache = tls::get::<{ tls::TCACHE }>() as u64;
        (*slot).arena = tls::get::<{ tls::ARENA }>() as u64;
        let (sp, size, _) = task::sigaltstack_query();
        (*slot).alt_sp = sp as u64;
        (*slot).alt_size = size as u64;
        let rip = (*slot).gregs[REG_RIP] as usize;
        let text = (
            TEXT.0.load(Ordering::Relaxed),
            TEXT.1.load(Ordering::Relaxed),
        );
        (*slot).sigval = 0;
        (*slot).in_allocator = ((text.0 <= rip && rip < text.1) && !is_waiter(me)) as u32;
        (*slot).state.store(gen, Ordering::Release);
    }
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(&ARRIVED, 1);
    loop {
        let r = RELEASED.load(Ordering::Acquire);
        if r.wrapping_sub(gen) as i32 >= 0 {
            break;
        }
        sys::futex_wait(&RELEASED, r);
    }
}

/// Install the handler for `sig`.  Called from a normal program thread
/// (the start-up constructor), never from the scanner.
pub fn install(sig: i32) -> bool {
    // SAFETY: a zeroed sigaction with our handler; libc copies it.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, core::ptr::null_mut()) == 0
    }
}

/// Is our handler still the one installed for `sig`?  A program that takes
/// the signal over would otherwise get our stop requests.
pub fn still_installed(sig: i32) -> bool {
    let mut old = [0usize; 4];
    // SAFETY: querying (null new action) into a buffer of kernel sigaction
    // size (handler, flags, restorer, mask).
    let r = unsafe {
        task::raw(
            libc::SYS_rt_sigaction as usize,
            [sig as usize, 0, old.as_mut_ptr() as usize, 8, 0, 0],
        )
    };
    r.is_ok() && old[0] == on_signal as *const () as usize
}

/// Why a stop failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopError {
    /// A thread did not answer in time (blocks the signal, traced, ...).
    Timeout,
    /// Too many threads, or the thread list could not be read.
    Threads,
    /// A thread blocks the stop signal (or waits for it in sigwait).
    Blocked,
    /// `ptrace` is not permitted here.
    NotPermitted,
}

/// Does thread `tid` block signal `sig` (its `SigBlk` mask)?  A status
/// that cannot be parsed counts as blocking: then no signal is sent.
fn blocks(tid: i32, sig: i32) -> bool {
    let mut pbuf = [0u8; 96];
    let cpath = super::roots::numbered(b"/proc/self/task/", tid, b"/status", &mut pbuf);
    let Ok(fd) = sys::open_rdonly(cpath) else {
        // Gone already: the signal will fail with ESRCH, which is handled.
        return false;
    };
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < buf.len() {
        match sys::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(sys::EINTR) => continue,
            Err(_) => break,
        }
    }
    sys::close(fd);
    let text = &buf[..got];
    for line in text.split(|&b| b == b'\n') {
        if let Some(hex) = line.strip_prefix(b"SigBlk:") {
            let mut mask = 0u64;
            for &c in hex.iter().filter(|c| !c.is_ascii_whitespace()) {
                match (c as char).to_digit(16) {
                    Some(d) => mask = (mask << 4) | d as u64,
                    None => return true,
                }
            }
            return mask & (1u64 << (sig - 1)) != 0;
        }
    }
    // The mask sits in the first 2 KiB; not finding it means we cannot tell.
    true
}

/// List the process's thread ids (other than `me`) into `out`.
pub(super) fn list_tasks(me: i32, mut f: impl FnMut(i32) -> bool) -> bool {
    super::roots::for_each_numbered(c"/proc/self/task", |tid| tid == me || f(tid))
}

/// Stop every other thread.  On success the threads stay stopped until
/// [`release`]; on failure they are already released.
pub fn stop_all(sig: i32, timeout_ns: u64) -> Result<usize, StopError> {
    let pid = sys::getpid();
    let me = sys::gettid();
    let mut gen = GEN.load(Ordering::Relaxed).wrapping_add(1);
    if gen == 0 {
        gen = 1;
    }
    NSLOTS.store(0, Ordering::Release);
    GEN.store(gen, Ordering::Release);
    let mut n = 0usize;
    let mut signalled = 0usize;
    for _round in 0..8 {
        // Add threads not seen yet.
        let start = n;
        let listed = list_tasks(me, |tid| {
            if slots_upto(n)
                .iter()
                .any(|s| s.tid.load(Ordering::Relaxed) == tid)
            {
                return true;
            }
            if n >= MAX_THREADS {
                return false;
            }
            let s = slot_mut(n);
            // SAFETY: slot `n` is inside the array and not visible to any
            // handler of this generation yet (its tid is set here first).
            unsafe {
                (*s).state.store(0, Ordering::Relaxed);
                (*s).tid.store(tid, Ordering::Release);
            }
            n += 1;
            true
        });
        NSLOTS.store(n, Ordering::Release);
        if !listed {
            release_gen(gen);
            return Err(StopError::Threads);
        }
        if start == n && signalled == n {
            return Ok(n);
        }
        for i in signalled..n {
            let tid = slots_upto(n)[i].tid.load(Ordering::Relaxed);
            if blocks(tid, sig) {
                // Queued to a thread that blocks it, the signal would stay
                // pending, and a thread in sigwait() would receive it.
                release_gen(gen);
                return Err(StopError::Blocked);
            }
            let val = ((gen as usize) << 32) | i;
            if let Err(e) = task::tgsigqueue(pid, tid, sig, val) {
                if e != task::ESRCH {
                    release_gen(gen);
                    return Err(StopError::Threads);
                }
            }
        }
        signalled = n;
        let deadline = task::now_ns() + timeout_ns;
        loop {
            let seen = ARRIVED.load(Ordering::Acquire);
            let pending = slots_upto(n)
                .iter()
                .filter(|s| s.state.load(Ordering::Acquire) != gen)
                .filter(|s| task::thread_alive(pid, s.tid.load(Ordering::Relaxed)))
                .count();
            if pending == 0 {
                break;
            }
            let now = task::now_ns();
            if now >= deadline {
                release_gen(gen);
                return Err(StopError::Timeout);
            }
            task::futex_wait_timeout(&ARRIVED, seen, (deadline - now).min(2_000_000));
        }
    }
    release_gen(gen);
    Err(StopError::Threads)
}

pub(super) fn slots_upto(n: usize) -> &'static [Slot] {
    let p = SLOTS.load(Ordering::Acquire);
    // SAFETY: as in `slots`, with n <= MAX_THREADS.
    unsafe { core::slice::from_raw_parts(p, n) }
}

/// Did slot `s` stop in the current generation (rather than exit)?
pub fn stopped(s: &Slot) -> bool {
    s.state.load(Ordering::Acquire) == GEN.load(Ordering::Acquire)
}

fn release_gen(gen: u32) {
    RELEASED.store(gen, Ordering::Release);
    sys::futex_wake(&RELEASED, i32::MAX as u32);
}

/// Let the threads of the current stop go.
pub fn release() {
    release_gen(GEN.load(Ordering::Acquire));
}

/// After `fork`: no thread of the parent exists here.
pub fn reset_after_fork() {
    NSLOTS.store(0, Ordering::Release);
    RELEASED.store(GEN.load(Ordering::Relaxed), Ordering::Release);
    for w in WAITERS.iter() {
        w.store(0, Ordering::Relaxed);
    }
}
