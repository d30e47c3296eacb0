#!/usr/bin/env bash
# run-guest.sh test|bench: boot the cached kal_snapshot kernel under QEMU/TCG
# with an initramfs of static test programs and turn the guest's verdict
# into an exit code.
#
# test:  the kselftest (tools/testing/selftests/kal), kernel-patch/guest
#        tests, the static rmalloc-sys tests and KAL's own tests
#        (tests/kal.rs, see below); 2 vCPUs, 2 GiB.
# bench: kernel-patch/guest/kal_bench.c, then KAL's own pause and scan
#        rate per backend (benches/kal/kal_heap.c under librmalloc.so);
#        2 vCPUs, 3 GiB; prints the tables (also saved to
#        $KAL_CACHE/bench-<hash>.md).
#
# KAL's tests in the guest: the host builds librmalloc.so, the kal command,
# the tests/kal.rs test executable and its C programs (by running its `programs_build` test),
# and puts each at its host path in the initramfs with every shared library
# they load (ldd), so the executable finds them where it was built to.  The
# guest runs it with KAL_TEST_PREBUILT=1 (no compiler there) and
# KAL_TEST_BACKENDS=$KAL_GUEST_BACKENDS (default `kernel`: every test that
# runs KAL uses the kal_snapshot backend, and fails if that does not work).
#   KAL_GUEST_BACKENDS=fork,kernel  the backend list (see tests/kal.rs)
#   KAL_GUEST_FILTER="roots_ dropped"  libtest filters (default: every test)
#   KAL_GUEST_THREADS=N             --test-threads (default 2)
#   KAL_GUEST_KAL_TESTS=0           leave them out (said loudly)
#
# Exit codes: 0 pass, 1 guest failure or timeout, 3 QEMU cannot run at all
# (said loudly on stderr; `make kernel-test` turns that into a loud skip
# unless KAL_REQUIRE_QEMU=1).
set -euo pipefail
mode=${1:-test}
here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/.." && pwd)
timeout_s=${KAL_TIMEOUT:-2400}
t_start=$(date +%s)

loud() {
	{
		echo "=================================================================="
		echo "kernel-$mode: $*"
		echo "=================================================================="
	} >&2
}

# KAL_KDIR: use an already built kernel directory (same layout as the cache).
kdir=${KAL_KDIR:-$("$here/scripts/build-kernel.sh" | tail -1)}
"$repo/scripts/need-apt" qemu-system-x86 build-essential cpio gzip python3 libc-bin >&2 || true
qemu=$(command -v qemu-system-x86_64 || true)
if [ -z "$qemu" ] || ! "$qemu" --version >/dev/null 2>&1; then
	loud "QEMU (qemu-system-x86_64) cannot run on this machine: kal_snapshot NOT TESTED"
	exit 3
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kal-guest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
mkdir -p "$root"
cflags=(-static -O2 -Wall -pthread -isystem "$kdir/include")
gcc "${cflags[@]}" -o "$root/init" "$here/guest/init.c"
gcc "${cflags[@]}" -o "$root/kal_snapshot_test" "$kdir/selftests/kal/kal_snapshot_test.c"
gcc "${cflags[@]}" -o "$root/kal_guest_test" "$here/guest/kal_guest_test.c"
gcc "${cflags[@]}" -o "$root/kal_bench" "$here/guest/kal_bench.c"
# The path of test executable $1, from cargo's JSON messages on stdin.
test_exe() {
	python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1" | tail -1
}

# The sys crate's unit tests, linked statically, run against the real call.
if [ "$mode" = test ] && command -v cargo >/dev/null 2>&1; then
	rtarget="$(dirname "$kdir")/rust-static-target"
	rbin=$(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$rtarget" \
		cargo test -p rmalloc-sys --release --no-run --target x86_64-unknown-linux-gnu \
		--message-format=json 2>/dev/null | test_exe rmalloc_sys) || true
	if [ -n "$rbin" ] && [ -x "$rbin" ]; then
		cp "$rbin" "$root/rmalloc_sys_test"
	else
		echo "kernel-test: WARNING: could not build the static rmalloc-sys tests; they will not run in the guest" >&2
	fi
fi

# Copy $1 (a file, symlinks followed) into the initramfs at the same path.
put() {
	mkdir -p "$root$(dirname "$1")"
	cp -L "$1" "$root$1"
}

# Copy every shared library that the ELF file $1 loads (ldd) into the
# initramfs at its host path; fails on a library ldd cannot find.
put_libs() {
	local out lib
	out=$(ldd "$1" 2>&1) || {
		case "$out" in *"not a dynamic executable"*) return 0 ;; esac
		echo "kernel-test: ERROR: ldd $1 failed: $out" >&2
		return 1
	}
	if grep -q "not found" <<<"$out"; then
		echo "kernel-test: ERROR: $1 needs libraries this machine lacks:" >&2
		grep "not found" <<<"$out" >&2
		return 1
	fi
	for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"); do
		[ -e "$root$lib" ] || put "$lib"
	done
}

