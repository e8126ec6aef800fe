"""Benchmarks (``make bench``): timings live here and in bench/results, never in test asserts."""
