# rmalloc + KAL: top-level build.  `make` builds the release library,
# `make test` runs every test, `make bench` the allocator comparison,
# `make demo` the main workload under glibc, rmalloc and rmalloc+KAL.
# Fragments next to what they build add their own targets.

CARGO   ?= cargo
TARGET  := $(CURDIR)/target
LIB     := $(TARGET)/release/librmalloc.so
NEED_APT := $(CURDIR)/scripts/need-apt
PREFIX  ?= /usr/local
export CARGO_TERM_COLOR ?= never

.PHONY: all lib test test-unit test-lint install demo bench clean
all: lib

lib:
	$(CARGO) build --release -p rmalloc

# Unit tests (including the proptest model fuzzing) of the Rust crates.
test-unit:
	$(CARGO) test --release -p rmalloc-sys -p rmalloc

test-lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings

include tests/tests.mk
include benches/bench.mk
include kernel-patch/kernel.mk

# Every test there is, stage by stage with the time each took.  Kernel
# tests last: they are the slowest on a cold cache.
TEST_STAGES := test-lint test-unit test-integration kernel-test
test:
	@total=$$(date +%s); for s in $(TEST_STAGES); do \
		start=$$(date +%s); echo "=== make test: $$s"; \
		$(MAKE) --no-print-directory $$s || { echo "=== make test: $$s FAILED after $$(( $$(date +%s) - start )) s"; exit 1; }; \
		echo "=== make test: $$s took $$(( $$(date +%s) - start )) s"; \
	done; echo "=== make test: all stages took $$(( $$(date +%s) - total )) s"

# kal finds the library beside itself: $(PREFIX)/bin/kal and $(PREFIX)/lib/librmalloc.so.
# Its --chart draws text with Debian's DejaVu Sans (fonts-dejavu-core).
install: lib
	$(NEED_APT) fonts-dejavu-core
	$(CARGO) build --release -p kal
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0755 $(TARGET)/release/kal $(DESTDIR)$(PREFIX)/bin/kal
	install -m 0644 rmalloc/cli/kal.1 $(DESTDIR)$(PREFIX)/share/man/man1/kal.1
	install -m 0755 $(LIB) $(DESTDIR)$(PREFIX)/lib/librmalloc.so
	install -m 0644 rmalloc/include/rmalloc.h $(DESTDIR)$(PREFIX)/include/rmalloc.h
	install -m 0644 rmalloc/include/kal.h $(DESTDIR)$(PREFIX)/include/kal.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|0.1.0|g' rmalloc/rmalloc.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/rmalloc.pc

clean:
	$(CARGO) clean
