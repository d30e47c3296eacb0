# Benchmarks and the demo (included by the top-level Makefile).
#
#   make bench   every workload under glibc, jemalloc, mimalloc, tcmalloc,
#                rmalloc and rmalloc+KAL (reclaim, 2000 ms and 100 ms), then
#                redis-benchmark and KAL's pause/scan-rate table; tables on
#                stdout, files in target/bench/ (BENCH_RUNS=N repetitions,
#                default 5; BENCH_QUICK=1 smoke sizes; BENCH_WORKLOADS=a,b /
#                BENCH_ALLOCATORS=x,y to restrict; BENCH_KAL=0 skips redis and
#                the pause table; BENCH_CALLGRIND=1 adds each pair's
#                instruction count under valgrind's callgrind, at reduced sizes:
#                slow, but repeatable on a busy machine)
#   make bench-kal  only redis-benchmark and the pause/scan-rate table
#   make demo    a leaky server-like program under glibc, rmalloc, rmalloc+KAL
#                detect and rmalloc+KAL reclaim, single- and multi-threaded

BENCH_APT := gcc libc6-dev binutils python3 perl sqlite3 git valgrind \
	libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 redis-server redis-tools fonts-dejavu-core
BENCH_BIN := $(TARGET)/release/rmalloc-bench
BENCH_OUT := $(TARGET)/bench
BENCH_ARGS = --rmalloc $(LIB) --out $(BENCH_OUT) --src $(CURDIR)/benches

.PHONY: bench bench-kal demo bench-deps bench-runner

bench-deps:
	$(NEED_APT) $(BENCH_APT)

bench-runner:
	$(CARGO) build --release -p rmalloc-bench

bench: lib bench-deps bench-runner
	$(BENCH_BIN) bench $(BENCH_ARGS)

bench-kal: lib bench-deps bench-runner
	$(BENCH_BIN) kal $(BENCH_ARGS)

demo: lib bench-deps bench-runner
	$(BENCH_BIN) demo $(BENCH_ARGS)
