# Integration tests: C programs and real programs run against librmalloc.so.
.PHONY: test-integration
test-integration: lib kal-cli
	$(CARGO) test --release -p rmalloc-integration

# The kal command (rmalloc/cli), driven by tests/kal_cli.rs from
# target/release/kal; its --chart test needs a font (fonts-dejavu-core).
.PHONY: kal-cli
kal-cli:
	$(NEED_APT) fonts-dejavu-core
	$(CARGO) build --release -p kal

# Real programs driven by tests/programs.rs (installed only when missing).
test-integration: programs-deps
.PHONY: programs-deps
programs-deps:
	$(NEED_APT) python3 libpython3.11-testsuite git perl sqlite3 redis-server redis-tools

# C and C++ test programs (tests/c, driven by tests/c_api.rs) need compilers,
# make, pkg-config and binutils (readelf, nm: the GOT check).  Their
# expectations also run on plain glibc first:
# that proves each one is glibc 2.36's own behaviour.
test-integration: c-api-deps test-c-api-glibc
.PHONY: c-api-deps test-c-api-glibc
c-api-deps:
	$(NEED_APT) gcc g++ libc6-dev make pkg-config binutils
test-c-api-glibc: c-api-deps
	RMALLOC_TEST_AGAINST_GLIBC=1 $(CARGO) test --release -p rmalloc-integration --test c_api

# KAL tests (tests/kal.rs) compare KAL's leak report with LeakSanitizer's when
# clang can build with -fsanitize=leak; without it that comparison is skipped,
# so a failed install is not fatal.
test-integration: kal-lsan-deps
.PHONY: kal-lsan-deps
kal-lsan-deps:
	-$(NEED_APT) clang libclang-rt-14-dev
