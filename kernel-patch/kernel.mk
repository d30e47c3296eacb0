# Kernel patch: build, boot and test kal_snapshot under QEMU.
.PHONY: kernel kernel-test kernel-bench
