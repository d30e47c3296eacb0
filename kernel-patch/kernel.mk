# Kernel patch: build, boot and test kal_snapshot under QEMU.
#
#   make kernel        build (or reuse from the cache) the patched 6.12 bzImage
#                      and its debug variant (kal-debug.config: lockdep,
#                      DEBUG_VM, page-table check, PREEMPT, KSM, io_uring)
#   make kernel-test   boot each under QEMU/TCG and run the kselftest, the
#                      guest tests and tests/kal.rs with backend=kernel (the
#                      debug variant with 4 vCPUs; a lockdep report, BUG or
#                      WARNING on either console fails)
#   make kernel-bench  the kal_snapshot (lazy, eager) vs fork() pause tables
#                      (on the plain kernel)
#
# The kernel is cached outside the repo, in
# $${XDG_CACHE_HOME:-$$HOME/.cache}/rmalloc-kernel/<hash of the series + config>/.
# If QEMU cannot run at all on the machine, kernel-test says so loudly on
# stderr and does not fail `make test` (KAL_REQUIRE_QEMU=1 makes it fail).
# Any other problem (build, boot, a failing test, a timeout) fails.
.PHONY: kernel kernel-test kernel-bench

KAL_DIR := $(CURDIR)/kernel-patch

kernel:
	@for v in plain debug; do \
		start=$$(date +%s); \
		KAL_KERNEL_VARIANT=$${v#plain} $(KAL_DIR)/scripts/build-kernel.sh >/dev/null || exit 1; \
		echo "kernel: $$v kernel ready in $$(( $$(date +%s) - start )) s" >&2; \
	done

kernel-test: kernel
	@for v in plain debug; do \
		start=$$(date +%s); \
		echo "kernel-test: === $$v kernel" >&2; \
		KAL_KERNEL_VARIANT=$${v#plain} $(KAL_DIR)/scripts/run-guest.sh test; rc=$$?; \
		echo "kernel-test: $$v kernel took $$(( $$(date +%s) - start )) s" >&2; \
		if [ $$rc -eq 3 ] && [ "$(KAL_REQUIRE_QEMU)" != 1 ]; then \
			echo "kernel-test: SKIPPED (LOUDLY): QEMU cannot run here; set KAL_REQUIRE_QEMU=1 to fail instead" >&2; exit 0; \
		fi; \
		[ $$rc -eq 0 ] || exit $$rc; \
	done

kernel-bench:
	$(KAL_DIR)/scripts/build-kernel.sh >/dev/null
	$(KAL_DIR)/scripts/run-guest.sh bench
