"""Shared definitions of the HDF5 ensemble format (a public contract).

One file per replica.  Layout (format_version 2; version 1 lacks ``checksums``
and ``history`` and is still read, and upgraded by the first append to it):

Datasets (chunked along the first axis, ``maxshape=(None, ...)``, only those
that were written exist):

* ``samples``   (N, *field_shape)  dtype from the ``dtype`` attribute;
* ``action``    (N,) float64  S(x);
* ``log_q``     (N,) float64  and ``log_weight`` (N,) float64 = -S - log q;
* ``accepted``  (N,) bool, ``chain`` (N,) int64, ``mc_index`` (N,) int64;
* ``proposal_log_weight`` (N,) float64: NMCMC, −S − log q of the flow proposal consumed at each row
  (the chain's own ``log_weight`` repeats on rejection), for the Pareto k̂ of the proposals;
* ``observables/<name>`` (N, ...) per-configuration measurements.

Integrity datasets (not observables; :func:`list_datasets` leaves them out):

* ``checksums`` (B, 3 + D) int64: one row per committed batch, ``row_start``,
  ``row_stop``, ``run`` (index into ``history``) and the CRC-32 of the stored
  bytes (little-endian, C order) of each dataset's rows of the batch, in the
  order of its ``columns`` attribute; attribute ``algorithm`` = ``"crc32"``;
* ``history`` (R,) UTF-8 strings: one JSON object per run that appended rows
  (``command``, ``created``, ``seed``, ``host``, versions, ``rows_before``, ...).

Root attributes: ``format_version`` (int), ``theory`` (str),
``coupling_names`` (array of str) and one float64 attribute per coupling
(e.g. ``kappa``, ``lam`` or ``beta``), ``shape`` and ``field_shape`` (int64
arrays), ``dtype`` (str), ``sampler`` (str), ``seed``, ``replica`` (int64),
``config`` (resolved YAML text), the provenance strings ``latticeflow_version``,
``torch_version``, ``git_commit``, ``host``, ``created``, ``command`` (of the
run that created the file) and ``n_rows`` (int64).

``n_rows`` is the committed row count, written after every dataset of a batch
and its ``checksums`` row were flushed and fsynced: rows (and ``checksums`` rows
with ``row_stop``) beyond it belong to a batch that was never completed; readers
ignore them and writers truncate them on reopening.

This module holds the pieces both the writer and the reader need: the format
version, reserved attribute names, :class:`EnsembleMismatchError`, attribute
decoding and the compatibility comparisons.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "INTEGRITY_DATASETS",
    "PER_ROW_DATASETS",
    "RESERVED_ATTRS",
    "EnsembleMismatchError",
    "COUPLING_REL_TOL",
    "LIBVER",
    "check_couplings",
    "check_equal",
    "decode_attrs",
    "list_datasets",
    "open_h5_readonly",
    "row_count",
]

#: Version of the on-disk layout; readers refuse files with a newer version.
FORMAT_VERSION: int = 2

#: Root datasets of the format that are not per-row data (checksum table, run history).
INTEGRITY_DATASETS: frozenset[str] = frozenset({"checksums", "history"})

#: Relative tolerance used when comparing couplings of two ensembles.
COUPLING_REL_TOL: float = 1e-12

#: HDF5 format bounds: oldest object formats that work, never newer than 1.10,
#: so that any HDF5 >= 1.10 reader (h5py, C, Julia, ...) can read the files.
LIBVER: tuple[str, str] = ("earliest", "v110")

#: Optional per-row datasets besides ``samples``/``action`` and their dtypes.
PER_ROW_DATASETS: dict[str, np.dtype] = {
    "action": np.dtype("float64"),
    "log_q": np.dtype("float64"),
    "log_weight": np.dtype("float64"),
    "accepted": np.dtype("bool"),
    "chain": np.dtype("int64"),
    "mc_index": np.dtype("int64"),
    "proposal_log_weight": np.dtype("float64"),
}

#: Root attributes written by the library; couplings and ``set_attrs`` may
#: not use these names.
RESERVED_ATTRS: frozenset[str] = frozenset(
    {
        "format_version",
        "theory",
        "coupling_names",
        "shape",
        "field_shape",
        "dtype",
        "sampler",
        "seed",
        "replica",
        "config",
        "n_rows",
        "latticeflow_version",
        "torch_version",
        "git_commit",
        "host",
        "created",
        "command",
    }
)

_TUPLE_ATTRS = frozenset({"shape", "field_shape"})


class EnsembleMismatchError(ValueError):
    """An ensemble file does not match what it is appended to or combined with.

    ``attribute`` names the differing attribute, ``file_value`` is the value
    found in the file and ``requested_value`` the one asked for.  Constructed
    with a single argument it behaves like a plain ``ValueError`` message.
    """

    _MISSING: Any = object()

    def __init__(
        self,
        attribute: str,
        file_value: Any = _MISSING,
        requested_value: Any = _MISSING,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.attribute = attribute
        self.path = None if path is None else os.fspath(path)
        if file_value is self._MISSING and requested_value is self._MISSING:
            self.file_value = self.requested_value = None
            super().__init__(attribute)
            return
        self.file_value = file_value
        self.requested_value = requested_value
        where = f" {self.path}" if self.path is not None else ""
        super().__init__(
            f"ensemble mismatch in attribute {attribute!r}: file{where} has "
            f"{file_value!r}, requested {requested_value!r}"
        )


def _decode(value: Any) -> Any:
    """Turn an h5py attribute value into plain Python types."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _decode(value.item())
    return value


