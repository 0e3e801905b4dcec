"""Sharded ensembles of MPI runs: shard file names and the master file of HDF5 virtual datasets.

Every rank r writes a complete ensemble file ``<stem>.r<rank:03d>.h5`` next to the master path. The master
``ensemble.h5`` holds one virtual dataset per dataset, concatenating the committed rows of the shards in rank
order, so plain h5py (serial, no MPI) reads the N replicas as one ensemble of N × n_samples rows. Extra root
attributes: ``n_replicas``, ``shard_files`` (names relative to the master's directory, where HDF5 looks for them
first), ``shard_rows``. The master is rewritten atomically; a rank that fails leaves every shard readable on
its own.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from .files import atomic_path
from ._format import LIBVER, EnsembleMismatchError, check_couplings, check_equal, decode_attrs, list_datasets

__all__ = ["shard_path", "write_master", "master_replicas", "check_not_master", "existing_shards", "rank_count_problem",
           "MASTER_ATTRS", "SHARD_RANKS_ATTR"]

#: root attributes only a master file has
MASTER_ATTRS = ("n_replicas", "shard_files", "shard_rows")
#: per-rank sampler state, meaningless for the merged ensemble
_PER_SHARD_ATTRS = ("rng_state", "rng_state_rows", "current_rejection_run", "step_size", "n_chains", "mpi_ranks")
#: root attribute of a shard: the number of ranks of the MPI run that wrote it
SHARD_RANKS_ATTR = "mpi_ranks"


def shard_path(path: str | os.PathLike[str], rank: int) -> Path:
    """``<dir>/<stem>.r<rank:03d><suffix>`` next to the master ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.r{rank:03d}{path.suffix}")


def master_replicas(path: Path) -> int | None:
    """``n_replicas`` of an existing master file, 0 for an ordinary ensemble, None if there is no file."""
    if not path.exists():
        return None
    if not h5py.is_hdf5(path):
        return 0
    with h5py.File(path, "r") as f:
        return int(f.attrs["n_replicas"]) if "n_replicas" in f.attrs else 0


def check_not_master(path: Path) -> None:
    """Refuse to append with one process to the master file, or beside the shards, of an MPI run."""
    problem = rank_count_problem(path, 1)
    if problem:
        raise ValueError(problem)


def existing_shards(path: str | os.PathLike[str]) -> dict[int, Path]:
    """The shard files ``<stem>.r<NNN><suffix>`` beside the master ``path``, by rank."""
    path = Path(path)
    found: dict[int, Path] = {}
    if not path.parent.is_dir():
        return found
    prefix, suffix = f"{path.stem}.r", path.suffix
    for entry in path.parent.iterdir():
        name = entry.name
        if name.startswith(prefix) and name.endswith(suffix):
            digits = name[len(prefix):len(name) - len(suffix)]
            if len(digits) >= 3 and digits.isdigit():
                found[int(digits)] = entry
    return dict(sorted(found.items()))


def _shard_ranks(shard: Path) -> int | None:
    """``mpi_ranks`` recorded in a shard, None if absent or unreadable (its own rank reports that)."""
    try:
        if not h5py.is_hdf5(shard):
            return None
        with h5py.File(shard, "r") as f:
            return int(f.attrs[SHARD_RANKS_ATTR]) if SHARD_RANKS_ATTR in f.attrs else None
    except (OSError, ValueError, KeyError):
        return None


def rank_count_problem(path: str | os.PathLike[str], size: int) -> str | None:
    """Why a run of ``size`` processes (1: a serial run) must not write the ensemble ``path``, or None.

    Read-only. Refused: a serial run over a master file or shards (with or without master); an MPI run over a
    one-process ensemble, over the master of another rank count, or over shards of another rank count (a shard
    of rank >= size, or one that records another ``mpi_ranks``)."""
    path = Path(path)
    n = master_replicas(path)
    shards = existing_shards(path)
    names = ", ".join(p.name for p in shards.values())
    if size == 1:
        if n:
            return (f"{path} is the master file of a {n}-rank MPI run: resume it with 'mpiexec -n {n}' "
                    f"or choose another output.dir")
        if shards:
            ranks = max([max(shards) + 1, *(r for r in map(_shard_ranks, shards.values()) if r)])
            return (f"{path.parent} holds the shards of an MPI run ({names}): resume it with 'mpiexec -n {ranks}' "
                    f"or choose another output.dir")
        return None
    if n == 0:
        return f"{path} was written by a one-process run; choose another output.dir for an MPI run"
    if n is not None and n != size:
        return (f"{path} is the master file of a {n}-rank MPI run, this run has {size} ranks: "
                f"use 'mpiexec -n {n}' or another output.dir")
    recorded = {r for r in map(_shard_ranks, shards.values()) if r is not None}
    other = sorted(recorded - {size}) or ([max(shards) + 1] if shards and max(shards) >= size else [])
    if other:
        return (f"{path.parent} holds the shards of a {other[0]}-rank MPI run ({names}), this run has {size} "
                f"ranks: use 'mpiexec -n {other[0]}' or another output.dir")
    return None


