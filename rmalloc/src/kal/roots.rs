//! Where roots come from: the process's memory map, and the user pointers
//! the kernel holds for the process outside its memory.
//!
//! Memory roots are every readable, writable mapping (data and bss of every
//! loaded object including `dlopen`ed ones, stacks, TLS blocks, program
//! `mmap`s, shared memory), minus the heap itself, the engine's own mappings
//! and the kernel's special pages.  The mark loop decides how much of a stack
//! mapping to scan; this module only reads and classifies.
//!
//! Kernel-held roots: `epoll` registration data (`/proc/self/fdinfo`) and
//! POSIX timer `sigev_value`s (`/proc/self/timers`).  A source that cannot
//! be read makes the scan unable to prove anything unreachable: the caller
//! then frees nothing from that snapshot.  (The kernel backend takes them
//! from its image instead where the kernel records them, see
//! `kernel_backend`; this is the path of the fork backend and of kernels
//! without that record.)

use core::ffi::CStr;

use rmalloc_sys as sys;
use sys::task;

use super::mem::MVec;

/// Read a whole (small, procfs) file into `buf`.  Err(errno) on failure.
pub fn read_file(path: &CStr, buf: &mut MVec<u8>) -> Result<(), i32> {
    buf.clear();
    let fd = sys::open_rdonly(path)?;
    let mut chunk = [0u8; 4096];
    let r = loop {
        match sys::read(fd, &mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if !buf.reserve(n) {
                    break Err(sys::ENOMEM);
                }
                for &b in &chunk[..n] {
                    buf.push(b);
                }
            }
            Err(sys::EINTR) => continue,
            Err(e) => break Err(e),
        }
    };
    sys::close(fd);
    r
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    pub read: bool,
    pub write: bool,
    /// `[vvar]`, `[vsyscall]`, `[vdso]` and similar: never roots.
    pub special: bool,
}

fn hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0usize;
    for &b in s {
        let d = (b as char).to_digit(16)?;
        v = (v << 4) | d as usize;
    }
    Some(v)
}

/// Parse one line of `/proc/self/maps`.
pub fn parse_maps_line(line: &[u8]) -> Option<Mapping> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let range = fields.next()?;
    let perms = fields.next()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = hex(&range[..dash])?;
    let end = hex(&range[dash + 1..])?;
    let path = fields.nth(3).unwrap_or(b"");
    let special = path.starts_with(b"[v") || path == b"[uprobes]";
    Some(Mapping {
        start,
        end,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        special,
    })
}

/// A mapping as `/proc/self/smaps` describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Area {
    pub start: usize,
    pub end: usize,
    pub read: bool,
    pub write: bool,
    /// No access at all (`---p`): a guard page or a reservation.
    pub none: bool,
    /// Backed by a file (a path starting with '/').
    pub file: bool,
    /// The main thread's `[stack]`.
    pub main_stack: bool,
    /// `MAP_SHARED`: not copied-on-write by fork.
    pub shared: bool,
    pub special: bool,
    /// Resident and anonymous (copied-on-write, for a file mapping) bytes.
    pub rss_kb: usize,
    pub anon_kb: usize,
    /// `VmFlags`: `wf` (wiped in a fork child), `dc` (absent from it).
    pub wipe_on_fork: bool,
    pub dont_fork: bool,
}

fn kb(line: &[u8], key: &[u8]) -> Option<usize> {
    let rest = line.strip_prefix(key)?;
    let digits: &[u8] = trim(rest).split(|&b| b == b' ').next().unwrap_or(b"");
    dec(digits).map(|v| v as usize)
}

