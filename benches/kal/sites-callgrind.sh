#!/usr/bin/env bash
# The cost of KAL's allocation stacks, in instructions (valgrind's callgrind):
# each workload (and redis-server under a fixed redis-benchmark load) under
# librmalloc.so with KAL off, then with KAL on
# (RMALLOC_KAL_BENCH_NO_SCANNER=1: the allocation paths without the scanner
# thread, which valgrind cannot run) and sites=off, sample:524288, all, and
# all with fast_unwind_on_malloc=1.  Prints one line per workload with the
# totals and the ratios to sites=off.
#
#   benches/kal/sites-callgrind.sh [BASELINE_LIB]
#
# BASELINE_LIB (optional): another librmalloc.so to count with KAL off, e.g.
# one built from the commit before allocation stacks.  Run `make lib` first.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=$root/target/release/librmalloc.so
base=${1:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for w in small mixed; do
  cc -O2 -pthread -I"$root/benches/workloads" -o "$work/$w" "$root/benches/workloads/$w.c"
done

count() { # LIB KAL_OPTIONS(or -) CMD...: the instruction total
  local l=$1 o=$2
  shift 2
  # Fixed hash seeds: perl and python3 randomise theirs, which moves their
  # allocation patterns (and the heap's layout) by a few percent between
  # runs, more than sampling costs.
  local env=(LD_PRELOAD="$l" PERL_HASH_SEED=0 PERL_PERTURB_KEYS=0 PYTHONHASHSEED=0)
  if [ "$o" != - ]; then env+=(RMALLOC_KAL_BENCH_NO_SCANNER=1 KAL_OPTIONS="$o"); fi
  env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$@" \
    >/dev/null 2>"$work/err"
  grep -o "Collected : [0-9]*" "$work/err" | awk '{print $3}'
}

row() { # NAME CMD...
  local name=$1
  shift
  local b="" off on sample all fast
  [ -n "$base" ] && b=$(count "$base" - "$@")
  off=$(count "$lib" - "$@")
  on=$(count "$lib" mode=detect:sites=off "$@")
  sample=$(count "$lib" mode=detect:sites=sample:524288 "$@")
  all=$(count "$lib" mode=detect:sites=all "$@")
  fast=$(count "$lib" mode=detect:sites=all:fast_unwind_on_malloc=1 "$@")
  awk -v n="$name" -v b="$b" -v off="$off" -v on="$on" -v s="$sample" -v a="$all" -v f="$fast" 'BEGIN {
    printf "%-9s", n
    if (b != "") printf " kal-off/baseline=%+.2f%%", (off / b - 1) * 100
    printf " off=%d sites=off:%d sample=%+.2f%% all=%.2fx all+fast=%.2fx\n",
      off, on, (s / on - 1) * 100, a / on, f / on }'
}

# redis-server under callgrind, serving a fixed redis-benchmark load
# (20,000 requests of each of seven commands, 50 clients) until SHUTDOWN.
count_redis() { # LIB KAL_OPTIONS(or -): the server's instruction total
  local l=$1 o=$2 port=$((20000 + RANDOM % 20000))
  local env=(LD_PRELOAD="$l")
  if [ "$o" != - ]; then env+=(RMALLOC_KAL_BENCH_NO_SCANNER=1 KAL_OPTIONS="$o"); fi
  env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg.redis" \
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    >"$work/redis.out" 2>"$work/err" &
  local pid=$! i
  for i in $(seq 600); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-benchmark -p "$port" -n 20000 -c 50 -q -t set,get,incr,lpush,lpop,sadd,hset >/dev/null
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$pid" || true
  grep -o "Collected : [0-9]*" "$work/err" | awk '{print $3}'
}

redis_row() {
  command -v redis-server >/dev/null || { echo "redis     (redis-server not installed: make bench-deps)"; return; }
  local b="" off on sample all fast
  [ -n "$base" ] && b=$(count_redis "$base" -)
  off=$(count_redis "$lib" -)
  on=$(count_redis "$lib" mode=detect:sites=off)
  sample=$(count_redis "$lib" mode=detect:sites=sample:524288)
  all=$(count_redis "$lib" mode=detect:sites=all)
  fast=$(count_redis "$lib" mode=detect:sites=all:fast_unwind_on_malloc=1)
  awk -v n=redis -v b="$b" -v off="$off" -v on="$on" -v s="$sample" -v a="$all" -v f="$fast" 'BEGIN {
    printf "%-9s", n
    if (b != "") printf " kal-off/baseline=%+.2f%%", (off / b - 1) * 100
    printf " off=%d sites=off:%d sample=%+.2f%% all=%.2fx all+fast=%.2fx\n",
      off, on, (s / on - 1) * 100, a / on, f / on }'
}

row small-1t "$work/small" 1 0.02
row mixed-1t "$work/mixed" 1 0.02
row python3 /usr/bin/python3 -c 'import json; print(sum(len(json.dumps(list(range(i)))) for i in range(600)))'
row perl /usr/bin/perl -e 'my %h; $h{$_}=[1..10] for 1..20000; my $s=0; $s+=@{$h{$_}} for keys %h; print "$s\n"'
redis_row
