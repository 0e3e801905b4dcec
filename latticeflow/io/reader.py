"""Read-only, lazy access to HDF5 ensemble files.

:class:`Ensemble` keeps the h5py file open and loads nothing until asked:
``ens["action"]`` loads one dataset, :meth:`Ensemble.iter_batches` streams one
with bounded memory.  Only the committed rows (``n_rows`` attribute) are ever
returned, so a file whose last batch was half written when its writer was
killed reads as if that batch had never started.

Opening a file checks its structure (``n_rows`` within every dataset, the
checksum table covering ``n_rows`` and listing every dataset); every read of
committed rows through ``ens[name]``, :meth:`Ensemble.iter_batches` or
:meth:`Ensemble.replicas` compares the rows with their batch checksums, so
damaged rows raise a one-line ``ValueError`` instead of being used.
:meth:`Ensemble.verify` checks every batch of every dataset (``latticeflow verify``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from latticeflow.io.checksums import BatchTable, Damage, StreamCheck, read_history, read_table
from latticeflow.io.verify import VerifyReport, structure_damage, verify_ensemble
from latticeflow.io._format import (
    FORMAT_VERSION,
    check_couplings,
    check_equal,
    decode_attrs,
    list_datasets,
    open_h5_readonly,
    row_count,
)

__all__ = ["Ensemble", "open_ensemble"]


class Ensemble:
    """Read-only view of one ensemble file (see :func:`open_ensemble`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: h5py.File | None = None
        f = open_h5_readonly(self.path)
        try:
            attrs = decode_attrs(f.attrs)
            if "format_version" not in attrs:
                raise ValueError(
                    f"not a latticeflow ensemble: {self.path} (no format_version attribute)"
                )
            version = attrs["format_version"]
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise ValueError(
                    f"ensemble {self.path} has format_version {version!r}; this latticeflow "
                    f"reads format_version <= {FORMAT_VERSION}"
                )
            try:
                names = list_datasets(f)
                lengths = [f[name].shape[0] for name in names]
            except (OSError, RuntimeError, KeyError) as exc:
                if attrs.get("n_rows", 0) != 0:
                    raise ValueError(f"damaged ensemble {self.path}: {exc}") from exc
                names, lengths = [], []  # killed while creating datasets: nothing committed
            _check_shards(self.path, attrs)
            committed = row_count(attrs, self.path, default=min(lengths, default=0))
            if lengths and committed > min(lengths):
                raise ValueError(
                    f"damaged ensemble {self.path}: n_rows is {committed} but a dataset "
                    f"has only {min(lengths)} rows"
                )
            if "shard_files" in attrs:
                table, history = _master_table(self.path, attrs), []
            elif not committed:  # nothing committed: whatever a killed first batch left is ignored
                table, history = None, []
            else:
                try:
                    damage = structure_damage(f, int(committed), names, lengths)
                    table = read_table(f, int(committed))
                    history = read_history(f, table)
                except (OSError, RuntimeError) as exc:
                    damage = [Damage(f"unreadable checksums ({str(exc).splitlines()[0][:80]})")]
                if damage:
                    raise ValueError(f"damaged ensemble {self.path}: {damage[0].reason} "
                                     f"(latticeflow verify {self.path})")
        except BaseException:
            f.close()
            raise
        self._file = f
        self._names = names
        self._table: BatchTable | None = table
        #: one entry per run that appended rows (command, created, seed, host, versions, rows_before/after)
        self.history: list[dict[str, Any]] = history
        self.attrs: dict[str, Any] = attrs
        self.n_rows: int = committed
        self.theory: str = str(attrs.get("theory", ""))
        self.couplings: dict[str, float] = {
            str(name): float(attrs[name]) for name in attrs.get("coupling_names", [])
        }
        self.shape: tuple[int, ...] = tuple(attrs.get("shape", ()))
        self.field_shape: tuple[int, ...] = tuple(attrs.get("field_shape", ()))
        self.sampler: str = str(attrs.get("sampler", ""))

    def _dataset(self, name: str) -> h5py.Dataset:
        if self._file is None:
            raise ValueError(f"ensemble {self.path} is closed")
        if name not in self._names:
            raise KeyError(f"ensemble {self.path} has no dataset {name!r}; it has {self._names}")
        return self._file[name]

    def keys(self) -> list[str]:
        """Dataset names, including ``observables/<name>``."""
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __getitem__(self, name: str) -> np.ndarray:
        """Load the committed rows of one dataset (e.g. ``"observables/chi"``), checked against their
        checksums (``ValueError`` naming the damaged rows)."""
        values = self._dataset(name)[: self.n_rows]
        self._check(name, 0, [values])
        return values

    def _check(self, name: str, start: int, parts: list[np.ndarray]) -> None:
        check = StreamCheck(self._table, name, start)
        for part in parts:
            check.feed(part)
        if check.damage:
            d = check.damage[0]
            raise ValueError(f"damaged ensemble {self.path}: dataset {name!r} rows {d.start}-{d.stop - 1} fail "
                             f"their checksum (latticeflow verify {self.path})")

    def verify(self) -> VerifyReport:
        """Full check of the file: every batch of every dataset against its checksum, and the structure
        (shard by shard for the master file of an MPI run); see ``latticeflow verify``."""
        return verify_ensemble(self.path)

    def dataset(self, name: str) -> h5py.Dataset:
        """The raw h5py dataset (lazy; may hold uncommitted rows past ``n_rows``)."""
        return self._dataset(name)

    def iter_batches(self, name: str, batch_rows: int) -> Iterator[np.ndarray]:
        """Yield the committed rows of ``name`` in consecutive slices of <= batch_rows."""
        if int(batch_rows) < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows!r}")
        ds = self._dataset(name)
        step = int(batch_rows)
        check = StreamCheck(self._table, name)
        for start in range(0, self.n_rows, step):
            values = ds[start : min(start + step, self.n_rows)]
            check.feed(values)
            if check.damage:
                d = check.damage[0]
                raise ValueError(f"damaged ensemble {self.path}: dataset {name!r} rows {d.start}-{d.stop - 1} "
                                 f"fail their checksum (latticeflow verify {self.path})")
            yield values

    def replicas(self, name: str) -> list[np.ndarray]:
        """One series per Markov chain, each in Monte Carlo order (``name``: a dataset, or an observable such
        as ``"abs_m"`` for ``observables/abs_m``). Rows are stored sweep-major over the chains, so the rows
        as stored are *not* one Markov series: feeding them to the Gamma method as one replica mixes the
        chains and underestimates τ_int and the error. i.i.d. (flow) ensembles give one replica."""
        from latticeflow.analysis.gamma import split_replicas  # plain numpy: io stays free of the analysis

        key = name if name in self._names else f"observables/{name}"
        if key not in self._names:
            raise KeyError(f"{self.path} has no dataset or observable {name!r}")
        values = self[key]
        if "chain" not in self._names:
            return [values]
        return split_replicas(values, self["chain"], self["mc_index"])

    def gamma(self, name: str, func=None, *more: str, S: float = 2.0):
        """Gamma-method estimate (Wolff 2004) of an observable with the chains as replicas
        (`latticeflow.analysis.gamma_method`), or of ``func(⟨name⟩, ⟨more[0]⟩, …)`` (`gamma_method_derived`),
        e.g. ``ens.gamma("m2", lambda m2, am: m2 - am**2, "abs_m")``. For Markov-chain ensembles only: flow
        samples with importance weights need reweighting (``latticeflow analyze``)."""
        from latticeflow.analysis.gamma import gamma_method, gamma_method_derived

        if "chain" not in self._names and "log_weight" in self._names:
            raise ValueError(f"{self.path} holds weighted flow samples: use reweighting (latticeflow analyze), "
                             f"not the Gamma method")
        if func is None:
            if more:
                raise ValueError("ens.gamma: several observables need a func combining their means")
            return gamma_method(self.replicas(name), S=S)
        return gamma_method_derived(func, [self.replicas(n) for n in (name, *more)], S=S)

    def check_compatible(self, other: Ensemble) -> None:
        """Raise :class:`EnsembleMismatchError` unless theory, couplings and shape agree.

        The error reports this file's value as the file value and ``other``'s
        as the requested one.
        """
        where = f"{self.path} (vs {other.path})"
        check_equal("theory", self.theory, other.theory, where)
        check_couplings(self.couplings, other.couplings, where)
        check_equal("shape", self.shape, other.shape, where)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Ensemble:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (
            f"Ensemble({self.path!r}, theory={self.theory!r}, couplings={self.couplings}, "
            f"shape={self.shape}, n_rows={self.n_rows})"
        )


