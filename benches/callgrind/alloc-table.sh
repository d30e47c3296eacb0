#!/bin/bash
# Allocator instruction counts of the synthetic workloads under callgrind,
# glibc against rmalloc: total instructions of the process, and those spent
# inside malloc/free/calloc/realloc/... (inclusive cost of every call into
# an allocator entry point from outside the allocator).  Deterministic for
# the single-threaded workloads; threaded ones move a little with valgrind's
# thread scheduling (valgrind runs one thread at a time, so contention does
# not show).  Prints a Markdown table.
#
#   benches/callgrind/alloc-table.sh [SCALE] [WORKLOAD...]
#   (default scale 0.03, as BENCH_CALLGRIND=1 uses; needs make lib, valgrind)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
scale=${1:-0.03}; shift || true
lib=${RMALLOC_LIB:-$root/target/release/librmalloc.so}
out=${OUT:-$root/target/bench/alloc-callgrind}
mkdir -p "$out/bin"
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(small-1t small-2t mixed-1t mixed-2t prodcons-2t realloc-1t
    realloc-2t large-1t large-2t larson-4t xthread-8t scratch-2t sizes-1t)
[ -f "$lib" ] || { echo "no $lib: run make lib" >&2; exit 1; }
echo "| workload | glibc total | rmalloc total | glibc allocator | rmalloc allocator | allocator ratio |"
echo "|---|---:|---:|---:|---:|---:|"
for w in "${workloads[@]}"; do
    prog=${w%-*}; threads=${w##*-}; threads=${threads%t}
    bin=$out/bin/$prog
    [ "$bin" -nt "$root/benches/workloads/$prog.c" ] ||
        cc -O2 -Wall -pthread -o "$bin" "$root/benches/workloads/$prog.c" -ldl
    row=()
    for a in glibc rmalloc; do
        f=$out/$w-$a.out
        pre=(); [ $a = rmalloc ] && pre=(env LD_PRELOAD="$lib")
        "${pre[@]}" valgrind --tool=callgrind --callgrind-out-file="$f" "$bin" "$threads" "$scale" \
            > "$out/$w-$a.stdout" 2> "$out/$w-$a.stderr"
        read -r _ total _ alloc _ < <(python3 "$here/alloc_instr.py" "$f")
        row+=("$total" "$alloc")
    done
    cmp -s "$out/$w-glibc.stdout" "$out/$w-rmalloc.stdout" || echo "$w: OUTPUT DIFFERS" >&2
    python3 -c "import sys; gt,ga,rt,ra=map(int,sys.argv[2:]); print(f'| {sys.argv[1]} | {gt/1e6:.2f}M | {rt/1e6:.2f}M | {ga/1e6:.2f}M | {ra/1e6:.2f}M | {ra/ga:.3f}x |')" \
        "$w" "${row[0]}" "${row[1]}" "${row[2]}" "${row[3]}"
done
