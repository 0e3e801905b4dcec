"""Shard files and the virtual-dataset master file of MPI runs, built here without MPI: the master reads
as one ensemble of all replicas (also after moving the run directory), refuses mismatched shards, and a
one-process run refuses to append to it; per-rank seeds."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from latticeflow.config import ConfigError, config_from_dict
from latticeflow.distributed import World, get_world, seed_for_rank
from latticeflow.io import EnsembleMismatchError, open_ensemble
from latticeflow.pipeline import analyze, sample
from latticeflow.pipeline.shards import shard_path, write_master


def u1_cfg(out, beta=2.0, seed=1):
    return config_from_dict({"name": "s", "seed": seed, "action": {"theory": "u1", "shape": [4, 4], "beta": beta},
                             "sampler": {"n_samples": 256, "n_chains": 8, "n_thermalize": 20, "batch_size": 128},
                             "output": {"dir": str(out)}})


def make_shards(out, betas=(2.0, 2.0)):
    master = out / "ensemble.h5"
    for rank, beta in enumerate(betas):
        sample(u1_cfg(out, beta, seed_for_rank(1, rank)), progress=False, path=shard_path(master, rank), replica=rank)
    return master


def test_master_file_reads_as_one_ensemble_of_all_replicas(tmp_path):
    master = write_master(make_shards(tmp_path), [shard_path(tmp_path / "ensemble.h5", r) for r in (0, 1)], seed=1)
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.move(tmp_path, moved)  # shard names are relative: the run directory can move
    master = moved / master.name
    with h5py.File(master, "r") as f:
        plaq = f["observables/plaquette"][:]
        parts = [h5py.File(shard_path(master, r), "r")["observables/plaquette"][:] for r in (0, 1)]
        assert f["samples"].is_virtual and int(f.attrs["n_replicas"]) == 2 and int(f.attrs["n_rows"]) == 512
        assert int(f.attrs["n_chains"]) == 16 and len(f.attrs["shard_step_size"]) == 2  # totals, per-rank tuning
    assert np.array_equal(plaq, np.concatenate(parts)) and not np.array_equal(*parts)
    with open_ensemble(master) as ens:
        assert ens.n_rows == 512 and sorted(set(ens["chain"].tolist())) == list(range(16))
    assert analyze(str(master)).extra["n_chains"] == 16
    with pytest.raises(ConfigError, match="master file of a 2-rank MPI run: resume it with 'mpiexec -n 2'"):
        sample(u1_cfg(moved), progress=False, world=World())


def test_master_without_its_shards_is_refused(tmp_path):
    master = write_master(make_shards(tmp_path), [shard_path(tmp_path / "ensemble.h5", r) for r in (0, 1)], seed=1)
    shard_path(master, 1).unlink()
    with pytest.raises(ValueError, match="shard ensemble.r001.h5 is missing"):
        open_ensemble(master)
    with h5py.File(master, "r") as f:  # plain h5py: the missing rows are NaN / −1, never plausible zeros
        assert np.isnan(f["samples"][256:]).all() and np.isfinite(f["samples"][:256]).all()
        assert (f["chain"][256:] == -1).all()


def test_master_refuses_shards_of_other_couplings(tmp_path):
    make_shards(tmp_path, betas=(2.0, 3.0))
    with pytest.raises(EnsembleMismatchError, match="beta"):
        write_master(tmp_path / "ensemble.h5", [shard_path(tmp_path / "ensemble.h5", r) for r in (0, 1)], seed=1)


def test_seeds_per_rank_are_distinct_and_rank_zero_keeps_the_run_seed():
    seeds = [seed_for_rank(7, r) for r in range(64)]
    assert seeds[0] == 7 and len(set(seeds)) == 64 and all(0 <= s < 2**31 for s in seeds)
    assert seed_for_rank(8, 1) != seed_for_rank(7, 1)


def test_without_a_launcher_the_world_is_one_process():
    world = get_world()
    assert (world.rank, world.size, world.comm) == (0, 1, None)


def test_without_mpi4py_one_process_runs_and_a_launcher_gets_a_clear_error():
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['mpi4py'] = None\n"  # mpi4py absent: importing it raises ImportError
            "from latticeflow.distributed import get_world\n"
            "try:\n    w = get_world(); print('size', w.size)\nexcept RuntimeError as e:\n    print('error', e)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_", "HYDRA_"))}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    launched = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**env, "PMI_SIZE": "2", "PMI_RANK": "0"})
    assert plain.stdout.strip() == "size 1"
    assert launched.stdout.startswith("error started by an MPI launcher but mpi4py is not installed")


def test_slurm_steps_of_several_tasks_count_as_launched(monkeypatch):
    """``srun -n N`` (PMIx or no PMI) announces N tasks only through Slurm: treated as an MPI launch whose
    size must match, so a mismatched mpi4py cannot silently run N one-rank jobs. One task stays serial."""
    from latticeflow.distributed import MPI_ENV_VARS, launched_by_mpi, launcher_size

    for var in (*MPI_ENV_VARS, "LATTICEFLOW_MPI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert not launched_by_mpi()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert launched_by_mpi() and launcher_size() == 4
    monkeypatch.setenv("PMIX_RANK", "0")
    assert launcher_size() == 4
