//! The C ABI: glibc's malloc family under its public names and its
//! `__libc_*` aliases, plus rmalloc's own extensions.
//!
//! Only built into the shared library and rlib users (not into this
//! crate's unit tests, which must keep the test harness on its own malloc).
//! Each function is a thin shim over `api.rs` / `stats.rs`.

use core::ffi::{c_char, c_int, c_void};

use crate::api;
use crate::stats::{self, Mallinfo, Mallinfo2};

type Ptr = *mut c_void;

macro_rules! export {
    ($section:literal; $($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty = $body:expr;)*) => {
        $(
            /// # Safety
            /// The contract of the C function of this name.
            #[no_mangle]
            #[link_section = $section]
            // A few bodies (`mallopt`, `mallinfo`, ...) call safe functions.
            #[allow(unused_unsafe)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: see the comment above `export!`'s use below.
                unsafe { $body }
            }
        )*
    };
}

/// KAL's allocation-stack hooks: one flag test while KAL is off or
/// `sites=off` (see `kal::stacks`).
#[inline(always)]
fn sited(p: *mut u8) -> Ptr {
    if crate::kal::stacks::ON.load(core::sync::atomic::Ordering::Relaxed) {
        // SAFETY: `p` was just returned by the allocator to this thread.
        unsafe { crate::kal::stacks::on_alloc(p) };
    }
    p.cast()
}

#[inline(always)]
fn unsited(p: Ptr) -> *mut u8 {
    if crate::kal::stacks::ON.load(core::sync::atomic::Ordering::Relaxed) {
        // SAFETY: the program passes `p` to free/realloc.
        unsafe { crate::kal::stacks::on_free(p.cast()) };
    }
    p.cast()
}

/// `realloc` with the stack hooks (`realloc(NULL, n)` and `realloc(p, 0)`
/// are `malloc` and `free`, which have their own).
///
/// # Safety
/// As `api::realloc`.
#[inline(always)]
unsafe fn realloc_sited(p: Ptr, n: usize) -> Ptr {
    // SAFETY: forwarded contract.
    unsafe {
        if p.is_null() || n == 0 {
            return api::realloc(p.cast(), n).cast();
        }
        sited(api::realloc(unsited(p), n))
    }
}

/// `posix_memalign` with the stack hook.
///
/// # Safety
/// As `api::posix_memalign`.
#[inline(always)]
unsafe fn posix_memalign_sited(out: *mut Ptr, a: usize, n: usize) -> c_int {
    // SAFETY: forwarded contract; `*out` is written on success.
    unsafe {
        let r = api::posix_memalign(out.cast(), a, n);
        if r == 0 {
            sited((*out).cast());
        }
        r
    }
}

// SAFETY (for every function below): these are the C entry points; the
// caller's obligations are those of the C functions they implement, which
// are exactly the preconditions of the `api` functions they forward to.
// Every program calls these: `.text.hot` (rmalloc/layout.ld).
export! {
    ".text.hot.rmalloc";
    // `malloc` and `free` record and forget stacks themselves, out of line
    // (`api::malloc_sampled`, `api::free_sited`): their fast paths carry
    // only the sampling countdown and the bin limit they compare anyway.
    malloc(n: usize) -> Ptr = api::malloc(n).cast();
    __libc_malloc(n: usize) -> Ptr = api::malloc(n).cast();
    free(p: Ptr) -> () = api::free(p.cast());
    __libc_free(p: Ptr) -> () = api::free(p.cast());
    cfree(p: Ptr) -> () = api::free(p.cast());
    calloc(n: usize, s: usize) -> Ptr = sited(api::calloc(n, s));
    __libc_calloc(n: usize, s: usize) -> Ptr = sited(api::calloc(n, s));
}

