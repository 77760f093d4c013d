"""Benchmarks, each run from the repository root as ``python -m benchmarks.<name>``; results in
``benchmarks/results/``."""
