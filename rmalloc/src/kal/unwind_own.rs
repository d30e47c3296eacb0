//! The allocator's own frames, unwound once per call path and replayed.
//!
//! Every recorded stack starts inside the allocator (`capture`, `record`,
//! the sampled `malloc` path, `malloc` itself) and those frames always
//! have the same shape: for a given chain of return addresses, the same
//! rows, so the same stack offsets for each saved register and return
//! address.  Stepping through them with DWARF costs as much as the
//! program's own frames (about 40% of a sampled stack), for nothing new.
//!
//! So the first full unwind of a chain also traces where each register of
//! the first frame outside the allocator came from, relative to the
//! capture point's stack pointer ([`Prov`]), and publishes the result as a
//! [`Chain`].  Later captures replay it: read the return address at each
//! recorded offset, and if each equals the one recorded (the same
//! function at the same point, hence the same row), the outside frame's
//! registers follow from the recorded offsets without any DWARF.  Any
//! difference, an unreadable word, or a row the trace cannot express
//! (an expression, a CFA not based on the stack pointer) falls back to
//! the full unwind; the replay never guesses.
//!
//! Chains are published once and never changed (write-once slots): the
//! allocator's text is never unloaded (`-z nodelete`), so a chain stays
//! true for the life of the process.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, Ordering};

use super::super::cfi::{Cfa, Row, Rule, NSLOTS};
use super::{Bounds, Regs, RA, RSP};

/// Longest chain of own frames remembered.
const MAX_OWN: usize = 8;
/// Chains remembered (one per allocation entry point and path).
const SLOTS: usize = 16;

/// Where a register's value comes from, relative to the capture point.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Prov {
    Unknown,
    /// The stack pointer at the capture point plus this.
    SpRel(usize),
    /// The word at the stack pointer at the capture point plus this.
    Stack(usize),
    /// The value the register (this slot) had at the capture point.
    Initial(u8),
}

/// A traced chain: the return addresses of the own frames above the
/// capture frame and where each was read, then where the outside frame's
/// return address and registers come from.
#[derive(Clone, Copy)]
pub struct Chain {
    /// The capture point's pc.
    pc0: usize,
    /// `ras[i]`: the offset (from the capture point's sp) of the return
    /// address into own frame `i + 1`, and that address; the last entry's
    /// address is the outside frame's (not compared).
    ras: [(usize, usize); MAX_OWN + 1],
    n: usize,
    /// The outside frame's registers, by slot (RA and RSP included).
    regs: [Prov; NSLOTS],
}

/// Tracing during a full unwind of the own frames.
pub struct Trace {
    ok: bool,
    prov: [Prov; NSLOTS],
    chain: Chain,
}

fn slot(r: usize) -> Option<usize> {
    super::super::cfi::slot(r as u64)
}

impl Trace {
    /// At the capture point: the stack pointer and `rbp` are known, the pc
    /// is the capture point's own.
    pub fn start(pc0: usize) -> Trace {
        let mut prov = [Prov::Unknown; NSLOTS];
        for (i, p) in prov.iter_mut().enumerate() {
            *p = Prov::Initial(i as u8);
        }
        prov[slot(RSP).unwrap_or(0)] = Prov::SpRel(0);
        Trace {
            ok: true,
            prov,
            chain: Chain {
                pc0,
                ras: [(0, 0); MAX_OWN + 1],
                n: 0,
                regs: [Prov::Unknown; NSLOTS],
            },
        }
    }

