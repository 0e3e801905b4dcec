"""`latticeflow sample`: run the sampler of a config and stream its ensemble to HDF5.

The sampler's registry entry (``latticeflow.samplers.SAMPLERS``) decides the path: chain samplers (HMC,
cluster, …) run in :mod:`latticeflow.pipeline.sample_chains`, samplers that need a trained flow (NMCMC,
i.i.d. flow samples) in :mod:`latticeflow.pipeline.sample_flow`. Under ``mpiexec -n N`` every rank samples
its own replica (``n_samples`` and ``n_chains`` per rank, its own seed) into a shard file, and rank 0 writes
the master file; see :mod:`latticeflow.pipeline.shards`.
"""
from __future__ import annotations

from pathlib import Path

from ..config import Config, ConfigError
from ..io.lock import directory_lock
from ..io.shards import rank_count_problem
from ..samplers import SAMPLERS
from .common import SampleSummary, resolve_device
from .rundir import WriteGate
from .sample_chains import sample_chains
from .sample_flow import sample_with_flow
from .shards import sample_sharded

__all__ = ["SampleSummary", "sample", "sample_replica", "resolve_device"]


def sample_replica(cfg: Config, config_text: str = "", *, command: str | None = None, progress: bool = True,
                   checkpoint: str | None = None, path: Path | None = None,
                   replica: int | None = None, gate: WriteGate | None = None,
                   n_replicas: int | None = None) -> SampleSummary:
    """Sample one ensemble file (one process, or one shard with ``replica`` of ``n_replicas``) with the config's
    sampler; ``gate`` is passed after its read-only checks, before its first write."""
    if SAMPLERS[cfg.sampler.name].needs_flow:
        return sample_with_flow(cfg, config_text, checkpoint=checkpoint, command=command, progress=progress,
                                path=path, replica=replica, gate=gate, n_replicas=n_replicas)
    return sample_chains(cfg, config_text, command=command, progress=progress, path=path, replica=replica, gate=gate,
                         n_replicas=n_replicas)


def sample(cfg: Config, config_text: str = "", *, command: str | None = None,
           progress: bool = True, checkpoint: str | None = None, path: Path | None = None,
           replica: int | None = None, world=None) -> SampleSummary:
    """Generate (or resume) the ensemble of ``cfg`` into ``<output.dir>/ensemble.h5``.

    ``world`` defaults to the MPI world of the process: with several ranks this writes one shard per
    rank and the master file (:func:`latticeflow.pipeline.shards.sample_sharded`). ``replica`` marks a
    call that writes one shard: its chains are numbered from ``replica * n_chains`` (unique across
    the shards) and the lock and ``config.yaml`` are left to the caller.

    The output directory is locked for the call (`latticeflow.io.lock`); every check that can refuse the run
    (the lock, the rank count, the ensemble's theory and resume state, ``config.yaml``) runs before anything
    is written, and a refusal leaves the directory as it was.
    """
    if replica is not None:
        return sample_replica(cfg, config_text, command=command, progress=progress, checkpoint=checkpoint,
                              path=path, replica=replica)
    from ..distributed import get_world

    world = world or get_world()
    target = Path(path) if path is not None else cfg.output_dir / "ensemble.h5"
    with directory_lock(target.parent, command, world):
        if world.distributed:
            return sample_sharded(cfg, config_text, sample_replica, command=command, progress=progress,
                                  checkpoint=checkpoint, path=target, world=world)
        problem = rank_count_problem(target, 1)  # a master file or shards of an MPI run
        if problem:
            raise ConfigError(problem)
        own_dir = target.parent.resolve() == cfg.output_dir.resolve()
        gate = WriteGate(cfg.output_dir if own_dir else None, config_text, world)
        return sample_replica(cfg, config_text, command=command, progress=progress, checkpoint=checkpoint,
                              path=target, gate=gate)