/// Every mapping of a `/proc/self/smaps` text, with its sizes and flags.
pub fn for_each_area(text: &[u8], mut f: impl FnMut(Area)) {
    let mut cur: Option<Area> = None;
    for line in text.split(|&b| b == b'\n') {
        if let Some(m) = parse_maps_line(line) {
            if let Some(a) = cur.take() {
                f(a);
            }
            let mut fields = line.split(|&b| b == b' ').filter(|x| !x.is_empty());
            let perms = fields.nth(1).unwrap_or(b"");
            let path = fields.nth(3).unwrap_or(b"");
            cur = Some(Area {
                start: m.start,
                end: m.end,
                read: m.read,
                write: m.write,
                none: perms.starts_with(b"---"),
                shared: perms.get(3) == Some(&b's'),
                file: path.first() == Some(&b'/'),
                main_stack: path == b"[stack]",
                special: m.special,
                ..Area::default()
            });
            continue;
        }
        let Some(a) = cur.as_mut() else { continue };
        if let Some(v) = kb(line, b"Rss:") {
            a.rss_kb = v;
        } else if let Some(v) = kb(line, b"Anonymous:") {
            a.anon_kb = v;
        } else if let Some(flags) = line.strip_prefix(b"VmFlags:") {
            for fl in flags.split(|&b| b == b' ') {
                a.wipe_on_fork |= fl == b"wf";
                a.dont_fork |= fl == b"dc";
            }
        }
    }
    if let Some(a) = cur {
        f(a);
    }
}

/// Every mapping in a `/proc/self/maps` text.
pub fn for_each_mapping(text: &[u8], mut f: impl FnMut(Mapping)) {
    for line in text.split(|&b| b == b'\n') {
        if let Some(m) = parse_maps_line(line) {
            f(m);
        }
    }
}

/// Call `f(n)` for every entry of directory `path` whose name is a decimal
/// number (tids in `/proc/self/task`, fds in `/proc/self/fd`), until `f`
/// returns false.  False if the directory could not be read to its end or
/// `f` stopped early.
pub fn for_each_numbered(path: &CStr, mut f: impl FnMut(i32) -> bool) -> bool {
    let Ok(dir) = task::open_dir(path) else {
        return false;
    };
    let mut buf = [0u8; 4096];
    let ok = 'outer: loop {
        let n = match task::getdents(dir, &mut buf) {
            Ok(0) => break true,
            Ok(n) => n,
            Err(_) => break false,
        };
        // linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
        let mut off = 0;
        while off + 19 < n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            off += reclen.max(1);
            if let Some(v) = dec(name) {
                if !f(v) {
                    break 'outer false;
                }
            }
        }
    };
    sys::close(dir);
    ok
}

/// `prefix` followed by decimal `n` and a NUL, in `buf`.
pub fn numbered<'a>(prefix: &[u8], n: i32, suffix: &[u8], buf: &'a mut [u8; 96]) -> &'a CStr {
    let mut digits = [0u8; 12];
    let mut k = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        k -= 1;
        digits[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut len = 0;
    for part in [prefix, &digits[k..], suffix] {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    buf[len] = 0;
    CStr::from_bytes_with_nul(&buf[..=len]).unwrap_or(c"")
}

/// Why a kernel-held root source could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelRootsError {
    /// `/proc/self/timers` is missing (kernel without CHECKPOINT_RESTORE).
    Timers,
    /// An epoll instance's registrations could not be read.
    Epoll,
    /// The fd table could not be listed.
    Fds,
    /// A queued real-time signal (other than ours) is pending: its
    /// `sival_ptr` is invisible from user space.
    QueuedSignal,
}

