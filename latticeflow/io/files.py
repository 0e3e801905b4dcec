"""One atomic-write mechanism and one strict JSON policy for every file the package writes.

`atomic_path` yields a temporary name ``.<name>.<tag>-<pid>-<hex>.tmp`` in the target's directory; when the
block succeeds the file is fsynced and ``os.replace``d over the target (atomic on POSIX) and the directory
fsynced; on any error the temporary is removed: a crash or a full disk leaves the old file or the new one,
never half of either. A failed fsync (EIO, ENOSPC) is an error, not ignored. A kill leaves the temporary,
which `remove_stale` (one target) and `remove_stale_in` (a run directory, called by the next command that
locks it) clear. `atomic_write` is that for a byte stream, every byte written by ``os.write`` (so a failed
write raises at once); HDF5 files (ensemble creation, repair, MPI master files) are written through
`atomic_path` by h5py. JSON is strict everywhere (RFC 8259): NaN and ±inf are written as ``null`` (`strict`),
numpy scalars as Python numbers, tuples as lists.

Example:
    >>> import json
    >>> json.loads(dumps_json({"x": float("nan"), "y": (1, 2.5)}))
    {'x': None, 'y': [1, 2.5]}
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_path", "atomic_write", "remove_stale", "remove_stale_in", "write_text", "strict", "dumps_json",
           "write_json", "fsync_path"]

#: the name `atomic_path` gives a temporary: ``.<name>.<tag>-<pid>-<hex>.tmp``
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z]+-(\d+)-[0-9a-f]+\.tmp$")


#: fsync errors that mean "not supported here" (some file systems, directories), not "data lost"
_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EROFS, errno.EISDIR})


def fsync_path(path: str | os.PathLike[str], strict: bool = False) -> None:
    """fsync a file or directory by name. Best effort unless ``strict``: then a failed fsync (EIO, ENOSPC: the
    data may not be on disk) raises, while "not supported here" (EINVAL, …) and "not permitted" do not."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:  # a directory may not be openable here (EACCES): nothing to make durable then
        if strict and err.errno not in _FSYNC_UNSUPPORTED | {errno.EACCES, errno.EPERM}:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if strict and err.errno not in _FSYNC_UNSUPPORTED:
            raise
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_in(directory: str | os.PathLike[str]) -> list[str]:
    """Remove every `atomic_path` temporary in ``directory`` and its immediate subdirectories (e.g.
    ``checkpoints/.latest.pt.tmp-*.tmp``) whose writer (the pid in its name) is gone or is this process; returns
    the names removed. Call it while holding the directory's lock (`latticeflow.io.lock`)."""
    removed: list[str] = []
    top = Path(directory)
    try:
        dirs = [top, *(d for d in top.iterdir() if d.is_dir() and not d.is_symlink())]
    except OSError:
        return removed
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            m = _TEMP_NAME.match(name)
            if m is None:
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and _pid_alive(pid):
                continue
            with contextlib.suppress(OSError):
                os.unlink(d / name)
                removed.append(str(d / name))
    return removed


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
        fsync_path(tmp, strict=True)  # EIO here: the data may not be on disk, keep the old file
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_path(target.parent, strict=True)  # make the rename durable


class _RawFile:
    """A binary file over a descriptor whose every write is an ``os.write`` (no hidden buffer: a failed write
    raises at once, and fault injection can reach it)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.pos = fd, 0
        self.error: OSError | None = None  # the first failed write (a caller may turn it into another error)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as err:
            self.error = self.error or err
            raise
        self.pos += n
        return n

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.pos

    def fileno(self) -> int:
        return self.fd


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a binary temporary file beside ``path`` and atomically replace ``path`` with it."""
    with atomic_path(path, "tmp") as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides permissions
        raw = _RawFile(fd)
        try:
            write(raw)  # type: ignore[arg-type]
        except Exception as err:
            if raw.error is not None and raw.error is not err:  # e.g. torch.save reports a failed write as
                raise raw.error from None                         # a RuntimeError: the OSError is the cause
            raise
        finally:
            os.close(fd)
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
