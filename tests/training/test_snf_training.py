"""Training self-normalizing flows: the learned inverse converges, the likelihood matches the exact-gradient
twin, and NMCMC with an SNF flow is exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from actions import Phi4, exact
from latticeflow.analysis import gamma_method
from latticeflow.bench.snf import hmc_ensemble
from latticeflow.flows import SelfNormalizing, build_flow
from latticeflow.samplers import nmcmc_batches
from latticeflow.training import Trainer

DT = torch.float64


def _free_field_samples(shape, kappa, n, seed=0) -> torch.Tensor:
    """Exact i.i.d. samples of the free field: φ = L ξ with L Lᵀ the propagator (as a D × D covariance)."""
    cov = torch.as_tensor(_covariance(shape, kappa), dtype=DT)
    chol = torch.linalg.cholesky(cov)
    xi = torch.randn(n, chol.shape[0], dtype=DT, generator=torch.Generator().manual_seed(seed))
    return (xi @ chol.T).view(n, *shape)


def _covariance(shape, kappa) -> np.ndarray:
    """C[x, y] = G(y − x) from the exact propagator, a D × D matrix."""
    g = exact.free_field_propagator(shape, kappa)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
    diff = (idx[None, :, :] - idx[:, None, :]) % np.array(shape)
    return g[tuple(diff[..., k] for k in range(len(shape)))]


def _snf_layers(flow):
    return [m for m in flow.modules() if isinstance(m, SelfNormalizing)]


def test_exact_free_field_samples():
    """(Guards the helper above: the sample χ₂ = V⟨m²⟩ matches 1/(2(1 − 4κ)) within 3σ.)"""
    x = _free_field_samples((4, 4), 0.2, 20000)
    chi2 = 16 * x.mean(dim=(1, 2)) ** 2
    assert abs(float(chi2.mean()) - exact.free_field_chi2((4, 4), 0.2)) < 3 * float(chi2.std()) / 20000 ** 0.5


@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_training_drives_the_reconstruction_error_to_zero(layer):
    """Start with R far from W⁻¹ (relative error ~0.5) and train by maximum likelihood (λ = 10, lr 3e-3 then
    3e-4): dense R → W⁻¹ to < 1e-5; a k × k conv R can only approximate the (full-support) inverse
    circulant, so its floor is ~1e-4."""
    phi4 = Phi4((4, 4), kappa=0.2, lam=0.0)
    data = _free_field_samples((4, 4), 0.2, 4096)
    torch.manual_seed(0)
    flow = build_flow({"family": "snf", "layer": layer, "n_layers": 2}, phi4).to(DT)
    with torch.no_grad():
        for m in _snf_layers(flow):
            m.weight.add_(0.2 * torch.randn_like(m.weight))
    before = [m.reconstruction_error(data[:512]) for m in _snf_layers(flow)]
    trainer = Trainer(flow, phi4, objective="forward_kl", estimator="standard", batch_size=256, lr=3e-3, data=data,
                      seed=0)
    first = trainer.train(300, log_every=100, progress=False)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 3e-4
    last = trainer.train(600, log_every=100, progress=False)
    after = [m.reconstruction_error(data[:512]) for m in _snf_layers(flow)]
    assert min(before) > 0.1
    assert max(after) < (1e-5 if layer == "dense" else 1e-3), (before, after)
    assert last[-1]["reconstruction"] < 0.01 * first[0]["reconstruction"]


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_snf_test_nll_within_one_percent_of_the_exact_twin(layer):
    """Maximum likelihood on an HMC ensemble of φ⁴ 8×8 (κ = 0.2, λ = 0.022): same architecture, data, seed
    and step budget; the held-out NLL of the self-normalized flow is within 1 % of the exact-gradient twin's."""
    phi4 = Phi4((8, 8), kappa=0.2, lam=0.022)
    data = hmc_ensemble(phi4)
    train, test = data[: 3 * len(data) // 4], data[3 * len(data) // 4:]
    nll = {}
    for gradient in ("self_normalized", "exact"):
        torch.manual_seed(0)
        flow = build_flow({"family": "snf", "layer": layer, "n_layers": 2, "gradient": gradient,
                           "direction": "inverse"}, phi4).to(DT)
        with torch.no_grad():
            nll0 = -float(flow.log_prob(test).mean())
        Trainer(flow, phi4, objective="forward_kl", estimator="standard", batch_size=256, lr=3e-3, data=train,
                seed=0).train(600, progress=False)
        with torch.no_grad():
            nll[gradient] = -float(flow.log_prob(test).mean())
        assert nll[gradient] < nll0 - 5, (gradient, nll0, nll[gradient])  # it did learn
    assert abs(nll["self_normalized"] - nll["exact"]) < 0.01 * abs(nll["exact"]), nll


@pytest.mark.slow
def test_nmcmc_with_an_snf_flow_reproduces_the_free_field():
    """Reverse-KL-trained dense SNF flow (W in the sampling direction) as NMCMC proposal, 8×8, κ = 0.2:
    χ₂ and G(1, 0) within 3σ of the exact values."""
    phi4 = Phi4((8, 8), kappa=0.2, lam=0.0)
    torch.manual_seed(0)
    flow = build_flow({"family": "snf", "layer": "dense", "n_layers": 1, "direction": "forward"}, phi4).to(DT)
    Trainer(flow, phi4, objective="reverse_kl", estimator="standard", batch_size=256, lr=3e-3,
            seed=1).train(150, progress=False)
    gen = torch.Generator().manual_seed(7)
    obs, acc = [], []
    for b, _ in nmcmc_batches(flow, phi4, 30000, 4096, generator=gen):
        obs.append({k: v.numpy() for k, v in phi4.observables(b.x).items()})
        acc.append(b.accepted)
    obs = {k: np.concatenate([o[k] for o in obs]) for k in obs[0]}
    acc = np.concatenate(acc)
    assert 0.3 < acc.mean() < 1.0  # trained: far better than N(0, 1) proposals
    chi2 = gamma_method(64 * obs["m2"])
    assert abs(chi2.mean - exact.free_field_chi2((8, 8), 0.2)) < 3 * chi2.error
    g10 = gamma_method(obs["two_point"][:, 1, 0])
    assert abs(g10.mean - exact.free_field_propagator((8, 8), 0.2)[1, 0]) < 3 * g10.error
