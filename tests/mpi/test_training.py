"""Data-parallel training on 2 ranks: the parameters after k steps equal those of one process with the
same global batch (float64, 1e-10), are identical on both ranks, and the CLI pipeline resumes exactly."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from actions import Phi4
from latticeflow.config import config_from_dict
from latticeflow.distributed import World
from latticeflow.flows import build_flow
from latticeflow.pipeline import train
from latticeflow.training import Trainer

F64 = torch.float64
FLOW = {"family": "z2nice", "conditioner": "cnn", "n_layers": 2, "hidden": [8]}


def flat_params(flow) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in flow.parameters()]).numpy()


SNF = {"family": "snf", "layer": "dense", "n_layers": 2, "nonlinearity": True, "gradient": "self_normalized"}


def make_trainer(action, world, data=None, flow_config=FLOW, **kw) -> Trainer:
    torch.manual_seed(11)  # the same initial flow everywhere
    flow = build_flow(flow_config, action).to(F64)
    return Trainer(flow, action, seed=7, world=world, data=data, **kw)


@pytest.mark.parametrize("objective,estimator,flow_config", [
    ("reverse_kl", "fast_path", FLOW), ("reverse_kl", "standard", FLOW), ("mixed", "path_inverse", FLOW),
    ("forward_kl", "standard", SNF)])  # self-normalizing layers: the reconstruction loss is averaged too
def test_two_ranks_equal_one_process_with_the_global_batch(world, objective, estimator, flow_config):
    action = Phi4(shape=(8, 8), kappa=0.3, lam=0.02)
    data = torch.randn(100, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)  # any target samples
    kw = dict(objective=objective, estimator=estimator, batch_size=32, lr=3e-3, grad_clip=1.0,
              data=data if objective != "reverse_kl" else None, flow_config=flow_config)
    parallel = make_trainer(action, world, **kw)
    single = make_trainer(action, World(), **kw)  # one process, the whole batch of 32, on each rank
    start = flat_params(single.flow)
    for _ in range(5):
        m_par, m_one = parallel.step(), single.step()
        for key in ("loss", "grad_norm", "reverse_ess", "forward_ess", "reconstruction"):
            if key in m_one:
                assert m_par[key] == pytest.approx(m_one[key], rel=1e-10, abs=1e-10), key
    assert ("reconstruction" in m_par) == (flow_config is SNF)
    p_par, p_one = flat_params(parallel.flow), flat_params(single.flow)
    assert np.abs(p_par - p_one).max() < 1e-10
    assert np.abs(p_one - start).max() > 1e-4  # the steps did move the parameters
    both = world.allgather(p_par)
    assert np.array_equal(both[0], both[1]), "the ranks' parameters differ"


def test_odd_global_batch_is_refused(world):
    action = Phi4(shape=(8, 8), kappa=0.3, lam=0.02)
    with pytest.raises(ValueError, match="batch_size 33 is not divisible by the 2 MPI ranks"):
        make_trainer(action, world, batch_size=33)


def _cfg(out, steps):
    return config_from_dict({"name": "mpi", "seed": 4, "dtype": "float64",
                             "action": {"theory": "phi4", "shape": [8, 8], "kappa": 0.2, "lam": 0.0},
                             "flow": FLOW, "output": {"dir": str(out)},
                             "train": {"steps": steps, "batch_size": 32, "log_every": 2, "checkpoint_every": 3}})


def test_train_pipeline_rank_zero_writes_and_resume_is_exact(world, shared_dir):
    train(_cfg(shared_dir / "a", 4), "x: 1\n", progress=False, world=world)
    resumed = train(_cfg(shared_dir / "a", 8), "x: 1\n", progress=False, world=world)
    straight = train(_cfg(shared_dir / "b", 8), "x: 1\n", progress=False, world=world)
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 8 and straight["ranks"] == 2
    a = torch.load(shared_dir / "a" / "checkpoints" / "latest.pt", weights_only=False)["flow"]
    b = torch.load(shared_dir / "b" / "checkpoints" / "latest.pt", weights_only=False)["flow"]
    same = all(torch.equal(a[k], b[k]) for k in a)
    with open(shared_dir / "a" / "metrics.csv", newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert same, "resumed 2-rank training differs from an uninterrupted one"
    assert steps == [2, 4, 6, 8]  # rank 0 alone wrote each row once


class NaNOnRankOne:
    """φ⁴ whose action is NaN on rank 1 during one chosen step (e.g. an overflow in one slice)."""

    def __init__(self, action, rank):
        self.inner, self.rank, self.poison = action, rank, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def action(self, x):
        s = self.inner.action(x)
        return s + float("nan") if self.poison and self.rank == 1 else s

    def force(self, x):
        return self.inner.force(x)


def test_a_non_finite_loss_on_one_rank_is_skipped_on_every_rank(world):
    action = NaNOnRankOne(Phi4(shape=(8, 8), kappa=0.3, lam=0.02), world.rank)
    trainer = make_trainer(action, world, batch_size=32, estimator="standard")
    skipped = []
    for step in range(4):
        action.poison = step == 2
        skipped.append(trainer.step()["skipped"])
    both = world.allgather((skipped, flat_params(trainer.flow)))
    assert both[0][0] == both[1][0] == [0.0, 0.0, 1.0, 0.0]
    assert np.array_equal(both[0][1], both[1][1])
