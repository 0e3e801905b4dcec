"""The ``meta`` default-device lane (issue 25, item 4): with ``torch.set_default_device("meta")``, a tensor made
without a device lands on ``meta`` and any op mixing it with the CPU fields fails loudly. Flows, samplers
and one training step run here on explicit CPU tensors: every tensor the library makes in these hot paths
takes the device of its inputs (or of the flow's buffers), never the default one.

Modules are built on the CPU first (construction follows torch's default device by design); only the
operations run under the ``meta`` default. A few seconds in all.
"""
from __future__ import annotations

import pytest
import torch

from actions import Phi4, U1Gauge
from latticeflow.flows import FAMILIES, build_flow
from latticeflow.gradients import forward_kl, log_weights, reverse_kl
from latticeflow.samplers.hmc import HMC, hmc_chains
from latticeflow.samplers.nmcmc import nmcmc_batches, nmcmc_chains
from latticeflow.training import Trainer

CPU = torch.device("cpu")
PHI4 = Phi4((4, 4), kappa=0.25, lam=0.02)
PHI4_8 = Phi4((8, 8), kappa=0.25, lam=0.02)
U1 = U1Gauge((4, 4), beta=1.0)
BROKEN = Phi4((4, 4), kappa=0.6, lam=0.02)  # broken phase: a two-vacuum base and the zero-mode layer


def _theory(family: str):
    return U1 if "u1" in FAMILIES[family].theories else PHI4


def _build(family: str, action=None, **extra):
    """A small float64 flow of ``family`` on the CPU (built before the default device turns ``meta``)."""
    with torch.device(CPU):
        torch.manual_seed(0)
        opts = {"family": family, "n_layers": 2, **extra}
        if family not in ("snf",) and "u1" not in FAMILIES[family].theories:
            opts["hidden"] = [4]
        return build_flow(opts, action or _theory(family)).double()


@pytest.fixture
def meta_default():
    """The default device is ``meta`` inside the test (restored after it)."""
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(previous)


def _on_cpu(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.device == CPU, f"a result on {t.device}"
        assert torch.isfinite(t).all()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device=CPU).manual_seed(seed)


@pytest.mark.parametrize("family,broken", [(f, False) for f in sorted(FAMILIES)] + [("spline", True)])
def test_flow_of_every_family_runs_on_cpu_under_a_meta_default(family, broken, meta_default):
    _run_flow(_build(family, BROKEN if broken else None))


@pytest.mark.parametrize("levels,extra", [(True, {}), (2, {}), (2, {"zero_mode": True, "magnetization": True}),
                                          (2, {"colours": True})])
def test_decimated_flow_runs_on_cpu_under_a_meta_default(levels, extra, meta_default):
    action = PHI4_8 if extra.get("colours") else None  # colour couplings need extents divisible by 8
    _run_flow(_build("spline", action=action, decimate=levels, vacua=False, **extra))


def _run_flow(flow) -> None:
    x, log_q = flow.sample(3, generator=_gen())
    _on_cpu(x, log_q)
    z = flow.base.sample((3,), generator=_gen(1))
    y, logdet = flow(z)
    back, logdet_inv = flow.inverse(y)
    _on_cpu(y, logdet, back, logdet_inv, flow.log_prob(x))
    torch.testing.assert_close(logdet_inv, -logdet)
    for hook, arg in (("forward_with_score", (z,)), ("inverse_with_score", (x, torch.zeros_like(x)))):
        try:
            out = getattr(flow, hook)(*arg)
        except NotImplementedError:  # e.g. self-normalizing layers: no score hooks
            continue
        _on_cpu(*out)


@pytest.mark.parametrize("family,estimator", [("spline", "fast_path"), ("z2affine", "path_inverse"),
                                              ("snf", "standard"), ("u1", "fast_path")])
def test_gradient_estimators_run_on_cpu_under_a_meta_default(family, estimator, meta_default):
    flow, action = _build(family), _theory(family)
    z = flow.base.sample((4,), generator=_gen())
    loss = reverse_kl(flow, action, z, estimator)
    loss.backward()
    _on_cpu(loss.detach(), loss.log_weight)
    if family != "snf":
        x = flow.sample(4, generator=_gen(1))[0].detach()
        _on_cpu(forward_kl(flow, action, x, "fast_path" if estimator == "fast_path" else "standard").detach())
    w = log_weights(flow, action, 5, generator=_gen(2), chunk=2)
    _on_cpu(w.x, w.log_q, w.action)


@pytest.mark.parametrize("objective", ["reverse_kl", "mixed"])
def test_trainer_steps_on_cpu_under_a_meta_default(objective, meta_default):
    flow = _build("spline")
    data = torch.randn(16, 4, 4, dtype=torch.float64, device=CPU, generator=_gen(3))
    trainer = Trainer(flow, PHI4, objective=objective, data=data if objective != "reverse_kl" else None,
                      batch_size=8, seed=0, scheduler="cosine", warmup_steps=1, validation=data[:8])
    rows = trainer.train(3, log_every=2, progress=False)
    assert trainer.step_count == 3 and len(rows) == 2 and rows[-1]["val_nll"] == rows[-1]["val_nll"]
    assert all(p.device == CPU and torch.isfinite(p).all() for p in flow.parameters())


def test_snf_trainer_step_on_cpu_under_a_meta_default(meta_default):
    flow = _build("snf")
    trainer = Trainer(flow, PHI4, estimator="standard", batch_size=8, seed=0)
    m = trainer.step()
    assert m["skipped"] == 0.0 and all(p.device == CPU for p in flow.parameters())


@pytest.mark.parametrize("action,integrator", [(PHI4, "leapfrog"), (U1, "omelyan")])
def test_hmc_trajectories_on_cpu_under_a_meta_default(action, integrator, meta_default):
    hmc = HMC(action, n_leapfrog=3, step_size=0.1, integrator=integrator, generator=_gen())
    x = torch.zeros(4, *action.field_shape, dtype=torch.float64, device=CPU)
    x = hmc.thermalize(x, 4)
    sweeps = list(hmc_chains(hmc, x, 3, save_every=2))
    last = sweeps[-1]
    _on_cpu(last.x, last.action, last.delta_h, last.n_accepted, last.sum_exp_minus_delta_h)
    assert last.accepted.device == CPU


def test_nmcmc_on_cpu_under_a_meta_default(meta_default):
    flow = _build("spline")
    for batch, states in nmcmc_chains(flow, PHI4, 4, 2, 3, generator=_gen()):
        _on_cpu(batch.x, batch.action, batch.log_q, batch.log_weight)
        assert all(st.x.device == CPU for st in states)
    for batch, state in nmcmc_batches(flow, PHI4, 5, 3, generator=_gen(1)):
        _on_cpu(batch.x, batch.log_weight)
