# Integration tests: C programs and real programs run against librmalloc.so.
.PHONY: test-integration
test-integration: lib
	$(CARGO) test --release -p rmalloc-integration

# Real programs driven by tests/programs.rs (installed only when missing).
test-integration: programs-deps
.PHONY: programs-deps
programs-deps:
	$(NEED_APT) python3 libpython3.11-testsuite git perl sqlite3 redis-server redis-tools
