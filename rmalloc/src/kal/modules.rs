//! The loaded objects (the executable and its shared libraries), for the
//! unwinder (where each object's `.eh_frame_hdr` is) and for reports (which
//! object a return address lies in, and at what offset).
//!
//! The table is built with `dl_iterate_phdr`, which takes the loader's
//! lock but never allocates, and is published as a whole: a refresh fills
//! a new mapping and swaps a pointer, so readers (program threads
//! unwinding, the scanner thread reporting) never take a lock.  Old tables
//! stay mapped (a refresh happens only when a return address lies in no
//! known object and the loader's add/remove counters moved), so a reader
//! holding one never reads unmapped memory.
//!
//! Names are copied into the table: a report may name an object after it
//! was unloaded.

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use rmalloc_sys as sys;

use crate::lock::Mutex;

/// Longest object name kept (longer ones are cut).
pub const NAME_MAX: usize = 200;

/// One loaded object.
#[derive(Clone, Copy)]
pub struct Module {
    /// Load bias (`dlpi_addr`): an address minus this is the object's own
    /// virtual address, what `addr2line` and LeakSanitizer's `+0x` show.
    pub base: usize,
    /// Lowest and one past the highest address of its `PT_LOAD` segments.
    pub lo: usize,
    pub hi: usize,
    /// Run-time address of its `.eh_frame_hdr` (0: none).
    pub eh_frame_hdr: usize,
    /// Run-time address of its `PT_DYNAMIC` (0: none).
    pub dynamic: usize,
    /// Its GNU build-id (`build_id_len` bytes; 0: none).
    build_id: [u8; 20],
    build_id_len: u8,
    name_len: u16,
    name: [u8; NAME_MAX],
}

impl Module {
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len as usize]
    }

    pub fn build_id(&self) -> &[u8] {
        &self.build_id[..self.build_id_len as usize]
    }

    pub fn contains(&self, pc: usize) -> bool {
        self.lo <= pc && pc < self.hi
    }
}

/// A published table: a header word (count) then the modules.
#[repr(C)]
struct Table {
    n: usize,
    adds: u64,
    subs: u64,
    mods: [Module; 0],
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(core::ptr::null_mut());
static REFRESH: Mutex = Mutex::new();
/// Refreshes done (tests, verbosity).
pub static REFRESHES: AtomicU64 = AtomicU64::new(0);

/// glibc's `struct dl_phdr_info` (with the add/sub counters).
#[repr(C)]
struct PhdrInfo {
    addr: usize,
    name: *const c_char,
    phdr: *const Phdr,
    phnum: u16,
    adds: u64,
    subs: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_vaddr: u64,
    p_paddr: u64,
    p_filesz: u64,
    p_memsz: u64,
    p_align: u64,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_NOTE: u32 = 4;
const PT_GNU_EH_FRAME: u32 = 0x6474_e550;

extern "C" {
    fn dl_iterate_phdr(
        cb: unsafe extern "C" fn(*mut PhdrInfo, usize, *mut c_void) -> c_int,
        data: *mut c_void,
    ) -> c_int;
}

const PF_X: u32 = 1;
const PF_W: u32 = 2;

/// Where this library's own writable segments are (data, bss, GOT, the hot
/// statics): the allocator's and the engine's state, never a root of the
/// program.  (start, end) page-rounded; None if the loader does not list us.
pub fn own_writable() -> Option<(usize, usize)> {
    own_segments(PF_W)
}

/// Where this library's code is: from the first executable segment's start
/// to the last one's end.  The code is two mappings (`rmalloc/layout.ld`
/// gives the hot code a segment of its own), so the mapping around any one
/// function would miss the other.  Page-rounded; None if the loader does
/// not list us.
pub fn own_executable() -> Option<(usize, usize)> {
    own_segments(PF_X)
}

/// The span of this library's loaded segments that have `flag` set.
fn own_segments(flag: u32) -> Option<(usize, usize)> {
    struct Find {
        here: usize,
        flag: u32,
        range: Option<(usize, usize)>,
    }
    /// Called by `dl_iterate_phdr` with a valid info and our `Find`.
    unsafe extern "C" fn visit_own(info: *mut PhdrInfo, _: usize, data: *mut c_void) -> c_int {
        // SAFETY: callback contract: `info` and its program headers are
        // valid during the call; `data` is the `Find` passed in.
        unsafe {
            let f = &mut *(data as *mut Find);
            let info = &*info;
            let (mut lo, mut hi, mut ours) = (usize::MAX, 0usize, false);
            for i in 0..info.phnum as usize {
                let ph = *info.phdr.add(i);
                if ph.p_type != PT_LOAD {
                    continue;
                }
                let start = info.addr.wrapping_add(ph.p_vaddr as usize);
                let end = start + ph.p_memsz as usize;
                ours |= start <= f.here && f.here < end;
                if ph.p_flags & f.flag != 0 {
                    lo = lo.min(start & !4095);
                    hi = hi.max((end + 4095) & !4095);
                }
            }
            if ours {
                f.range = (hi > lo).then_some((lo, hi));
                return 1;
            }
            0
        }
    }
    let mut f = Find {
        here: own_segments as *const () as usize,
        flag,
        range: None,
    };
    // SAFETY: the callback only reads the headers it is given.
    unsafe { dl_iterate_phdr(visit_own, &mut f as *mut Find as *mut c_void) };
    f.range
}

/// The current table (empty before the first refresh).
pub fn table() -> &'static [Module] {
    let t = TABLE.load(Ordering::Acquire);
    if t.is_null() {
        return &[];
    }
    // SAFETY: published tables are fully written before the release store
    // and never unmapped nor changed afterwards.
    unsafe { core::slice::from_raw_parts((*t).mods.as_ptr(), (*t).n) }
}

/// The object holding `pc`, if known.
pub fn find(pc: usize) -> Option<&'static Module> {
    table().iter().find(|m| m.contains(pc))
}

