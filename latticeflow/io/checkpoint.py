"""Atomic checkpoints of tensors and plain metadata: a crash or a full disk while saving never destroys the
previous one, and loading one can never run code.

:func:`save_checkpoint` serialises with ``torch.save`` in memory, writes the bytes to a temporary file in the
target's directory, fsyncs it, then ``os.replace``s it over the target (atomic on POSIX) and fsyncs the
directory. On any error (ENOSPC, EIO, a kill) the temporary file is removed (a kill's leftover is removed by
the next run that locks the directory) and the last complete checkpoint stays as it was; the error is one
line. :func:`load_checkpoint` uses ``torch.load(..., weights_only=True)`` and refuses non-finite flow weights.

Checkpoints of older versions that hold other objects (e.g. numpy arrays) are refused with a line saying how
to convert one you trust: ``python -m latticeflow.io.checkpoint OLD.pt NEW.pt`` (that conversion loads the
old file with full unpickling, so run it only on files from a trusted source).
"""

from __future__ import annotations

import io
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint"]  # convert_checkpoint and main: for `python -m`


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Atomically write ``state`` (a dict of tensors, numbers, RNG states, ...) to ``path``.

    Raises a one-line ``OSError`` naming the checkpoint if it cannot be written (the previous one is kept)."""
    import torch

    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(f"checkpoint directory does not exist: {Path(path).parent}")
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    try:
        atomic_write(path, lambda fh: fh.write(data))
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise OSError(err.errno, f"could not write checkpoint {path}: {reason}; the last complete checkpoint "
                                 f"is kept") from None


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    hit = next((ln[ln.index("Unsupported"):] for ln in lines if "Unsupported" in ln), None)
    if hit:  # "Unsupported global: GLOBAL numpy._core.multiarray._reconstruct was not an allowed global …"
        return hit.split(" was not")[0][:200]
    return (f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__)[:200]


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`: tensors and plain metadata only
    (``torch.load(..., weights_only=True)``), so a crafted file cannot run code; a file that holds anything else
    (a pickled object, code, or no checkpoint at all) is refused with one line, and so is a checkpoint whose
    weights are not finite."""
    import warnings

    import torch

    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"checkpoint not found: {target}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(target, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 — whatever a foreign or crafted file makes the unpickler raise
        detail = _first_line(err)
        hint = (f"; if it is a checkpoint of an older latticeflow from a source you trust, convert it with "
                f"'python -m latticeflow.io.checkpoint {target} NEW.pt'") if "Unsupported global" in detail else ""
        raise ValueError(f"checkpoint {target} is not a latticeflow checkpoint of tensors and plain metadata "
                         f"(refused, nothing in it was run: {detail}){hint}") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {target} holds a {type(state).__name__}, expected a dict "
                         f"(not a latticeflow checkpoint)")
    flow = state.get("flow")
    if isinstance(flow, dict):
        for name, value in flow.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"checkpoint {target}: flow weight {name!r} is not finite (NaN or inf); "
                                 f"refusing to sample or train from it")
    return state


def _plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors, numpy scalars as Python numbers, dataclasses as dicts."""
    import dataclasses

    import numpy as np
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj)) if obj.dtype.kind in "biufc" else obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):  # OrderedDict (state dicts) stays one: weights_only loads it
        out = {k: _plain(v) for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def convert_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Rewrite a trusted checkpoint of an older version (full unpickling: trusted files only) as tensors and
    plain metadata that :func:`load_checkpoint` accepts."""
    import torch

    state = torch.load(Path(src), map_location="cpu", weights_only=False)  # noqa: S614 — explicit trust
    if not isinstance(state, dict):
        raise ValueError(f"{src} holds a {type(state).__name__}, not a checkpoint dict")
    save_checkpoint(dst, _plain(state))
    load_checkpoint(dst)  # what we wrote loads
    return Path(dst)


def main(argv: list[str] | None = None) -> int:
    """``python -m latticeflow.io.checkpoint OLD NEW``: convert a trusted older checkpoint."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m latticeflow.io.checkpoint OLD.pt NEW.pt  (OLD must come from a trusted source)",
              file=sys.stderr)
        return 2
    try:
        print(f"wrote {convert_checkpoint(args[0], args[1])}")
    except (OSError, ValueError, RuntimeError) as err:
        print(f"latticeflow: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