    /// Follow one step: `row` was applied to the registers and gave the
    /// return address `ra` (the next frame's pc).
    pub fn step(&mut self, row: &Row, ra_reg: u16, ra: usize) {
        if !self.ok {
            return;
        }
        let cfa = match row.cfa {
            Cfa::Reg(r, off) => match slot(r as usize).map(|i| self.prov[i]) {
                Some(Prov::SpRel(k)) => k.wrapping_add(off as usize),
                _ => return self.fail(),
            },
            Cfa::Expr(..) => return self.fail(),
        };
        let old = self.prov;
        for i in 0..NSLOTS {
            self.prov[i] = match row.rules[i] {
                Rule::Same => old[i],
                Rule::Undefined => Prov::Unknown,
                Rule::Offset(o) => Prov::Stack(cfa.wrapping_add(o as usize)),
                Rule::ValOffset(o) => Prov::SpRel(cfa.wrapping_add(o as usize)),
                Rule::Register(r) => slot(r as usize).map_or(Prov::Unknown, |j| old[j]),
                Rule::Expr(..) | Rule::ValExpr(..) => return self.fail(),
            };
        }
        let Some(Prov::Stack(at)) = slot(ra_reg as usize).map(|i| self.prov[i]) else {
            return self.fail();
        };
        if self.chain.n > MAX_OWN {
            return self.fail();
        }
        self.chain.ras[self.chain.n] = (at, ra);
        self.chain.n += 1;
        self.prov[slot(RA).unwrap_or(0)] = Prov::Stack(at);
        self.prov[slot(RSP).unwrap_or(0)] = Prov::SpRel(cfa);
    }

    fn fail(&mut self) {
        self.ok = false;
    }

    /// The trace reached the first frame outside the allocator: publish
    /// the chain unless one like it is there already or it cannot be.
    pub fn publish(mut self) {
        if !self.ok || self.chain.n == 0 {
            return;
        }
        self.chain.regs = self.prov;
        for s in CHAINS.iter() {
            match s.state.load(Ordering::Acquire) {
                READY => {
                    // SAFETY: READY slots are never written again.
                    let c = unsafe { &*s.chain.get() };
                    if same_path(c, &self.chain) {
                        return;
                    }
                }
                EMPTY
                    if s.state
                        .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok() =>
                {
                    // SAFETY: this thread won the slot (WRITING); no
                    // reader looks at it before READY.
                    unsafe { *s.chain.get() = self.chain };
                    s.state.store(READY, Ordering::Release);
                    return;
                }
                _ => {}
            }
        }
    }
}

fn same_path(a: &Chain, b: &Chain) -> bool {
    a.pc0 == b.pc0 && a.n == b.n && a.ras[..a.n - 1] == b.ras[..b.n - 1]
}

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

struct Slot {
    state: AtomicU8,
    chain: UnsafeCell<Chain>,
}

// SAFETY: `chain` is written once by the thread that moved `state` from
// EMPTY to WRITING, and read only after `state` is READY (acquire).
unsafe impl Sync for Slot {}

static CHAINS: [Slot; SLOTS] = [const {
    Slot {
        state: AtomicU8::new(EMPTY),
        chain: UnsafeCell::new(Chain {
            pc0: 0,
            ras: [(0, 0); MAX_OWN + 1],
            n: 0,
            regs: [Prov::Unknown; NSLOTS],
        }),
    }
}; SLOTS];

/// Replay a published chain from the capture point's registers `at`:
/// the registers of the first frame outside `skip` and the pc of the
/// outermost own frame, or `None` if no chain matches this stack.
pub fn replay(at: &Regs, b: Bounds, skip: (usize, usize)) -> Option<(Regs, usize)> {
    let sp0 = at.sp();
    for s in CHAINS.iter() {
        if s.state.load(Ordering::Acquire) != READY {
            // Slots fill in order (a WRITING one may be skipped only for
            // the moment): nothing published beyond an empty one.
            if s.state.load(Ordering::Relaxed) == EMPTY {
                return None;
            }
            continue;
        }
        // SAFETY: READY slots are never written again.
        let c = unsafe { &*s.chain.get() };
        if let Some(r) = try_chain(c, at, sp0, b, skip) {
            return Some(r);
        }
    }
    None
}

