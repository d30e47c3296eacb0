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

unsafe fn verify(b: &Block) -> Result<(), TestCaseError> {
    prop_assert!(api::usable_size(b.ptr) >= b.size, "usable size shrank");
    prop_assert_eq!(b.ptr as usize % b.align, 0, "misaligned block");
    for i in 0..b.size {
        prop_assert_eq!(*b.ptr.add(i), b.fill, "contents changed at offset {}", i);
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
    for _ in 0..20 {
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
    // Arenas of exited threads are reused, so their number stays bounded
    // by the limit glibc would apply (8 per core), not by the thread count.
    let n = crate::arena::NARENAS.load(core::sync::atomic::Ordering::Relaxed);
    assert!(n <= 8 * 64, "arena count {} grew without bound", n);
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
    assert!(
        mid.hblkhd >= before.hblkhd + (4 << 20),
        "mmapped bytes not counted"
    );
    assert!(mid.hblks > before.hblks || mid.hblkhd > before.hblkhd);
    // SAFETY: from api::malloc.
    unsafe { api::free(big) };
    let _ = crate::init::is_ready();
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
