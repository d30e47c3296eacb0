# Benchmarks and the demo.
.PHONY: bench demo
