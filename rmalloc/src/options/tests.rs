//! Tests of [`Params`], `mallopt` and the exit-stats path; the helpers
//! `env`, `fresh` and `snapshot` are shared with `tunables`' tests.

use super::*;

/// Apply `vars` to `p` as a non-secure process's environment.
pub(crate) fn env(p: &Params, vars: &[&str]) {
    p.apply_env_with(vars.iter().map(|s| s.as_bytes()), false, false);
}
/// A default parameter set after applying `vars`.
pub(crate) fn fresh(vars: &[&str]) -> Params {
    let p = Params::new();
    env(&p, vars);
    p
}
/// Every parameter of `p` (the full perturb `int`), for comparisons.
pub(crate) fn snapshot(p: &Params) -> [usize; 14] {
    [
        p.trim_threshold(),
        p.top_pad(),
        p.mmap_threshold(),
        p.mmap_max(),
        p.no_dyn_threshold() as usize,
        p.arena_test(),
        p.arena_max(),
        p.perturb.load(Relaxed) as usize,
        p.max_fast(),
        p.tcache_count(),
        p.tcache_bins(),
        p.tcache_max_bytes(),
        p.tcache_unsorted_limit(),
        p.check_action() as usize,
    ]
}

#[test]
fn defaults_match_glibc_2_36_x86_64() {
    for p in [&Params::new(), &PARAMS_DEFAULT_COPY] {
        assert_eq!(p.trim_threshold(), 128 * 1024);
        assert_eq!(p.top_pad(), 128 * 1024);
        assert_eq!(p.mmap_threshold(), 128 * 1024);
        assert_eq!(p.mmap_max(), 65536);
        assert!(!p.no_dyn_threshold());
        assert_eq!(p.arena_test(), 8);
        assert_eq!(p.arena_max(), 0);
        assert_eq!(p.perturb_byte(), 0);
        assert!(!p.perturb_enabled());
        assert_eq!(p.max_fast(), 128);
        assert_eq!(p.tcache_count(), 7);
        assert_eq!(p.tcache_bins(), 64);
        assert_eq!(p.tcache_max_bytes(), 1032);
        assert_eq!(p.tcache_unsorted_limit(), 0);
        assert_eq!(p.check_action(), 0);
        assert!(p.exit_stats_path().is_none());
    }
    assert_eq!(DEFAULT_MMAP_THRESHOLD_MAX, 32 << 20);
    assert_eq!(MAX_FAST_SIZE, 160);
    assert_eq!(MAX_TCACHE_SIZE, 1032);
    // 1032 is the largest request of bin 63.
    assert_eq!(csize2tidx(request2size(1032)), 63);
    assert_eq!(csize2tidx(request2size(1033)), 64);
}
/// A static built the same way as PARAMS (PARAMS itself may be touched
/// by `init_from_env` in another test).
static PARAMS_DEFAULT_COPY: Params = Params::new();

#[test]
fn mallopt_constants_match_malloc_h() {
    assert_eq!(
        [
            M_MXFAST,
            M_TRIM_THRESHOLD,
            M_TOP_PAD,
            M_MMAP_THRESHOLD,
            M_MMAP_MAX
        ],
        [1, -1, -2, -3, -4]
    );
    assert_eq!(
        [M_CHECK_ACTION, M_PERTURB, M_ARENA_TEST, M_ARENA_MAX],
        [-5, -6, -7, -8]
    );
}

/// A parameter reader, for the `mallopt` step tables.
type Get = fn(&Params) -> usize;

/// Apply each `(param, value, ret, get, want)` step to `p` in order: the
/// `mallopt(param, value)` call returns `ret`, after which `get(p)` is `want`.
fn mallopt_steps(p: &Params, steps: &[(i32, i32, i32, Get, usize)]) {
    for &(param, value, ret, get, want) in steps {
        assert_eq!(p.mallopt(param, value), ret, "mallopt({param}, {value})");
        assert_eq!(get(p), want, "after mallopt({param}, {value})");
    }
}

#[test]
fn mallopt_mxfast() {
    let p = Params::new();
    #[rustfmt::skip]
    mallopt_steps(&p, &[
        (M_MXFAST, 160, 1, Params::max_fast, 160),
        (M_MXFAST, 161, 0, Params::max_fast, 160),
        (M_MXFAST, -1, 0, Params::max_fast, 160),
        (M_MXFAST, 0, 1, Params::max_fast, 16),
        (M_MXFAST, 24, 1, Params::max_fast, 32),
        (M_MXFAST, 1, 1, Params::max_fast, 0),
    ]);
    assert!(!p.no_dyn_threshold());
}

