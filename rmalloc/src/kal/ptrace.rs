//! Stopping the threads with `ptrace`, as LeakSanitizer and Android's
//! libmemunreachable do: invisible to the program (no signal handler runs,
//! interrupted system calls restart as after any ptrace stop), and
//! indifferent to signal masks.
//!
//! A thread cannot trace its own thread group, so the tracer is a helper
//! *process* sharing our memory (`CLONE_VM`, no `CLONE_THREAD`, no exit
//! signal): it seizes and interrupts each thread, records its registers
//! into the thread's slot (the same slots the signal handshake fills), and
//! detaches when the scanner says so.  Where `ptrace` is not permitted
//! (Yama, seccomp, a non-dumpable process, a thread already traced) the
//! attempt fails cleanly and the caller falls back to the signal stop.
//!
//! Not recorded under ptrace: a thread's alternate signal stack (no
//! interface reads another thread's); an alternate stack reachable only
//! through the kernel's registration is then not a root.

use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use rmalloc_sys as sys;
use sys::task;

use super::mem;
use super::stop::{self, StopError, REG_RIP};

const PTRACE_GETREGS: usize = 12;
const PTRACE_GETFPREGS: usize = 14;
const PTRACE_GETSIGINFO: usize = 0x4202;
const PTRACE_DETACH: usize = 17;
const PTRACE_SEIZE: usize = 0x4206;
const PTRACE_INTERRUPT: usize = 0x4207;
const WNOHANG: usize = 1;
const WALL: usize = 0x4000_0000;
const CLONE_VM: usize = 0x100;
const CLONE_FS: usize = 0x200;
const CLONE_FILES: usize = 0x400;
const CLONE_UNTRACED: usize = 0x0080_0000;

/// Commands from the scanner to the tracer, and the tracer's answers.
const CMD_ATTACH: u32 = 1;
const CMD_DETACH: u32 = 2;

struct Ctl {
    /// Scanner -> tracer: command sequence word (futex).
    cmd: AtomicU32,
    cmd_kind: AtomicU32,
    /// Tracer -> scanner: last command done (futex), and its result.
    done: AtomicU32,
    result: AtomicI32,
    /// Slots to attach: [attached, want).
    want: AtomicU32,
    gen: AtomicU32,
    deadline_ns: core::sync::atomic::AtomicU64,
    /// Offset of the allocator's TLS block from a thread pointer.
    tls_off: core::sync::atomic::AtomicIsize,
    /// Per-slot signal to re-inject at detach (a signal-delivery stop).
    pending_sig: [AtomicU32; stop::MAX_THREADS],
}

static CTL: Ctl = Ctl {
    cmd: AtomicU32::new(0),
    cmd_kind: AtomicU32::new(0),
    done: AtomicU32::new(0),
    result: AtomicI32::new(0),
    want: AtomicU32::new(0),
    gen: AtomicU32::new(0),
    deadline_ns: core::sync::atomic::AtomicU64::new(0),
    tls_off: core::sync::atomic::AtomicIsize::new(0),
    pending_sig: [const { AtomicU32::new(0) }; stop::MAX_THREADS],
};

/// Record the TLS block offset (from a glibc thread, at start-up).
pub fn init() {
    CTL.tls_off
        .store(crate::tls::block_offset(), Ordering::Relaxed);
}

static STACK: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
const STACK_SIZE: usize = 64 * 1024;
static TRACER: AtomicI32 = AtomicI32::new(0);

fn ptrace(req: usize, tid: i32, addr: usize, data: usize) -> Result<usize, i32> {
    // SAFETY: the requests used here write at most a user_regs_struct or
    // user_fpregs_struct into buffers the caller owns.
    unsafe {
        task::raw(
            libc::SYS_ptrace as usize,
            [req, tid as usize, addr, data, 0, 0],
        )
    }
}

/// Send a command to the tracer and wait for it to be done.
fn command(kind: u32, timeout_ns: u64) -> Result<(), StopError> {
    CTL.cmd_kind.store(kind, Ordering::Release);
    let seq = CTL.cmd.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
    sys::futex_wake(&CTL.cmd, 1);
    let deadline = task::now_ns() + timeout_ns;
    loop {
        let d = CTL.done.load(Ordering::Acquire);
        if d == seq {
            return match CTL.result.load(Ordering::Acquire) {
                0 => Ok(()),
                1 => Err(StopError::Timeout),
                _ => Err(StopError::NotPermitted),
            };
        }
        let now = task::now_ns();
        if now >= deadline {
            return Err(StopError::Timeout);
        }
        task::futex_wait_timeout(&CTL.done, d, (deadline - now).min(10_000_000));
    }
}

