# Integration tests: C programs and real programs run against librmalloc.so.
.PHONY: test-integration
test-integration: lib
	$(CARGO) test --release -p rmalloc-integration