def _check_shards(path: str, attrs: dict[str, Any]) -> None:
    """A master file of an MPI run (virtual datasets) needs its shards beside it; HDF5 would
    silently read fill values for a missing one."""
    directory = os.path.dirname(os.path.abspath(path))
    for name in attrs.get("shard_files", []):
        if not os.path.isfile(os.path.join(directory, name)):
            raise ValueError(f"ensemble {path} is the master file of an MPI run, but its shard {name} "
                             f"is missing from {directory}")


def _master_table(path: str, attrs: dict[str, Any]) -> BatchTable | None:
    """The checksum tables of a master file's shards, as one table over the master's rows (None if a shard
    has none)."""
    directory = os.path.dirname(os.path.abspath(path))
    tables, offset = [], 0
    for name, rows in zip(attrs.get("shard_files", []), attrs.get("shard_rows", [])):
        try:
            with h5py.File(os.path.join(directory, name), "r") as shard:
                table = read_table(shard, int(rows))
        except (OSError, RuntimeError, ValueError) as exc:
            raise ValueError(f"damaged ensemble {path}: its shard {name} cannot be read ({exc})") from exc
        if table is None or table.covered != int(rows):
            return None
        tables.append(table.shifted(offset))
        offset += int(rows)
    if not tables or any(t.names != tables[0].names for t in tables):
        return None
    return BatchTable(tables[0].names, np.concatenate([t.rows for t in tables]))


def open_ensemble(path: str | os.PathLike[str]) -> Ensemble:
    """Open an ensemble file read-only.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a
    file that is not HDF5 or has no ``format_version`` attribute.
    """
    return Ensemble(path)
