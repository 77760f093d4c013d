"""Fixtures for tests and benchmarks (not used by training): tiny datasets' meta and batches."""
