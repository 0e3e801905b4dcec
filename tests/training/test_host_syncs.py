"""Host syncs in the hot loops (issue 25, item 4), counted as a regression test.

A host read of a tensor (``item``, ``float``, ``int``, ``bool``, ``tolist``, ``numpy``) is a device sync on an
accelerator. On every device the test counts the reads that latticeflow's (and the actions') own code makes,
by patching those methods during one step after a warm-up; on CUDA the flow and HMC hot paths also run
under ``torch.cuda.set_sync_debug_mode("error")``. Budgets: one read per `Trainer.step` (the skip and
landing decisions), none per HMC trajectory, none per flow call.
"""
from __future__ import annotations

import collections
import contextlib
import sys
from collections.abc import Iterator
from unittest import mock

import pytest
import torch

from actions import Phi4
from latticeflow.flows import DomainError, build_flow, finite_checks
from latticeflow.samplers.hmc import HMC, hmc_chains
from latticeflow.training import Trainer

READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy")
ACTION = Phi4((4, 4), kappa=0.25, lam=0.02)


@contextlib.contextmanager
def host_reads() -> Iterator[collections.Counter]:
    """Counts (method, module, line) of the host reads of tensors made by ``latticeflow``/``actions`` code."""
    counts: collections.Counter = collections.Counter()

    def wrap(name, original):
        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if module.startswith(("latticeflow", "actions")):
                counts[(name, module, frame.f_lineno)] += 1
            return original(self, *args, **kwargs)
        return read

    with contextlib.ExitStack() as stack:
        for name in READS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name))))
        yield counts


@contextlib.contextmanager
def no_device_sync(device: torch.device) -> Iterator[None]:
    """On CUDA: any synchronizing call raises; elsewhere nothing."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _flow(device, dtype=torch.float64, family="spline"):
    torch.manual_seed(0)
    opts = {"family": family, "n_layers": 2} | ({} if family == "snf" else {"hidden": [4]})
    return build_flow(opts, ACTION).to(device=device, dtype=dtype)


@pytest.mark.parametrize("settings", [
    {}, {"estimator": "standard"}, {"estimator": "path_inverse"}, {"scheduler": "plateau"},
    {"scheduler": "cosine", "warmup_steps": 1}, {"grad_clip": None}, {"landing_tol": None},
    {"objective": "forward_kl"}, {"objective": "mixed"},
])
def test_trainer_step_reads_the_host_once(settings, device):
    data = torch.randn(32, 4, 4, dtype=torch.float64, device=device)
    needs_data = settings.get("objective", "reverse_kl") != "reverse_kl"
    trainer = Trainer(_flow(device), ACTION, batch_size=8, seed=0, data=data if needs_data else None, **settings)
    if "warmup_steps" in settings:
        trainer.scheduler.steps = 10  # (set by Trainer.train)
    trainer.step()
    with finite_checks("never"), host_reads() as reads:  # (the CPU input check of the inverse: see below)
        metrics = trainer.step()
    assert sum(reads.values()) == 1, dict(reads)
    assert metrics["skipped"] == 0.0 and 0 < metrics.get("reverse_ess", metrics.get("forward_ess")) <= 1


def test_landed_and_self_normalizing_steps_read_the_host_once(device):
    free = Phi4((4, 4), kappa=0.2, lam=0.0)  # the default flow is exact for the free field: every step lands
    torch.manual_seed(0)
    trainer = Trainer(build_flow({"n_layers": 2, "hidden": [4]}, free).to(device), free, batch_size=8, seed=0)
    trainer.step()
    with host_reads() as reads:
        assert trainer.step()["landed"] == 1.0
    assert sum(reads.values()) == 1, dict(reads)
    snf = Trainer(_flow(device, family="snf"), ACTION, estimator="standard", batch_size=8, seed=0)
    snf.step()
    with host_reads() as reads:
        snf.step()
    assert sum(reads.values()) == 1, dict(reads)


def test_non_finite_step_is_skipped_with_one_host_read(device):
    trainer = Trainer(_flow(device), ACTION, batch_size=8, seed=0)
    trainer.step()
    params = [p for p in trainer.flow.parameters() if p.requires_grad]
    with torch.no_grad():
        params[-1].fill_(float("nan"))
    before = [p.detach().clone() for p in params]
    adam = {k: v.clone() for k, v in trainer.optimizer.state[params[0]].items()}
    with host_reads() as reads:
        m = trainer.step()
    assert sum(reads.values()) == 1 and m["skipped"] == 1.0 and trainer.n_skipped == 1
    assert all(p.grad is None for p in params)
    assert all(torch.equal(a, b) for a, b in zip(before[:-1], params[:-1]))  # no update made
    assert all(torch.equal(v, trainer.optimizer.state[params[0]][k]) for k, v in adam.items())  # Adam untouched


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
def test_hmc_trajectories_do_not_read_the_host(integrator, device):
    gen = torch.Generator(device=device).manual_seed(0)
    hmc = HMC(ACTION, n_leapfrog=3, step_size=0.1, integrator=integrator, step_size_jitter=0.2, generator=gen)
    x = torch.zeros(4, 4, 4, dtype=torch.float64, device=device)
    hmc.step(x)
    with host_reads() as reads, no_device_sync(device):
        for sweep in hmc_chains(hmc, x, 3, save_every=2):
            x = sweep.x
    assert sum(reads.values()) == 0, dict(reads)


def test_flow_calls_do_not_read_the_host(device):
    flow = _flow(device, family="z2affine")
    x, _ = flow.sample(4, generator=torch.Generator(device=device).manual_seed(1))
    with host_reads() as reads, no_device_sync(device), torch.no_grad():
        flow.sample(4, generator=torch.Generator(device=device).manual_seed(2))
        flow.forward_with_score(x)
        with finite_checks("never"):
            flow.log_prob(x)
            flow.inverse_with_score(x, torch.zeros_like(x))
    assert sum(reads.values()) == 0, dict(reads)


def test_finite_check_modes(device):
    flow = _flow(device, family="z2affine")
    bad = flow.base.sample((2,), generator=torch.Generator(device=device).manual_seed(0))
    bad[0].view(-1)[1] = float("nan")
    with finite_checks("always"), pytest.raises(DomainError):
        flow.log_prob(bad)
    with finite_checks("auto"), host_reads() as reads:  # the default: checked on CPU, where it costs no sync
        if device.type == "cpu":
            with pytest.raises(DomainError):
                flow.log_prob(bad)
        else:
            assert torch.isnan(flow.log_prob(bad)).any().cpu()
    assert sum(reads.values()) == (1 if device.type == "cpu" else 0)
    with finite_checks("never"):
        flow.log_prob(bad)  # no error: NaN in, NaN out
    with pytest.raises(ValueError, match="finite checks"):
        finite_checks("sometimes").__enter__()
