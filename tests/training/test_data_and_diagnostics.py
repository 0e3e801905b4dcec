"""Training helpers: HMC target samples (`training.data`) reproduce exact values and are symmetric, the
path gradient's variance vanishes at q = p ("sticking the landing", `training.diagnostics`), an exact flow has
ESS 1 and KL 0 (`flow_quality`), and β annealing is checked and trained on one time axis (`training.anneal`)."""
import copy

import numpy as np
import pytest
import torch

from actions import Phi4, U1Gauge
from actions.exact import u1_charge_allocation
from actions.u1 import charge_configuration
from latticeflow.flows import build_flow
from latticeflow.training import anneal_stages, gradient_variance, hmc_ensemble, hmc_reference


def test_hmc_reference_reproduces_the_exact_free_field_action_density():
    ref = hmc_reference(Phi4((4, 4), kappa=0.2, lam=0.0), 8, n_thermalize=60, n_configurations=256, every=2)
    check = ref["record"]["checks"]["S/V"]
    assert abs(check["value"] - check["exact"]) < 5 * check["error"] + 1e-3
    assert ref["x"].shape == (256, 4, 4) and ref["x"].dtype == torch.float64 and ref["chains"] == 8
    assert abs(float(ref["x"].mean())) < 0.1  # the symmetry moves make ⟨φ⟩ = 0 by construction


def test_hmc_reference_from_topological_sectors_keeps_them():
    u1 = U1Gauge((8, 8), beta=6.0)
    charges = u1_charge_allocation(6.0, 64, 4) + [2, -2, 1, -1]
    start = torch.stack([charge_configuration((8, 8), q) for q in charges])
    ref = hmc_reference(u1, len(charges), start=start, n_thermalize=20, n_configurations=64, every=2)
    q = u1.topological_charge(ref["x"]).reshape(len(charges), -1)
    assert sorted(q.abs()[:, 0].tolist()) == sorted(abs(c) for c in charges)  # frozen at β = 6, up to ±Q moves
    assert ref["record"]["n_configurations"] == 64 and 0 < ref["record"]["acceptance"] <= 1


def test_hmc_ensemble_shape_and_seed():
    a, b = (hmc_ensemble(Phi4((4, 4), kappa=0.2, lam=0.022), 4, 3) for _ in range(2))
    assert a.shape == (12, 4, 4) and torch.equal(a, b)


class _FrozenFlowTarget:
    """S(x) := −log q_{θ₀}(x) of a frozen flow, so that q_θ = p at θ = θ₀."""

    theory = "phi4"

    def __init__(self, flow):
        self.flow = flow

    def action(self, x):
        return -self.flow.log_prob(x)

    def force(self, x):
        with torch.enable_grad():
            x_ = x.detach().requires_grad_()
            (g,) = torch.autograd.grad(self.action(x_).sum(), x_)
        return g


def test_fast_path_gradient_variance_vanishes_at_the_optimum():
    action = Phi4((4, 4), kappa=0.3, lam=0.022)
    torch.manual_seed(0)
    flow = build_flow({"family": "z2nice", "conditioner": "fc", "hidden": [8], "n_layers": 2}, action).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    v = gradient_variance(flow, _FrozenFlowTarget(copy.deepcopy(flow)), n_batches=4, batch_size=8, seed=3)
    assert v["standard"]["trace"] > 1e-6 and v["standard"]["median"] > 0
    assert v["fast_path"]["trace"] < 1e-20 and v["fast_path"]["mean_sq"] < 1e-20


@pytest.mark.parametrize("anneal, beta, needle", [
    ([[2.0, 0.5], [6.0, 0.4]], 6.0, "sum to 1"),
    ([[2.0, 0.5], [4.0, 0.5]], 6.0, "last stage"),
    ([[2.0, -0.5], [6.0, 1.5]], 6.0, "> 0"),
    ([2.0, 6.0], 6.0, "pairs"),
    ([[2.0, 1.0]], None, "no coupling beta"),
])
def test_bad_anneal_schedule_is_one_line(anneal, beta, needle):
    with pytest.raises(ValueError, match=needle):
        anneal_stages(anneal, beta)
    assert anneal_stages(None, beta) == [(None, 1.0)]


def test_flow_quality_of_an_exact_free_field_flow():
    """The spline family is exact for the free field at initialisation: ESS = 1, KL = 0, acceptance 1."""
    from latticeflow.training import flow_quality

    action = Phi4((4, 4), kappa=0.2, lam=0.0)
    flow = build_flow({"family": "spline"}, action).double()
    z = flow.base.sample((512,), generator=torch.Generator().manual_seed(0))
    ref = hmc_reference(action, 4, n_thermalize=20, n_configurations=64, every=2)
    q = flow_quality(flow, action, z, x_target=ref["x"], target_chains=4, log_u=np.log(np.random.default_rng(0).random(512)),
                     log_z=action.log_z_exact())
    assert q["ess"] == pytest.approx(1.0, abs=1e-9) and q["ess_err"] < 1e-6
    assert abs(q["kl"]) < 1e-6 and q["kl_err"] < 1e-6 and q["nmcmc_acceptance"] == pytest.approx(1.0)
    assert q["forward_ess"] == pytest.approx(1.0, abs=1e-9)


def test_annealed_training_counts_every_stage_on_one_time_axis():
    from latticeflow.training import EvaluateEvery, train_annealed

    target = U1Gauge((4, 4), beta=3.0)
    torch.manual_seed(0)
    flow = build_flow({"family": "u1", "n_layers": 2, "hidden": [4]}, target)
    stages_seen = []
    ev = EvaluateEvery(lambda t, step: {"t": t, "step": step}, seconds=0.1)
    out = train_annealed(flow, [(U1Gauge((4, 4), beta=1.0), 0.5), (target, 0.5)], seconds=0.6, seed=0, evaluation=ev,
                         on_stage=stages_seen.append, objective="reverse_kl", batch_size=8)
    assert stages_seen == [0, 1] and out["error"] is None and out["steps"] > 0 and out["seconds"] >= 0.6
    times = [r["t"] for r in ev.history]
    assert times == sorted(times) and ev.offset == (out["seconds"], out["steps"])
