//! In-process tests of the whole allocator through its Rust API, including
//! proptest model-based fuzzing: random operation sequences are run against
//! rmalloc and a model of the live blocks, checking after every step that
//! blocks do not overlap, are aligned, hold their contents, and that the
//! heap passes its own consistency check.

use crate::api;
use proptest::prelude::*;
use std::sync::RwLock;

/// Tests check every arena, including other tests' arenas; the one test
/// that corrupts a chunk on purpose takes this exclusively.
static CORRUPTION: RwLock<()> = RwLock::new(());

fn check_all() -> Result<(), crate::check::Problem> {
    let _g = CORRUPTION.read().unwrap_or_else(|e| e.into_inner());
    crate::check::check_all()
}

#[derive(Debug, Clone)]
enum Op {
    Malloc(usize),
    Calloc(usize, usize),
    Realloc(usize, usize),
    Memalign(u32, usize),
    Free(usize),
    Trim,
}

#[derive(Debug)]
struct Block {
    ptr: *mut u8,
    size: usize,
    fill: u8,
    align: usize,
}

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..256,
        4 => 256usize..4096,
        2 => 4096usize..70_000,
        1 => 100_000usize..600_000,
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => size_strategy().prop_map(Op::Malloc),
        1 => (0usize..64, 0usize..64).prop_map(|(a, b)| Op::Calloc(a, b)),
        3 => (any::<usize>(), size_strategy()).prop_map(|(i, s)| Op::Realloc(i, s)),
        1 => (4u32..14, size_strategy()).prop_map(|(a, s)| Op::Memalign(a, s)),
        6 => any::<usize>().prop_map(Op::Free),
        1 => Just(Op::Trim),
    ]
}

fn heap_ok() -> Result<(), TestCaseError> {
    check_all().map_err(|p| TestCaseError::fail(String::from_utf8_lossy(p.as_bytes()).into_owned()))
}

/// # Safety
/// `b` is a live block of the model: allocated, not yet freed, `b.size`
/// bytes long.
unsafe fn verify(b: &Block) -> Result<(), TestCaseError> {
    // SAFETY: `b.ptr` is live and at least `b.size` bytes long.
    let usable = unsafe { api::usable_size(b.ptr) };
    prop_assert!(usable >= b.size, "usable size shrank");
    prop_assert_eq!(b.ptr as usize % b.align, 0, "misaligned block");
    for i in 0..b.size {
        // SAFETY: as above, `i < b.size`.
        let byte = unsafe { *b.ptr.add(i) };
        prop_assert_eq!(byte, b.fill, "contents changed at offset {}", i);
    }
    Ok(())
}

fn no_overlap(live: &[Block]) -> Result<(), TestCaseError> {
    let mut spans: Vec<(usize, usize)> = live
        .iter()
        .map(|b| {
            // SAFETY: every block in `live` is allocated and not yet freed.
            (
                b.ptr as usize,
                b.ptr as usize + unsafe { api::usable_size(b.ptr) },
            )
        })
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        prop_assert!(
            w[0].1 <= w[1].0,
            "blocks overlap: {:x?} and {:x?}",
            w[0],
            w[1]
        );
    }
    Ok(())
}

