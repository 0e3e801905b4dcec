"""Pseudofermion HMC (and HMC on the exact-determinant action) for the Schwinger model: reversibility,
⟨e^{−ΔH}⟩ = 1, agreement of the two, and κ = 0 against the exact pure U(1) values (slow)."""
import math

import numpy as np
import pytest
import torch

from actions import Schwinger, exact
from latticeflow.analysis import gamma_method
from latticeflow.config import SamplerConfig
from latticeflow.samplers import HMC, make_chain_sampler
from latticeflow.samplers.pf_hmc import PseudofermionHMC

F64 = torch.float64


def _links(n, shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, *shape, dtype=F64, generator=gen) * 2 - 1) * math.pi


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
def test_pseudofermion_trajectory_is_reversible(integrator):
    sw = Schwinger((4, 6), beta=2.0, kappa=0.26)
    hmc = PseudofermionHMC(sw, n_leapfrog=6, step_size=0.1, integrator=integrator, cg_tol=1e-13,
                           step_size_jitter=0.0)
    theta = _links(3, (4, 6), seed=1)
    phi = sw.pseudofermion_heatbath(theta, torch.Generator().manual_seed(0))
    force = lambda y: sw.pseudofermion_force(y, phi, 1e-13)  # noqa: E731
    p = torch.randn_like(theta)
    x1, p1 = hmc._integrate(theta, p, force)
    x2, p2 = hmc._integrate(x1, -p1, force)
    diff = torch.remainder(x2 - theta + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-9 and (p2 + p).abs().max() < 1e-9


def test_the_hmc_entry_picks_the_determinant():
    sw = Schwinger((4, 4), beta=1.0, kappa=0.2)
    gen = torch.Generator().manual_seed(0)
    pf = make_chain_sampler("hmc", sw, SamplerConfig(options={"determinant": "pseudofermion", "cg_tol": 1e-8}), gen)
    assert isinstance(pf, PseudofermionHMC) and pf.cg_tol == 1e-8
    ex = make_chain_sampler("hmc", sw, SamplerConfig(options={"determinant": "exact", "cg_tol": 1e-8}), gen)
    assert type(ex) is HMC
    with pytest.raises(ValueError, match="determinant"):
        make_chain_sampler("hmc", sw, SamplerConfig(options={"determinant": "dense", "cg_tol": 1e-8}), gen)
    with pytest.raises(ValueError, match="cg_tol"):
        PseudofermionHMC(sw, cg_tol=0.0)


def _chains(sampler, sw, n_chains, n_therm, n_sweeps, seed):
    x = sw.project(_links(n_chains, sw.shape, seed))
    x = sampler.thermalize(x, n_therm)
    obs, edh = [], []
    for _ in range(n_sweeps):
        step = sampler.step(x)
        x = step.x
        obs.append({k: v.numpy() for k, v in sw.observables(x).items()})
        edh.append(torch.exp(-step.delta_h).numpy())
    out = {k: np.stack([o[k] for o in obs], axis=1) for k in obs[0]}
    out["exp_minus_delta_h"] = np.stack(edh, axis=1)
    return out


def _gm(series):
    return gamma_method([np.asarray(s) for s in series])


@pytest.mark.slow
def test_pseudofermion_and_exact_determinant_hmc_agree():
    """4×4, β = 2, κ = 0.26: ⟨cos P⟩ and Σ from the two HMCs within 4σ, and ⟨e^{−ΔH}⟩ = 1 within 4σ
    for both (seeds 1, 2; 64 chains × 15 trajectories after 10 of thermalization each)."""
    sw = Schwinger((4, 4), beta=2.0, kappa=0.26)
    common = dict(n_leapfrog=4, step_size=0.25, integrator="omelyan")
    pf = _chains(PseudofermionHMC(sw, generator=torch.Generator().manual_seed(1), **common), sw, 64, 10, 15, 1)
    ex = _chains(HMC(sw, generator=torch.Generator().manual_seed(2), **common), sw, 64, 10, 15, 2)
    for key in ("plaquette", "condensate"):
        a, b = _gm(pf[key]), _gm(ex[key])
        assert abs(a.mean - b.mean) < 4 * math.hypot(a.error, b.error), (key, a, b)
    for run in (pf, ex):
        edh = _gm(run["exp_minus_delta_h"])
        assert abs(edh.mean - 1) < 4 * edh.error, edh
        assert edh.error < 0.05


@pytest.mark.slow
def test_kappa_zero_reproduces_pure_u1():
    """κ = 0 through the Schwinger theory and pseudofermion HMC: ⟨cos P⟩ and χ_t of pure U(1) (6×6, β = 1.5)
    within 3σ of the exact torus values (seed 3; 64 chains × 200 trajectories)."""
    sw = Schwinger((6, 6), beta=1.5, kappa=0.0)
    hmc = PseudofermionHMC(sw, n_leapfrog=6, step_size=0.17, generator=torch.Generator().manual_seed(3))
    data = _chains(hmc, sw, 64, 60, 200, 3)
    plaq = _gm(data["plaquette"])
    assert abs(plaq.mean - exact.u1_mean_plaquette(1.5, 36)) < 3 * plaq.error
    chi_t = _gm(data["q2"] / 36)
    assert abs(chi_t.mean - exact.u1_topological_susceptibility(1.5, 36)) < 3 * chi_t.error


def test_exact_determinant_trajectory_is_reversible():
    sw = Schwinger((4, 4), beta=2.0, kappa=0.26)
    hmc = HMC(sw, n_leapfrog=6, step_size=0.1, integrator="omelyan", step_size_jitter=0.0)
    theta = _links(3, (4, 4), seed=2)
    p = torch.randn_like(theta)
    x1, p1 = hmc._integrate(theta, p)
    x2, p2 = hmc._integrate(x1, -p1)
    diff = torch.remainder(x2 - theta + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-10 and (p2 + p).abs().max() < 1e-10
