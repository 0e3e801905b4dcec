"""Sharded sampling on 2 ranks: twice the configurations, independent streams, a master file that plain
h5py reads as one ensemble of 2 replicas, observables that agree with exact results, resume."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from latticeflow.config import config_from_dict
from latticeflow.io import open_ensemble
from latticeflow.pipeline import analyze, sample, train
from latticeflow.pipeline.shards import shard_path

FLOW = {"family": "z2nice", "conditioner": "cnn", "n_layers": 2, "hidden": [8]}


def u1_cfg(out, n_samples):
    return config_from_dict({"name": "mpi", "seed": 9, "action": {"theory": "u1", "shape": [8, 8], "beta": 2.0},
                             "sampler": {"n_samples": n_samples, "n_chains": 16, "n_thermalize": 100, "batch_size": 512},
                             "output": {"dir": str(out)}})


def test_hmc_on_two_ranks_gives_two_replicas_and_the_exact_u1_plaquette(world, shared_dir):
    cfg = u1_cfg(shared_dir, 2048)
    summary = sample(cfg, "seed: 9\n", progress=False, world=world)
    assert summary.n_rows == 4096 and summary.n_new == 4096
    master = shared_dir / "ensemble.h5"
    with h5py.File(master, "r") as f:  # plain h5py, no MPI: one ensemble of both replicas
        samples, chain = f["samples"][:], f["chain"][:]
        replicas = int(f.attrs["n_replicas"])
    shards = [h5py.File(shard_path(master, r), "r")["samples"][:] for r in range(2)]
    assert replicas == 2 and samples.shape == (4096, 2, 8, 8)
    assert np.array_equal(samples, np.concatenate(shards))
    assert not np.allclose(shards[0][:16], shards[1][:16])  # independent streams
    assert np.array_equal(np.bincount(chain), np.full(32, 128))  # 16 chains per rank, numbered globally
    result = analyze(str(master)) if world.is_main else None
    result = world.bcast(None if result is None else result.as_dict())
    assert result["n_chains"] == 32 and result["n_rows"] == 4096
    plaq = result["observables"]["<cos P>"]
    assert abs(plaq["mean"] - plaq["exact"]) < 3 * plaq["error"] and plaq["error"] < 0.01


def test_resumed_hmc_run_extends_every_shard(world, shared_dir):
    sample(u1_cfg(shared_dir, 512), "", progress=False, world=world)
    summary = sample(u1_cfg(shared_dir, 1024), "", progress=False, world=world)
    assert summary.resumed and summary.n_new == 1024 and summary.n_rows == 2048
    with open_ensemble(shared_dir / "ensemble.h5") as ens:
        chain, mc = ens["chain"], ens["mc_index"]
        assert ens.n_rows == 2048 and list(ens.attrs["shard_rows"]) == [1024, 1024]
    assert all(np.array_equal(np.sort(mc[chain == c]), np.arange(64)) for c in range(32))


@pytest.mark.parametrize("sampler", ["flow", "nmcmc"])
def test_flow_samplers_on_two_ranks_reproduce_the_free_field(world, shared_dir, sampler):
    torch.manual_seed(0)
    cfg = config_from_dict({"name": "mpi", "seed": 2, "dtype": "float64",
                            "action": {"theory": "phi4", "shape": [8, 8], "kappa": 0.15, "lam": 0.0},
                            "flow": FLOW, "output": {"dir": str(shared_dir)},
                            "train": {"steps": 60, "batch_size": 128, "lr": 3e-3, "log_every": 20},
                            "sampler": {"name": sampler, "n_samples": 2048, "batch_size": 512}})
    train(cfg, "", progress=False, world=world)
    summary = sample(cfg, "", progress=False, world=world)
    assert summary.n_rows == 4096
    master = shared_dir / "ensemble.h5"
    with h5py.File(master, "r") as f:
        log_w = f["log_weight"][:]
        chain = f["chain"][:] if "chain" in f else None
        mc = f["mc_index"][:] if "mc_index" in f else None
    halves = np.split(log_w, 2)
    assert not np.allclose(halves[0][:8], halves[1][:8])
    if sampler == "nmcmc":
        # 16 chains per rank (the default), numbered rank * 16 + c across the shards: 32 replicas
        assert np.array_equal(np.bincount(chain), [128] * 32)
        assert all(np.array_equal(np.sort(mc[chain == c]), np.arange(128)) for c in range(32))
    result = analyze(str(master)) if world.is_main else None
    result = world.bcast(None if result is None else result.as_dict())
    chi2 = result["observables"]["chi2 = V<m^2>"]
    assert abs(chi2["mean"] - chi2["exact"]) < 3 * chi2["error"] and chi2["error"] < 0.1 * chi2["exact"]


@pytest.mark.parametrize("sampler", ["hmc", "cluster"])
def test_phi4_in_3d_on_two_ranks_reproduces_the_free_field(world, shared_dir, sampler):
    """Any registered chain sampler, any dimension: 4³ free field on 2 shards, χ₂ within 3σ of exact."""
    cfg = config_from_dict({"name": "mpi3d", "seed": 4, "action": {"theory": "phi4", "shape": [4, 4, 4], "kappa": 0.1},
                            "sampler": {"name": sampler, "n_samples": 2048, "n_chains": 16, "n_thermalize": 50,
                                        "batch_size": 512}, "output": {"dir": str(shared_dir)}})
    summary = sample(cfg, "", progress=False, world=world)
    assert summary.n_rows == 4096
    with h5py.File(shared_dir / "ensemble.h5", "r") as f:
        assert f["samples"].shape == (4096, 4, 4, 4) and f.attrs["sampler"] == sampler
    result = analyze(str(shared_dir / "ensemble.h5")) if world.is_main else None
    result = world.bcast(None if result is None else result.as_dict())
    chi2 = result["observables"]["chi2 = V<m^2>"]
    assert result["n_chains"] == 32
    assert abs(chi2["mean"] - chi2["exact"]) < 3 * chi2["error"]
