"""One atomic-write mechanism and one strict JSON policy for every file the package writes.

`atomic_path` yields a temporary name in the target's directory; when the block succeeds the file is fsynced
and ``os.replace``d over the target (atomic on POSIX) and the directory fsynced; on any error or kill the
temporary is removed (or left under a ``.<name>.<tag>-*.tmp`` name that `remove_stale` clears): a crash leaves
the old file or the new one, never half of either. `atomic_write` is that for a byte stream; HDF5 files
(ensemble creation, repair, MPI master files) are written through `atomic_path` by h5py. JSON is strict everywhere (RFC 8259): NaN and ±inf are written as
``null`` (`strict`), numpy scalars as Python numbers, tuples as lists.

Example:
    >>> import json
    >>> json.loads(dumps_json({"x": float("nan"), "y": (1, 2.5)}))
    {'x': None, 'y': [1, 2.5]}
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_path", "atomic_write", "remove_stale", "write_text", "strict", "dumps_json", "write_json"]


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or directory by name (best effort: errors are ignored)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale(path: str | os.PathLike[str], tag: str) -> None:
    """Remove temporaries ``.<name>.<tag>-*.tmp`` beside ``path`` left by a killed `atomic_path`."""
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    for stale in glob.glob(os.path.join(directory, glob.escape(f".{base}.{tag}-") + "*.tmp")):
        try:
            os.unlink(stale)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], tag: str = "write") -> Iterator[Path]:
    """A temporary path ``.<name>.<tag>-<pid>-<hex>.tmp`` beside ``path`` to write to; after the block it
    replaces ``path`` atomically (fsync of the file, rename, fsync of the directory), on an error it is removed."""
    target = Path(os.path.abspath(os.fspath(path)))
    if not target.parent.is_dir():
        raise FileNotFoundError(f"directory does not exist: {target.parent}")
    tmp = target.with_name(f".{target.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_path(target.parent)  # make the rename durable


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a binary temporary file beside ``path`` and atomically replace ``path`` with it."""
    with atomic_path(path, "tmp") as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
    return Path(path)


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