/// Start the tracer process for one stop.
fn spawn() -> bool {
    let mut s = STACK.load(Ordering::Relaxed);
    if s == 0 {
        let Some((p, len, _)) = mem::map(STACK_SIZE) else {
            return false;
        };
        s = p as usize + len;
        STACK.store(s, Ordering::Relaxed);
    }
    let flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_UNTRACED;
    // SAFETY: the tracer runs `tracer_main` on its own stack, touches only
    // CTL, the slots and the stopped threads' memory, and never returns.
    let parent = sys::getpid() as usize;
    match unsafe { task::spawn_raw(flags, s as *mut u8, tracer_main, parent) } {
        Ok(pid) => {
            TRACER.store(pid, Ordering::Release);
            true
        }
        Err(_) => false,
    }
}

/// Stop every other thread with ptrace.  On success they stay stopped until
/// [`release`]; on failure they are already released.
pub fn stop_all(timeout_ns: u64) -> Result<usize, StopError> {
    let me = sys::gettid();
    let mut gen = stop::GEN.load(Ordering::Relaxed).wrapping_add(1);
    if gen == 0 {
        gen = 1;
    }
    stop::NSLOTS.store(0, Ordering::Release);
    stop::GEN.store(gen, Ordering::Release);
    CTL.gen.store(gen, Ordering::Release);
    CTL.want.store(0, Ordering::Release);
    if !spawn() {
        return Err(StopError::Threads);
    }
    CTL.deadline_ns
        .store(task::now_ns() + timeout_ns, Ordering::Release);
    let mut n = 0usize;
    for _round in 0..8 {
        let start = n;
        let listed = stop::list_tasks(me, |tid| {
            if stop::slots_upto(n)
                .iter()
                .any(|s| s.tid.load(Ordering::Relaxed) == tid)
            {
                return true;
            }
            if n >= stop::MAX_THREADS {
                return false;
            }
            let s = stop::slot_mut(n);
            // SAFETY: slot `n` is in the array; the tracer reads it only
            // after `want` is published below.
            unsafe {
                (*s).state.store(0, Ordering::Relaxed);
                (*s).alt_sp = 0;
                (*s).alt_size = 0;
                (*s).tid.store(tid, Ordering::Release);
            }
            CTL.pending_sig[n].store(0, Ordering::Relaxed);
            n += 1;
            true
        });
        stop::NSLOTS.store(n, Ordering::Release);
        if !listed {
            release();
            return Err(StopError::Threads);
        }
        if start == n && _round > 0 {
            return Ok(n);
        }
        CTL.want.store(n as u32, Ordering::Release);
        if let Err(e) = command(CMD_ATTACH, timeout_ns + 50_000_000) {
            release();
            return Err(e);
        }
    }
    release();
    Err(StopError::Threads)
}

/// Detach from every thread and end the tracer.
pub fn release() {
    if TRACER.load(Ordering::Acquire) == 0 {
        return;
    }
    let _ = command(CMD_DETACH, 5_000_000_000);
    let pid = TRACER.swap(0, Ordering::AcqRel);
    if pid > 0 {
        let _ = task::wait_clone(pid);
    }
}

extern "C" fn tracer_main(parent: usize) -> ! {
    // It shares the program's descriptor table: it must not outlive the
    // program, or the program's pipes stay open after it exits.
    let parent = parent as i32;
    task::die_with_parent(parent);
    let gen = CTL.gen.load(Ordering::Acquire);
    let mut attached = 0usize;
    let mut seen = CTL.done.load(Ordering::Acquire);
    loop {
        let c = CTL.cmd.load(Ordering::Acquire);
        if c == seen {
            task::futex_wait_timeout(&CTL.cmd, c, 1_000_000_000);
            if !task::parent_is(parent) {
                task::exit_now(0);
            }
            continue;
        }
        seen = c;
        let kind = CTL.cmd_kind.load(Ordering::Acquire);
        let result = if kind == CMD_ATTACH {
            let want = CTL.want.load(Ordering::Acquire) as usize;
            let r = attach_range(attached, want, gen);
            attached = want;
            r
        } else {
            detach_range(0, attached);
            0
        };
        CTL.result.store(result, Ordering::Release);
        CTL.done.store(c, Ordering::Release);
        sys::futex_wake(&CTL.done, 1);
        if kind == CMD_DETACH {
            task::exit_now(0);
        }
    }
}

