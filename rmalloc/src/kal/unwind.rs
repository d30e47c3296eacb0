//! Stack unwinding on the allocation path, without `malloc`: DWARF
//! call-frame information (`.eh_frame`, found through each object's
//! `.eh_frame_hdr` search table, see [`super::modules`]), so it works on
//! Debian's binaries, which are built without frame pointers; and a
//! frame-pointer walk (`fast_unwind_on_malloc=1`) for programs built with
//! them.
//!
//! Like libunwind's local-only `unw_step`, one frame at a time: find the
//! FDE covering the return address and the row its call-frame instructions
//! give there ([`super::cfi`], rows cached by address in `unwind_cache.rs`),
//! and apply that row (CFA rule, register rules) to the registers.  The
//! allocator's own frames at the top of every stack are unwound once per
//! call path and replayed from then on (`unwind_own.rs`).  The
//! state is a fixed-size struct on the caller's stack; nothing is allocated
//! and no lock is taken (the object table is read lock-free).
//!
//! Safety against bad unwind data: every read of the stack is checked
//! against the thread's stack bounds ([`stack_bounds`]) and every read of
//! unwind tables against the bounds of the object they belong to; a frame
//! whose rule cannot be followed ends the stack.  Signal frames end it too.

use super::cfi::{self, Cfa, Rule, NSLOTS};
use super::modules;

#[path = "unwind_cache.rs"]
mod cache;
#[path = "unwind_own.rs"]
mod own;

/// DWARF register numbers on x86-64.
const RBP: usize = 6;
const RSP: usize = 7;
const RA: usize = 16;
/// Registers known while unwinding (`valid` bit per slot).
#[derive(Clone, Copy)]
pub struct Regs {
    r: [usize; NSLOTS],
    valid: u8,
}

impl Regs {
    const EMPTY: Regs = Regs {
        r: [0; NSLOTS],
        valid: 0,
    };

    /// DWARF register `r`, if tracked and known.
    fn get(&self, r: usize) -> Option<usize> {
        let i = cfi::slot(r as u64)?;
        self.get_slot(i)
    }

    fn get_slot(&self, i: usize) -> Option<usize> {
        (self.valid & (1 << i) != 0).then(|| self.r[i])
    }

    fn set_slot(&mut self, i: usize, v: usize) {
        self.r[i] = v;
        self.valid |= 1 << i;
    }

    fn set(&mut self, r: usize, v: usize) {
        if let Some(i) = cfi::slot(r as u64) {
            self.r[i] = v;
            self.valid |= 1 << i;
        }
    }

    fn pc(&self) -> usize {
        self.r[7]
    }

    fn sp(&self) -> usize {
        self.r[2]
    }
}

/// Where the stack being walked may be read: `[lo, hi)`.
#[derive(Clone, Copy)]
pub struct Bounds {
    pub lo: usize,
    pub hi: usize,
}

impl Bounds {
    fn read(&self, a: usize) -> Option<usize> {
        if a < self.lo || a.checked_add(8)? > self.hi || a & 7 != 0 {
            return None;
        }
        // SAFETY: inside this thread's stack (see `stack_bounds`), aligned.
        Some(unsafe { (a as *const usize).read() })
    }
}

extern "C" {
    /// The main thread's stack top, set by the loader (ld.so exports it).
    static __libc_stack_end: *mut core::ffi::c_void;
}

/// The readable part of the current thread's stack above `sp`: for a glibc
/// thread, up to its thread pointer (its TCB sits at the top of its stack
/// block); for the main thread, up to `__libc_stack_end` (plus the
/// arguments above it, same mapping); elsewhere (an alternate signal stack,
/// a coroutine's stack) only the rest of the page of `sp`, which is
/// certainly mapped.
pub fn stack_bounds(sp: usize) -> Bounds {
    let tp: usize;
    // SAFETY: reads the TCB's self pointer at %fs:0 (glibc's `header.self`).
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp,
            options(nostack, readonly, preserves_flags));
    }
    // SAFETY: a plain word exported by the loader, written at start-up.
    let main_top = unsafe { __libc_stack_end } as usize;
    let hi = if sp < tp && tp - sp < (1 << 30) {
        tp
    } else if sp < main_top && main_top - sp < (1 << 30) {
        main_top + 256
    } else {
        (sp | 4095) + 1
    };
    Bounds { lo: sp, hi }
}

