"""Evaluation: metrics with the benchmarks' official rules, benchmark readers, and the runner."""
