"""HMC: integrator reversibility and order, and the physics against exact results (slow)."""
import math

import numpy as np
import pytest
import torch

from actions import Phi4, U1Gauge, exact
from latticeflow.analysis import gamma_method
from latticeflow.samplers import HMC

F64 = torch.float64


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
@pytest.mark.parametrize("theory", ["phi4", "u1"])
def test_integrator_is_reversible(theory, integrator):
    action = Phi4((8, 8), kappa=0.3, lam=0.022) if theory == "phi4" else U1Gauge((8, 8), beta=2.0)
    hmc = HMC(action, n_leapfrog=7, step_size=0.05, integrator=integrator)
    x = torch.randn(4, *action.field_shape, dtype=F64)
    x = action.project(x) if hasattr(action, "project") else x
    p = torch.randn_like(x)
    integrate = hmc._leapfrog if integrator == "leapfrog" else hmc._omelyan
    x1, p1 = integrate(x, p, hmc.step_size)
    x2, p2 = integrate(x1, -p1, hmc.step_size)
    diff = x2 - x
    if theory == "u1":
        diff = torch.remainder(diff + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-10 and (p2 + p).abs().max() < 1e-10


@pytest.mark.parametrize("integrator,order", [("leapfrog", 2), ("omelyan", 2)])
def test_energy_violation_scales_with_step_size(integrator, order):
    action = U1Gauge((8, 8), beta=2.0)
    x = action.project(torch.randn(16, 2, 8, 8, dtype=F64))
    p = torch.randn_like(x)

    def dh(eps, n):
        hmc = HMC(action, n_leapfrog=n, step_size=eps, integrator=integrator)
        integrate = hmc._leapfrog if integrator == "leapfrog" else hmc._omelyan
        x1, p1 = integrate(x, p, eps)
        h = lambda x_, p_: 0.5 * (p_**2).flatten(1).sum(-1) + action.action(x_)
        return (h(x1, p1) - h(x, p)).abs().mean()

    ratio = float(dh(0.04, 10) / dh(0.02, 20))  # same trajectory length, half the step
    assert 2 ** order * 0.7 < ratio < 2 ** order * 1.3


def _run(action, n_chains, n_therm, n_sweeps, seed, n_leapfrog=10):
    gen = torch.Generator().manual_seed(seed)
    hmc = HMC(action, n_leapfrog=n_leapfrog, step_size=0.1, generator=gen)
    x = torch.randn(n_chains, *action.field_shape, dtype=F64, generator=gen)
    if hasattr(action, "project"):
        x = action.project(x * math.pi)
    x = hmc.thermalize(x, n_therm)
    obs, edh = [], []
    for _ in range(n_sweeps):
        step = hmc.step(x)
        x = step.x
        obs.append({k: v.numpy() for k, v in action.observables(x).items()})
        edh.append(torch.exp(-step.delta_h).numpy())
    stacked = {k: np.stack([o[k] for o in obs], axis=1) for k in obs[0]}  # (chains, sweeps, ...)
    stacked["exp_minus_delta_h"] = np.stack(edh, axis=1)
    return stacked


def _replicas(series):  # (chains, sweeps) -> list of chains
    return [np.asarray(s) for s in series]


@pytest.mark.slow
def test_hmc_reproduces_free_field_chi2_and_two_point():
    phi4 = Phi4((8, 8), kappa=0.2, lam=0.0)
    data = _run(phi4, n_chains=32, n_therm=200, n_sweeps=2000, seed=11)
    chi2 = gamma_method(_replicas(64 * data["m2"]))
    assert abs(chi2.mean - exact.free_field_chi2((8, 8), 0.2)) < 3 * chi2.error
    g_exact = exact.free_field_propagator((8, 8), 0.2)
    for x in [(0, 0), (1, 0), (2, 1), (4, 0), (4, 4)]:
        g = gamma_method(_replicas(data["two_point"][:, :, x[0], x[1]]))
        assert abs(g.mean - g_exact[x]) < 3 * g.error, (x, g, g_exact[x])
    edh = gamma_method(_replicas(data["exp_minus_delta_h"]))
    assert abs(edh.mean - 1) < 3 * edh.error
    s = gamma_method(_replicas(data["action_density"]))
    assert abs(s.mean - 0.5) < 3 * s.error


@pytest.mark.slow
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_hmc_reproduces_exact_u1_plaquette_and_topological_susceptibility(beta):
    u1 = U1Gauge((8, 8), beta=beta)
    data = _run(u1, n_chains=32, n_therm=200, n_sweeps=2000, seed=int(10 * beta))
    plaq = gamma_method(_replicas(data["plaquette"]))
    assert abs(plaq.mean - exact.u1_mean_plaquette(beta, 64)) < 3 * plaq.error
    chi_t = gamma_method(_replicas(data["q2"] / 64))
    assert abs(chi_t.mean - exact.u1_topological_susceptibility(beta, 64)) < 3 * chi_t.error
    w2 = gamma_method(_replicas(data["wilson_loop_2x2"]))
    assert abs(w2.mean - exact.u1_wilson_loop(beta, 64, 4)) < 3 * w2.error
    edh = gamma_method(_replicas(data["exp_minus_delta_h"]))
    assert abs(edh.mean - 1) < 3 * edh.error
