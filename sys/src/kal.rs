//! The `kal_snapshot` system call: uapi mirror and raw wrappers.
//!
//! Mirrors `include/uapi/linux/kal.h` from the `kernel-patch/` series
//! (ABI version 1).  `kal_snapshot(ranges, nr_ranges, flags)` gives the calling
//! process a close-on-exec file descriptor for a copy-on-write image of the
//! given ranges of its own memory, taken at one instant.  `pread` at a virtual
//! address reads the image; `pread` at [`KAL_META_OFFSET`] and above reads a
//! [`KalMeta`] header, the captured ranges and, with
//! [`KAL_SNAPSHOT_STOP_THREADS`], one [`KalThread`] per thread.
//!
//! The system call exists only on x86-64 kernels carrying the patch.  Always
//! call [`probe`] first: it tells "present, ABI N" apart from `ENOSYS` and
//! from an unrelated system call that a future kernel might put at the same
//! number, and it is safe on any kernel.  Like the rest of this crate, nothing
//! here allocates, locks or touches thread-local storage.

use crate::SysResult;
use syscalls::{syscall, Errno, Sysno};

/// System call number on x86-64 (far above upstream's range, see the README).
pub const NR_KAL_SNAPSHOT: usize = 1000;
/// ABI version this mirror describes.
pub const KAL_ABI_VERSION: u32 = 1;
/// The probe returns `KAL_PROBE_MAGIC | abi_version`.
pub const KAL_PROBE_MAGIC: u32 = 0x4b41_4c00;
/// Bits of the probe's return value that carry the ABI version.
pub const KAL_PROBE_ABI_MASK: u32 = 0xff;

/// Stop every other thread of the process for the instant of the snapshot and
/// record their user registers.
pub const KAL_SNAPSHOT_STOP_THREADS: u32 = 0x1;
/// Copy every page table at the instant instead of lazily (the default):
/// the pause then grows with the number of 4 KiB pages, as fork()'s does.
pub const KAL_SNAPSHOT_EAGER: u32 = 0x2;
/// Also record the user values the kernel holds for the process (epoll data,
/// POSIX timer values, queued signals' values), read with [`read_roots`].
/// Only on a kernel whose [`features`] include [`KAL_FEATURE_ROOTS`]; an
/// older one rejects the flag with `EINVAL`.
pub const KAL_SNAPSHOT_ROOTS: u32 = 0x4;
/// Probe: `kal_snapshot(NULL, 0, KAL_SNAPSHOT_PROBE)`.
pub const KAL_SNAPSHOT_PROBE: u32 = 0x8000_0000;
/// Most ranges one call accepts (`E2BIG` beyond) on an ABI 1 kernel, which
/// says so in `/sys/kernel/mm/kal/max_ranges`; the engine never asks for more.
pub const KAL_MAX_RANGES: usize = 4096;

/// File offset of the image metadata; offsets below are virtual addresses.
pub const KAL_META_OFFSET: u64 = 1 << 62;
/// [`KalMeta::magic`].
pub const KAL_META_MAGIC: u32 = 0x4b41_4c4d;

/// [`KalThread::state`]: the thread that called `kal_snapshot`.
pub const KAL_THREAD_CALLER: u32 = 0x1;
/// [`KalThread::state`]: held at its return to user mode.
pub const KAL_THREAD_STOPPED: u32 = 0x2;
/// [`KalThread::state`]: held inside the kernel (asleep, preempted, or running a
/// system call); the registers are its user state as saved at kernel entry.
pub const KAL_THREAD_IN_KERNEL: u32 = 0x4;
/// [`KalThread::state`] flag: the thread is traced, so a tracer may change its
/// registers and memory behind the snapshot's back.
pub const KAL_THREAD_TRACED: u32 = 0x8;
/// Number of general-purpose registers in [`KalThread::gpr`].
pub const KAL_NR_GPR: usize = 16;

/// Errno values the call documents (beyond the ones in the crate root).
pub const EPERM: i32 = 1;
pub const EBADF: i32 = 9;
pub const EFAULT: i32 = 14;
pub const ENXIO: i32 = 6;
pub const E2BIG: i32 = 7;
pub const ENOSYS: i32 = 38;
pub const EOPNOTSUPP: i32 = 95;
pub const ENODATA: i32 = 61;