/// The object holding `pc`, refreshing the table once if it is unknown and
/// the loader's list changed.  Only from program threads (calls into the
/// loader); never blocks on another refresh.
pub fn find_or_refresh(pc: usize) -> Option<&'static Module> {
    if let Some(m) = find(pc) {
        return Some(m);
    }
    refresh();
    find(pc)
}

struct Fill {
    table: *mut Table,
    cap: usize,
    count: usize,
    adds: u64,
    subs: u64,
    exe: [u8; NAME_MAX],
    exe_len: usize,
}

/// Callback: count only (when `table` is null), or fill.
///
/// # Safety
/// Called by `dl_iterate_phdr` with a valid info and our `Fill`.
unsafe extern "C" fn visit(info: *mut PhdrInfo, size: usize, data: *mut c_void) -> c_int {
    // SAFETY: callback contract: `info` is valid for `size` bytes, `data`
    // is the `Fill` passed in; its table (if any) has room for `cap`.
    unsafe {
        let f = &mut *(data as *mut Fill);
        let info = &*info;
        if size >= core::mem::size_of::<PhdrInfo>() {
            f.adds = info.adds;
            f.subs = info.subs;
        }
        if f.table.is_null() {
            f.count += 1;
            return 0;
        }
        if f.count >= f.cap {
            return 1;
        }
        let mut m = Module {
            base: info.addr,
            lo: usize::MAX,
            hi: 0,
            eh_frame_hdr: 0,
            dynamic: 0,
            build_id: [0; 20],
            build_id_len: 0,
            name_len: 0,
            name: [0; NAME_MAX],
        };
        for i in 0..info.phnum as usize {
            let ph = *info.phdr.add(i);
            let start = info.addr.wrapping_add(ph.p_vaddr as usize);
            match ph.p_type {
                PT_LOAD => {
                    m.lo = m.lo.min(start);
                    m.hi = m.hi.max(start + ph.p_memsz as usize);
                }
                PT_GNU_EH_FRAME => m.eh_frame_hdr = start,
                PT_DYNAMIC => m.dynamic = start,
                PT_NOTE if m.build_id_len == 0 => note_build_id(&mut m, start, ph.p_memsz as usize),
                _ => {}
            }
        }
        if m.hi == 0 {
            return 0;
        }
        let name: &[u8] = if info.name.is_null() || *info.name == 0 {
            if f.count == 0 {
                &f.exe[..f.exe_len] // the executable comes first, unnamed
            } else {
                b""
            }
        } else {
            core::ffi::CStr::from_ptr(info.name).to_bytes()
        };
        let n = name.len().min(NAME_MAX);
        m.name[..n].copy_from_slice(&name[..n]);
        m.name_len = n as u16;
        (*f.table).mods.as_mut_ptr().add(f.count).write(m);
        f.count += 1;
        0
    }
}

