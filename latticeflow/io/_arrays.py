"""Conversion and validation of the arrays handed to :class:`EnsembleWriter`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from latticeflow.io._format import PER_ROW_DATASETS

__all__ = ["as_shape", "check_rows", "to_numpy"]


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy view/copy of ``x`` (numpy array, torch tensor on any device, sequence)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        t = t.resolve_conj().resolve_neg()
        return t.numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufc":
        raise ValueError(f"{name!r} must be numeric, got dtype {arr.dtype}")
    return arr


def as_shape(value: Any, name: str, *, allow_empty: bool) -> tuple[int, ...]:
    try:
        if isinstance(value, (str, bytes)) or any(int(v) != v for v in value):
            raise TypeError(name)
        shape = tuple(int(v) for v in value)
    except TypeError as exc:
        raise ValueError(f"{name} must be a tuple of ints, got {value!r}") from exc
    if any(v < 1 for v in shape) or (not shape and not allow_empty):
        raise ValueError(f"{name} must be a tuple of positive ints, got {value!r}")
    return shape


def check_rows(arrays: Mapping[str, np.ndarray]) -> None:
    """All arrays must have the same first dimension as ``samples``."""
    samples = arrays["samples"]
    if samples.ndim == 0:
        raise ValueError("'samples' must have a leading batch dimension, got a scalar")
    n = samples.shape[0]
    for name, arr in arrays.items():
        if arr.ndim == 0 or arr.shape[0] != n:
            got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
            raise ValueError(f"{name!r} has {got} but 'samples' has {n} rows")
        if name in PER_ROW_DATASETS and arr.ndim != 1:
            raise ValueError(f"{name!r} must be 1-d (N,), got shape {arr.shape}")
