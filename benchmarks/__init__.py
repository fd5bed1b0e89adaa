"""Benchmarks: RPH against the same backend reached directly (`make bench`)."""
