"""Sharded ensembles of MPI runs: one shard file per rank and a master file of HDF5 virtual datasets.

``mpiexec -n N latticeflow sample CONFIG`` makes every rank r an independent replica: its own seed
(:func:`latticeflow.distributed.seed_for_rank`), ``sampler.n_samples`` configurations (and, for HMC,
``sampler.n_chains`` chains) of its own, streamed to ``<stem>.r<rank:03d>.h5`` next to the master path
(default ``<output.dir>/ensemble.r000.h5``, …). Each shard is a complete ensemble file (format
version 1) whose chains are numbered globally: HMC or NMCMC chain c of rank r is ``r * n_chains + c``. Rank 0 then writes the master ``ensemble.h5``: every dataset is a
virtual dataset concatenating the committed rows of the shards in rank order, so plain h5py (serial,
no MPI) reads the N replicas as one ensemble of N × n_samples rows, and ``latticeflow analyze``
splits Markov chains by ``chain`` into replicas for the Gamma method (i.i.d. flow samples are simply
pooled). Extra root attributes: ``n_replicas``, ``shard_files`` (names relative to the master's
directory, where HDF5 looks for them first), ``shard_rows``. The master is rewritten atomically after
every (resumed) run; a rank that fails leaves every shard readable on its own.

The parallel ``mpio`` driver of h5py is not used: shards stay valid files on their own whatever
happens to the other ranks, and the PyPI h5py wheel is serial anyway.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path

import h5py
import numpy as np

from ..config import Config, ConfigError
from ..distributed import World, seed_for_rank
from ..io import EnsembleMismatchError
from ..io._format import LIBVER, check_couplings, check_equal, decode_attrs, list_datasets
from .sample import SampleSummary

__all__ = ["shard_path", "write_master", "sample_sharded", "check_not_master", "MASTER_ATTRS"]

#: root attributes only a master file has
MASTER_ATTRS = ("n_replicas", "shard_files", "shard_rows")
#: per-rank sampler state, meaningless for the merged ensemble
_PER_SHARD_ATTRS = ("rng_state", "rng_state_rows", "current_rejection_run", "step_size", "n_chains")


def shard_path(path: str | os.PathLike[str], rank: int) -> Path:
    """``<dir>/<stem>.r<rank:03d><suffix>`` next to the master ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.r{rank:03d}{path.suffix}")


def _master_replicas(path: Path) -> int | None:
    """``n_replicas`` of an existing master file, 0 for an ordinary ensemble, None if there is no file."""
    if not path.exists():
        return None
    if not h5py.is_hdf5(path):
        return 0
    with h5py.File(path, "r") as f:
        return int(f.attrs["n_replicas"]) if "n_replicas" in f.attrs else 0


def check_not_master(path: Path) -> None:
    """Refuse to append with one process to the master file of an MPI run."""
    n = _master_replicas(Path(path))
    if n:
        raise ConfigError(f"{path} is the master file of a {n}-rank MPI run: resume it with 'mpiexec -n {n}' "
                          f"or choose another output.dir")


def write_master(path: str | os.PathLike[str], shards: list[Path], *, seed: int) -> Path:
    """Write (atomically replace) the master file of ``shards``: virtual datasets over their committed rows."""
    path = Path(path)
    infos = []
    for shard in shards:
        with h5py.File(shard, "r") as f:
            attrs = decode_attrs(f.attrs)
            n = int(attrs.get("n_rows", 0))
            names = list_datasets(f)
            infos.append((shard, attrs, n, {k: (f[k].dtype, f[k].shape[1:]) for k in names}))
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
    tmp = path.with_name(f".{path.name}.master-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
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
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def sample_sharded(cfg: Config, config_text: str = "", *, command: str | None = None, progress: bool = True,
                   checkpoint: str | None = None, path: Path | None = None, world: World) -> SampleSummary:
    """Every rank samples its replica into its shard; rank 0 writes the master file. Collective."""
    from .sample import sample

    path = Path(path) if path is not None else cfg.output_dir / "ensemble.h5"
    problem = None
    if world.is_main:
        found = _master_replicas(path)
        if found == 0:
            problem = f"{path} was written by a one-process run; choose another output.dir for an MPI run"
        elif found is not None and found != world.size:
            problem = (f"{path} is the master file of a {found}-rank MPI run, this run has {world.size} ranks: "
                       f"use 'mpiexec -n {found}' or another output.dir")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    problem = world.bcast(problem)
    if problem:
        raise ConfigError(problem)
    # its own seed stream, and with device: cuda its own GPU (cuda:<local rank>)
    rank_cfg = dataclasses.replace(cfg, seed=seed_for_rank(cfg.seed, world.rank), device=str(world.device(cfg.device)))
    shard = shard_path(path, world.rank)
    mine = sample(rank_cfg, config_text, command=command, progress=progress and world.is_main, checkpoint=checkpoint,
                  path=shard, replica=world.rank)
    summaries = world.allgather(mine.as_dict())
    if world.is_main:
        if path == cfg.output_dir / "ensemble.h5":
            (cfg.output_dir / "config.yaml").write_text(config_text)
        write_master(path, [shard_path(path, r) for r in range(world.size)], seed=cfg.seed)
    world.barrier()  # the master exists before any rank returns
    n_new = [s["n_new"] for s in summaries]

    def pooled(key: str) -> float:  # weighted by the new configurations of each rank
        values = [(s[key], n) for s, n in zip(summaries, n_new) if n and s[key] == s[key]]
        return sum(v * n for v, n in values) / sum(n for _, n in values) if values else float("nan")

    return SampleSummary(path=str(path), n_rows=sum(s["n_rows"] for s in summaries), n_new=sum(n_new),
                         acceptance=pooled("acceptance"), exp_minus_delta_h=pooled("exp_minus_delta_h"),
                         step_size=pooled("step_size"), seconds=max(s["seconds"] for s in summaries),
                         resumed=any(s["resumed"] for s in summaries))
