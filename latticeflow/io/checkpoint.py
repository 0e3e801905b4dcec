"""Atomic checkpoints: a crash while saving never destroys the previous one.

:func:`save_checkpoint` writes with ``torch.save`` to a temporary file in the
target's directory, flushes and fsyncs it, then ``os.replace``s it over the
target (atomic on POSIX and Windows) and fsyncs the directory.  On any error
the temporary file is removed and the old checkpoint is left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Atomically write ``state`` (a dict of tensors, numbers, RNG states, ...) to ``path``."""
    import torch

    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(f"checkpoint directory does not exist: {Path(path).parent}")
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`: tensors and plain metadata only
    (``torch.load(..., weights_only=True)``), so a crafted file cannot run code; a file that holds anything else
    (a pickled object, code) is refused with one line, and so is a checkpoint whose weights are not finite."""
    import pickle

    import torch

    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"checkpoint not found: {target}")
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(target, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        detail = next((ln.strip()[:160] for ln in str(err).splitlines() if ln.strip().startswith("Unsupported")),
                      type(err).__name__)
        raise ValueError(f"checkpoint {target} is not a latticeflow checkpoint of tensors and plain metadata "
                         f"(refused, nothing in it was run: {detail})") from None
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {target} holds a {type(state).__name__}, expected a dict"
        )
    flow = state.get("flow")
    if isinstance(flow, dict):
        for name, value in flow.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"checkpoint {target}: flow weight {name!r} is not finite (NaN or inf); "
                                 f"refusing to sample or train from it")
    return state
