"""What the benchmarks share: the result header, dtype and thread settings, the untimed warm-up step, seeds,
medians, text cells and the figure boilerplate."""
from __future__ import annotations

import contextlib
import copy
import datetime
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["torch_dtype", "header", "threads", "warm_up", "seeds", "median", "fmt", "figure"]


def torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return getattr(torch, dtype)


def header(name: str, **fields: Any) -> dict[str, Any]:
    """benchmark, date, torch version, threads and the load average at the start, then ``fields``."""
    return {"benchmark": name, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_avg": {"start": list(os.getloadavg())}, **fields}


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (nothing for None), restored after."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def warm_up(flow, action, **settings: Any) -> None:
    """One untimed `Trainer` step on a throwaway copy of ``flow`` (lazy initialisations, the allocator)."""
    from ..training import Trainer

    Trainer(copy.deepcopy(flow), action, **settings).step()


def seeds(values: str | Iterable, what: str = "bench") -> list[int]:
    """Integers from a comma-separated string or an iterable; a one-line error naming the input."""
    items = [s.strip() for s in (values.split(",") if isinstance(values, str) else map(str, values)) if s.strip()]
    try:
        out = [int(s) for s in items]
    except ValueError:
        raise ValueError(f"{what}: seeds must be integers, got {values!r}") from None
    if not out:
        raise ValueError(f"{what}: no seeds given ({values!r})")
    return out


def median(values: Iterable) -> float | None:
    """Median of the finite values (None if there are none)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.median(vals)) if vals else None


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or an em dash (right-aligned to the spec's width) for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return format("—", f">{spec.split('.')[0]}") if spec[:1].isdigit() else "—"
    return format(value, spec)


@contextlib.contextmanager
def figure(path: str, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> Iterator[tuple[Any, np.ndarray]]:
    """A matplotlib figure (Agg) with an (nrows, ncols) array of axes, saved to ``path`` after the block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, squeeze=False, **kwargs)
    try:
        yield fig, axes
        for ax in axes.flat:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