/// One page-aligned range of the caller's address space (`struct kal_range`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KalRange {
    pub start: u64,
    pub len: u64,
}

/// Image metadata header (`struct kal_meta`), at [`KAL_META_OFFSET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KalMeta {
    pub magic: u32,
    pub abi: u32,
    pub flags: u32,
    pub nr_ranges: u32,
    pub nr_threads: u32,
    /// Byte offset of the [`KalRange`] array, relative to [`KAL_META_OFFSET`].
    pub range_offset: u32,
    /// Byte offset of the [`KalThread`] array, relative to [`KAL_META_OFFSET`].
    pub thread_offset: u32,
    pub thread_size: u32,
    pub size: u64,
    pub captured_bytes: u64,
}

/// User-mode state of one thread at the snapshot instant (`struct kal_thread`).
///
/// On x86-64 `gpr` is in instruction-encoding order: rax, rcx, rdx, rbx, rsp,
/// rbp, rsi, rdi, r8 ... r15; `tp` is the fs base (the thread pointer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KalThread {
    pub tid: i32,
    pub state: u32,
    pub ip: u64,
    pub sp: u64,
    pub tp: u64,
    pub flags: u64,
    pub gpr: [u64; KAL_NR_GPR],
}

/// `/sys/kernel/mm/kal/features`: what the call offers beyond ABI 1.
pub const KAL_SYSFS_FEATURES: &core::ffi::CStr = c"/sys/kernel/mm/kal/features";
/// [`features`] bit: [`KAL_SNAPSHOT_ROOTS`] and [`KAL_IOC_ROOTS`].
pub const KAL_FEATURE_ROOTS: u32 = 0x1;

/// [`KalRoot::kind`]: `epoll_event.data` of a registration.
pub const KAL_ROOT_EPOLL: u32 = 1;
/// [`KalRoot::kind`]: `sigev_value` of a POSIX timer.
pub const KAL_ROOT_TIMER: u32 = 2;
/// [`KalRoot::kind`]: `si_value` of a queued signal.
pub const KAL_ROOT_SIGNAL: u32 = 3;
/// [`KalRoots::incomplete`] bits: that kind could not be recorded in full.
pub const KAL_ROOTS_EPOLL_INCOMPLETE: u32 = 0x1;
pub const KAL_ROOTS_TIMER_INCOMPLETE: u32 = 0x2;
pub const KAL_ROOTS_SIGNAL_INCOMPLETE: u32 = 0x4;
/// [`KalRoots::version`] this mirror describes.
pub const KAL_ROOTS_VERSION: u32 = 1;
/// `_IOWR(0xB9, 0x01, struct kal_roots)`.
pub const KAL_IOC_ROOTS: u32 =
    (3 << 30) | ((core::mem::size_of::<KalRoots>() as u32) << 16) | (0xB9 << 8) | 1;

/// One user value the kernel held for the process at the instant
/// (`struct kal_root`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KalRoot {
    pub value: u64,
    /// `KAL_ROOT_*`.
    pub kind: u32,
    /// Signal: the thread whose queue holds it, 0 for the process's queue.
    pub tid: i32,
    /// Epoll: the epoll fd (-1 when nested); timer: its id; signal: its number.
    pub id: i32,
    /// Epoll: the registered fd; timer: its signal; signal: `si_code`.
    pub aux: i32,
}

/// The header of [`KAL_IOC_ROOTS`] (`struct kal_roots`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KalRoots {
    pub size: u32,
    pub version: u32,
    pub incomplete: u32,
    pub root_size: u32,
    pub nr_epoll: u32,
    pub nr_timer: u32,
    pub nr_signal: u32,
    pub nr_roots: u32,
    pub roots: u64,
    pub capacity: u32,
    pub nr_copied: u32,
}

/// The kernel's [`KAL_SYSFS_FEATURES`] mask; 0 when the file is missing
/// (a kernel that offers nothing beyond ABI 1).
pub fn features() -> u32 {
    read_number(KAL_SYSFS_FEATURES).unwrap_or(0)
}

