"""`latticeflow measure` on 2 ranks: shard r measured by rank r, the master file rewritten by rank 0."""
from __future__ import annotations

import sys

import numpy as np

from latticeflow.io import open_ensemble, verify_ensemble, write_master
from latticeflow.pipeline.measure import measure

from tests.pipeline.test_measure import OBS_MODULE, make_ensemble


def test_measure_a_master_file_on_two_ranks(world, shared_dir):
    shards = [shared_dir / f"ensemble.rank{r}.h5" for r in range(2)]
    if world.is_main:
        (shared_dir / "obs_mpi.py").write_text(OBS_MODULE)
        xs = [make_ensemble(s, n_batches=2, rows=40, seed=r) for r, s in enumerate(shards)]
        write_master(shared_dir / "ensemble.h5", shards, seed=0)
    world.barrier()
    sys.path.insert(0, str(shared_dir))
    try:
        s = measure(shared_dir / "ensemble.h5", "obs_mpi:corner", progress=False)
    finally:
        sys.path.remove(str(shared_dir))
    assert s["n_rows"] == 160 and len(s["files"]) == 2  # both shards, one per rank
    if world.is_main:
        x = np.concatenate(xs)
        with open_ensemble(shared_dir / "ensemble.h5") as ens:
            assert np.array_equal(ens["observables/corner"], x[:, 0, 0] * x[:, 1, 1])
        assert all(verify_ensemble(p).ok for p in shards)
    world.barrier()
