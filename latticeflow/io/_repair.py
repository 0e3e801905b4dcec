"""Detect and repair an ensemble file whose writer died while writing.

HDF5 (without SWMR) is not crash-consistent *during* a flush: it writes the
object headers and chunk indexes before the superblock, whose end-of-allocation
address (EOA) is what bounds every valid address.  A process killed in that
window leaves structures pointing past the EOA.  Reading the committed rows of
such a file works, but shrinking its datasets in place makes HDF5 free space it
does not own, which can corrupt the file or crash the process.

A completed flush always leaves the file's physical size equal to the EOA and
every dataset exactly ``n_rows`` long (the writer commits ``n_rows`` in a
second flush).  A file that differs is "dirty"; :func:`rewrite_committed`
repairs it by streaming the committed rows and all root attributes into a
fresh file and atomically replacing the original with it.  The same rewrite
adds root attributes to a file holding committed rows: adding one in place
allocates object-header space, and a kill during that flush can make the
whole file unreadable.
"""

from __future__ import annotations

import math
import os

from collections.abc import Mapping
from typing import Any

import h5py

from latticeflow.io._format import LIBVER, open_h5_readonly
from latticeflow.io.files import atomic_path, remove_stale

__all__ = ["superblock_eoa", "file_is_clean", "rewrite_committed"]

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_COPY_BYTES = 16 * 1024 * 1024  # memory bound of the repair copy


def superblock_eoa(path: str | os.PathLike[str]) -> int | None:
    """Absolute end-of-allocation address stored in the superblock at offset 0.

    Returns ``None`` for a layout this function does not know (e.g. a file
    with a user block); callers then skip the size check.
    """
    with open(path, "rb") as fh:
        head = fh.read(128)
    if len(head) < 48 or head[:8] != _SIGNATURE:
        return None
    version = head[8]
    if version in (0, 1):
        size = head[13]
        base_at = 24 if version == 0 else 28
    elif version in (2, 3):
        size = head[9]
        base_at = 12
    else:
        return None
    if size not in (2, 4, 8) or base_at + 3 * size > len(head):
        return None
    base = int.from_bytes(head[base_at : base_at + size], "little")
    eoa_at = base_at + 2 * size
    return base + int.from_bytes(head[eoa_at : eoa_at + size], "little")


def file_is_clean(path: str | os.PathLike[str], lengths: list[int], n_rows: int) -> bool:
    """True if the last flush completed and no dataset extends past ``n_rows``."""
    if any(length != n_rows for length in lengths):
        return False
    eoa = superblock_eoa(path)
    return eoa is None or eoa == os.path.getsize(path)


def rewrite_committed(
    path: str | os.PathLike[str],
    names: list[str],
    n_rows: int,
    new_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Replace ``path`` by a fresh copy holding its root attributes (updated
    with ``new_attrs``) and the first ``n_rows`` rows of each dataset in
    ``names`` (same dtype, chunks and maxshape).  Memory stays bounded; the
    original is replaced atomically and is untouched if this fails or is killed.
    """
    path = os.path.abspath(os.fspath(path))
    remove_stale(path, "repair")  # left by a repair that was itself killed
    with atomic_path(path, "repair") as tmp:
        with open_h5_readonly(path) as src, h5py.File(tmp, "x", libver=LIBVER) as dst:
            for key in src.attrs:
                if key not in (new_attrs or {}):
                    dst.attrs.create(key, src.attrs[key], dtype=src.attrs.get_id(key).dtype)
            for key, value in (new_attrs or {}).items():
                try:
                    dst.attrs[key] = value
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"attribute {key!r}: cannot store {value!r}: {exc}") from exc
            for name in names:
                ds = src[name]
                trailing = ds.shape[1:]
                out = dst.create_dataset(
                    name,
                    shape=(n_rows, *trailing),
                    maxshape=ds.maxshape,
                    chunks=ds.chunks,
                    dtype=ds.dtype,
                )
                for key in ds.attrs:
                    out.attrs.create(key, ds.attrs[key], dtype=ds.attrs.get_id(key).dtype)
                row_bytes = max(1, ds.dtype.itemsize * math.prod(trailing))
                step = max(1, _COPY_BYTES // row_bytes)
                for start in range(0, n_rows, step):
                    stop = min(start + step, n_rows)
                    out[start:stop] = ds[start:stop]
            dst.flush()
