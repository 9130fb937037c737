"""Benchmarks: `make bench [SIZE=small|full]` -> a table and bench-out/results.json."""