/// Find the GNU build-id note (type 3, name "GNU") in the loaded note
/// segment `[start, start + len)` of the object.
///
/// # Safety
/// The segment is mapped (a `PT_NOTE` inside a loaded `PT_LOAD`).
unsafe fn note_build_id(m: &mut Module, start: usize, len: usize) {
    let mut at = start;
    let end = start + len;
    while at + 12 <= end {
        // SAFETY: inside the note segment (contract), 4-byte aligned.
        let (namesz, descsz, kind) = unsafe {
            let w = at as *const u32;
            (*w as usize, *w.add(1) as usize, *w.add(2))
        };
        let name = at + 12;
        let desc = name + ((namesz + 3) & !3);
        let next = desc + ((descsz + 3) & !3);
        if next > end {
            return;
        }
        // SAFETY: `name` and `desc` lie inside the segment (checked above).
        let is_gnu = namesz == 4 && unsafe { *(name as *const [u8; 4]) } == *b"GNU\0";
        if kind == 3 && is_gnu && descsz <= 20 {
            // SAFETY: as above.
            let id = unsafe { core::slice::from_raw_parts(desc as *const u8, descsz) };
            m.build_id[..descsz].copy_from_slice(id);
            m.build_id_len = descsz as u8;
            return;
        }
        at = next;
    }
}

/// Rebuild the table from the loader's list, unless another thread is at
/// it or nothing was loaded or unloaded since the last one.
pub fn refresh() {
    if !REFRESH.try_lock() {
        return;
    }
    let mut f = Fill {
        table: core::ptr::null_mut(),
        cap: 0,
        count: 0,
        adds: 0,
        subs: 0,
        exe: [0; NAME_MAX],
        exe_len: 0,
    };
    // SAFETY: our callback only reads the loader's info.
    unsafe { dl_iterate_phdr(visit, &mut f as *mut Fill as *mut c_void) };
    let old = TABLE.load(Ordering::Acquire);
    // SAFETY: a published table is immutable.
    if !old.is_null() && unsafe { (*old).adds == f.adds && (*old).subs == f.subs } {
        REFRESH.unlock();
        return;
    }
    f.exe_len = sys::task::readlink(c"/proc/self/exe", &mut f.exe).unwrap_or(0);
    f.cap = f.count + 16; // room for objects loaded meanwhile
    let bytes = core::mem::size_of::<Table>() + f.cap * core::mem::size_of::<Module>();
    let bytes = (bytes + sys::PAGE_SIZE - 1) & !(sys::PAGE_SIZE - 1);
    // SAFETY: a fresh private mapping at an address the kernel picks.  It
    // holds no heap pointers, so leaving it to the root scan is harmless.
    let Ok(p) = (unsafe {
        sys::mmap_anon(
            0,
            bytes,
            sys::PROT_READ | sys::PROT_WRITE,
            sys::MAP_NORESERVE,
        )
    }) else {
        REFRESH.unlock();
        return;
    };
    f.table = p as *mut Table;
    f.count = 0;
    // SAFETY: the mapping is ours, zeroed, and large enough for `cap`.
    unsafe { dl_iterate_phdr(visit, &mut f as *mut Fill as *mut c_void) };
    // SAFETY: as above; published only after it is complete.
    unsafe {
        (*f.table).n = f.count;
        (*f.table).adds = f.adds;
        (*f.table).subs = f.subs;
    }
    TABLE.store(f.table, Ordering::Release);
    REFRESHES.fetch_add(1, Ordering::Relaxed);
    REFRESH.unlock();
}

