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

Failed writes (ENOSPC, EIO): after HDF5 reports one, its caches may hold
state that it will try to write again when the file is flushed or closed,
and doing so after a failure has crashed the process (exit 139).  :func:`abandon`
closes such a handle without touching the file again: the file descriptor
is first redirected to an anonymous in-memory file, so whatever HDF5 still
writes goes nowhere.  :func:`io_error` is the one-line ``OSError`` a failed
write of an ensemble file raises.
"""

from __future__ import annotations

import errno as _errno
import math
import os

from collections.abc import Callable, Mapping
from typing import Any

import h5py
import numpy as np

from latticeflow.io._format import FORMAT_VERSION, LIBVER, open_h5_readonly
from latticeflow.io.checksums import HISTORY, TABLE, crc_of, create_history, create_table
from latticeflow.io.files import atomic_path, remove_stale

__all__ = ["superblock_eoa", "file_is_clean", "rewrite_committed", "build_file", "abandon", "confirm_on_disk", "io_error",
           "IO_ERRORS"]

#: What h5py raises for a failed read or write of the file.
IO_ERRORS = (OSError, RuntimeError)

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
    upgrade: str | None = None,
) -> None:
    """Replace ``path`` by a fresh copy holding its root attributes (updated
    with ``new_attrs``), the first ``n_rows`` rows of each dataset in
    ``names`` (same dtype, chunks and maxshape) and the committed part of the
    checksum table and history.  With ``upgrade`` (a history entry), a file of
    format_version 1 becomes version 2: its rows get one checksum batch,
    computed while copying.  Memory stays bounded; the original is replaced
    atomically and is untouched if this fails or is killed.
    """
    path = os.path.abspath(os.fspath(path))
    remove_stale(path, "repair")  # left by a repair that was itself killed

    def fill(dst: h5py.File) -> None:
        with open_h5_readonly(path) as src:
            _copy(src, dst, names, n_rows, new_attrs, upgrade)

    build_file(path, "repair", fill, n_rows, "rewriting")


def build_file(path: str | os.PathLike[str], tag: str, fill: Callable[[h5py.File], None], n_rows: int,
               doing: str) -> None:
    """Write a new HDF5 file at ``path`` atomically: ``fill(f)`` writes it under a temporary name (chunk cache off,
    so a failed write fails where it happens), then it is flushed, confirmed on disk and renamed over ``path``.
    On any failure the temporary handle is abandoned without another write and removed; a full disk or an I/O
    error becomes one line (`io_error`, saying that ``path``'s ``n_rows`` committed rows are intact)."""
    try:
        with atomic_path(path, tag) as tmp:
            f = h5py.File(tmp, "x", libver=LIBVER, rdcc_nbytes=0)
            try:
                fill(f)
                f.flush()
                confirm_on_disk(f, tmp)
            except BaseException:
                abandon(f)
                raise
            f.close()
    except IO_ERRORS as exc:
        raise io_error(exc, path, n_rows, doing) from exc


def _copy(src: h5py.File, dst: h5py.File, names: list[str], n_rows: int,
          new_attrs: Mapping[str, Any] | None, upgrade: str | None = None) -> None:
    """Root attributes, committed rows of ``names`` and the committed part of the integrity datasets."""
    crcs = []
    for key in src.attrs:
        if key not in (new_attrs or {}):
            dst.attrs.create(key, src.attrs[key], dtype=src.attrs.get_id(key).dtype)
    for key, value in (new_attrs or {}).items():
        try:
            dst.attrs[key] = value
        except (TypeError, ValueError) as exc:
            raise ValueError(f"attribute {key!r}: cannot store {value!r}: {exc}") from exc
    if "n_rows" in dst.attrs:  # a damaged tail cut back
        dst.attrs.modify("n_rows", np.int64(n_rows))
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
        crc = 0
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            rows = ds[start:stop]
            out[start:stop] = rows
            crc = crc_of(rows, crc) if upgrade is not None else 0
        crcs.append(crc)
    if upgrade is not None:
        dst.attrs.modify("format_version", np.int64(FORMAT_VERSION))
        if names:
            table, hist = create_table(dst, list(names)), create_history(dst)
            if n_rows:
                table.resize(1, axis=0)
                table[0] = np.array([0, n_rows, 0, *crcs], dtype=np.int64)
                hist.resize(1, axis=0)
                hist[0] = upgrade
    elif n_rows > 0 and int(src.attrs.get("format_version", 1)) >= 2 and TABLE in src:
        table = src[TABLE]
        keep = np.asarray(table[:], dtype=np.int64)
        keep = keep[keep[:, 1] <= n_rows]
        out = dst.create_dataset(TABLE, data=keep, maxshape=table.maxshape, chunks=table.chunks)
        for key in table.attrs:
            out.attrs.create(key, table.attrs[key], dtype=table.attrs.get_id(key).dtype)
        if HISTORY in src:
            runs = int(keep[:, 2].max()) + 1 if len(keep) else 0
            hist = src[HISTORY]
            dst.create_dataset(HISTORY, data=hist[: min(runs, hist.shape[0])], maxshape=(None,),
                               chunks=hist.chunks, dtype=hist.dtype)


def _vfd_handle(f: h5py.File) -> int | None:
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 — drivers without a file descriptor
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def confirm_on_disk(f: h5py.File, path: str | os.PathLike[str]) -> None:
    """After a flush: fsync the file (so a delayed ENOSPC/EIO surfaces now) and check that the file is as long
    as the end of allocation its superblock records; raise ``OSError`` otherwise."""
    fd = _vfd_handle(f)
    if fd is not None:
        os.fsync(fd)
    eoa = superblock_eoa(path)
    size = os.path.getsize(path)
    if eoa is not None and size < eoa:
        raise OSError(_errno.EIO, f"file is {size} bytes, shorter than its allocated {eoa} bytes")


def abandon(f: h5py.File | None) -> None:
    """Close ``f`` after a failed write without writing to its file again (see the module docstring)."""
    if f is None:
        return
    fd = _vfd_handle(f)
    if fd is not None:
        try:
            sink = os.memfd_create("latticeflow-abandoned") if hasattr(os, "memfd_create") else \
                os.open(os.devnull, os.O_RDWR)
            os.dup2(sink, fd)
            os.close(sink)
        except OSError:
            pass
    try:
        f.close()
    except Exception:  # noqa: BLE001 — the file is already what it was at the last good flush
        pass


def io_error(exc: BaseException, path: str | os.PathLike[str], n_rows: int, doing: str = "writing") -> OSError:
    """The one-line error of a failed write: what failed, and that the committed rows are intact."""
    code = getattr(exc, "errno", None)
    if code is None:
        text = str(exc)
        code = _errno.ENOSPC if "No space left" in text else (_errno.EDQUOT if "quota" in text else None)
    what = "no space left on device" if code == _errno.ENOSPC else (
        "disk quota exceeded" if code == _errno.EDQUOT else
        (os.strerror(code).lower() if code else "I/O error") + "")
    hint = "free space and rerun to resume" if code in (_errno.ENOSPC, _errno.EDQUOT) else "rerun to resume"
    err = OSError(f"{what} {doing} {os.fspath(path)}: its {n_rows} committed rows are intact; {hint}")
    err.errno = code
    return err
