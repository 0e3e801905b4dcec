"""Per-batch checksums and the run history of an ensemble file (format_version 2).

Every committed batch has one row in the ``checksums`` dataset: ``row_start``, ``row_stop``, ``run`` and the
CRC-32 (:func:`zlib.crc32`) of the stored bytes of each dataset's rows ``row_start … row_stop − 1`` (little-endian,
C order), in the order of the table's ``columns`` attribute.  The writer computes them from the batch it writes and
stores them in the same append, before ``n_rows`` commits the batch; readers and ``latticeflow verify`` recompute
them from the rows read back.  ``history`` holds one JSON object per run that appended rows.

Example:
    >>> import numpy as np
    >>> crc_of(np.arange(3, dtype=np.int64)) == crc_of(np.arange(3, dtype=np.int64)[None, :])
    True
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

__all__ = ["ALGORITHM", "TABLE", "HISTORY", "FIXED_COLUMNS", "READ_BYTES", "BatchTable", "Damage", "StreamCheck",
           "crc_of", "read_table", "read_history", "create_table", "create_history", "check_batches"]

ALGORITHM = "crc32"
TABLE = "checksums"
HISTORY = "history"
FIXED_COLUMNS = ("row_start", "row_stop", "run")
#: memory bound of one read while checking (bytes)
READ_BYTES = 16 * 1024 * 1024


def crc_of(arr: np.ndarray, value: int = 0) -> int:
    """CRC-32 of the bytes of ``arr`` (little-endian, C order), continuing from ``value``."""
    arr = np.asarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    return zlib.crc32(arr.reshape(-1).view(np.uint8), value)


@dataclass
class BatchTable:
    """The committed rows of the checksum table: ``rows`` is (B, 3 + D) int64, ``names`` the D datasets."""

    names: tuple[str, ...]
    rows: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return self.rows[:, 0]

    @property
    def stops(self) -> np.ndarray:
        return self.rows[:, 1]

    @property
    def runs(self) -> np.ndarray:
        return self.rows[:, 2]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def covered(self) -> int:
        """Rows covered by the table (``row_stop`` of its last batch, 0 if empty)."""
        return int(self.rows[-1, 1]) if len(self.rows) else 0

    def crc(self, batch: int, name: str) -> int:
        return int(self.rows[batch, 3 + self.names.index(name)])

    def committed(self, n_rows: int) -> BatchTable:
        """The batches that end at or before ``n_rows``."""
        return BatchTable(self.names, self.rows[self.rows[:, 1] <= n_rows])

    def shifted(self, offset: int) -> BatchTable:
        rows = self.rows.copy()
        rows[:, :2] += offset
        return BatchTable(self.names, rows)


def read_table(f: h5py.File, n_rows: int | None = None) -> BatchTable | None:
    """The checksum table of an open file (its batches up to ``n_rows``), or None for a file without one
    (format_version 1).  Raises ``ValueError`` for a table that is not one."""
    if int(f.attrs.get("format_version", 1)) < 2 or TABLE not in f:
        return None
    ds = f[TABLE]
    columns = [c.decode() if isinstance(c, bytes) else str(c) for c in ds.attrs.get("columns", [])]
    if (not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or tuple(columns[:3]) != FIXED_COLUMNS
            or ds.shape[1] != len(columns)):
        raise ValueError(f"damaged ensemble {f.filename}: its checksum table is malformed")
    table = BatchTable(tuple(columns[3:]), np.asarray(ds[:], dtype=np.int64))
    return table if n_rows is None else table.committed(n_rows)


def create_table(f: h5py.File, names: list[str]) -> h5py.Dataset:
    """An empty checksum table with one CRC column per dataset of ``names``."""
    columns = [*FIXED_COLUMNS, *names]
    ds = f.create_dataset(TABLE, shape=(0, len(columns)), maxshape=(None, len(columns)), dtype=np.int64,
                          chunks=(64, len(columns)))
    ds.attrs["columns"] = np.array(columns, dtype=h5py.string_dtype())
    ds.attrs["algorithm"] = ALGORITHM
    return ds


def create_history(f: h5py.File) -> h5py.Dataset:
    return f.create_dataset(HISTORY, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(16,))


def read_history(f: h5py.File, table: BatchTable | None) -> list[dict[str, Any]]:
    """The runs that committed rows, each with ``rows_after`` (its last committed row) from ``table``."""
    if table is None or HISTORY not in f or not len(table):
        return []
    n_runs = int(table.runs.max()) + 1
    out = []
    for i, raw in enumerate(f[HISTORY][:n_runs]):
        try:
            entry = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except ValueError:
            entry = {"damaged": True}
        mine = table.stops[table.runs == i]
        entry["rows_after"] = int(mine.max()) if len(mine) else entry.get("rows_before")
        out.append(entry)
    return out


@dataclass
class Damage:
    """A damaged batch (``dataset`` rows ``start … stop − 1``) or damaged structure (``start`` is None)."""

    reason: str
    dataset: str | None = None
    start: int | None = None
    stop: int | None = None
    batch: int | None = None

    def line(self, path: str) -> str:
        if self.start is None:
            return f"{path}: {self.reason}"
        return f"{path}: dataset {self.dataset!r} rows {self.start}-{self.stop - 1}: {self.reason}"


class StreamCheck:
    """Checks consecutive row slices of one dataset against the table as they are read."""

    def __init__(self, table: BatchTable | None, name: str, start: int = 0) -> None:
        self.table = table if table is not None and name in table.names else None
        self.name, self.pos = name, start
        self.damage: list[Damage] = []
        self._batch, self._crc = 0, 0
        if self.table is not None:
            self._batch = int(np.searchsorted(self.table.stops, start, side="right"))
            if self._batch < len(self.table) and self.table.starts[self._batch] != start:
                self._batch = len(self.table)  # not at a batch boundary: nothing to check here

    def feed(self, values: np.ndarray) -> None:
        """The next rows of the dataset (in order)."""
        t = self.table
        offset = 0
        while t is not None and offset < len(values) and self._batch < len(t):
            stop = int(t.stops[self._batch])
            take = min(len(values) - offset, stop - self.pos)
            self._crc = crc_of(values[offset:offset + take], self._crc)
            offset += take
            self.pos += take
            if self.pos == stop:
                if self._crc != t.crc(self._batch, self.name):
                    self.damage.append(Damage("checksum mismatch", self.name, int(t.starts[self._batch]), stop,
                                              self._batch))
                self._batch, self._crc = self._batch + 1, 0
        self.pos += len(values) - offset


def check_batches(f: h5py.File, table: BatchTable, batches: list[int] | None = None,
                  names: list[str] | None = None) -> list[Damage]:
    """Re-read the rows of ``batches`` (default all) of the datasets ``names`` (default all in the table) and
    compare their checksums; missing or unreadable rows are damage too.  Memory is bounded by `READ_BYTES`."""
    damage: list[Damage] = []
    which = range(len(table)) if batches is None else batches
    for name in names if names is not None else table.names:
        if name not in f:
            damage.append(Damage(f"dataset {name!r} is missing (the checksum table lists it)"))
            continue
        ds = f[name]
        row_bytes = max(1, ds.dtype.itemsize * math.prod(ds.shape[1:]))
        step = max(1, READ_BYTES // row_bytes)
        for b in which:
            start, stop = int(table.starts[b]), int(table.stops[b])
            if stop > ds.shape[0]:
                damage.append(Damage(f"missing (the dataset ends at row {ds.shape[0]})", name, start, stop, b))
                continue
            crc = 0
            try:
                for a in range(start, stop, step):
                    crc = crc_of(ds[a:min(a + step, stop)], crc)
            except (OSError, RuntimeError, ValueError) as exc:
                damage.append(Damage(f"unreadable ({str(exc).splitlines()[0][:80]})", name, start, stop, b))
                continue
            if crc != table.crc(b, name):
                damage.append(Damage("checksum mismatch", name, start, stop, b))
    return damage
