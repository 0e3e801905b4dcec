"""Observables measured after sampling (``latticeflow measure``): the resumable partial file and the commit.

"Generate once, measure later" (as openQCD's ``ms`` programs): a per-configuration quantity computed from an
existing ensemble's ``samples`` goes into the same file as ``observables/<name>``, with its provenance (JSON in
the dataset attribute ``measured_by``: module, function, SHA-256 of the module's source, command, date, host).

Crash safety, in two steps:

1. the values are computed batch by batch into a sidecar ``.<file>.measure-<name>.partial.h5`` beside the
   ensemble; each batch is written, flushed and fsynced with its CRC-32 before the sidecar's ``n_done`` counts
   it, so a killed measurement resumes after its last complete batch (:class:`PartialMeasurement`). A sidecar of
   another function (its source hash differs) or of another ensemble (other row count) is started afresh;
2. once every row is done, :func:`commit_observable` rewrites the ensemble with the new dataset and the
   checksum table extended by its column (the same batches, each with the CRC of the new rows) into a
   temporary file, confirms it on disk and renames it over the original: the ensemble is either the old file
   or the new one, never a mixture, and the sidecar is removed only afterwards.

An ensemble that holds measured observables cannot grow by sampling (the new rows would have no values for
them): the writer refuses it in one line (see :func:`measured_names`).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from latticeflow.io._format import LIBVER, list_datasets, open_h5_readonly, row_count
from latticeflow.io._repair import IO_ERRORS, _copy, abandon, build_file, confirm_on_disk, io_error
from latticeflow.io.checksums import FIXED_COLUMNS, TABLE, crc_of, read_table

__all__ = ["MEASURED_ATTR", "PartialMeasurement", "commit_observable", "measured_names", "partial_path"]

#: attribute of ``observables/<name>`` holding the JSON provenance of a measured observable
MEASURED_ATTR = "measured_by"
_CHUNK_BYTES = 1024 * 1024


def partial_path(path: str | os.PathLike[str], name: str) -> Path:
    """The sidecar ``.<file>.measure-<name>.partial.h5`` beside the ensemble ``path``."""
    p = Path(os.path.abspath(os.fspath(path)))
    return p.with_name(f".{p.name}.measure-{name}.partial.h5")


def measured_names(f: h5py.File) -> list[str]:
    """Datasets of an open ensemble file that ``latticeflow measure`` added."""
    return [n for n in list_datasets(f) if MEASURED_ATTR in f[n].attrs]


class PartialMeasurement:
    """The rows of one measurement done so far, in a sidecar file (see the module docstring).

    ``n_done`` rows of ``values`` (and one CRC per batch in ``crc``) are committed; anything beyond is a batch
    that was being written when the process died and is overwritten. ``key`` (the provenance that must match,
    e.g. the source hash) and ``n_rows`` (the ensemble's) decide whether an existing sidecar is resumed."""

    def __init__(self, ensemble: str | os.PathLike[str], name: str, key: Mapping[str, Any], n_rows: int) -> None:
        self.path = partial_path(ensemble, name)
        self.n_rows = int(n_rows)
        self._key = json.dumps(dict(key), sort_keys=True)
        self._f: h5py.File | None = None
        self.n_done = 0
        self.resumed = False
        if self.path.exists():
            try:
                with h5py.File(self.path, "r") as f:
                    same = (f.attrs.get("key") == self._key and int(f.attrs.get("n_rows", -1)) == self.n_rows
                            and "values" in f and "crc" in f)
                    done = int(f.attrs.get("n_done", 0)) if same else 0
                    if same and done:
                        self._check(f, done)
            except (*IO_ERRORS, ValueError, KeyError):
                same, done = False, 0
            if same:
                self._f = h5py.File(self.path, "r+", libver=LIBVER, rdcc_nbytes=0)
                self.n_done, self.resumed = done, done > 0
            else:
                self.path.unlink()

    @staticmethod
    def _check(f: h5py.File, done: int) -> None:
        """CRC of every committed batch of the sidecar (``ValueError`` if one fails)."""
        crc = f["crc"][: int(f.attrs.get("n_batches", 0))]
        for start, stop, value in crc:
            if stop > done:
                break
            if crc_of(f["values"][start:stop]) != value:
                raise ValueError(f"{f.filename}: rows {start}-{stop - 1} fail their checksum")

    def append(self, values: np.ndarray) -> None:
        """Write the next rows, fsync, then count them (a kill in between loses only this batch)."""
        values = np.ascontiguousarray(values)
        if self._f is None:
            self._f = h5py.File(self.path, "w", libver=LIBVER, rdcc_nbytes=0)
            row_bytes = max(1, values.dtype.itemsize * math.prod(values.shape[1:]))
            rows = max(1, min(self.n_rows, _CHUNK_BYTES // row_bytes))
            self._f.create_dataset("values", shape=(self.n_rows, *values.shape[1:]), dtype=values.dtype,
                                   chunks=(rows, *values.shape[1:]))
            self._f.create_dataset("crc", shape=(0, 3), maxshape=(None, 3), dtype=np.int64, chunks=(256, 3))
            self._f.attrs["key"] = self._key
            self._f.attrs["n_rows"] = np.int64(self.n_rows)
            self._f.attrs["n_done"] = np.int64(0)
            self._f.attrs["n_batches"] = np.int64(0)
        ds = self._f["values"]
        if values.shape[1:] != ds.shape[1:] or values.dtype != ds.dtype:
            raise ValueError(f"measurement rows of shape {values.shape[1:]} and dtype {values.dtype} after rows of "
                             f"shape {ds.shape[1:]} and dtype {ds.dtype}")
        start, stop = self.n_done, self.n_done + len(values)
        if stop > self.n_rows:
            raise ValueError(f"{stop} measured rows for an ensemble of {self.n_rows}")
        try:
            ds[start:stop] = values
            crc = self._f["crc"]
            b = int(self._f.attrs["n_batches"])
            crc.resize(b + 1, axis=0)
            crc[b] = (start, stop, crc_of(values))
            self._f.flush()
            confirm_on_disk(self._f, self.path)
            self._f.attrs.modify("n_batches", np.int64(b + 1))
            self._f.attrs.modify("n_done", np.int64(stop))
            self._f.flush()
        except IO_ERRORS as exc:
            abandon(self._f)
            self._f = None
            raise io_error(exc, self.path, start, "measuring into") from exc
        self.n_done = stop

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-row shape of the values (after the first batch)."""
        return tuple(self._f["values"].shape[1:]) if self._f is not None else ()

    @property
    def dtype(self) -> np.dtype:
        """dtype of the values (after the first batch)."""
        return self._f["values"].dtype

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self._f["values"][start:stop]

    def verify(self) -> None:
        """Every batch's CRC (before the values are committed into the ensemble)."""
        self._f.flush()
        self._check(self._f, self.n_done)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _batches(table, n_rows: int) -> Iterator[tuple[int, int]]:
    if table is None or not len(table):
        yield from ((a, min(a + 65536, n_rows)) for a in range(0, n_rows, 65536))
        return
    yield from zip(table.starts.tolist(), table.stops.tolist())


def commit_observable(path: str | os.PathLike[str], name: str, partial: PartialMeasurement,
                      provenance: Mapping[str, Any]) -> None:
    """Rewrite the ensemble at ``path`` with ``observables/<name>`` from ``partial`` (complete) and its
    provenance, the checksum table extended by the new column; atomically (see the module docstring)."""
    path = os.path.abspath(os.fspath(path))
    dataset = f"observables/{name}"
    with open_h5_readonly(path) as f:
        n_rows = row_count(f.attrs, path)
        names = list_datasets(f)
    if dataset in names:
        raise ValueError(f"{path} already holds {dataset}")
    if partial.n_done != n_rows:
        raise ValueError(f"measurement of {name!r} holds {partial.n_done} of {n_rows} rows")
    partial.verify()

    def fill(dst: h5py.File) -> None:
        with open_h5_readonly(path) as src:
            table = read_table(src, n_rows)
            _copy(src, dst, names, n_rows, None)
            shape = partial.shape
            dtype = partial.dtype
            row_bytes = max(1, dtype.itemsize * math.prod(shape))
            chunk = max(1, min(max(n_rows, 1), _CHUNK_BYTES // row_bytes))
            out = dst.create_dataset(dataset, shape=(n_rows, *shape), maxshape=(None, *shape), dtype=dtype,
                                     chunks=(chunk, *shape))
            out.attrs[MEASURED_ATTR] = json.dumps(dict(provenance), sort_keys=True)
            crcs = []
            for start, stop in _batches(table, n_rows):
                rows = partial.rows(start, stop)
                out[start:stop] = rows
                crcs.append(crc_of(rows))
            if table is not None and TABLE in dst:
                old = dst[TABLE]
                attrs = {k: old.attrs[k] for k in old.attrs if k != "columns"}
                columns = sorted([*table.names, dataset])  # the writer keeps the CRC columns sorted
                rows = np.empty((len(table), len(FIXED_COLUMNS) + len(columns)), dtype=np.int64)
                rows[:, :3] = table.rows[:, :3]
                for j, col in enumerate(columns):
                    rows[:, 3 + j] = crcs if col == dataset else table.rows[:, 3 + table.names.index(col)]
                del dst[TABLE]
                new = dst.create_dataset(TABLE, data=rows, maxshape=(None, rows.shape[1]),
                                         chunks=(64, rows.shape[1]))
                new.attrs["columns"] = np.array([*FIXED_COLUMNS, *columns], dtype=h5py.string_dtype())
                for k, v in attrs.items():
                    new.attrs[k] = v

    build_file(path, "measure", fill, n_rows, "measuring into")