fn try_chain(
    c: &Chain,
    at: &Regs,
    sp0: usize,
    b: Bounds,
    skip: (usize, usize),
) -> Option<(Regs, usize)> {
    if c.pc0 != at.pc() {
        return None;
    }
    for &(off, ra) in &c.ras[..c.n - 1] {
        if b.read(sp0.wrapping_add(off))? != ra {
            return None;
        }
    }
    let (off, _) = c.ras[c.n - 1];
    let out_pc = b.read(sp0.wrapping_add(off))?;
    if out_pc < 4096 || (skip.0 <= out_pc && out_pc < skip.1) {
        return None; // a longer own chain than this one: unwind it fully
    }
    let mut r = Regs::EMPTY;
    for (i, p) in c.regs.iter().enumerate() {
        let v = match *p {
            Prov::Unknown => None,
            Prov::SpRel(k) => Some(sp0.wrapping_add(k)),
            Prov::Stack(k) => Some(b.read(sp0.wrapping_add(k))?),
            Prov::Initial(j) => at.get_slot(j as usize),
        };
        if let Some(v) = v {
            r.set_slot(i, v);
        }
    }
    let entry = if c.n >= 2 { c.ras[c.n - 2].1 } else { c.pc0 };
    Some((r, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RBX: usize = 3;
    const RBP: usize = 6;

    fn row(cfa_off: i64, rules: &[(usize, Rule)]) -> Row {
        let mut r = Row {
            cfa: Cfa::Reg(RSP as u16, cfa_off),
            rules: [Rule::Same; NSLOTS],
            changed: 0,
            ra_reg: RA as u16,
            signal: false,
        };
        for &(reg, rule) in rules {
            let i = slot(reg).unwrap();
            r.rules[i] = rule;
            r.changed |= 1 << i;
        }
        r
    }

    /// Two own frames (the first saves rbx), traced once, then replayed on
    /// another stack with the same return addresses: the outside frame's
    /// registers are where a full unwind would find them; a different
    /// return address inside the chain is no match.
    #[test]
    fn a_traced_chain_replays_on_another_stack() {
        let skip = (0x1000_0000, 0x2000_0000);
        let (pc0, pc1, out) = (0x1000_0040, 0x1000_0400, 0x7000_1234);
        let row0 = row(16, &[(RA, Rule::Offset(-8)), (RBX, Rule::Offset(-16))]);
        let row1 = row(32, &[(RA, Rule::Offset(-8))]);
        let mut t = Trace::start(pc0);
        t.step(&row0, RA as u16, pc1);
        t.step(&row1, RA as u16, out);
        t.publish();

        let mut stack = [0usize; 16];
        let sp0 = stack.as_mut_ptr() as usize;
        // The replay reads the stack through raw addresses: write it so.
        let put = |i: usize, v: usize| {
            // SAFETY: i < 16, inside `stack`, which outlives every use.
            unsafe { (sp0 as *mut usize).add(i).write_volatile(v) }
        };
        put(0, 0xbb); // rbx saved by frame 0, at its CFA - 16
        put(1, pc1); // frame 0's return address, at its CFA - 8
        put(5, out); // frame 1's: CFA 16 + 32 = 48, minus 8
        let b = Bounds {
            lo: sp0,
            hi: sp0 + 16 * core::mem::size_of::<usize>(),
        };
        let mut at = Regs::EMPTY;
        at.set(RA, pc0);
        at.set(RSP, sp0);
        at.set(RBP, 0x5555);
        let (r, entry) = replay(&at, b, skip).expect("the chain matches");
        assert_eq!(entry, pc1, "the outermost own frame");
        assert_eq!(r.pc(), out);
        assert_eq!(r.sp(), sp0 + 48);
        assert_eq!(r.get(RBX), Some(0xbb));
        assert_eq!(
            r.get(RBP),
            Some(0x5555),
            "rbp was not saved: still the caller's"
        );
        assert_eq!(r.get(12), None, "r12 was never known");

        put(1, pc1 + 4);
        assert!(replay(&at, b, skip).is_none(), "another own path");
        put(1, pc1);
        put(5, 0x1000_0800);
        assert!(replay(&at, b, skip).is_none(), "a longer own chain");
    }

    /// A frame whose CFA is not the stack pointer plus a constant (here
    /// rbp-based) cannot be replayed: nothing is published.
    #[test]
    fn a_chain_through_a_frame_pointer_is_not_published() {
        let pc0 = 0x3000_0040;
        let mut r = row(16, &[(RA, Rule::Offset(-8))]);
        r.cfa = Cfa::Reg(RBP as u16, 16);
        let mut t = Trace::start(pc0);
        t.step(&r, RA as u16, 0x7000_0000);
        t.publish();
        for s in CHAINS.iter() {
            if s.state.load(Ordering::Acquire) == READY {
                // SAFETY: READY slots are never written again.
                assert_ne!(unsafe { (*s.chain.get()).pc0 }, pc0);
            }
        }
    }
}