/// [`KAL_IOC_ROOTS`] on image `fd` (taken with [`KAL_SNAPSHOT_ROOTS`]):
/// copies up to `out.len()` roots into `out` and returns the header, whose
/// `nr_roots` may exceed `nr_copied` (then call again with more room).
/// `Err(ENODATA)` for an image taken without the flag.
pub fn read_roots(fd: i32, out: &mut [KalRoot]) -> SysResult<KalRoots> {
    let mut h = KalRoots {
        size: core::mem::size_of::<KalRoots>() as u32,
        roots: out.as_mut_ptr() as u64,
        capacity: u32::try_from(out.len()).unwrap_or(u32::MAX),
        ..KalRoots::default()
    };
    // SAFETY: `h` is a live KalRoots; the kernel writes at most `capacity`
    // entries at `out`, a writable slice of at least that many.
    unsafe {
        syscall!(
            Sysno::ioctl,
            fd as usize,
            KAL_IOC_ROOTS as usize,
            &mut h as *mut KalRoots as usize
        )
    }
    .map_err(|e| e.into_raw())?;
    if h.version < KAL_ROOTS_VERSION || h.root_size as usize != core::mem::size_of::<KalRoot>() {
        return Err(crate::EINVAL);
    }
    Ok(h)
}

/// Decode the probe's raw return value: `Some(abi)` only when it carries the magic.
#[inline]
pub fn decode_probe(ret: Result<usize, Errno>) -> Option<u32> {
    match ret {
        Ok(v) if v <= u32::MAX as usize && (v as u32) & !KAL_PROBE_ABI_MASK == KAL_PROBE_MAGIC => {
            Some(v as u32 & KAL_PROBE_ABI_MASK)
        }
        _ => None,
    }
}

/// The kernel's description of `kal_snapshot`: its ABI version.  Present
/// only on a kernel that has the call (`/sys/kernel/mm/kal/`, beside
/// `syscall`, `max_ranges` and `max_images`).
pub const KAL_SYSFS_ABI: &core::ffi::CStr = c"/sys/kernel/mm/kal/abi";

/// Does this kernel have `kal_snapshot`?  Returns its ABI version, or `None`.
///
/// Reads [`KAL_SYSFS_ABI`] first and executes no system call when it is
/// missing: an unknown system call is fatal under a seccomp filter whose
/// default action kills (systemd's `SystemCallFilter=`, sandboxes).  Only
/// when the file names an ABI does it make the probe call, which must
/// answer the same version.  (The file says what the kernel has, not what a
/// seccomp filter lets through: a process that installs its own filter must
/// allow the call before it probes.)  The probe passes a null pointer, a
/// zero count and a single flag bit, which an unrelated system call rejects
/// or ignores.
pub fn probe() -> Option<u32> {
    probe_at(KAL_SYSFS_ABI)
}

fn probe_at(abi_file: &core::ffi::CStr) -> Option<u32> {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        return None;
    }
    let abi = read_number(abi_file)?;
    // SAFETY: no pointer is passed (null ranges, zero count).
    let ret = unsafe { raw_kal_snapshot(core::ptr::null(), 0, KAL_SNAPSHOT_PROBE) };
    decode_probe(ret).filter(|&v| v == abi)
}

/// A file that holds one decimal number and a newline, as sysfs files do.
fn read_number(path: &core::ffi::CStr) -> Option<u32> {
    let fd = crate::open_rdonly(path).ok()?;
    let mut buf = [0u8; 24];
    let n = crate::read(fd, &mut buf);
    crate::close(fd);
    parse_number(&buf[..n.ok()?])
}

fn parse_number(text: &[u8]) -> Option<u32> {
    let digits = text.strip_suffix(b"\n").unwrap_or(text);
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |v, d| v * 10 + u32::from(d - b'0')))
}

/// The raw call, errors as [`Errno`].
///
/// # Safety
/// `ranges` must point to `nr` readable [`KalRange`]s (or be null with `nr == 0`).
#[inline]
pub unsafe fn raw_kal_snapshot(
    ranges: *const KalRange,
    nr: u32,
    flags: u32,
) -> Result<usize, Errno> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the caller guarantees `ranges`; the kernel validates the rest.
        let r = unsafe {
            syscalls::raw::syscall3(
                NR_KAL_SNAPSHOT,
                ranges as usize,
                nr as usize,
                flags as usize,
            )
        };
        Errno::from_ret(r)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ranges, nr, flags);
        Err(Errno::ENOSYS)
    }
}