/// Run one sequence; every block is freed at the end.
fn run_ops(ops: &[Op], check_every_step: bool) -> Result<(), TestCaseError> {
    let mut live: Vec<Block> = Vec::new();
    let mut fill = 1u8;
    for op in ops {
        fill = fill.wrapping_add(1).max(1);
        // SAFETY: every pointer handed back to the allocator came from it and
        // is freed exactly once; writes stay within the requested sizes.
        unsafe {
            match *op {
                Op::Malloc(n) => {
                    let p = api::malloc(n);
                    prop_assert!(!p.is_null());
                    core::ptr::write_bytes(p, fill, n);
                    live.push(Block {
                        ptr: p,
                        size: n,
                        fill,
                        align: 16,
                    });
                }
                Op::Calloc(a, b) => {
                    let p = api::calloc(a, b);
                    prop_assert!(!p.is_null());
                    for i in 0..a * b {
                        prop_assert_eq!(*p.add(i), 0, "calloc memory not zeroed");
                    }
                    core::ptr::write_bytes(p, fill, a * b);
                    live.push(Block {
                        ptr: p,
                        size: a * b,
                        fill,
                        align: 16,
                    });
                }
                Op::Realloc(i, n) => {
                    if live.is_empty() {
                        continue;
                    }
                    let k = i % live.len();
                    let old = live.swap_remove(k);
                    verify(&old)?;
                    let p = api::realloc(old.ptr, n);
                    if n == 0 {
                        prop_assert!(p.is_null());
                        continue;
                    }
                    prop_assert!(!p.is_null());
                    let keep = old.size.min(n);
                    for j in 0..keep {
                        prop_assert_eq!(*p.add(j), old.fill, "realloc lost contents at {}", j);
                    }
                    core::ptr::write_bytes(p, fill, n);
                    live.push(Block {
                        ptr: p,
                        size: n,
                        fill,
                        align: 16,
                    });
                }
                Op::Memalign(shift, n) => {
                    let align = 1usize << shift;
                    let p = api::memalign(align, n);
                    prop_assert!(!p.is_null());
                    core::ptr::write_bytes(p, fill, n);
                    live.push(Block {
                        ptr: p,
                        size: n,
                        fill,
                        align,
                    });
                }
                Op::Free(i) => {
                    if live.is_empty() {
                        continue;
                    }
                    let b = live.swap_remove(i % live.len());
                    verify(&b)?;
                    api::free(b.ptr);
                }
                Op::Trim => {
                    api::malloc_trim(0);
                }
            }
        }
        if check_every_step {
            no_overlap(&live)?;
            heap_ok()?;
        }
    }
    for b in live.drain(..) {
        // SAFETY: as above.
        unsafe {
            verify(&b)?;
            api::free(b.ptr);
        }
    }
    heap_ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn model_single_thread(ops in proptest::collection::vec(op_strategy(), 1..160)) {
        run_ops(&ops, true)?;
    }

    #[test]
    fn model_two_threads(a in proptest::collection::vec(op_strategy(), 1..120),
                         b in proptest::collection::vec(op_strategy(), 1..120)) {
        // Two threads in different arenas (the second thread gets its own),
        // each checked against its own model; the heap check sees both.
        let t = std::thread::spawn(move || run_ops(&b, true));
        let r1 = run_ops(&a, true);
        let r2 = t.join().expect("thread panicked");
        r1?;
        r2?;
    }
}

#[test]
fn cross_thread_frees_are_consistent() {
    // Producer allocates, consumer frees: chunks go back to the producer's arena.
    let (tx, rx) = std::sync::mpsc::sync_channel::<usize>(1024);
    let prod = std::thread::spawn(move || {
        for i in 0..50_000usize {
            // SAFETY: the block is written within its size and handed over.
            let p = unsafe { api::malloc(16 + (i % 700)) };
            assert!(!p.is_null());
            // SAFETY: at least 16 bytes were requested.
            unsafe { core::ptr::write_bytes(p, 0xab, 16) };
            tx.send(p as usize).unwrap();
        }
    });
    let cons = std::thread::spawn(move || {
        for p in rx {
            // SAFETY: each pointer is received once and freed once.
            unsafe {
                assert_eq!(*(p as *const u8), 0xab);
                api::free(p as *mut u8);
            }
        }
    });
    prod.join().unwrap();
    cons.join().unwrap();
    check_all().unwrap();
}

#[test]
fn thread_churn_reuses_arenas() {
    for _ in 0..5 {
        let ts: Vec<_> = (0..16)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut v = Vec::new();
                    for j in 0..200 {
                        // SAFETY: freed below.
                        v.push(unsafe { api::malloc((i * 37 + j * 13) % 3000) });
                    }
                    for p in v {
                        // SAFETY: from api::malloc, freed once.
                        unsafe { api::free(p) };
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
    }
    check_all().unwrap();
}

/// Threads that run one after another hand one arena on: each exiting
/// thread's arena goes to the free list and the next thread takes it.  Run
/// in a forked child, where no other test's threads compete for arenas (the
/// child also exercises the fork handlers' arena bookkeeping).
#[test]
fn sequential_threads_reuse_one_arena() {
    // SAFETY: the child only runs this test's code and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut seen: Vec<usize> = Vec::new();
        for i in 0..64usize {
            let arena = std::thread::spawn(move || {
                // SAFETY: freed right away; the arena pointer is only compared.
                unsafe {
                    let p = api::malloc(100 + i);
                    let a = crate::arena::arena_for_chunk(crate::chunk::mem2chunk(p));
                    api::free(p);
                    a as usize
                }
            })
            .join()
            .unwrap_or(0);
            if !seen.contains(&arena) {
                seen.push(arena);
            }
        }
        let ok = seen.len() == 1 && seen[0] != 0 && check_all().is_ok();
        // SAFETY: leaving the child without running the harness's exit path.
        unsafe {
            libc::_exit(if ok {
                0
            } else {
                1 + seen.len().min(100) as i32
            })
        };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "64 threads in turn used {} arenas (status {status:#x})",
        libc::WEXITSTATUS(status) - 1
    );
}