/// Fill `out` with the return addresses of the calling thread's stack,
/// innermost first, starting with the caller of this function's caller's
/// frame (`pc` of the capture point is `out[0]`).  Returns how many.
/// Frames inside `skip` (the allocator's own code) at the top are dropped
/// except the last of them, so the stack begins with the allocator's entry
/// point (`malloc`, `calloc`, ...) as LeakSanitizer's does.
#[inline(never)]
pub fn capture(out: &mut [usize], fast: bool, skip: (usize, usize)) -> usize {
    let (pc, sp, fp): (usize, usize, usize);
    // SAFETY: reads registers only.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc, sp = out(reg) sp, fp = out(reg) fp,
            options(nostack, nomem, preserves_flags)
        );
    }
    let mut regs = Regs::EMPTY;
    regs.set(RA, pc);
    regs.set(RSP, sp);
    regs.set(RBP, fp);
    let bounds = stack_bounds(sp);
    let mut n = 0;
    let mut first = true;
    // The allocator's own frames: replayed when this path was unwound
    // before (see `unwind_own.rs`), else unwound and traced.
    let is_own = |pc: usize| skip.0 <= pc && pc < skip.1;
    let mut entry = 0usize; // the outermost allocator frame
    if is_own(pc) {
        if let Some((outside, e)) = own::replay(&regs, bounds, skip) {
            regs = outside;
            entry = e;
        } else {
            let mut trace = own::Trace::start(pc);
            for i in 0.. {
                let pc = regs.pc();
                if !is_own(pc) {
                    trace.publish();
                    break;
                }
                if i == 64 {
                    return 0; // not the allocator's call graph
                }
                entry = pc;
                if !step(&mut regs, bounds, first, Some(&mut trace)) {
                    // The stack ends inside the allocator.
                    if !out.is_empty() {
                        out[0] = entry;
                        return 1;
                    }
                    return 0;
                }
                first = false;
            }
        }
        first = false;
        if !out.is_empty() {
            out[0] = entry;
            n = 1;
        }
    }
    if fast {
        if n < out.len() {
            out[n] = regs.pc();
            n += 1;
        }
        return n + fp_walk(&regs, bounds, &mut out[n..]);
    }
    for _ in 0..out.len() + 32 {
        if n >= out.len() {
            break;
        }
        out[n] = regs.pc();
        n += 1;
        if !step(&mut regs, bounds, first, None) {
            break;
        }
        first = false;
    }
    n
}

/// Frame-pointer walk from a frame whose `rbp` is valid (the first frame
/// outside the allocator, at a call): each frame is `[saved rbp, return
/// address]` at `rbp`, and frames move up the stack.
fn fp_walk(regs: &Regs, b: Bounds, out: &mut [usize]) -> usize {
    let Some(mut fp) = regs.get(RBP) else {
        return 0;
    };
    let mut n = 0;
    while n < out.len() {
        let (Some(next), Some(ra)) = (b.read(fp), b.read(fp.wrapping_add(8))) else {
            break;
        };
        if ra < 4096 {
            break;
        }
        out[n] = ra;
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}

/// One frame up.  `first`: the pc is exact (the capture point), not a
/// return address, so it is looked up as is rather than minus one.
/// `trace`: follow where the registers come from (own frames).
fn step(regs: &mut Regs, b: Bounds, first: bool, trace: Option<&mut own::Trace>) -> bool {
    let pc = regs.pc();
    let look = if first { pc } else { pc.wrapping_sub(1) };
    let Some(m) = modules::find_or_refresh(look) else {
        return false;
    };
    let Some(row) = cache::row(m, look, cfi::find_row) else {
        return false;
    };
    if row.signal {
        return false;
    }
    let cfa = match row.cfa {
        Cfa::Reg(r, off) => match regs.get(r as usize) {
            Some(v) => v.wrapping_add(off as usize),
            None => return false,
        },
        Cfa::Expr(start, len) => match cfi::eval(
            m,
            start,
            len as usize,
            &|r| regs.get(r),
            &|a| b.read(a),
            None,
        ) {
            Some(v) => v,
            None => return false,
        },
    };
    let old = *regs;
    let mut new = old;
    // Only the rules that are not `Same` (most rows: the return address
    // and a saved register or two).
    let mut changed = row.changed;
    while changed != 0 {
        let i = changed.trailing_zeros() as usize;
        changed &= changed - 1;
        let v = match row.rules[i] {
            Rule::Same => old.get_slot(i),
            Rule::Undefined => None,
            Rule::Offset(o) => b.read(cfa.wrapping_add(o as usize)),
            Rule::ValOffset(o) => Some(cfa.wrapping_add(o as usize)),
            Rule::Register(r) => old.get(r as usize),
            Rule::Expr(s, l) => {
                cfi::eval(m, s, l as usize, &|r| old.get(r), &|a| b.read(a), Some(cfa))
                    .and_then(|a| b.read(a))
            }
            Rule::ValExpr(s, l) => {
                cfi::eval(m, s, l as usize, &|r| old.get(r), &|a| b.read(a), Some(cfa))
            }
        };
        match v {
            Some(v) => new.set_slot(i, v),
            None => new.valid &= !(1 << i),
        }
    }
    // The return address: its own rule (the CIE's return register).
    let Some(ra) = new.get(row.ra_reg as usize) else {
        return false; // outermost frame (`_start`, a thread's entry)
    };
    if ra < 4096 || cfa <= old.sp() {
        return false;
    }
    new.set(RA, ra);
    new.set(RSP, cfa);
    *regs = new;
    if let Some(t) = trace {
        t.step(&row, row.ra_reg, ra);
    }
    true
}