// Many programs call these, not all: `.text.warm`, a mapping of its own
// beside the hot code's (rmalloc/layout.ld), so a program that never calls
// them does not map their pages.
export! {
    ".text.warm.rmalloc";
    realloc(p: Ptr, n: usize) -> Ptr = realloc_sited(p, n);
    __libc_realloc(p: Ptr, n: usize) -> Ptr = realloc_sited(p, n);
    reallocarray(p: Ptr, n: usize, s: usize) -> Ptr =
        sited(api::reallocarray(unsited(p), n, s));
    memalign(a: usize, n: usize) -> Ptr = sited(api::memalign(a, n));
    __libc_memalign(a: usize, n: usize) -> Ptr = sited(api::memalign(a, n));
    aligned_alloc(a: usize, n: usize) -> Ptr = sited(api::memalign(a, n));
    posix_memalign(out: *mut Ptr, a: usize, n: usize) -> c_int = posix_memalign_sited(out, a, n);
    __posix_memalign(out: *mut Ptr, a: usize, n: usize) -> c_int = posix_memalign_sited(out, a, n);
    valloc(n: usize) -> Ptr = sited(api::valloc(n));
    __libc_valloc(n: usize) -> Ptr = sited(api::valloc(n));
    pvalloc(n: usize) -> Ptr = sited(api::pvalloc(n));
    __libc_pvalloc(n: usize) -> Ptr = sited(api::pvalloc(n));
    malloc_usable_size(p: Ptr) -> usize = api::usable_size(p.cast());
    mallopt(param: c_int, value: c_int) -> c_int = api::mallopt(param, value);
    __libc_mallopt(param: c_int, value: c_int) -> c_int = api::mallopt(param, value);
    malloc_trim(pad: usize) -> c_int = api::malloc_trim(pad);
    mallinfo() -> Mallinfo = stats::mallinfo();
    __libc_mallinfo() -> Mallinfo = stats::mallinfo();
    mallinfo2() -> Mallinfo2 = stats::mallinfo2();
    malloc_stats() -> () = stats::malloc_stats();
    malloc_info(options: c_int, fp: *mut libc::FILE) -> c_int = stats::malloc_info(options, fp);
}

static VERSION: &[u8] = concat!("rmalloc ", env!("CARGO_PKG_VERSION"), "\0").as_bytes();

/// Version string of this library.
#[no_mangle]
pub extern "C" fn rmalloc_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// Check every arena's invariants: 0 if consistent, else -1 with the
/// first problem reported on stderr.
#[no_mangle]
pub extern "C" fn rmalloc_check_heap() -> c_int {
    match crate::check::check_all() {
        Ok(()) => 0,
        Err(p) => {
            let _ = rmalloc_sys::write_all(2, b"rmalloc_check_heap: ");
            let _ = rmalloc_sys::write_all(2, p.as_bytes());
            let _ = rmalloc_sys::write_all(2, b"\n");
            -1
        }
    }
}

#[link_section = ".text.hot.rmalloc"]
extern "C" fn at_unload() {
    crate::kal::at_exit();
    crate::stats::write_exit_stats();
}

#[link_section = ".text.hot.rmalloc"]
extern "C" fn at_load() {
    crate::kal::start_from_env();
}

/// Runs when the library is loaded, after libc is initialised and before
/// the program's own constructors: KAL starts here, never from inside the
/// loader's first `malloc`.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = at_load;

/// `struct rmalloc_kal_stats` (rmalloc.h): fill as much as the caller's
/// `size` allows.
///
/// # Safety
/// `out` is null or points to a writable `struct rmalloc_kal_stats` whose
/// `size` field holds its size in bytes.
#[no_mangle]
pub unsafe extern "C" fn rmalloc_kal_stats(out: *mut crate::kal::stats::CStats) -> c_int {
    let min = 16u64;
    // SAFETY: the caller passes a valid struct whose first field is `size`
    // (contract of the C function).
    if out.is_null() || unsafe { (*out).size } < min {
        api::set_errno(libc::EINVAL);
        return -1;
    }
    let s = crate::kal::c_stats();
    // SAFETY: as above.
    let n = core::cmp::min(unsafe { (*out).size }, s.size) as usize;
    // SAFETY: both are valid for `n` bytes: `s` is a whole CStats and the
    // caller's struct is at least `size` bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(&s as *const _ as *const u8, out as *mut u8, n);
        (*out).size = n as u64;
    }
    0
}

static MODE_NAMES: [&[u8]; 3] = [b"off\0", b"detect\0", b"reclaim\0"];

