"""Issue 24, item 5 on 2 ranks: a shard that the writer refuses to resume (a damaged batch followed by intact
ones) is refused collectively before either rank writes: one line, on both ranks, the directory byte for byte
as it was and the lock released."""
from __future__ import annotations

from tests.faults.test_damaged_files import flip
from tests.mpi.test_rank_counts import cfg, refused_everywhere

from latticeflow.pipeline import sample


def test_mpi_writer_refusal_is_collective_and_releases_the_lock(world, shared_dir):
    sample(cfg(shared_dir), "", progress=False, world=world)
    world.barrier()
    if world.is_main:
        flip(shared_dir / "ensemble.r001.h5", "action", 3)  # batch 0 of 2: the later batch is intact
    refused_everywhere(world, shared_dir, "refusing to resume, nothing was changed", rank=1)