/// Take a snapshot of `ranges`; returns the image's file descriptor.
///
/// Callers should [`probe`] once first; on a kernel without the call this
/// returns `Err(ENOSYS)` (or whatever an unrelated call at that number says).
pub fn kal_snapshot(ranges: &[KalRange], flags: u32) -> SysResult<i32> {
    if ranges.len() > KAL_MAX_RANGES {
        return Err(E2BIG);
    }
    // SAFETY: `ranges` is a live slice of `ranges.len()` elements.
    unsafe { raw_kal_snapshot(ranges.as_ptr(), ranges.len() as u32, flags) }
        .map(|fd| fd as i32)
        .map_err(|e| e.into_raw())
}

/// `pread` of an image descriptor `fd` (see [`Image::read_at`]), for a
/// reader that holds the descriptor without owning it.
pub fn read_image(fd: i32, off: u64, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is a valid writable slice for its length.
    unsafe {
        syscall!(
            Sysno::pread64,
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
            off as usize
        )
    }
    .map_err(|e| e.into_raw())
}

/// An image, closed on drop.
#[derive(Debug)]
pub struct Image {
    fd: i32,
}

impl Image {
    /// Snapshot `ranges` (see [`kal_snapshot`]).
    pub fn take(ranges: &[KalRange], flags: u32) -> SysResult<Image> {
        kal_snapshot(ranges, flags).map(|fd| Image { fd })
    }