/// Seize, interrupt and record slots [from, to).  0 ok, 1 timeout,
/// 2 not permitted.
fn attach_range(from: usize, to: usize, gen: u32) -> i32 {
    let slots = stop::slots_upto(to);
    for s in &slots[from..to] {
        let tid = s.tid.load(Ordering::Acquire);
        match ptrace(PTRACE_SEIZE, tid, 0, 0) {
            Ok(_) => {}
            Err(task::ESRCH) => continue,
            Err(_) => return 2,
        }
        if ptrace(PTRACE_INTERRUPT, tid, 0, 0).is_err() {
            continue;
        }
    }
    let deadline = CTL.deadline_ns.load(Ordering::Acquire);
    for (i, s) in slots.iter().enumerate().take(to).skip(from) {
        let tid = s.tid.load(Ordering::Acquire);
        loop {
            let mut status = 0i32;
            // SAFETY: `status` is a valid int to write.
            let r = unsafe {
                task::raw(
                    libc::SYS_wait4 as usize,
                    [
                        tid as usize,
                        &mut status as *mut i32 as usize,
                        WALL | WNOHANG,
                        0,
                        0,
                        0,
                    ],
                )
            };
            match r {
                Ok(0) => {
                    if task::now_ns() >= deadline {
                        return 1;
                    }
                    task::sleep_ns(50_000);
                }
                Ok(_) if status & 0xff == 0x7f => {
                    let sig = (status >> 8) & 0xff;
                    let event = (status >> 16) & 0xff;
                    // A signal-delivery stop (not our interrupt): keep the
                    // thread stopped here and hand the signal back at detach.
                    if event == 0 && sig != libc::SIGTRAP {
                        CTL.pending_sig[i].store(sig as u32, Ordering::Relaxed);
                    }
                    if !record(i, tid, gen, event == 0) {
                        return 1;
                    }
                    break;
                }
                // Exited or killed: nothing to record.
                Ok(_) => break,
                Err(task::ESRCH) | Err(_) => break,
            }
        }
    }
    0
}

/// Read thread `tid`'s registers into slot `i`.
fn record(i: usize, tid: i32, gen: u32, delivering: bool) -> bool {
    let mut regs = [0u64; 27];
    if ptrace(PTRACE_GETREGS, tid, 0, regs.as_mut_ptr() as usize).is_err() {
        return false;
    }
    // A thread stopped while a signal is being delivered to it: a queued
    // signal's value is held by the kernel, and is a root.
    let mut info = [0u64; 16];
    let sigval =
        if delivering && ptrace(PTRACE_GETSIGINFO, tid, 0, info.as_mut_ptr() as usize).is_ok() {
            info[3]
        } else {
            0
        };
    let mut fp = [0u64; 64];
    let have_fp = ptrace(PTRACE_GETFPREGS, tid, 0, fp.as_mut_ptr() as usize).is_ok();
    let s = stop::slot_mut(i);
    // user_regs_struct order: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx
    // rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base ...; slots keep
    // ucontext's order (r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip).
    let order: [usize; 17] = [9, 8, 7, 6, 3, 2, 1, 0, 14, 13, 4, 5, 12, 10, 11, 19, 16];
    let fs = regs[21];
    let off = CTL.tls_off.load(Ordering::Relaxed);
    // SAFETY: slot `i` is ours to fill until its state is published; the
    // thread is stopped, so its TLS words are stable and mapped (shared
    // address space).
    unsafe {
        for (d, &k) in (*s).gregs.iter_mut().zip(order.iter()) {
            *d = regs[k];
        }
        for d in (*s).gregs.iter_mut().skip(order.len()) {
            *d = 0;
        }
        if have_fp {
            // fxsave layout: xmm0..15 at byte 160.
            for (j, d) in (*s).xmm.iter_mut().enumerate() {
                *d = fp[20 + j];
            }
        }
        (*s).fs = fs;
        let block = (fs as isize + off) as *const u64;
        (*s).tcache = block.read_volatile();
        (*s).arena = block.add(1).read_volatile();
        let rip = (*s).gregs[REG_RIP] as usize;
        let text = (
            stop::TEXT.0.load(Ordering::Relaxed),
            stop::TEXT.1.load(Ordering::Relaxed),
        );
        (*s).in_allocator = (text.0 <= rip && rip < text.1 && !stop::is_waiter(tid)) as u32;
        (*s).sigval = sigval;
        (*s).state.store(gen, Ordering::Release);
    }
    true
}

fn detach_range(from: usize, to: usize) {
    for (i, s) in stop::slots_upto(to).iter().enumerate().skip(from) {
        let tid = s.tid.load(Ordering::Acquire);
        let sig = CTL.pending_sig[i].load(Ordering::Relaxed) as usize;
        let _ = ptrace(PTRACE_DETACH, tid, 0, sig);
    }
}

/// After the program's `fork`: no tracer exists in the child.
pub fn reset_after_fork() {
    TRACER.store(0, Ordering::Release);
}