# KAL's own tests (tests/kal.rs): built on the host, run in the guest.
kal_tests() {
	local t0 meta target lib exe dir f
	t0=$(date +%s)
	command -v cargo >/dev/null 2>&1 || { echo "kernel-test: ERROR: cargo not found" >&2; return 1; }
	meta=$(cd "$repo" && cargo metadata --format-version 1 --no-deps) || return 1
	target=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' <<<"$meta")
	echo "kernel-test: building librmalloc.so, the kal command and the tests/kal.rs executable" >&2
	# (kal: false_reclaim_names_the_allocation_site symbolizes with `kal report`)
	(cd "$repo" && cargo build --release -p rmalloc -p kal >&2) || return 1
	lib="$target/release/librmalloc.so"
	exe=$(cd "$repo" && cargo test --release -p rmalloc-integration --test kal --no-run \
		--message-format=json | test_exe kal) || return 1
	[ -n "$exe" ] && [ -x "$exe" ] || { echo "kernel-test: ERROR: no tests/kal.rs executable from cargo" >&2; return 1; }
	# Its programs_build test compiles the C programs into its build
	# directory (CARGO_TARGET_TMPDIR/kal) with the flags the tests use.
	(cd "$repo/tests" && env -u KAL_TEST_PREBUILT "$exe" --exact programs_build --quiet >&2) || {
		echo "kernel-test: ERROR: building the KAL test programs failed" >&2
		return 1
	}
	dir="$target/tmp/kal"
	[ -f "$dir/kal_roots" ] || { echo "kernel-test: ERROR: no test programs in $dir" >&2; return 1; }
	for f in "$lib" "$target/release/kal" "$exe" "$dir"/*; do
		[ -f "$f" ] || continue
		put "$f"
		if [ "$(head -c 4 "$f")" = $'\177ELF' ]; then put_libs "$f" || return 1; fi
	done
	{
		echo "# written by run-guest.sh; read by guest/init.c"
		echo "exe $exe"
		echo "arg --test-threads=${KAL_GUEST_THREADS:-2}"
		# Passing tests' output too: it names what was skipped and why.
		echo "arg --show-output"
		for f in ${KAL_GUEST_FILTER:-}; do echo "arg $f"; done
		echo "env KAL_TEST_PREBUILT=1"
		echo "env KAL_TEST_BACKENDS=${KAL_GUEST_BACKENDS:-kernel}"
		echo "env RMALLOC_LIB=$lib"
		echo "timeout $((timeout_s - 300))"
	} > "$root/kal_tests.conf"
	echo "kernel-test: KAL tests built and packed in $(( $(date +%s) - t0 )) s" >&2
}
if [ "$mode" = test ]; then
	if [ "${KAL_GUEST_KAL_TESTS:-1}" = 0 ]; then
		loud "KAL_GUEST_KAL_TESTS=0: KAL's tests (tests/kal.rs) NOT run in the guest"
	elif ! kal_tests; then
		echo "kernel-test: FAIL: could not prepare KAL's tests for the guest" >&2
		exit 1
	fi
fi
# Bench: KAL's pause and scan rate with each backend (benches/kal/kal_heap.c
# under librmalloc.so, packed like the tests above).  KAL_HEAP_RUNS: lines
# of "BACKEND HEAP_MIB SCANS"; KAL_HEAP_RUNS=none leaves them out.
kal_heap_runs() {
	local target lib exe
	command -v cargo >/dev/null 2>&1 || { echo "kernel-bench: ERROR: cargo not found" >&2; return 1; }
	target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') || return 1
	(cd "$repo" && cargo build --release -p rmalloc >&2) || return 1
	lib="$target/release/librmalloc.so"
	exe="$target/bench/bin/kal_heap-guest"
	mkdir -p "$(dirname "$exe")"
	gcc -O2 -g -I "$repo/rmalloc/include" -o "$exe" "$repo/benches/kal/kal_heap.c" -ldl || return 1
	for f in "$lib" "$exe"; do
		put "$f"
		put_libs "$f" || return 1
	done
	{
		echo "exe $exe"
		echo "lib $lib"
		printf '%s\n' "${KAL_HEAP_RUNS:-fork 64 5
kernel 64 5
fork 256 3
kernel 256 3
fork 1024 2
kernel 1024 2}"
	} > "$root/kal_heap.conf"
}
if [ "$mode" = bench ] && [ "${KAL_HEAP_RUNS:-}" != none ]; then
	kal_heap_runs || { echo "kernel-bench: FAIL: could not prepare kal_heap" >&2; exit 1; }
fi
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$tmp/initramfs.gz"

case "$mode" in
test) mem=2G ;;
bench) mem=6G ;;
*) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
# The debug variant (KAL_KERNEL_VARIANT=debug) runs with 4 vCPUs, so that
# more threads really run at once.
smp=2
[ "${KAL_KERNEL_VARIANT:-}" = debug ] && smp=4
log="$tmp/console.log"
echo "kernel-$mode: booting $kdir/bzImage under QEMU/TCG ($smp vCPUs, $mem), timeout ${timeout_s}s" >&2
t_boot=$(date +%s)
set +e
timeout --foreground -k 10 "$timeout_s" "$qemu" -accel tcg -smp "$smp" -m "$mem" \
	-kernel "$kdir/bzImage" -initrd "$tmp/initramfs.gz" \
	-append "console=ttyS0 panic=-1 oops=panic kal.mode=$mode" \
	-nographic -no-reboot -monitor none -serial stdio </dev/null 2>"$tmp/qemu.err" \
	| tee "$log" | grep --line-buffered -E '^(kal-init|KAL-|ok |not ok |#|test |\[kal\] .*(skipped|configurations)|\[ *[0-9.]+\] (BUG|kernel BUG|WARNING|Kernel panic|Oops|general protection|UBSAN))' || true
rc=${PIPESTATUS[0]}
set -e
echo "kernel-$mode: guest ran $(( $(date +%s) - t_boot )) s; $(( $(date +%s) - t_start )) s in all" >&2
saved="$(dirname "$kdir")/console-$mode-$(basename "$kdir").log"
cp "$log" "$saved" 2>/dev/null && echo "kernel-$mode: full console log: $saved" >&2
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
	echo "kernel-$mode: FAIL: guest timed out after ${timeout_s}s; last console lines:" >&2
	tail -30 "$log" >&2
	exit 1
fi
if ! grep -q "Linux version" "$log"; then
	cat "$tmp/qemu.err" >&2
	loud "QEMU exited ($rc) before the kernel printed anything: kal_snapshot NOT TESTED"
	exit 3
fi
problem="BUG:|kernel BUG at|WARNING:|Kernel panic|Oops|general protection fault|UBSAN:"
# The guest's own init reports with a "kal-init:" prefix; the rest is the kernel.
if grep -v '^kal-init:' "$log" | grep -qE "$problem"; then
	echo "kernel-$mode: FAIL: kernel reported a problem:" >&2
	grep -v '^kal-init:' "$log" | grep -E -A20 "$problem" | head -60 >&2
	exit 1
fi
if [ "$mode" = bench ]; then
	out="$(dirname "$kdir")/bench-$(basename "$kdir").md"
	sed -n 's/^KAL-BENCH: \{0,1\}//p' "$log" | tr -d '\r' > "$out"
	# kal_heap's "result" lines: one table row per backend and heap size.
	tr -d '\r' < "$log" | python3 -c '
import sys
rows = [dict(kv.split("=", 1) for kv in l.split()[1:] if "=" in kv)
        for l in sys.stdin if l.startswith("result heap_mib=")]
if rows:
    print()
    print("KAL through librmalloc.so (benches/kal/kal_heap.c, mode=detect, in this guest):")
    print()
    print("| backend | heap | scans completed | pause p50 | pause p99 | mark (median) | scan rate (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %s MiB | %s/%s | %.1f ms | %.1f ms | %s ms | %s GB/s |" % (
            r.get("backend"), r.get("heap_mib"), r.get("completed"), r.get("scans"),
            int(r.get("pause_p50_us", 0)) / 1000, int(r.get("pause_p99_us", 0)) / 1000,
            r.get("mark_ms_median"), r.get("rate_gbs_median")))
' >> "$out"
	cat "$out"
	echo "kernel-bench: table saved to $out" >&2
fi
if grep -q "^KAL-RESULT: PASS" "$log"; then
	echo "kernel-$mode: PASS" >&2
	exit 0
fi
if grep -q "^KAL-TESTS: FAIL" "$log"; then
	# libtest's failure report (each failing test's output) was not echoed:
	# its start, then the list of failed tests.
	report=$(tr -d '\r' < "$log" | sed -n '/^failures:$/,/^test result:/p')
	echo "kernel-$mode: KAL tests failed in the guest; libtest's report (start):" >&2
	awk '/^failures:$/ { n++ } n == 1' <<<"$report" | head -300 >&2 || true
	awk '/^failures:$/ { n++ } n == 2' <<<"$report" >&2
fi
echo "kernel-$mode: FAIL (see the guest output above)" >&2
exit 1
