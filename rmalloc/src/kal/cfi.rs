//! DWARF call-frame information (`.eh_frame`, `.eh_frame_hdr`) of the
//! loaded objects, read in place without allocating: the FDE covering an
//! address (binary search of the `.eh_frame_hdr` table), its CIE, the
//! call-frame instructions run up to that address (the resulting [`Row`]),
//! and the DWARF expressions rules may use.  The unwinder ([`super::unwind`])
//! applies rows to registers.
//!
//! Every read of unwind data is bounded by the object's mapped extent, and
//! anything unexpected (an encoding or instruction outside what GCC, clang
//! and GNU as emit for x86-64) makes the lookup fail, which ends the stack.

use super::modules::Module;

/// DWARF number of the stack pointer.
const RSP: usize = 7;

/// Registers tracked: the callee-saved ones a CFA or a saved-register
/// rule can refer to (rbx, rbp, rsp, r12-r15) and the return address.
/// Rules for the others are read and ignored.
pub const NSLOTS: usize = 8;

/// The slot of DWARF register `r`, if tracked.
pub fn slot(r: u64) -> Option<usize> {
    match r {
        3 => Some(0),
        6 => Some(1),
        7 => Some(2),
        12..=15 => Some(r as usize - 9),
        16 => Some(7),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Rule {
    Same,
    Undefined,
    Offset(i64),
    ValOffset(i64),
    Register(u16),
    /// Expression (start address, length): where the value is saved.
    Expr(usize, u32),
    ValExpr(usize, u32),
}

#[derive(Clone, Copy)]
pub enum Cfa {
    Reg(u16, i64),
    Expr(usize, u32),
}

/// What the call-frame information says for one address.
#[derive(Clone, Copy)]
pub struct Row {
    pub cfa: Cfa,
    pub rules: [Rule; NSLOTS],
    /// Bit `i` set: `rules[i]` is not `Same` (set by [`find_row`]; the
    /// unwinder applies only those).
    pub changed: u8,
    pub ra_reg: u16,
    pub signal: bool,
}

/// A bounded reader over one object's mapped unwind data.
struct Cur {
    p: usize,
    end: usize,
}

impl Cur {
    fn u8(&mut self) -> Option<u8> {
        if self.p >= self.end {
            return None;
        }
        // SAFETY: inside the object's mapped segments (`end` is its bound).
        let v = unsafe { (self.p as *const u8).read() };
        self.p += 1;
        Some(v)
    }

    fn fixed<const N: usize>(&mut self) -> Option<u64> {
        if self.p.checked_add(N)? > self.end {
            return None;
        }
        let mut v = 0u64;
        for i in 0..N {
            // SAFETY: bounds checked above.
            v |= (unsafe { ((self.p + i) as *const u8).read() } as u64) << (8 * i);
        }
        self.p += N;
        Some(v)
    }

    fn uleb(&mut self) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= ((b & 0x7f) as u64) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
    }

    fn sleb(&mut self) -> Option<i64> {
        let (mut v, mut shift) = (0i64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= ((b & 0x7f) as i64) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
        }
    }

    /// A pointer in `DW_EH_PE_*` encoding `enc`; `data` is the base of
    /// `datarel` (the `.eh_frame_hdr`).
    fn encoded(&mut self, enc: u8, data: usize) -> Option<usize> {
        if enc == 0xff {
            return Some(0);
        }
        let at = self.p;
        let v = match enc & 0x0f {
            0x00 => self.fixed::<8>()? as usize,
            0x01 => self.uleb()? as usize,
            0x02 => self.fixed::<2>()? as usize,
            0x03 => self.fixed::<4>()? as usize,
            0x04 => self.fixed::<8>()? as usize,
            0x09 => self.sleb()? as usize,
            0x0a => self.fixed::<2>()? as i16 as isize as usize,
            0x0b => self.fixed::<4>()? as i32 as isize as usize,
            0x0c => self.fixed::<8>()? as usize,
            _ => return None,
        };
        let v = match enc & 0x70 {
            0x00 => v,
            0x10 => v.wrapping_add(at),
            0x30 => v.wrapping_add(data),
            _ => return None,
        };
        if enc & 0x80 != 0 {
            return None; // indirect: only personality pointers use it
        }
        Some(v)
    }
}

/// The row of call-frame information for `pc` in object `m`.
pub fn find_row(m: &Module, pc: usize) -> Option<Row> {
    let hdr = m.eh_frame_hdr;
    if hdr == 0 || !m.contains(hdr) {
        return None;
    }
    let mut c = Cur { p: hdr, end: m.hi };
    let (version, ptr_enc, count_enc, table_enc) = (c.u8()?, c.u8()?, c.u8()?, c.u8()?);
    if version != 1 || table_enc != 0x3b {
        return None; // only the sorted datarel|sdata4 table GNU ld and lld write
    }
    let _eh_frame = c.encoded(ptr_enc, hdr)?;
    let count = c.encoded(count_enc, hdr)?;
    let table = c.p;
    if count == 0 || table.checked_add(count.checked_mul(8)?)? > m.hi {
        return None;
    }
    let entry = |i: usize| -> (usize, usize) {
        // SAFETY: `i` < count, and the table lies inside the object.
        unsafe {
            let e = (table + i * 8) as *const i32;
            (
                hdr.wrapping_add(e.read_unaligned() as isize as usize),
                hdr.wrapping_add(e.add(1).read_unaligned() as isize as usize),
            )
        }
    };
    // Last entry whose start is <= pc.
    let (mut lo, mut hi) = (0usize, count);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if entry(mid).0 <= pc {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (start, fde) = entry(lo);
    if start > pc || !m.contains(fde) {
        return None;
    }
    run_fde(m, fde, pc, hdr)
}

/// Parse the FDE at `fde` and its CIE, and run both programs up to `pc`.
fn run_fde(m: &Module, fde: usize, pc: usize, hdr: usize) -> Option<Row> {
    let mut c = Cur { p: fde, end: m.hi };
    let len = c.fixed::<4>()? as usize;
    if len == 0 || len == 0xffff_ffff {
        return None;
    }
    let fde_end = c.p.checked_add(len)?.min(m.hi);
    let id_at = c.p;
    let cie_off = c.fixed::<4>()? as usize;
    if cie_off == 0 {
        return None; // a CIE, not an FDE
    }
    let cie = id_at.wrapping_sub(cie_off);
    if !m.contains(cie) {
        return None;
    }
    let info = parse_cie(m, cie, hdr)?;
    c.end = fde_end;
    let begin = c.encoded(info.fde_enc, hdr)?;
    let range = c.encoded(info.fde_enc & 0x0f, hdr)?;
    if pc < begin || pc >= begin.wrapping_add(range) {
        return None;
    }
    if info.has_z {
        let l = c.uleb()? as usize;
        c.p = c.p.checked_add(l)?;
    }
    let mut row = Row {
        cfa: Cfa::Reg(RSP as u16, 8),
        rules: [Rule::Same; NSLOTS],
        changed: 0,
        ra_reg: info.ra_reg,
        signal: info.signal,
    };
    let mut prog = Prog {
        info: &info,
        hdr,
        stack: [row; 4],
        depth: 0,
        initial: row,
    };
    let mut ci = Cur {
        p: info.insns,
        end: info.insns_end,
    };
    prog.run(&mut ci, &mut row, usize::MAX, 0)?;
    prog.initial = row;
    prog.run(&mut c, &mut row, pc, begin)?;
    for (i, r) in row.rules.iter().enumerate() {
        if *r != Rule::Same {
            row.changed |= 1 << i;
        }
    }
    Some(row)
}

struct CieInfo {
    code_align: u64,
    data_align: i64,
    ra_reg: u16,
    fde_enc: u8,
    has_z: bool,
    signal: bool,
    insns: usize,
    insns_end: usize,
}

fn parse_cie(m: &Module, cie: usize, hdr: usize) -> Option<CieInfo> {
    let mut c = Cur { p: cie, end: m.hi };
    let len = c.fixed::<4>()? as usize;
    if len == 0 || len == 0xffff_ffff {
        return None;
    }
    let end = c.p.checked_add(len)?.min(m.hi);
    c.end = end;
    if c.fixed::<4>()? != 0 {
        return None;
    }
    let version = c.u8()?;
    let aug_start = c.p;
    while c.u8()? != 0 {}
    let aug_end = c.p - 1;
    let code_align = c.uleb()?;
    let data_align = c.sleb()?;
    let ra_reg = if version == 1 {
        c.u8()? as u16
    } else {
        c.uleb()? as u16
    };
    let mut info = CieInfo {
        code_align,
        data_align,
        ra_reg,
        fde_enc: 0,
        has_z: false,
        signal: false,
        insns: 0,
        insns_end: end,
    };
    let mut a = aug_start;
    // SAFETY (each read below): inside the CIE, bounded by `aug_end`.
    let aug = |i: usize| unsafe { (i as *const u8).read() };
    if a < aug_end && aug(a) == b'z' {
        info.has_z = true;
        let l = c.uleb()? as usize;
        let data_end = c.p.checked_add(l)?;
        a += 1;
        while a < aug_end {
            match aug(a) {
                b'R' => info.fde_enc = c.u8()?,
                b'L' => {
                    c.u8()?;
                }
                b'P' => {
                    let enc = c.u8()?;
                    c.encoded(enc & 0x7f, hdr)?;
                }
                b'S' => info.signal = true,
                b'B' | b'G' => {}
                _ => break,
            }
            a += 1;
        }
        c.p = data_end;
    } else if a < aug_end {
        return None; // an augmentation we cannot skip without 'z'
    }
    info.insns = c.p;
    Some(info)
}

struct Prog<'a> {
    info: &'a CieInfo,
    hdr: usize,
    stack: [Row; 4],
    depth: usize,
    initial: Row,
}

impl Prog<'_> {
    /// Run call-frame instructions from `c`, starting at location `loc`,
    /// while the location stays <= `pc`.
    fn run(&mut self, c: &mut Cur, row: &mut Row, pc: usize, mut loc: usize) -> Option<()> {
        let ca = self.info.code_align as usize;
        let da = self.info.data_align;
        while c.p < c.end {
            let op = c.u8()?;
            let (hi, lo) = (op & 0xc0, op & 0x3f);
            let advance = |loc: &mut usize, d: usize| {
                *loc = loc.wrapping_add(d.wrapping_mul(ca));
                *loc <= pc
            };
            match hi {
                0x40 => {
                    if !advance(&mut loc, lo as usize) {
                        return Some(());
                    }
                    continue;
                }
                0x80 => {
                    let off = c.uleb()? as i64 * da;
                    if let Some(i) = slot(lo as u64) {
                        row.rules[i] = Rule::Offset(off);
                    }
                    continue;
                }
                0xc0 => {
                    if let Some(i) = slot(lo as u64) {
                        row.rules[i] = self.initial.rules[i];
                    }
                    continue;
                }
                _ => {}
            }
            match op {
                0x00 => {}
                0x01 => {
                    loc = c.encoded(self.info.fde_enc, self.hdr)?;
                    if loc > pc {
                        return Some(());
                    }
                }
                0x02..=0x04 => {
                    let d = match op {
                        0x02 => c.u8()? as usize,
                        0x03 => c.fixed::<2>()? as usize,
                        _ => c.fixed::<4>()? as usize,
                    };
                    if !advance(&mut loc, d) {
                        return Some(());
                    }
                }
                0x05 | 0x11 | 0x14 | 0x15 | 0x2f => {
                    let r = c.uleb()?;
                    let off = match op {
                        0x05 | 0x14 => c.uleb()? as i64 * da,
                        0x2f => -(c.uleb()? as i64) * da,
                        _ => c.sleb()? * da,
                    };
                    if let Some(i) = slot(r) {
                        row.rules[i] = if op == 0x14 || op == 0x15 {
                            Rule::ValOffset(off)
                        } else {
                            Rule::Offset(off)
                        };
                    }
                }
                0x06..=0x08 => {
                    let r = c.uleb()?;
                    if let Some(i) = slot(r) {
                        row.rules[i] = match op {
                            0x06 => self.initial.rules[i],
                            0x07 => Rule::Undefined,
                            _ => Rule::Same,
                        };
                    }
                }
                0x09 => {
                    let (r, r2) = (c.uleb()?, c.uleb()?);
                    if let Some(i) = slot(r) {
                        row.rules[i] = Rule::Register(r2 as u16);
                    }
                }
                0x0a => {
                    if self.depth >= self.stack.len() {
                        return None;
                    }
                    self.stack[self.depth] = *row;
                    self.depth += 1;
                }
                0x0b => {
                    if self.depth == 0 {
                        return None;
                    }
                    self.depth -= 1;
                    *row = self.stack[self.depth];
                }
                0x0c => {
                    let r = c.uleb()? as u16;
                    let off = c.uleb()? as i64;
                    row.cfa = Cfa::Reg(r, off);
                }
                0x12 => {
                    let r = c.uleb()? as u16;
                    let off = c.sleb()? * da;
                    row.cfa = Cfa::Reg(r, off);
                }
                0x0d => {
                    let r = c.uleb()? as u16;
                    row.cfa = match row.cfa {
                        Cfa::Reg(_, off) => Cfa::Reg(r, off),
                        Cfa::Expr(..) => Cfa::Reg(r, 0),
                    };
                }
                0x0e | 0x13 => {
                    let off = if op == 0x0e {
                        c.uleb()? as i64
                    } else {
                        c.sleb()? * da
                    };
                    if let Cfa::Reg(r, _) = row.cfa {
                        row.cfa = Cfa::Reg(r, off);
                    }
                }
                0x0f => {
                    let l = c.uleb()? as u32;
                    row.cfa = Cfa::Expr(c.p, l);
                    c.p = c.p.checked_add(l as usize)?;
                }
                0x10 | 0x16 => {
                    let r = c.uleb()?;
                    let l = c.uleb()? as u32;
                    if let Some(i) = slot(r) {
                        row.rules[i] = if op == 0x10 {
                            Rule::Expr(c.p, l)
                        } else {
                            Rule::ValExpr(c.p, l)
                        };
                    }
                    c.p = c.p.checked_add(l as usize)?;
                }
                0x2e => {
                    c.uleb()?;
                }
                _ => return None,
            }
        }
        Some(())
    }
}