/// Append every user pointer the kernel holds for the process to `out`.
/// Must run while the program's threads are stopped.
pub fn kernel_roots(
    out: &mut MVec<u64>,
    scratch: &mut MVec<u8>,
    stop_signal: i32,
) -> Result<(), KernelRootsError> {
    out.clear();
    // POSIX timers: "signal: 34/00007f0000001234" per timer.
    match read_file(c"/proc/self/timers", scratch) {
        Ok(()) => {
            for line in scratch.as_slice().split(|&b| b == b'\n') {
                if let Some(rest) = line.strip_prefix(b"signal: ") {
                    if let Some(slash) = rest.iter().position(|&b| b == b'/') {
                        let v = hex(trim(&rest[slash + 1..])).unwrap_or(0);
                        if !out.push(v as u64) {
                            return Err(KernelRootsError::Timers);
                        }
                    }
                }
            }
        }
        Err(_) => return Err(KernelRootsError::Timers),
    }
    // Process-wide pending signals: a queued RT signal may carry a pointer.
    if read_file(c"/proc/self/status", scratch).is_ok() {
        for line in scratch.as_slice().split(|&b| b == b'\n') {
            if let Some(rest) = line.strip_prefix(b"ShdPnd:") {
                let mask = hex(trim(rest)).unwrap_or(0) as u64;
                let ours = 1u64 << (stop_signal - 1);
                if mask & !ours & 0xffff_ffff_0000_0000 != 0 {
                    return Err(KernelRootsError::QueuedSignal);
                }
            }
        }
    }
    // Real-time signals queued to one thread: a thread's own `SigPnd`.
    let mut pending = false;
    for_each_numbered(c"/proc/self/task", |tid| {
        let mut pbuf = [0u8; 96];
        let path = numbered(b"/proc/self/task/", tid, b"/status", &mut pbuf);
        if read_file(path, scratch).is_ok() {
            for line in scratch.as_slice().split(|&b| b == b'\n') {
                if let Some(rest) = line.strip_prefix(b"SigPnd:") {
                    let mask = hex(trim(rest)).unwrap_or(0) as u64;
                    let ours = 1u64 << (stop_signal - 1);
                    pending |= mask & !ours & 0xffff_ffff_0000_0000 != 0;
                }
            }
        } // else: exited meanwhile
        !pending
    });
    if pending {
        return Err(KernelRootsError::QueuedSignal);
    }
    // epoll registrations: "tfd: 5 events: 19 data: 7f1234567890 ..." lines.
    let mut result = Ok(());
    let listed = for_each_numbered(c"/proc/self/fd", |fd| {
        let mut pbuf = [0u8; 96];
        let mut link = [0u8; 64];
        let Ok(len) = task::readlink(numbered(b"/proc/self/fd/", fd, b"", &mut pbuf), &mut link)
        else {
            return true; // closed meanwhile, or the directory's own fd
        };
        if &link[..len] != b"anon_inode:[eventpoll]" {
            return true;
        }
        if read_file(numbered(b"/proc/self/fdinfo/", fd, b"", &mut pbuf), scratch).is_err() {
            result = Err(KernelRootsError::Epoll);
            return false;
        }
        for line in scratch.as_slice().split(|&b| b == b'\n') {
            if !line.starts_with(b"tfd:") {
                continue;
            }
            // The value is right-aligned in a 16-character field.
            let parsed = find(line, b" data: ").and_then(|at| {
                let rest = trim(&line[at + 7..]);
                let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                hex(&rest[..end])
            });
            match parsed {
                Some(v) if out.push(v as u64) => {}
                Some(_) => {
                    // No memory to keep it: the root would be lost.
                    result = Err(KernelRootsError::Epoll);
                    return false;
                }
                None => {
                    result = Err(KernelRootsError::Epoll);
                    return false;
                }
            }
        }
        true
    });
    if !listed && result.is_ok() {
        result = Err(KernelRootsError::Fds);
    }
    result
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let b = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(a, |i| i + 1);
    &s[a..b]
}

fn dec(s: &[u8]) -> Option<i32> {
    if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0i32, |a, &b| a * 10 + (b - b'0') as i32))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let m = parse_maps_line(
            b"7f12a000-7f12b000 rw-p 00000000 00:00 0                          [stack]",
        )
        .unwrap();
        assert_eq!(
            (m.start, m.end, m.read, m.write, m.special),
            (0x7f12a000, 0x7f12b000, true, true, false)
        );
        let v =
            parse_maps_line(b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]")
                .unwrap();
        assert!(v.special && !v.read);
        assert!(parse_maps_line(b"garbage").is_none());
    }

    #[test]
    fn epoll_data_is_a_kernel_root() {
        // SAFETY: plain syscalls on fds this test owns.
        unsafe {
            let ep = libc::epoll_create1(0);
            let mut fds = [0i32; 2];
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0x7f00_dead_beef_0010,
            };
            assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fds[0], &mut ev), 0);
            let mut out = MVec::new();
            let mut scratch = MVec::new();
            let r = kernel_roots(&mut out, &mut scratch, 61);
            if r != Err(KernelRootsError::Timers) {
                r.unwrap();
                assert!(out.as_slice().contains(&0x7f00_dead_beef_0010));
            }
            libc::close(ep);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
