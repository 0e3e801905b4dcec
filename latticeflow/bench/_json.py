"""Strict JSON for benchmark results: NaN/inf → null, numpy scalars → Python, tuples → lists."""
from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["strict", "dumps", "strict_copy"]


def strict(obj):
    """``obj`` with every non-finite float replaced by None (json.dumps(..., allow_nan=False) then works)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return strict(obj.item())
    return obj


def dumps(obj, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj``."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def strict_copy(obj):
    """``obj`` as it reads back from strict JSON (what a benchmark returns)."""
    return json.loads(dumps(obj, indent=None))
