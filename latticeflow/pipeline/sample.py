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
from ..io import check_not_master
from ..samplers import SAMPLERS
from .common import SampleSummary, resolve_device
from .sample_chains import sample_chains
from .sample_flow import sample_with_flow
from .shards import sample_sharded

__all__ = ["SampleSummary", "sample", "sample_replica", "resolve_device"]


def sample_replica(cfg: Config, config_text: str = "", *, command: str | None = None, progress: bool = True,
                   checkpoint: str | None = None, path: Path | None = None,
                   replica: int | None = None) -> SampleSummary:
    """Sample one ensemble file (one process, or one shard with ``replica``) with the config's sampler."""
    if SAMPLERS[cfg.sampler.name].needs_flow:
        return sample_with_flow(cfg, config_text, checkpoint=checkpoint, command=command, progress=progress,
                                path=path, replica=replica)
    return sample_chains(cfg, config_text, command=command, progress=progress, path=path, replica=replica)


def sample(cfg: Config, config_text: str = "", *, command: str | None = None,
           progress: bool = True, checkpoint: str | None = None, path: Path | None = None,
           replica: int | None = None, world=None) -> SampleSummary:
    """Generate (or resume) the ensemble of ``cfg`` into ``<output.dir>/ensemble.h5``.

    ``world`` defaults to the MPI world of the process: with several ranks this writes one shard per
    rank and the master file (:func:`latticeflow.pipeline.shards.sample_sharded`). ``replica`` marks a
    call that writes one shard: its chains are numbered from ``replica * n_chains`` (unique across
    the shards) and ``config.yaml`` is left to the caller.
    """
    if replica is None:
        from ..distributed import get_world

        world = world or get_world()
        if world.distributed:
            return sample_sharded(cfg, config_text, sample_replica, command=command, progress=progress,
                                  checkpoint=checkpoint, path=path, world=world)
        try:
            check_not_master(Path(path) if path is not None else cfg.output_dir / "ensemble.h5")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return sample_replica(cfg, config_text, command=command, progress=progress, checkpoint=checkpoint, path=path,
                          replica=replica)
