"""Glue between samplers, I/O and analysis (the only place that knows several of them)."""
from .sample import SampleSummary, resolve_device, sample

__all__ = ["SampleSummary", "sample", "resolve_device"]
from .analyze import EnsembleAnalysis, analyze  # noqa: E402

__all__ += ["EnsembleAnalysis", "analyze"]
from .train import build_trainer, train  # noqa: E402

__all__ += ["build_trainer", "train"]
from .run import comparison_table, run  # noqa: E402

__all__ += ["comparison_table", "run"]
