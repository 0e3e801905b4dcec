"""What the benchmarks share: the dtype setting, the untimed warm-up step and name lists. Elsewhere: the result
header (`io._provenance.result_header`), strict JSON (`io.strict`), tuned HMC (`samplers.hmc.tuned_run`), text
tables (`analysis.table.text_table`) and figures (`analysis.plots.figure`)."""
from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["torch_dtype", "warm_up", "names"]


def torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` for ``"float32"`` (the CLI offers float32 and float64); a torch dtype as it is."""
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)


def warm_up(flow, action, **settings: Any) -> None:
    """One untimed `Trainer` step on a throwaway copy of ``flow`` (lazy initialisations, the allocator)."""
    from ..training import Trainer

    Trainer(copy.deepcopy(flow), action, **settings).step()


def names(values: str | Iterable[str] | None) -> list[str] | None:
    """A list of names from a comma-separated string or an iterable (blanks dropped); None for none."""
    if values is None:
        return None
    out = [v.strip() for v in (values.split(",") if isinstance(values, str) else values) if v.strip()]
    return out or None