    /// The file descriptor (still owned by the image).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Read the image at file offset `off` (a virtual address, or
    /// [`KAL_META_OFFSET`] and above).  Short at the end of a captured range;
    /// `Err(ENXIO)` outside the captured ranges.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> SysResult<usize> {
        read_image(self.fd, off, buf)
    }

    /// Read one `T` (a plain `#[repr(C)]` uapi struct) at `off`.
    fn read_pod<T: Copy + Default>(&self, off: u64) -> SysResult<T> {
        let mut v = T::default();
        // SAFETY: T is one of this module's plain-data uapi structs; every
        // byte pattern is a valid value.
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(&mut v as *mut T as *mut u8, core::mem::size_of::<T>())
        };
        match self.read_at(off, bytes)? {
            n if n == bytes.len() => Ok(v),
            _ => Err(crate::EINVAL),
        }
    }

    /// The metadata header.
    pub fn meta(&self) -> SysResult<KalMeta> {
        let m: KalMeta = self.read_pod(KAL_META_OFFSET)?;
        if m.magic != KAL_META_MAGIC {
            return Err(crate::EINVAL);
        }
        Ok(m)
    }

    /// Captured range `i` (sorted, merged).
    pub fn range(&self, meta: &KalMeta, i: u32) -> SysResult<KalRange> {
        if i >= meta.nr_ranges {
            return Err(crate::EINVAL);
        }
        self.read_pod(KAL_META_OFFSET + meta.range_offset as u64 + i as u64 * 16)
    }

    /// Recorded thread `i`.
    pub fn thread(&self, meta: &KalMeta, i: u32) -> SysResult<KalThread> {
        if i >= meta.nr_threads {
            return Err(crate::EINVAL);
        }
        self.read_pod(
            KAL_META_OFFSET + meta.thread_offset as u64 + i as u64 * meta.thread_size as u64,
        )
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        crate::close(self.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_header() {
        assert_eq!(core::mem::size_of::<KalRange>(), 16);
        assert_eq!(core::mem::size_of::<KalMeta>(), 48);
        assert_eq!(core::mem::size_of::<KalThread>(), 168);
        assert_eq!(core::mem::align_of::<KalThread>(), 8);
        assert_eq!(core::mem::size_of::<KalRoot>(), 24);
        assert_eq!(core::mem::size_of::<KalRoots>(), 48);
        assert_eq!(KAL_IOC_ROOTS, 0xc030_b901);
    }

    #[test]
    fn probe_decoding() {
        assert_eq!(decode_probe(Ok((KAL_PROBE_MAGIC | 1) as usize)), Some(1));
        assert_eq!(decode_probe(Ok((KAL_PROBE_MAGIC | 7) as usize)), Some(7));
        assert_eq!(decode_probe(Ok(0)), None);
        assert_eq!(decode_probe(Ok(3)), None);
        assert_eq!(decode_probe(Ok(0x4b41_4d01)), None);
        assert_eq!(
            decode_probe(Ok((1usize << 32) | (KAL_PROBE_MAGIC as usize | 1))),
            None
        );
        assert_eq!(decode_probe(Err(Errno::ENOSYS)), None);
        assert_eq!(decode_probe(Err(Errno::EINVAL)), None);
    }

    /// On a stock kernel the probe must say "not available" and not crash;
    /// on a patched one it must report ABI 1.
    #[test]
    fn probe_is_safe_here() {
        match probe() {
            None => {
                let r = kal_snapshot(
                    &[KalRange {
                        start: 0,
                        len: 4096,
                    }],
                    0,
                );
                assert!(r.is_err());
            }
            Some(abi) => assert_eq!(abi, KAL_ABI_VERSION),
        }
    }

    #[test]
    fn sysfs_numbers_parse_strictly() {
        assert_eq!(parse_number(b"1\n"), Some(1));
        assert_eq!(parse_number(b"4096"), Some(4096));
        for bad in [
            &b""[..],
            b"\n",
            b"1 \n",
            b"-1\n",
            b"0x10\n",
            b"12345678901\n",
        ] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
    }

    /// Without the sysfs file the probe executes no system call, so a
    /// seccomp filter that kills on the call's number does not kill the
    /// process.  The control shows that the filter would: the call itself
    /// ends the child with SIGSYS.
    #[test]
    fn probe_without_the_sysfs_file_makes_no_call() {
        const SIGSYS: i32 = 31;
        let run = |call_directly: bool| -> i32 {
            // SAFETY: the child only makes raw system calls and exits.
            let pid = unsafe { crate::task::fork_raw() }.expect("fork");
            if pid == 0 {
                kill_on_kal_snapshot();
                let none = if call_directly {
                    // SAFETY: no pointer is passed.
                    let _ = unsafe { raw_kal_snapshot(core::ptr::null(), 0, KAL_SNAPSHOT_PROBE) };
                    true
                } else {
                    probe_at(c"/nonexistent/kal/abi").is_none()
                };
                crate::task::exit_now(if none { 0 } else { 1 });
            }
            crate::task::wait_clone(pid).expect("wait")
        };
        assert_eq!(
            run(false),
            0,
            "wait status: SIGSYS means the probe made the call; exit 2 or 3, no filter"
        );
        assert_eq!(run(true) & 0x7f, SIGSYS, "the filter does not kill");
    }

    /// Install a seccomp filter that kills the process on `kal_snapshot`'s
    /// number (x86-64) and allows everything else.  Runs in a forked child:
    /// it exits (2, 3) instead of panicking when the kernel refuses.
    fn kill_on_kal_snapshot() {
        #[repr(C)]
        struct SockFilter {
            code: u16,
            jt: u8,
            jf: u8,
            k: u32,
        }
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const SockFilter,
        }
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
        const ALLOW: u32 = 0x7fff_0000;
        const KILL_PROCESS: u32 = 0x8000_0000;
        let f = |code, jt, jf, k| SockFilter { code, jt, jf, k };
        let prog = [
            f(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
            f(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            f(RET_K, 0, 0, ALLOW),
            f(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
            f(JEQ_K, 0, 1, NR_KAL_SNAPSHOT as u32),
            f(RET_K, 0, 0, KILL_PROCESS),
            f(RET_K, 0, 0, ALLOW),
        ];
        let fprog = SockFprog {
            len: prog.len() as u16,
            filter: prog.as_ptr(),
        };
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) and seccomp(SET_MODE_FILTER)
        // read only `fprog` and `prog`, which live across the calls.
        unsafe {
            syscalls::syscall!(
                syscalls::Sysno::prctl,
                38usize,
                1usize,
                0usize,
                0usize,
                0usize
            )
            .unwrap_or_else(|_| crate::task::exit_now(2));
            syscalls::syscall!(
                syscalls::Sysno::seccomp,
                1usize,
                0usize,
                &fprog as *const SockFprog as usize
            )
            .unwrap_or_else(|_| crate::task::exit_now(3));
        }
    }

    #[test]
    fn too_many_ranges_is_e2big_before_the_kernel() {
        let r = [KalRange::default(); KAL_MAX_RANGES + 1];
        assert_eq!(kal_snapshot(&r, 0), Err(E2BIG));
    }

    /// The kernel's record of an epoll registration's data, only where the
    /// kernel records kernel-held roots.
    #[test]
    fn roots_roundtrip_if_available() {
        if probe().is_none() || features() & KAL_FEATURE_ROOTS == 0 {
            return;
        }
        const DATA: u64 = 0x7f00_1234_5678_9ab0;
        // SAFETY: plain system calls on descriptors this test owns; the
        // event is a live 12-byte `struct epoll_event` (packed on x86-64).
        let (ep, efd) = unsafe {
            let ep = syscall!(Sysno::epoll_create1, 0usize).unwrap();
            let efd = syscall!(Sysno::eventfd2, 0usize, 0usize).unwrap();
            let mut ev = [0u8; 12];
            ev[..4].copy_from_slice(&1u32.to_ne_bytes());
            ev[4..].copy_from_slice(&DATA.to_ne_bytes());
            syscall!(Sysno::epoll_ctl, ep, 1usize, efd, ev.as_mut_ptr() as usize).unwrap();
            (ep, efd)
        };
        // SAFETY: fresh anonymous mapping owned by this test.
        let p =
            unsafe { crate::mmap_anon(0, 4096, crate::PROT_READ | crate::PROT_WRITE, 0).unwrap() };
        let range = [KalRange {
            start: p as u64,
            len: 4096,
        }];
        let plain = Image::take(&range, 0).unwrap();
        assert_eq!(read_roots(plain.fd(), &mut []), Err(ENODATA));
        let img = Image::take(&range, KAL_SNAPSHOT_ROOTS).unwrap();
        let mut roots = [KalRoot::default(); 8];
        let h = read_roots(img.fd(), &mut roots).unwrap();
        assert_eq!((h.nr_epoll, h.incomplete), (1, 0));
        assert_eq!(h.nr_copied, h.nr_roots);
        let r = roots[..h.nr_copied as usize]
            .iter()
            .find(|r| r.kind == KAL_ROOT_EPOLL)
            .unwrap();
        assert_eq!((r.value, r.id, r.aux), (DATA, ep as i32, efd as i32));
        drop((plain, img));
        crate::close(ep as i32);
        crate::close(efd as i32);
        // SAFETY: unmapping the test's own mapping.
        unsafe { crate::munmap(p, 4096).unwrap() };
    }

    /// Full round trip, only where the kernel has the call.
    #[test]
    fn snapshot_roundtrip_if_available() {
        if probe().is_none() {
            return;
        }
        // SAFETY: fresh anonymous mapping owned by this test.
        let p =
            unsafe { crate::mmap_anon(0, 8192, crate::PROT_READ | crate::PROT_WRITE, 0).unwrap() };
        // SAFETY: p is a live 8 KiB mapping.
        unsafe { p.write_bytes(0xab, 8192) };
        let img = Image::take(
            &[KalRange {
                start: p as u64,
                len: 8192,
            }],
            0,
        )
        .unwrap();
        // SAFETY: as above.
        unsafe { p.write_bytes(0xcd, 8192) };
        let mut b = [0u8; 16];
        assert_eq!(img.read_at(p as u64, &mut b), Ok(16));
        assert_eq!(b, [0xab; 16]);
        let m = img.meta().unwrap();
        assert_eq!(m.nr_ranges, 1);
        assert_eq!(
            img.range(&m, 0).unwrap(),
            KalRange {
                start: p as u64,
                len: 8192
            }
        );
        assert_eq!(img.read_at(p as u64 + 8192, &mut b), Err(ENXIO));
        drop(img);
        // SAFETY: unmapping the test's own mapping.
        unsafe { crate::munmap(p, 8192).unwrap() };
    }
}
