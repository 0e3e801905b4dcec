"""MPI sampling: every rank samples a shard, rank 0 writes the master file (formats in `latticeflow.io.shards`).

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
from collections.abc import Callable
from pathlib import Path

from ..config import Config, ConfigError
from ..distributed import World, collective_check, seed_for_rank
from ..io import MASTER_ATTRS, check_not_master, shard_path, write_master
from ..io.shards import rank_count_problem
from .common import SampleSummary
from .rundir import WriteGate

__all__ = ["shard_path", "write_master", "sample_sharded", "check_not_master", "MASTER_ATTRS"]


def sample_sharded(cfg: Config, config_text: str, sample_replica: Callable[..., SampleSummary], *,
                   command: str | None = None, progress: bool = True, checkpoint: str | None = None,
                   path: Path | None = None, world: World) -> SampleSummary:
    """Every rank samples its replica into its shard with ``sample_replica``; rank 0 writes the master file.
    Collective; the caller holds the output directory's lock. Refusals (another rank count, with or without a
    master file; a shard that cannot be resumed; ``config.yaml``) reach every rank before any rank writes."""
    path = Path(path) if path is not None else cfg.output_dir / "ensemble.h5"
    problem = rank_count_problem(path, world.size) if world.is_main else None
    collective_check(world, problem, ConfigError)
    # its own seed stream, and with device: cuda its own GPU (cuda:<local rank>)
    rank_cfg = dataclasses.replace(cfg, seed=seed_for_rank(cfg.seed, world.rank), device=str(world.device(cfg.device)))
    shard = shard_path(path, world.rank)
    own_dir = path.parent.resolve() == cfg.output_dir.resolve()
    gate = WriteGate(cfg.output_dir if own_dir else None, config_text, world)
    mine = sample_replica(rank_cfg, config_text, command=command, progress=progress and world.is_main,
                          checkpoint=checkpoint, path=shard, replica=world.rank, gate=gate, n_replicas=world.size)
    summaries = world.allgather(mine.as_dict())
    failed = None
    if world.is_main:
        try:
            write_master(path, [shard_path(path, r) for r in range(world.size)], seed=cfg.seed)
        except OSError as err:  # e.g. a full disk: the shards are complete, a rerun writes the master
            failed = str(err)
    collective_check(world, failed, OSError)  # the master exists before any rank returns
    n_new = [s["n_new"] for s in summaries]

    def pooled(key: str) -> float:  # weighted by the new configurations of each rank
        values = [(s[key], n) for s, n in zip(summaries, n_new) if n and s[key] == s[key]]
        return sum(v * n for v, n in values) / sum(n for _, n in values) if values else float("nan")

    return SampleSummary(path=str(path), n_rows=sum(s["n_rows"] for s in summaries), n_new=sum(n_new),
                         acceptance=pooled("acceptance"), exp_minus_delta_h=pooled("exp_minus_delta_h"),
                         step_size=pooled("step_size"), seconds=max(s["seconds"] for s in summaries),
                         resumed=any(s["resumed"] for s in summaries))