#[test]
fn mallopt_thresholds_disable_dynamic_threshold() {
    for (param, get) in [
        (M_TRIM_THRESHOLD, Params::trim_threshold as Get),
        (M_TOP_PAD, Params::top_pad),
        (M_MMAP_THRESHOLD, Params::mmap_threshold),
        (M_MMAP_MAX, Params::mmap_max),
    ] {
        let p = Params::new();
        mallopt_steps(&p, &[(param, 4096, 1, get, 4096)]);
        assert!(p.no_dyn_threshold(), "param {param}");
    }
    // No upper bound in 2.36; negative ints wrap to huge size_t.
    #[rustfmt::skip]
    mallopt_steps(&Params::new(), &[
        (M_MMAP_THRESHOLD, 64 << 20, 1, Params::mmap_threshold, 64 << 20),
        (M_MMAP_THRESHOLD, -1, 1, Params::mmap_threshold, usize::MAX),
        (M_TRIM_THRESHOLD, -1, 1, Params::trim_threshold, usize::MAX),
        (M_MMAP_MAX, -1, 1, Params::mmap_max, 0),
        (M_MMAP_MAX, 0, 1, Params::mmap_max, 0),
    ]);
}

#[test]
fn mallopt_arena_perturb_check_unknown() {
    let p = Params::new();
    let perturb: Get = |p| p.perturb_byte() as usize;
    let check: Get = |p| p.check_action() as usize;
    #[rustfmt::skip]
    mallopt_steps(&p, &[
        (M_ARENA_TEST, 0, 1, Params::arena_test, 8),
        (M_ARENA_TEST, -3, 1, Params::arena_test, 8),
        (M_ARENA_TEST, 4, 1, Params::arena_test, 4),
        (M_ARENA_MAX, 0, 1, Params::arena_max, 0),
        (M_ARENA_MAX, 2, 1, Params::arena_max, 2),
        (M_PERTURB, 0xa5, 1, perturb, 0xa5),
        (M_PERTURB, 256, 1, perturb, 0),
    ]);
    assert!(p.perturb_enabled());
    mallopt_steps(&p, &[(M_PERTURB, 0, 1, perturb, 0)]);
    assert!(!p.perturb_enabled());
    #[rustfmt::skip]
    mallopt_steps(&p, &[
        (M_CHECK_ACTION, 5, 1, check, 0),
        (99, 1, 1, check, 0),
        (-9, 1, 1, check, 0),
        (M_GRAIN, 1, 1, check, 0),
    ]);
    assert!(!p.no_dyn_threshold());
}

#[test]
fn dynamic_threshold_update() {
    let p = Params::new();
    p.note_mmapped_free((100 * 1024) | 2); // below threshold
    assert_eq!(p.mmap_threshold(), 128 * 1024);
    p.note_mmapped_free((1 << 20) | 2);
    assert_eq!(p.mmap_threshold(), 1 << 20);
    assert_eq!(p.trim_threshold(), 2 << 20);
    p.note_mmapped_free(32 << 20); // == max: still applies
    assert_eq!(p.mmap_threshold(), 32 << 20);
    let p = Params::new();
    p.note_mmapped_free((32 << 20) + 4096); // above max
    assert_eq!(p.mmap_threshold(), 128 * 1024);
    let p = Params::new();
    p.mallopt(M_TOP_PAD, 0);
    p.note_mmapped_free(1 << 20);
    assert_eq!(p.mmap_threshold(), 128 * 1024);
    assert_eq!(p.trim_threshold(), 128 * 1024);
}

#[test]
fn exit_stats_path() {
    let p = fresh(&["RMALLOC_EXIT_STATS=/tmp/stats.txt"]);
    assert_eq!(p.exit_stats_path().unwrap().to_bytes(), b"/tmp/stats.txt");
    // Write-once: a later value does not replace it.
    env(&p, &["RMALLOC_EXIT_STATS=/other"]);
    assert_eq!(p.exit_stats_path().unwrap().to_bytes(), b"/tmp/stats.txt");
    assert!(fresh(&["RMALLOC_EXIT_STATS="]).exit_stats_path().is_none());
    let long = format!(
        "RMALLOC_EXIT_STATS=/{}",
        "a".repeat(EXIT_STATS_PATH_MAX - 1)
    );
    assert_eq!(
        fresh(&[&long]).exit_stats_path().unwrap().to_bytes().len(),
        EXIT_STATS_PATH_MAX
    );
    let too_long = format!("RMALLOC_EXIT_STATS=/{}", "a".repeat(EXIT_STATS_PATH_MAX));
    assert!(fresh(&[&too_long]).exit_stats_path().is_none());
    // Embedded NUL ends the C string.
    let p = Params::new();
    p.apply_env_with([&b"RMALLOC_EXIT_STATS=/a\0b"[..]].into_iter(), false, false);
    assert_eq!(p.exit_stats_path().unwrap().to_bytes(), b"/a");
}
