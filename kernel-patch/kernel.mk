# Kernel patch: build, boot and test kal_snapshot under QEMU.
#
#   make kernel        build (or reuse from the cache) the patched 6.12 bzImage
#   make kernel-test   boot it under QEMU/TCG and run the kselftest, the guest
#                      tests and tests/kal.rs with backend=kernel
#   make kernel-bench  the kal_snapshot (lazy, eager) vs fork() pause tables
#
# The kernel is cached outside the repo, in
# $${XDG_CACHE_HOME:-$$HOME/.cache}/rmalloc-kernel/<hash of the series + config>/.
# If QEMU cannot run at all on the machine, kernel-test says so loudly on
# stderr and does not fail `make test` (KAL_REQUIRE_QEMU=1 makes it fail).
# Any other problem (build, boot, a failing test, a timeout) fails.
.PHONY: kernel kernel-test kernel-bench

KAL_DIR := $(CURDIR)/kernel-patch

kernel:
	$(KAL_DIR)/scripts/build-kernel.sh >/dev/null

kernel-test: kernel
	@$(KAL_DIR)/scripts/run-guest.sh test; rc=$$?; \
	if [ $$rc -eq 3 ] && [ "$(KAL_REQUIRE_QEMU)" != 1 ]; then \
		echo "kernel-test: SKIPPED (LOUDLY): QEMU cannot run here; set KAL_REQUIRE_QEMU=1 to fail instead" >&2; exit 0; \
	fi; exit $$rc

kernel-bench: kernel
	$(KAL_DIR)/scripts/run-guest.sh bench