/// After `fork`: the refresh lock may have been held by a thread that is
/// gone in the child.
pub fn reset_after_fork() {
    REFRESH.reset();
}

/// The name of the exported function containing `pc`, from the object's
/// dynamic symbol table (no debug information needed, no allocation).
/// Only symbols the object exports are found, as `dladdr` would.
pub fn dynamic_symbol(m: &Module, pc: usize) -> Option<&'static [u8]> {
    if m.dynamic == 0 {
        return None;
    }
    let (mut symtab, mut strtab, mut gnu_hash, mut hash) = (0usize, 0usize, 0usize, 0usize);
    let mut d = m.dynamic as *const [usize; 2];
    // SAFETY: PT_DYNAMIC of a loaded object: an array of (tag, value)
    // ending with DT_NULL; the loader relocated the pointer values.
    unsafe {
        loop {
            let [tag, val] = *d;
            match tag {
                0 => break,
                4 => hash = val,
                5 => strtab = val,
                6 => symtab = val,
                0x6fff_fef5 => gnu_hash = val,
                _ => {}
            }
            d = d.add(1);
        }
    }
    // The vDSO's and some objects' entries are not relocated.
    let fix = |a: usize| if a != 0 && a < m.lo { a + m.base } else { a };
    let (symtab, strtab, gnu_hash, hash) = (fix(symtab), fix(strtab), fix(gnu_hash), fix(hash));
    if symtab == 0 || strtab == 0 {
        return None;
    }
    // SAFETY: the hash tables of a loaded object, read as the loader does.
    let nsyms = unsafe {
        if hash != 0 {
            *(hash as *const u32).add(1) as usize
        } else if gnu_hash != 0 {
            gnu_hash_count(gnu_hash)
        } else {
            return None;
        }
    };
    let off = pc.wrapping_sub(m.base) as u64;
    let mut best: Option<(u64, u32)> = None;
    for i in 0..nsyms {
        // SAFETY: `i` < the symbol count the hash table gives.
        let s = unsafe { &*(symtab as *const Sym).add(i) };
        let is_func = s.info & 0xf == 2 || s.info & 0xf == 10; // FUNC, IFUNC
        if !is_func || s.shndx == 0 || s.value > off {
            continue;
        }
        let better = match best {
            Some((v, _)) => s.value > v,
            None => true,
        };
        if off < s.value + s.size.max(1) && better {
            best = Some((s.value, s.name));
        }
    }
    let (_, name) = best?;
    // SAFETY: a NUL-terminated string of the object's string table, mapped
    // as long as the object is loaded.
    Some(unsafe { core::ffi::CStr::from_ptr((strtab + name as usize) as *const c_char) }.to_bytes())
}

#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// Number of symbols of a `DT_GNU_HASH` table: one past the highest index
/// any bucket chain reaches.
///
/// # Safety
/// `h` is a loaded object's GNU hash table.
unsafe fn gnu_hash_count(h: usize) -> usize {
    // SAFETY: the table's layout: nbuckets, symoffset, bloom size, shift,
    // bloom words, buckets, chains (each chain ends with a low bit set).
    unsafe {
        let w = h as *const u32;
        let (nbuckets, symoffset, bloom) = (*w as usize, *w.add(1) as usize, *w.add(2) as usize);
        let buckets = (h + 16 + bloom * 8) as *const u32;
        let chains = buckets.add(nbuckets);
        let mut last = 0usize;
        for b in 0..nbuckets {
            last = last.max(*buckets.add(b) as usize);
        }
        if last < symoffset {
            return symoffset;
        }
        while *chains.add(last - symoffset) & 1 == 0 {
            last += 1;
        }
        last + 1
    }
}