/// The lock decision is made once per operation (issue 8, bug 3): whatever
/// `__libc_single_threaded` reads between `lock` and `unlock`, the unlock
/// undoes exactly what the lock did.
#[test]
fn arena_unlock_follows_the_lock_decision() {
    use crate::arena::{Arena, SINGLE_THREADED_OVERRIDE};
    let set = |v: Option<bool>| SINGLE_THREADED_OVERRIDE.with(|o| o.set(v));
    let a = Box::new(Arena::new());
    // Taken while multithreaded, released although the flag now says single.
    set(Some(false));
    let h = a.lock();
    assert!(a.mutex.is_locked());
    set(Some(true));
    a.unlock(h);
    assert!(!a.mutex.is_locked(), "lock taken but never released");
    // Elided while single-threaded: the unlock must not release a lock it
    // never took (here held by someone else) when the flag changes.
    a.mutex.lock();
    let h = a.lock();
    set(Some(false));
    a.unlock(h);
    assert!(a.mutex.is_locked(), "released a lock held by another");
    a.mutex.unlock();
    set(None);
}

/// Run `f` in a forked child, where no other test's threads share the
/// arenas, and fail if it panics or fails.
fn in_child(what: &str, f: impl FnOnce()) {
    // SAFETY: the child runs `f` alone and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        // SAFETY: leaving the child without running the harness's exit path.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what}: failed in the child (status {status:#x}; its panic message is above)"
    );
}

/// `check_all` looks into the calling thread's cache: counts, keys, size
/// classes, and no chunk both cached and in a bin.  Every corruption is
/// undone before its verdict is asserted: a failing assertion must not leave
/// a broken cache for the thread's exit to flush.  In a child process, so
/// no other thread takes the binned block meanwhile.
#[test]
fn heap_check_sees_the_tcache() {
    use crate::chunk::{mem2chunk, size};
    use crate::tcache::{csize2tidx, Entry, Tcache};
    let _g = CORRUPTION.write().unwrap_or_else(|e| e.into_inner());
    in_child("heap_check_sees_the_tcache", || {
        // SAFETY: every corruption is undone before the next step, and the
        // blocks are freed at the end.
        unsafe {
            let mut blocks: Vec<*mut u8> = (0..7).map(|_| api::malloc(200)).collect();
            // The eighth block will sit alone in a bin: both of its
            // neighbours must be in use, or freeing it would coalesce.
            let mut separators = Vec::new();
            for _ in 0..1000 {
                let b = api::malloc(200);
                separators.push(api::malloc(24));
                let p = mem2chunk(b);
                let av = crate::arena::arena_for_chunk(p);
                let next = crate::chunk::next_chunk(p);
                if crate::chunk::prev_inuse(p) && next != (*av).top && crate::chunk::inuse(next) {
                    blocks.push(b);
                    break;
                }
                separators.push(b);
            }
            assert_eq!(blocks.len(), 8, "no block with in-use neighbours");
            blocks.push(api::malloc(200));
            // (A free chunk no longer says which arena it is in.)
            let av = crate::arena::arena_for_chunk(mem2chunk(blocks[7]));
            // Seven fill the cache; the eighth goes to the arena's bins.
            for &b in &blocks[..8] {
                api::free(b);
            }
            let clean = crate::check::check_all();
            let tc = crate::tls::get::<{ crate::tls::TCACHE }>() as *mut Tcache;
            let idx = csize2tidx(size(mem2chunk(blocks[0])));
            let count = (*tc).counts[idx];

            (*tc).counts[idx] = 6;
            let low_count = crate::check::check_tcache();
            (*tc).counts[idx] = 7;

            let head = (*tc).entries[idx];
            let key = (*head).key;
            (*head).key = 0;
            let no_key = crate::check::check_tcache();
            (*head).key = key;

            // The same list filed under the next size class.
            (*tc).entries[idx + 1] = head;
            (*tc).counts[idx + 1] = 7;
            (*tc).entries[idx] = core::ptr::null_mut();
            (*tc).counts[idx] = 0;
            let misfiled = crate::check::check_tcache();
            (*tc).entries[idx] = head;
            (*tc).counts[idx] = 7;
            (*tc).entries[idx + 1] = core::ptr::null_mut();
            (*tc).counts[idx + 1] = 0;
            let restored = crate::check::check_all();

            // The eighth block, in a bin, also made the head of the cache.
            (*tc).entries[idx] = blocks[7] as *mut Entry;
            let both = crate::check::check_arena(av);
            (*tc).entries[idx] = head;
            let end = crate::check::check_all();

            api::free(blocks[8]);
            for s in separators {
                api::free(s);
            }
            assert!(clean.is_ok() && restored.is_ok() && end.is_ok());
            assert_eq!(count, 7);
            assert!(low_count.is_err(), "count too low unnoticed");
            assert!(no_key.is_err(), "missing cache key unnoticed");
            assert!(misfiled.is_err(), "wrong size class unnoticed");
            assert!(both.is_err(), "chunk both in a bin and cached unnoticed");
        }
    });
}

