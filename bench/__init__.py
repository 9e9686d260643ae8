"""Benchmarks: ``python -m bench [--quick] [NAME ...]``; results in ``bench/RESULTS.md``."""
