"""Training-step throughput and peak memory of every EM3 variant: ``python -m benchmarks.throughput``
(the module docstring of :mod:`benchmarks.throughput.run` describes what it measures)."""

from benchmarks.throughput.run import main, parse_args, run_world

__all__ = ["main", "parse_args", "run_world"]
