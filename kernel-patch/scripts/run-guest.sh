#!/usr/bin/env bash
# run-guest.sh test|bench: boot the cached kal_snapshot kernel under QEMU/TCG
# with an initramfs of static test programs and turn the guest's verdict
# into an exit code.
#
# test:  the kselftest (tools/testing/selftests/kal) and kernel-patch/guest
#        tests; 2 vCPUs, 1 GiB.
# bench: kernel-patch/guest/kal_bench.c; 2 vCPUs, 3 GiB; prints the pause
#        table (also saved to $KAL_CACHE/bench-<hash>.md).
#
# Exit codes: 0 pass, 1 guest failure or timeout, 3 QEMU cannot run at all
# (said loudly on stderr; `make kernel-test` turns that into a loud skip
# unless KAL_REQUIRE_QEMU=1).
set -euo pipefail
mode=${1:-test}
here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/.." && pwd)
timeout_s=${KAL_TIMEOUT:-1500}

loud() {
	{
		echo "=================================================================="
		echo "kernel-$mode: $*"
		echo "=================================================================="
	} >&2
}

# KAL_KDIR: use an already built kernel directory (same layout as the cache).
kdir=${KAL_KDIR:-$("$here/scripts/build-kernel.sh" | tail -1)}
"$repo/scripts/need-apt" qemu-system-x86 build-essential cpio gzip python3 >&2 || true
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
# The sys crate's unit tests, linked statically, run against the real call.
if [ "$mode" = test ] && command -v cargo >/dev/null 2>&1; then
	rtarget="$(dirname "$kdir")/rust-static-target"
	rbin=$(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$rtarget" \
		cargo test -p rmalloc-sys --release --no-run --target x86_64-unknown-linux-gnu \
		--message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "rmalloc_sys":
        print(m["executable"])' | tail -1) || true
	if [ -n "$rbin" ] && [ -x "$rbin" ]; then
		cp "$rbin" "$root/rmalloc_sys_test"
	else
		echo "kernel-test: WARNING: could not build the static rmalloc-sys tests; they will not run in the guest" >&2
	fi
fi
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$tmp/initramfs.gz"

case "$mode" in
test) mem=1G ;;
bench) mem=3G ;;
*) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
log="$tmp/console.log"
echo "kernel-$mode: booting $kdir/bzImage under QEMU/TCG (2 vCPUs, $mem), timeout ${timeout_s}s" >&2
set +e
timeout --foreground -k 10 "$timeout_s" "$qemu" -accel tcg -smp 2 -m "$mem" \
	-kernel "$kdir/bzImage" -initrd "$tmp/initramfs.gz" \
	-append "console=ttyS0 panic=-1 oops=panic kal.mode=$mode" \
	-nographic -no-reboot -monitor none -serial stdio </dev/null 2>"$tmp/qemu.err" \
	| tee "$log" | grep --line-buffered -E '^(kal-init|KAL-|ok |not ok |#|test |\[ *[0-9.]+\] (BUG|WARNING|Kernel panic|Oops))' || true
rc=${PIPESTATUS[0]}
set -e
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
if grep -qE "BUG:|WARNING:|Kernel panic|Oops" "$log"; then
	echo "kernel-$mode: FAIL: kernel reported a problem:" >&2
	grep -E -A20 "BUG:|WARNING:|Kernel panic|Oops" "$log" | head -60 >&2
	exit 1
fi
if [ "$mode" = bench ]; then
	out="$(dirname "$kdir")/bench-$(basename "$kdir").md"
	sed -n 's/^KAL-BENCH: \{0,1\}//p' "$log" | tr -d '\r' > "$out"
	cat "$out"
	echo "kernel-bench: table saved to $out" >&2
fi
if grep -q "^KAL-RESULT: PASS" "$log"; then
	echo "kernel-$mode: PASS" >&2
	exit 0
fi
echo "kernel-$mode: FAIL (see the guest output above)" >&2
exit 1
