"""Issue 24, item 5 on 2 ranks: an MPI resume with another rank count is refused in every state (master file
or none, shards that record another rank count, a one-process ensemble), a refusal found by one rank stops
both before either writes, and a failing master-file write (ENOSPC, EIO at every write op) ends both ranks
with one error while the shards and the previous master stay intact; a rerun completes.
Every refusal leaves the directory byte for byte as it was."""
from __future__ import annotations

import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from latticeflow.config import ConfigError, config_from_dict
from latticeflow.io import open_ensemble, write_master
from latticeflow.io.lock import LOCK_NAME
from latticeflow.pipeline import sample
from tests.faults.injector import EIO, ENOSPC, count_calls, fail_nth

TARGETS = [(h5py._hl.files, "make_fid"), (h5py.AttributeManager, "__setitem__"),
           (h5py.Group, "create_virtual_dataset"), (os, "open"), (os, "fsync"), (os, "replace")]


def cfg(out, n_samples=64):
    return config_from_dict({"name": "rc", "seed": 7, "action": {"theory": "phi4", "shape": [4, 4], "kappa": 0.2, "lam": 0.0},
                             "sampler": {"n_samples": n_samples, "n_chains": 4, "n_thermalize": 10, "batch_size": 32},
                             "output": {"dir": str(out)}})


def snapshot(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def refused_everywhere(world, shared_dir, match: str, rank: int | None = 0) -> None:
    """Resuming on 2 ranks raises the same one-line refusal on both and changes no file."""
    world.barrier()
    before = snapshot(shared_dir) if world.is_main else None
    with pytest.raises(ConfigError, match=match) as info:
        sample(cfg(shared_dir, 128), "", progress=False, world=world)
    assert "\n" not in str(info.value)
    if rank is not None:
        assert info.value.collective_rank == rank
    messages = world.allgather(str(info.value))
    assert messages[0] == messages[1]
    world.barrier()
    if world.is_main:
        assert snapshot(shared_dir) == before
        assert not (shared_dir / LOCK_NAME).exists()


def test_world_has_two_ranks():
    assert MPI.COMM_WORLD.size == 2


def test_mpi_three_shards_without_master_two_ranks_refused(world, shared_dir):
    sample(cfg(shared_dir), "", progress=False, world=world)
    if world.is_main:  # a 3-rank run killed before its master file was written
        shutil.copy(shared_dir / "ensemble.r001.h5", shared_dir / "ensemble.r002.h5")
        os.unlink(shared_dir / "ensemble.h5")
    refused_everywhere(world, shared_dir, "3-rank MPI run.*mpiexec -n 3")


def test_mpi_master_of_three_ranks_two_ranks_refused(world, shared_dir):
    sample(cfg(shared_dir), "", progress=False, world=world)
    if world.is_main:
        shutil.copy(shared_dir / "ensemble.r001.h5", shared_dir / "ensemble.r002.h5")
        write_master(shared_dir / "ensemble.h5", [shared_dir / f"ensemble.r00{r}.h5" for r in range(3)], seed=7)
    refused_everywhere(world, shared_dir, "master file of a 3-rank MPI run")


def test_mpi_shards_recording_another_rank_count_refused(world, shared_dir):
    """Shards r000, r001 of a 3-rank run whose r002 and master are gone: the shards say 3 ranks."""
    sample(cfg(shared_dir), "", progress=False, world=world)
    if world.is_main:
        for r in range(2):
            with h5py.File(shared_dir / f"ensemble.r00{r}.h5", "r+") as f:
                f.attrs.modify("mpi_ranks", np.int64(3))
        os.unlink(shared_dir / "ensemble.h5")
    refused_everywhere(world, shared_dir, "3-rank MPI run")


def test_mpi_over_a_one_process_ensemble_refused(world, shared_dir):
    if world.is_main:
        sample(cfg(shared_dir), "", progress=False, world=type(world)())  # a one-process run
    refused_everywhere(world, shared_dir, "written by a one-process run")


def test_mpi_refusal_of_one_rank_stops_both_before_any_write(world, shared_dir):
    sample(cfg(shared_dir), "", progress=False, world=world)
    if world.is_main:  # rank 1's shard cannot be resumed: not whole sweeps (and dirty: a writer would repair it)
        with h5py.File(shared_dir / "ensemble.r001.h5", "r+") as f:
            f.attrs.modify("n_rows", np.int64(62))
    refused_everywhere(world, shared_dir, "not a whole number of sweeps", rank=1)


@pytest.mark.parametrize("err", [ENOSPC, EIO])
def test_mpi_master_write_fails_at_every_op_both_ranks_stop_and_a_rerun_completes(world, shared_dir, err):
    sample(cfg(shared_dir), "", progress=False, world=world)
    master = shared_dir / "ensemble.h5"
    saved = shared_dir.parent / (shared_dir.name + ".master")
    if world.is_main:  # the previous master: 2 x 64 rows
        shutil.copy(master, saved)
    sample(cfg(shared_dir, 128), "", progress=False, world=world)  # shards of 128 rows each
    import latticeflow.pipeline.shards as pshards

    real = pshards.write_master
    n_ops = world.bcast(count_calls(TARGETS, lambda: real(shared_dir / "probe.h5", [shared_dir / "ensemble.r000.h5",
                                                                                      shared_dir / "ensemble.r001.h5"],
                                                          seed=7)) if world.is_main else None)
    if world.is_main:
        os.unlink(shared_dir / "probe.h5")
    problems = []
    for n in range(1, n_ops + 1):
        if world.is_main:
            shutil.copy(saved, master)
            shards_before = {k: v for k, v in snapshot(shared_dir).items() if ".r00" in k}

        def failing(*args, **kwargs):
            with fail_nth(TARGETS, n, err):
                return real(*args, **kwargs)

        pshards.write_master = failing
        try:
            with pytest.raises(OSError, match="master file"):
                sample(cfg(shared_dir, 128), "", progress=False, world=world)
        finally:
            pshards.write_master = real
        world.barrier()
        if world.is_main:
            with open_ensemble(master) as ens:  # the previous master or (failure after the rename) the new one
                if ens.n_rows not in (128, 256) or not np.isfinite(ens["action"]).all():
                    problems.append(f"op {n}: master has {ens.n_rows} rows")
            now = snapshot(shared_dir)
            if {k: v for k, v in now.items() if ".r00" in k} != shards_before:
                problems.append(f"op {n}: a shard changed")
            if [k for k in now if k.endswith(".tmp") or k == LOCK_NAME]:
                problems.append(f"op {n}: left {sorted(now)}")
    summary = sample(cfg(shared_dir, 128), "", progress=False, world=world)  # the rerun
    assert summary.n_rows == 256 and summary.n_new == 0
    if world.is_main:
        with open_ensemble(master) as ens:
            chain, mc = ens["chain"], ens["mc_index"]
            assert ens.n_rows == 256
            assert all(np.array_equal(np.sort(mc[chain == c]), np.arange(32)) for c in range(8))
        os.unlink(saved)
    assert not problems, "\n".join(problems)