def decode_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    """Root attributes as a dict of Python values (``shape`` as a tuple)."""
    out: dict[str, Any] = {}
    for key in attrs.keys():
        value = _decode(attrs[key])
        if key in _TUPLE_ATTRS and isinstance(value, list):
            value = tuple(int(v) for v in value)
        out[key] = value
    return out


def open_h5_readonly(path: str | os.PathLike[str]) -> h5py.File:
    """Open ``path`` read-only, with clear errors for missing or non-HDF5 files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ensemble file not found: {path}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"not a latticeflow ensemble: {path} (not an HDF5 file)")
    return h5py.File(path, "r")


def check_equal(
    attribute: str, file_value: Any, requested: Any, path: str | os.PathLike[str] | None
) -> None:
    """Raise :class:`EnsembleMismatchError` unless the two values are equal."""
    if file_value != requested:
        raise EnsembleMismatchError(attribute, file_value, requested, path)


def check_couplings(
    file_couplings: Mapping[str, float],
    requested: Mapping[str, float],
    path: str | os.PathLike[str] | None,
) -> None:
    """Compare coupling dicts: same names, values equal to ``COUPLING_REL_TOL``."""
    if sorted(file_couplings) != sorted(requested):
        raise EnsembleMismatchError(
            "couplings", sorted(file_couplings), sorted(requested), path
        )
    for name in sorted(requested):
        a, b = float(file_couplings[name]), float(requested[name])
        if not math.isclose(a, b, rel_tol=COUPLING_REL_TOL, abs_tol=0.0):
            raise EnsembleMismatchError(name, a, b, path)


def list_datasets(group: h5py.Group) -> list[str]:
    """Sorted paths (relative to ``group``) of every data set below ``group``, without the
    integrity datasets (``checksums``, ``history``)."""
    names: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and name not in INTEGRITY_DATASETS:
            names.append(name)

    group.visititems(visit)
    return sorted(names)


def row_count(attrs: Mapping[str, Any], path: str | os.PathLike[str] | None, default: int = 0) -> int:
    """The committed row count ``n_rows`` of decoded root attributes; a value that is not a non-negative
    integer is damage (``ValueError`` naming the file), never a count to trust."""
    value = attrs.get("n_rows", default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"damaged ensemble {os.fspath(path) if path is not None else ''}: n_rows is {value!r}, "
                         f"not a row count")
    return int(value)