#[test]
fn edge_cases_match_glibc() {
    // SAFETY: pointers are only freed once, sizes respected.
    unsafe {
        let p = api::malloc(0);
        assert!(!p.is_null());
        assert_eq!(api::usable_size(p), 24);
        api::free(p);
        assert!(api::malloc(usize::MAX).is_null());
        assert_eq!(*libc::__errno_location(), libc::ENOMEM);
        assert!(api::calloc(usize::MAX / 2, 3).is_null());
        assert!(api::realloc(api::malloc(10), 0).is_null());
        let q = api::realloc(core::ptr::null_mut(), 100);
        assert!(api::usable_size(q) >= 100);
        api::free(q);
        let mut out = core::ptr::null_mut();
        assert_eq!(api::posix_memalign(&mut out, 3, 10), libc::EINVAL);
        assert_eq!(api::posix_memalign(&mut out, 4096, 10), 0);
        assert_eq!(out as usize % 4096, 0);
        api::free(out);
        let v = api::pvalloc(1);
        assert_eq!(v as usize % 4096, 0);
        assert!(api::usable_size(v) >= 4096);
        api::free(v);
        assert_eq!(api::usable_size(core::ptr::null_mut()), 0);
    }
    check_all().unwrap();
}

#[test]
fn mallinfo_tracks_use() {
    let before = crate::stats::mallinfo2();
    // SAFETY: freed below.
    let big = unsafe { api::malloc(4 << 20) };
    let mid = crate::stats::mallinfo2();
    assert!(crate::init::is_ready());
    assert!(
        mid.hblkhd >= before.hblkhd + (4 << 20),
        "mmapped bytes not counted"
    );
    assert!(mid.hblks >= 1, "no mmapped chunk counted");
    // SAFETY: from api::malloc.
    unsafe { api::free(big) };
}

#[test]
fn heap_check_detects_a_corrupted_free_chunk() {
    // A freed 2000-byte chunk is too large for the tcache and fastbins, so
    // it sits in the unsorted bin with a boundary tag the check verifies.
    // The check runs in a thread of its own, so its arena holds only this.
    let _g = CORRUPTION.write().unwrap_or_else(|e| e.into_inner());
    std::thread::spawn(|| {
        // SAFETY: the corruption is undone before anything else touches the
        // arena, and the blocks are freed afterwards.
        unsafe {
            let a = api::malloc(2000);
            let b = api::malloc(2000);
            let c = api::malloc(2000);
            api::free(b);
            crate::check::check_all().unwrap();
            let p = crate::chunk::mem2chunk(b);
            let saved = (*p).size;
            (*p).size = saved + 32;
            assert!(
                crate::check::check_all().is_err(),
                "corrupted size went unnoticed"
            );
            (*p).size = saved;
            crate::check::check_all().unwrap();
            api::free(a);
            api::free(c);
        }
    })
    .join()
    .unwrap();
}