/// Evaluate a DWARF expression (the subset call-frame information uses:
/// PLT entries' CFA, glibc's signal trampoline).  `cfa` is pushed first
/// for register rules.
pub fn eval(
    m: &Module,
    start: usize,
    len: usize,
    reg: &dyn Fn(usize) -> Option<usize>,
    read: &dyn Fn(usize) -> Option<usize>,
    cfa: Option<usize>,
) -> Option<usize> {
    let mut st = [0usize; 16];
    let mut n = 0usize;
    let mut c = Cur {
        p: start,
        end: start.checked_add(len)?.min(m.hi),
    };
    macro_rules! push {
        ($v:expr) => {{
            if n >= st.len() {
                return None;
            }
            st[n] = $v;
            n += 1;
        }};
    }
    macro_rules! pop {
        () => {{
            if n == 0 {
                return None;
            }
            n -= 1;
            st[n]
        }};
    }
    if let Some(c) = cfa {
        push!(c);
    }
    while c.p < c.end {
        let op = c.u8()?;
        match op {
            0x30..=0x4f => push!((op - 0x30) as usize),
            0x70..=0x8f => {
                let r = (op - 0x70) as usize;
                let off = c.sleb()?;
                push!(reg(r)?.wrapping_add(off as usize));
            }
            0x92 => {
                let r = c.uleb()? as usize;
                let off = c.sleb()?;
                push!(reg(r)?.wrapping_add(off as usize));
            }
            0x08 => push!(c.u8()? as usize),
            0x09 => push!(c.u8()? as i8 as isize as usize),
            0x0a => push!(c.fixed::<2>()? as usize),
            0x0b => push!(c.fixed::<2>()? as i16 as isize as usize),
            0x0c => push!(c.fixed::<4>()? as usize),
            0x0d => push!(c.fixed::<4>()? as i32 as isize as usize),
            0x10 => push!(c.uleb()? as usize),
            0x11 => push!(c.sleb()? as usize),
            0x06 => {
                let a = pop!();
                push!(read(a)?);
            }
            0x12 => {
                let a = pop!();
                push!(a);
                push!(a);
            }
            0x1a | 0x1c | 0x1e | 0x21 | 0x22 | 0x24 | 0x25 | 0x27 | 0x29..=0x2e => {
                let y = pop!();
                let x = pop!();
                push!(match op {
                    0x1a => x & y,
                    0x1c => x.wrapping_sub(y),
                    0x1e => x.wrapping_mul(y),
                    0x21 => x | y,
                    0x22 => x.wrapping_add(y),
                    0x24 => x.wrapping_shl(y as u32),
                    0x25 => x.wrapping_shr(y as u32),
                    0x27 => x ^ y,
                    0x29 => (x == y) as usize,
                    0x2a => ((x as isize) >= (y as isize)) as usize,
                    0x2b => ((x as isize) > (y as isize)) as usize,
                    0x2c => ((x as isize) <= (y as isize)) as usize,
                    0x2d => ((x as isize) < (y as isize)) as usize,
                    _ => (x != y) as usize,
                });
            }
            0x23 => {
                let x = pop!();
                push!(x.wrapping_add(c.uleb()? as usize));
            }
            _ => return None,
        }
    }
    if n == 0 {
        return None;
    }
    Some(st[n - 1])
}
