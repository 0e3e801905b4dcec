"""One atomic-write helper and one strict JSON policy for every file the package writes.

`atomic_write` writes to a temporary file in the target's directory, flushes and fsyncs it, then
``os.replace``s it over the target (atomic on POSIX) and fsyncs the directory: a crash leaves the old file
or the new one, never half of either. JSON is strict everywhere (RFC 8259): NaN and ±inf are written as
``null`` (`strict`), numpy scalars as Python numbers, tuples as lists.

Example:
    >>> import json
    >>> json.loads(dumps_json({"x": float("nan"), "y": (1, 2.5)}))
    {'x': None, 'y': [1, 2.5]}
"""
from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._repair import _fsync_path

__all__ = ["atomic_write", "write_text", "strict", "dumps_json", "write_json"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a binary temporary file beside ``path`` and atomically replace ``path`` with it."""
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"directory does not exist: {directory}")
    tmp = directory / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides permissions
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_path(str(directory))  # make the rename durable (best effort)
    return target


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, numpy scalars and arrays as Python values."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return strict(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # 0-d tensors
        return strict(obj.item())
    return obj


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (`strict`, then ``allow_nan=False``)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as strict JSON."""
    return write_text(path, dumps_json(obj) + "\n")
