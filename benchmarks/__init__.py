"""Benchmark scripts (see BENCHMARKS.md); a package so tests can import their pure parts."""
