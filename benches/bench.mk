# Benchmarks and the demo (included by the top-level Makefile).
#
#   make bench   every workload under glibc, jemalloc, mimalloc, tcmalloc and
#                rmalloc; table on stdout, files in target/bench/
#                (BENCH_RUNS=N repetitions, default 5; BENCH_QUICK=1 smoke sizes;
#                BENCH_WORKLOADS=a,b / BENCH_ALLOCATORS=x,y to restrict)
#   make demo    a leaky server-like program under glibc, rmalloc, rmalloc+KAL

BENCH_APT := gcc libc6-dev binutils python3 perl sqlite3 git \
	libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4
BENCH_BIN := $(TARGET)/release/rmalloc-bench
BENCH_OUT := $(TARGET)/bench
BENCH_ARGS = --rmalloc $(LIB) --out $(BENCH_OUT) --src $(CURDIR)/benches

.PHONY: bench demo bench-deps bench-runner

bench-deps:
	$(NEED_APT) $(BENCH_APT)

bench-runner:
	$(CARGO) build --release -p rmalloc-bench

bench: lib bench-deps bench-runner
	$(BENCH_BIN) bench $(BENCH_ARGS)

demo: lib bench-deps bench-runner
	$(BENCH_BIN) demo $(BENCH_ARGS)
