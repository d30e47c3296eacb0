#!/bin/bash
# Peak RSS (VmHWM at exit, see hwm.c) of the small synthetic workloads under
# glibc and one or more builds of librmalloc.so, N runs each, interleaved;
# prints median, mean, range and the ratio of medians to glibc's.
#
#   benches/rss/peak-rss.sh N LIB... [-- WORKLOAD...]
#   e.g. benches/rss/peak-rss.sh 15 /tmp/old/librmalloc.so target/release/librmalloc.so
#   (workloads default to small-1t xthread-8t scratch-2t; needs `make bench`
#   to have compiled target/bench/bin, and gcc)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n=$1; shift
libs=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do libs+=("$(realpath "$1")"); shift; done
[ "${1:-}" = -- ] && shift
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(small-1t xthread-8t scratch-2t)
bin=$root/target/bench/bin
hwm=$bin/hwm
[ "$hwm" -nt "$here/hwm.c" ] || cc -O2 -Wall -o "$hwm" "$here/hwm.c"
for w in "${workloads[@]}"; do
    prog=${w%-*}; threads=${w##*-}; threads=${threads%t}
    [ -x "$bin/$prog" ] || { echo "no $bin/$prog: run make bench first" >&2; exit 1; }
    results=("glibc:")
    for l in "${libs[@]}"; do results+=("$l:"); done
    for _ in $(seq "$n"); do
        results[0]+=" $("$hwm" "$bin/$prog" "$threads" 1)"
        for i in "${!libs[@]}"; do
            results[i+1]+=" $(LD_PRELOAD=${libs[i]} "$hwm" "$bin/$prog" "$threads" 1)"
        done
    done
    python3 - "$w" "${results[@]}" <<'PY'
import statistics as s, sys
name, rows = sys.argv[1], [r.split(':', 1) for r in sys.argv[2:]]
base = s.median(map(int, rows[0][1].split()))
for who, vals in rows:
    v = list(map(int, vals.split()))
    print(f"{name:12s} {s.median(v):7.0f} KiB median ({s.median(v)/base:.3f}x), mean {s.mean(v):7.0f}, {min(v)}-{max(v)}  {who}")
PY
done
