"""jafr_kernels benchmark suite (pytest-benchmark): ``python -m benchmarks``; see benchmarks/README.md."""
