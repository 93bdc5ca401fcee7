"""Benchmarks: `make bench`. Each bench_*.py measures pyztunnel beside a named peer in the same run and prints ratios."""
