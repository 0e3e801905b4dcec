"""Benchmarks printed by ``latticeflow bench NAME [--json]``."""
from .gradients import GradientCase, bench_case, default_cases, format_gradient_table, run_gradient_bench

__all__ = ["GradientCase", "bench_case", "default_cases", "format_gradient_table", "run_gradient_bench"]