/// "off", "detect" or "reclaim".
#[no_mangle]
pub extern "C" fn rmalloc_kal_mode() -> *const c_char {
    MODE_NAMES[crate::kal::mode() as usize].as_ptr().cast()
}

/// `sigaltstack`, passed to the kernel unchanged; the stacks registered are
/// remembered as roots for KAL (the kernel holds the only reference to a
/// heap-allocated signal stack, and no interface reads another thread's).
///
/// # Safety
/// As sigaltstack(2): `ss` and `old` are null or valid for reading and
/// writing a `stack_t` respectively.
#[no_mangle]
pub unsafe extern "C" fn sigaltstack(ss: *const libc::stack_t, old: *mut libc::stack_t) -> c_int {
    // SAFETY: the kernel validates both pointers (EFAULT); the caller's
    // contract is sigaltstack(2)'s.
    let r = unsafe {
        rmalloc_sys::task::raw(
            libc::SYS_sigaltstack as usize,
            [ss as usize, old as usize, 0, 0, 0, 0],
        )
    };
    match r {
        Ok(_) => {
            // SAFETY: the kernel accepted `ss`, so it is readable.
            if !ss.is_null() && unsafe { (*ss).ss_flags } & libc::SS_DISABLE == 0 {
                // SAFETY: as above.
                crate::kal::note_altstack(unsafe { (*ss).ss_sp } as usize);
            }
            0
        }
        Err(e) => {
            api::set_errno(e);
            -1
        }
    }
}

// LeakSanitizer's interface (sanitizer/lsan_interface.h), and the same
// calls under KAL's names (kal.h).  See `kal::lsan` for the differences.
macro_rules! lsan_pair {
    ($($lsan:ident / $kal:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty = $body:expr;)*) => {
        $(
            #[no_mangle]
            pub extern "C" fn $lsan($($arg: $ty),*) -> $ret {
                $body
            }
            #[no_mangle]
            pub extern "C" fn $kal($($arg: $ty),*) -> $ret {
                $body
            }
        )*
    };
}

lsan_pair! {
    __lsan_do_leak_check / kal_do_leak_check() -> () = crate::kal::do_leak_check();
    __lsan_do_recoverable_leak_check / kal_do_recoverable_leak_check() -> c_int =
        crate::kal::do_recoverable_leak_check();
    __lsan_ignore_object / kal_ignore_object(p: *const c_void) -> () =
        crate::kal::lsan::ignore_object(p as usize);
    __lsan_register_root_region / kal_register_root_region(p: *const c_void, n: usize) -> () =
        crate::kal::lsan::register_root_region(p as usize, n);
    __lsan_unregister_root_region / kal_unregister_root_region(p: *const c_void, n: usize) -> () = {
        if !crate::kal::lsan::unregister_root_region(p as usize, n) {
            let _ = rmalloc_sys::write_all(
                2,
                b"KAL: __lsan_unregister_root_region: region was not registered\n",
            );
        }
    };
    __lsan_disable / kal_disable() -> () = crate::kal::lsan::disable();
    __lsan_enable / kal_enable() -> () = {
        if !crate::kal::lsan::enable() {
            let _ = rmalloc_sys::write_all(2, b"KAL: unmatched call to __lsan_enable()\n");
        }
    };
}

/// `kal_stats`: the same as `rmalloc_kal_stats`.
///
/// # Safety
/// As `rmalloc_kal_stats`.
#[no_mangle]
pub unsafe extern "C" fn kal_stats(out: *mut crate::kal::stats::CStats) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { rmalloc_kal_stats(out) }
}

/// A raw system call with libc's error convention (-1 and `errno`).
fn errno_result(r: Result<usize, i32>) -> c_int {
    match r {
        Ok(v) => v as c_int,
        Err(e) => {
            api::set_errno(e);
            -1
        }
    }
}

/// `madvise`, passed on; KAL notes `MADV_DONTFORK`/`MADV_WIPEONFORK`, whose
/// memory a fork-based snapshot cannot see (its reclaim then stops).
#[no_mangle]
pub extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    if advice == libc::MADV_DONTFORK || advice == libc::MADV_WIPEONFORK {
        crate::kal::note_fork_hidden_memory();
    }
    // SAFETY: the kernel validates the range; the caller's contract is
    // madvise(2)'s.
    errno_result(unsafe {
        rmalloc_sys::task::raw(
            libc::SYS_madvise as usize,
            [addr as usize, len, advice as usize, 0, 0, 0],
        )
    })
}