def write_master(path: str | os.PathLike[str], shards: list[Path], *, seed: int) -> Path:
    """Write (atomically replace) the master file of ``shards``: virtual datasets over their committed rows."""
    path = Path(path)
    infos = []
    for shard in shards:
        try:
            with h5py.File(shard, "r") as f:
                attrs = decode_attrs(f.attrs)
                n = int(attrs.get("n_rows", 0))
                names = list_datasets(f)
                infos.append((shard, attrs, n, {k: (f[k].dtype, f[k].shape[1:]) for k in names}))
        except OSError as err:
            reason = err.strerror or (str(err).splitlines() or [type(err).__name__])[0]
            raise OSError(err.errno, f"could not read shard {shard} for the master file {path}: {reason}") from None
    first_attrs, first_sets = infos[0][1], infos[0][3]
    for shard, attrs, n, sets in infos[1:]:
        for key in ("theory", "shape", "field_shape", "sampler", "dtype"):
            check_equal(key, attrs.get(key), first_attrs.get(key), shard)
        check_couplings({k: attrs[k] for k in attrs.get("coupling_names", [])},
                        {k: first_attrs[k] for k in first_attrs.get("coupling_names", [])}, shard)
        if n and sets != first_sets:
            raise EnsembleMismatchError(f"shard {shard} has datasets {sorted(sets)}, {shards[0]} has {sorted(first_sets)}")
    rows = [n for _, _, n, _ in infos]
    total = sum(rows)
    try:
        with atomic_path(path, "master") as tmp:
            with h5py.File(tmp, "w", libver=LIBVER) as out:
                for key, value in first_attrs.items():
                    if key in _PER_SHARD_ATTRS or key in MASTER_ATTRS:
                        continue
                    out.attrs[key] = np.array(value, dtype=h5py.string_dtype()) if key == "coupling_names" else value
                out.attrs["seed"] = np.int64(seed)
                out.attrs["replica"] = np.int64(-1)
                out.attrs["n_rows"] = np.int64(total)
                out.attrs["n_replicas"] = np.int64(len(shards))
                out.attrs["shard_files"] = np.array([s.name for s in shards], dtype=h5py.string_dtype())
                out.attrs["shard_rows"] = np.array(rows, dtype=np.int64)
                if "n_chains" in first_attrs:  # chains of all replicas (numbered globally)
                    out.attrs["n_chains"] = np.int64(sum(int(a.get("n_chains", 0)) for _, a, _, _ in infos))
                if "step_size" in first_attrs:  # each rank tuned its own
                    out.attrs["shard_step_size"] = np.array([float(a.get("step_size", np.nan)) for _, a, _, _ in infos])
                if "longest_rejection_run" in first_attrs:  # per chain, in global chain order
                    out.attrs["longest_rejection_run"] = np.concatenate(
                        [np.atleast_1d(np.asarray(a.get("longest_rejection_run", 0), dtype=np.int64)) for _, a, _, _ in infos])
                for name, (dtype, trailing) in (first_sets.items() if total else ()):
                    layout = h5py.VirtualLayout(shape=(total, *trailing), dtype=dtype, maxshape=(total, *trailing))
                    start = 0
                    for (shard, _, n, _) in infos:
                        if n:
                            source = h5py.VirtualSource(shard.name, name, shape=(n, *trailing), dtype=dtype)
                            layout[start:start + n] = source
                        start += n
                    kind = np.dtype(dtype).kind  # a missing shard reads as NaN / −1, never as plausible zeros
                    fill = np.nan if kind in "fc" else (-1 if kind == "i" else None)
                    out.create_virtual_dataset(name, layout, fillvalue=fill)
    except OSError as err:
        reason = err.strerror or (str(err).splitlines() or [type(err).__name__])[0]
        raise OSError(err.errno, f"could not write the master file {path}: {reason}; the previous master file "
                                 f"(if any) is kept and every shard is intact: rerun the same command") from None
    return path


