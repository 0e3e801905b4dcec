"""Streaming, crash-safe writer of HDF5 ensemble files.

Each :meth:`EnsembleWriter.append` resizes and writes every dataset and the
batch's row of the checksum table (CRC-32 of each dataset's new rows), flushes,
fsyncs and checks that the file is as long as its superblock says (so that a
failed or delayed write, ENOSPC or EIO, surfaces before anything is counted),
then updates the root attribute ``n_rows`` (the committed row count) in place
and flushes again.  The two phases matter: HDF5 writes the superblock last in
a flush, so a single flush killed half-way can leave ``n_rows`` covering rows
whose chunk addresses lie past the recorded end of the file.  Nothing is kept
in RAM beyond the batch being written; the chunk cache is off, so every write
reaches the file (or fails) when it is made, never later in a close.

A failed write leaves the handle alone (:func:`latticeflow.io._repair.abandon`)
and raises a one-line ``OSError`` ("no space left on device writing …: its N
committed rows are intact; free space and rerun to resume").

Reopening for appending checks everything read-only first (attributes,
structure, the checksums of every committed batch, see
:func:`latticeflow.io.verify.resume_plan`) and writes nothing until the first
``append``/``set_attrs``: a refused file is untouched.  A half-written batch,
or a damaged tail (batches failing their checksums up to the end; a message on
stderr says how many rows go), is dropped by rewriting the committed part of
the file (:mod:`latticeflow.io._repair`; shrinking in place is not safe), so a
resumed run continues after the last good batch.  Every run that appends adds
an entry to the file's ``history``.  Files of format_version 1 (no checksums)
are upgraded by the first append: their rows get one checksum batch.

Known limit (HDF5 without SWMR): an append that splits a node of a dataset's
chunk index moves committed index entries to a new node; a kill inside that
append's first flush (about a millisecond, once every few dozen new chunks)
can leave committed rows unreachable.  ``tests/io/test_crash_replay.py``
replays every kill point of ordinary appends.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from latticeflow.io._arrays import as_shape, check_rows, to_numpy
from latticeflow.io.files import remove_stale
from latticeflow.io._format import (
    FORMAT_VERSION,
    LIBVER,
    PER_ROW_DATASETS,
    RESERVED_ATTRS,
    check_couplings,
    check_equal,
    decode_attrs,
    list_datasets,
    open_h5_readonly,
    row_count,
)
from latticeflow.io._provenance import provenance
from latticeflow.io._repair import (IO_ERRORS, abandon, build_file, confirm_on_disk, file_is_clean, io_error,
                                    rewrite_committed)
from latticeflow.io.checksums import HISTORY, TABLE, crc_of, create_history, create_table, read_table
from latticeflow.io.verify import resume_plan, warn

__all__ = ["EnsembleWriter"]

_MIN_CHUNK_BYTES = 64 * 1024
_TARGET_CHUNK_BYTES = 1024 * 1024
_HISTORY_KEYS = ("command", "created", "host", "latticeflow_version", "torch_version", "git_commit")


def _same_layout(attr: h5py.h5a.AttrID, value: Any) -> bool:
    """True if ``value`` can overwrite the stored attribute in place (numeric, same shape)."""
    arr = np.asarray(value)
    return arr.dtype.kind in "biuf" and arr.dtype == attr.dtype and arr.shape == attr.shape


class EnsembleWriter:
    """Create an ensemble file, or open an existing one to append to it.

    On an existing file, ``theory``, every coupling (relative tolerance
    1e-12), ``shape``, ``field_shape``, ``sampler`` and the samples dtype are
    checked with the file opened read-only, and so are its structure and the
    checksums of its committed batches; a mismatch raises
    :class:`EnsembleMismatchError`, damage that cannot be cut off a
    ``ValueError``, and the file is left untouched.  ``seed``, ``replica``,
    ``config_text`` and provenance of an existing file are kept unchanged in
    the root attributes; each run's own go to ``history`` with its first append.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        theory: str,
        couplings: dict[str, float],
        shape: tuple[int, ...],
        field_shape: tuple[int, ...],
        sampler: str,
        seed: int,
        replica: int = 0,
        config_text: str = "",
        dtype: str | np.dtype = "float64",
        chunk_rows: int | None = None,
        command: str | None = None,
        quiet: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self._quiet = bool(quiet)  # True: the damaged-tail message is left to the caller (`resume_message`)
        self.resume_message: str | None = None
        if not isinstance(theory, str) or not theory:
            raise ValueError(f"theory must be a non-empty string, got {theory!r}")
        if not isinstance(sampler, str) or not sampler:
            raise ValueError(f"sampler must be a non-empty string, got {sampler!r}")
        self.couplings = {str(k): float(v) for k, v in dict(couplings).items()}
        for name in self.couplings:
            if name in RESERVED_ATTRS or not name.isidentifier():
                raise ValueError(f"invalid coupling name {name!r} (reserved or not an identifier)")
        self.theory = theory
        self.shape = as_shape(shape, "shape", allow_empty=False)
        self.field_shape = as_shape(field_shape, "field_shape", allow_empty=True)
        self.sampler = sampler
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "biufc":
            raise ValueError(f"dtype must be numeric, got {dtype!r}")
        if chunk_rows is not None and int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
        self._chunk_rows = None if chunk_rows is None else int(chunk_rows)
        self._file: h5py.File | None = None
        self._closed = False
        self._failed: str | None = None
        self._names: frozenset[str] | None = None
        self._measured: list[str] = []  # datasets `latticeflow measure` added (new rows cannot have them)
        self._dropped_warned = False
        self._from_file = False  # True: the dataset set is an existing file's (an older version may lack observables)
        self._n_rows = 0
        self._n_batches = 0  # committed rows of the checksum table
        self._n_runs = 0  # committed entries of the history
        self._format = FORMAT_VERSION
        self._needs_rewrite = False
        self._legacy: str | None = None  # history entry of a format-1 file's rows
        self._run: int | None = None  # this run's history entry, once written
        self._rows_dropped = 0
        self._command = command
        self._prov: dict[str, str] | None = None  # computed when first needed (it runs git)
        self._history = {"seed": int(seed), "replica": int(replica), "config": str(config_text)}
        if os.path.exists(self.path):
            self._check_existing()  # read-only: raises before anything is modified
            return

        # Create under a temporary name and rename, so that a kill during
        # creation never leaves a half-initialised file at ``path``.
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"directory of ensemble file does not exist: {directory}")
        remove_stale(self.path, "create")
        build_file(self.path, "create", lambda f: self._initial_attrs(f, seed, replica, config_text), 0, "creating")

    def _initial_attrs(self, f: h5py.File, seed: int, replica: int, config_text: str) -> None:
        f.attrs["format_version"] = np.int64(FORMAT_VERSION)
        f.attrs["theory"] = self.theory
        f.attrs["coupling_names"] = np.array(sorted(self.couplings), dtype=h5py.string_dtype())
        for name, value in self.couplings.items():
            f.attrs[name] = np.float64(value)
        f.attrs["shape"] = np.array(self.shape, dtype=np.int64)
        f.attrs["field_shape"] = np.array(self.field_shape, dtype=np.int64)
        f.attrs["dtype"] = self.dtype.name
        f.attrs["sampler"] = self.sampler
        f.attrs["seed"] = np.int64(seed)
        f.attrs["replica"] = np.int64(replica)
        f.attrs["config"] = str(config_text)
        for key, value in self._provenance().items():
            f.attrs[key] = value
        f.attrs["n_rows"] = np.int64(0)

    # -- opening an existing file -------------------------------------------------

    def _check_existing(self) -> None:
        """Check the existing file read-only: attributes, structure and checksums; plan the repair."""
        with open_h5_readonly(self.path) as f:
            attrs = decode_attrs(f.attrs)
            if "format_version" not in attrs:
                raise ValueError(
                    f"not a latticeflow ensemble: {self.path} (no format_version attribute)"
                )
            version = attrs["format_version"]
            if version not in range(1, FORMAT_VERSION + 1):
                check_equal("format_version", version, FORMAT_VERSION, self.path)
            check_equal("theory", attrs.get("theory"), self.theory, self.path)
            names = attrs.get("coupling_names", [])
            file_couplings = {n: attrs.get(n, float("nan")) for n in names}
            check_couplings(file_couplings, self.couplings, self.path)
            check_equal("shape", attrs.get("shape"), self.shape, self.path)
            check_equal("field_shape", attrs.get("field_shape"), self.field_shape, self.path)
            check_equal("sampler", attrs.get("sampler"), self.sampler, self.path)
            n_rows = row_count(attrs, self.path)
            try:
                names_in_file = list_datasets(f)
                lengths = [f[name].shape[0] for name in names_in_file]
                file_dtype = f["samples"].dtype.name if "samples" in f else attrs.get("dtype")
                self._measured = [n for n in names_in_file if "measured_by" in f[n].attrs]
            except (OSError, RuntimeError, KeyError) as exc:
                if n_rows > 0:
                    raise ValueError(f"damaged ensemble {self.path}: {exc}") from exc
                # killed while creating the datasets: nothing was committed yet
                names_in_file, lengths, file_dtype = [], [-1], attrs.get("dtype")
            check_equal("dtype", file_dtype, self.dtype.name, self.path)
            if n_rows > 0:
                good, message = resume_plan(f, n_rows, names_in_file, lengths)
            else:
                good, message = 0, None
            clean = file_is_clean(self.path, lengths, n_rows) and good == n_rows
            try:
                table = read_table(f, good) if version >= 2 else None
                self._n_batches = len(table) if table is not None else 0
                self._n_runs = int(table.runs.max()) + 1 if self._n_batches else 0
                clean = clean and (table is None or f[TABLE].shape[0] == self._n_batches) and (
                    HISTORY not in f or f[HISTORY].shape[0] == self._n_runs)
            except (OSError, RuntimeError, ValueError) as exc:
                if good > 0:
                    raise ValueError(f"damaged ensemble {self.path}: unreadable checksums ({exc})") from exc
                clean = False  # killed while creating the first batch: nothing was committed yet
            if version < FORMAT_VERSION:  # upgraded with the first write, by a rewrite
                self._legacy = json.dumps(
                    {"run": 0, **{k: attrs.get(k, "unknown") for k in _HISTORY_KEYS}, "seed": attrs.get("seed"),
                     "replica": attrs.get("replica"), "rows_before": 0,
                     "note": "rows of format_version 1, checksummed when first appended to"})
        self.resume_message = message
        if message and not self._quiet:
            warn(message)
        self._format = int(version)
        self._n_rows = good
        self._rows_dropped = n_rows - good
        self._names = frozenset(names_in_file) or None
        self._from_file = self._names is not None
        self._needs_rewrite = not clean

    # -- writing -----------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        """Number of complete (committed) rows in the file."""
        return self._n_rows

    @property
    def measured(self) -> list[str]:
        """Datasets of the existing file that `latticeflow measure` added (new rows could not have them)."""
        return list(self._measured)

    @property
    def closed(self) -> bool:
        return self._closed

    def _require_open(self) -> h5py.File:
        """The file open for writing: opened (and repaired if needed) at the first write."""
        if self._failed is not None:
            raise OSError(self._failed)
        if self._closed:
            raise ValueError(f"EnsembleWriter for {self.path} is closed")
        if self._file is None:
            upgrade = self._legacy if self._format < FORMAT_VERSION else None
            if self._needs_rewrite or upgrade:  # killed mid-batch, a damaged tail, or format 1
                rewrite_committed(self.path, sorted(self._names or ()), self._n_rows, upgrade=upgrade)
                self._needs_rewrite, self._format = False, FORMAT_VERSION
                if upgrade and self._n_rows:
                    self._n_batches, self._n_runs = 1, 1
            try:
                self._file = h5py.File(self.path, "a", libver=LIBVER, rdcc_nbytes=0)
            except IO_ERRORS as exc:
                raise io_error(exc, self.path, self._n_rows, "opening") from exc
        return self._file

    def _fail(self, exc: BaseException, doing: str = "writing") -> BaseException:
        """Close the handle without writing again; the error to raise (one line for I/O errors)."""
        abandon(self._file)
        self._file = None
        if not isinstance(exc, IO_ERRORS):
            self._failed = f"EnsembleWriter for {self.path} failed earlier ({type(exc).__name__})"
            return exc
        err = io_error(exc, self.path, self._n_rows, doing)
        self._failed = str(err)
        return err

    def _chunks(self, trailing: tuple[int, ...], itemsize: int, batch_rows: int) -> tuple[int, ...]:
        if self._chunk_rows is not None:
            rows = self._chunk_rows
        else:
            row_bytes = max(1, itemsize * math.prod(trailing))
            low = max(1, _MIN_CHUNK_BYTES // row_bytes)
            high = max(1, _TARGET_CHUNK_BYTES // row_bytes)
            rows = min(high, max(low, batch_rows))
        return (rows, *trailing)

    def _convert(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check shapes and dtypes of one batch and cast to the stored dtypes."""
        f = self._require_open()
        out: dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            if name == "samples":
                if arr.shape[1:] != self.field_shape:
                    raise ValueError(
                        f"'samples' rows have shape {arr.shape[1:]}, expected field_shape "
                        f"{self.field_shape}"
                    )
                target = self.dtype
            elif name in PER_ROW_DATASETS:
                target = PER_ROW_DATASETS[name]
                if target.kind == "b" and arr.dtype.kind != "b":
                    if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
                        raise ValueError(f"{name!r} must be boolean, got dtype {arr.dtype}")
                    arr = arr.astype(bool)
            else:
                target = f[name].dtype if name in f else arr.dtype
                if name in f and f[name].shape[1:] != arr.shape[1:]:
                    raise ValueError(
                        f"observable {name!r} rows have shape {arr.shape[1:]}, "
                        f"the file has {f[name].shape[1:]}"
                    )
            if not np.can_cast(arr.dtype, target, casting="same_kind"):
                raise ValueError(f"{name!r} has dtype {arr.dtype}, cannot store it as {target}")
            out[name] = np.ascontiguousarray(arr, dtype=target)
        return out

    def append(
        self,
        samples: Any,
        action: Any,
        *,
        log_q: Any = None,
        log_weight: Any = None,
        accepted: Any = None,
        chain: Any = None,
        mc_index: Any = None,
        observables: Mapping[str, Any] | None = None,
        proposal_log_weight: Any = None,
    ) -> None:
        """Append one batch of rows with their checksums, then commit ``n_rows`` (see the module docstring).

        Arrays may be numpy arrays or torch tensors (any device).  If
        ``log_q`` is given without ``log_weight``, ``log_weight = -action - log_q``.
        Every batch must provide the same set of datasets as the first one.
        """
        f = self._require_open()
        raw: dict[str, Any] = {"samples": samples, "action": action, "log_q": log_q,
                               "log_weight": log_weight, "accepted": accepted,
                               "chain": chain, "mc_index": mc_index, "proposal_log_weight": proposal_log_weight}
        arrays = {k: to_numpy(v, k) for k, v in raw.items() if v is not None}
        for key, value in (observables or {}).items():
            if not isinstance(key, str) or not key or "/" in key:
                raise ValueError(f"invalid observable name {key!r}")
            arrays[f"observables/{key}"] = to_numpy(value, f"observables/{key}")
        check_rows(arrays)
        if log_q is not None and log_weight is None:
            arrays["log_weight"] = -np.asarray(arrays["action"], np.float64) - arrays["log_q"]
        newer = sorted(k for k in set(arrays) - (self._names or set(arrays))
                       if k.startswith("observables/") and self._from_file)
        if newer:  # observables this version measures but the file (written by an older one) lacks
            for key in newer:
                del arrays[key]
            if not self._dropped_warned:
                warn(f"{self.path} has no {', '.join(newer)} (written before that observable existed); the rows "
                     "appended now leave it out too, so every dataset keeps one value per row")
                self._dropped_warned = True
        if self._names is not None and frozenset(arrays) != self._names:
            missing = sorted(self._names - set(arrays))
            if set(missing) & set(self._measured):
                raise ValueError(f"{self.path} holds {', '.join(sorted(set(missing) & set(self._measured)))}, added "
                                 "by `latticeflow measure`, which new rows would lack: sample more into another file "
                                 "(or a copy without it), then measure again; nothing was written")
            extra = sorted(set(arrays) - self._names)
            raise ValueError(
                f"every batch must write the same datasets as the file {self.path}: "
                f"missing {missing}, unexpected {extra}"
            )
        arrays = self._convert(arrays)
        n = arrays["samples"].shape[0]
        if n == 0 and self._names is not None:
            return
        crcs = [crc_of(arrays[name]) for name in sorted(arrays)]
        old, new = self._n_rows, self._n_rows + n
        try:
            if self._names is None:
                for name, arr in arrays.items():
                    f.create_dataset(name, shape=(0, *arr.shape[1:]), maxshape=(None, *arr.shape[1:]),
                                     chunks=self._chunks(arr.shape[1:], arr.dtype.itemsize, n), dtype=arr.dtype)
                self._names = frozenset(arrays)
            if n == 0:
                return
            # Phase 1: the rows, their checksums and (first batch of a run) the run's history entry.
            for name, arr in arrays.items():
                ds = f[name]
                ds.resize(new, axis=0)
                ds[old:new] = arr
            table = f[TABLE] if TABLE in f else create_table(f, sorted(self._names))
            hist = f[HISTORY] if HISTORY in f else create_history(f)
            run = self._run
            if run is None:
                run = self._n_runs
                hist.resize(run + 1, axis=0)
                hist[run] = self._history_entry(run)
            table.resize(self._n_batches + 1, axis=0)
            table[self._n_batches] = np.array([old, new, run, *crcs], dtype=np.int64)
            # HDF5 writes the superblock (with the end of allocated space) last
            # when flushing, so a kill during a flush can leave object headers
            # on disk that point past it: phase 1 puts everything on disk (and
            # fsyncs it) while the committed n_rows still excludes it; phase 2
            # then only rewrites the n_rows attribute in place.
            f.flush()
            confirm_on_disk(f, self.path)
            f.attrs.modify("n_rows", np.int64(new))
            f.flush()
        except BaseException as exc:
            raise self._fail(exc) from exc
        self._n_rows, self._n_batches = new, self._n_batches + 1
        if self._run is None:
            self._run, self._n_runs = run, run + 1

    def _provenance(self) -> dict[str, str]:
        if self._prov is None:
            self._prov = provenance(self._command)
        return self._prov

    def _history_entry(self, run: int) -> str:
        entry = {"run": run, **{k: self._provenance()[k] for k in _HISTORY_KEYS}, "seed": self._history["seed"],
                 "replica": self._history["replica"], "rows_before": self._n_rows}
        if self._rows_dropped:
            entry["rows_dropped"] = self._rows_dropped
        entry["config"] = self._history["config"]
        return json.dumps(entry)

    def set_attrs(self, **attrs: Any) -> None:
        """Store extra root attributes (e.g. sampler state such as ``step_size``), flushed.

        An attribute that already exists with the same shape and numeric dtype
        is overwritten in place.  Any other change is crash-safe too: it is
        applied by rewriting the file's committed part to a temporary file and
        renaming it over the original (cheap before or just after the first
        batches; set new attributes early rather than late in a long run).
        """
        for key, value in attrs.items():
            if key in RESERVED_ATTRS or key in self.couplings:
                raise ValueError(f"attribute name {key!r} is reserved by the ensemble format")
            if value is None or isinstance(value, Mapping):
                kind = type(value).__name__
                raise ValueError(f"attribute {key!r}: cannot store {kind} {value!r}")
        f = self._require_open()
        try:
            in_place = {k: v for k, v in attrs.items()
                        if k in f.attrs and _same_layout(f.attrs.get_id(k), v)}
            for key, value in in_place.items():
                f.attrs.modify(key, value)
            f.flush()
            rest = {k: v for k, v in attrs.items() if k not in in_place}
            if rest:
                self._file = None
                f.close()
        except BaseException as exc:
            self._file = f
            raise self._fail(exc, "writing attributes to") from exc
        if rest:
            try:
                rewrite_committed(self.path, sorted(self._names or ()), self._n_rows, rest)
            finally:
                try:
                    self._require_open()
                except Exception:  # noqa: BLE001 — the next write reopens it, or says why not
                    pass

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except BaseException as exc:
                raise self._fail(exc) from exc

    def close(self) -> None:
        """Flush and close the file (idempotent; a writer that never wrote leaves the file untouched)."""
        self._closed = True
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.flush()
            except BaseException as exc:
                self._file = f
                raise self._fail(exc, "closing") from exc
            f.close()

    def __enter__(self) -> EnsembleWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._n_rows} rows"
        return f"EnsembleWriter({self.path!r}, theory={self.theory!r}, {state})"