// Credential and root-directory changes: glibc applies set*id to every
// thread it knows; KAL's scanner is not one of them, so it steps aside and
// is started again (with the new identity) at the next allocation.
macro_rules! identity_change {
    ($($name:ident ( $($arg:ident : $ty:ty),* );)*) => {
        $(
            /// # Safety
            /// The contract of the libc function of this name.
            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
                static REAL: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
                let mut f = REAL.load(core::sync::atomic::Ordering::Relaxed);
                if f == 0 {
                    let name = concat!(stringify!($name), "\0");
                    // SAFETY: a NUL-terminated symbol name; the next
                    // definition after ours is libc's.
                    f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
                    if f == 0 {
                        api::set_errno(libc::ENOSYS);
                        return -1;
                    }
                    REAL.store(f, core::sync::atomic::Ordering::Relaxed);
                }
                crate::kal::suspend_for_namespaces();
                // SAFETY: `f` is libc's function of this very signature.
                let real: unsafe extern "C" fn($($ty),*) -> c_int = unsafe { core::mem::transmute(f) };
                // SAFETY: the caller's contract is that of the libc function.
                unsafe { real($($arg),*) }
            }
        )*
    };
}

identity_change! {
    setuid(uid: libc::uid_t);
    setgid(gid: libc::gid_t);
    seteuid(uid: libc::uid_t);
    setegid(gid: libc::gid_t);
    setreuid(r: libc::uid_t, e: libc::uid_t);
    setregid(r: libc::gid_t, e: libc::gid_t);
    setresuid(r: libc::uid_t, e: libc::uid_t, s: libc::uid_t);
    setresgid(r: libc::gid_t, e: libc::gid_t, s: libc::gid_t);
    setgroups(n: usize, list: *const libc::gid_t);
    chroot(path: *const c_char);
}

/// `unshare`: joining a new user namespace requires a single-threaded
/// process, so KAL's scanner thread steps aside first (it restarts later).
#[no_mangle]
pub extern "C" fn unshare(flags: c_int) -> c_int {
    let kal = flags & libc::CLONE_NEWUSER != 0 && crate::kal::suspend_for_namespaces();
    namespace_call(kal, || {
        // SAFETY: unshare takes only flags.
        unsafe {
            rmalloc_sys::task::raw(libc::SYS_unshare as usize, [flags as usize, 0, 0, 0, 0, 0])
        }
    })
}

/// `setns`: as `unshare`, for entering a user namespace (or any, when the
/// namespace type is left to the descriptor).
#[no_mangle]
pub extern "C" fn setns(fd: c_int, nstype: c_int) -> c_int {
    let kal =
        (nstype == 0 || nstype & libc::CLONE_NEWUSER != 0) && crate::kal::suspend_for_namespaces();
    namespace_call(kal, || {
        // SAFETY: setns takes a descriptor and flags.
        unsafe {
            rmalloc_sys::task::raw(
                libc::SYS_setns as usize,
                [fd as usize, nstype as usize, 0, 0, 0, 0],
            )
        }
    })
}

/// Run a namespace call after KAL's scanner stepped aside (`kal`).  The
/// kernel may still count the ended thread in the thread group for a
/// moment, and the call then fails with EINVAL: retry for up to a second.
/// A program with threads of its own gets its EINVAL, a second late.
fn namespace_call(kal: bool, call: impl Fn() -> Result<usize, i32>) -> c_int {
    let mut r = call();
    if kal {
        let deadline = rmalloc_sys::task::now_ns() + 1_000_000_000;
        while r == Err(libc::EINVAL) && rmalloc_sys::task::now_ns() < deadline {
            rmalloc_sys::task::sleep_ns(1_000_000);
            r = call();
        }
    }
    errno_result(r)
}

/// One scan now; see rmalloc.h.
#[no_mangle]
pub extern "C" fn rmalloc_kal_scan_now() -> c_int {
    crate::kal::scan_now()
}

/// Runs when the library is unloaded at process exit.
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = at_unload;
