"""Winding HMC: the instanton field, the Metropolis acceptance of its moves on the full action (the determinant
included for the Schwinger model), and pure U(1) at β = 6 where HMC freezes (slow)."""
import math

import numpy as np
import pytest
import torch

from actions import Schwinger, U1Gauge, exact
from actions.u1 import winding_field, wrap
from latticeflow.analysis import gamma_method
from latticeflow.config import SamplerConfig
from latticeflow.samplers import HMC, make_chain_sampler
from latticeflow.samplers.pf_hmc import PseudofermionHMC
from latticeflow.samplers.winding_hmc import WindingHMC

F64 = torch.float64


@pytest.mark.parametrize("shape,size", [((6, 6), 4), ((8, 6), 5), ((8, 8), None), ((5, 7), None)])
def test_winding_field_turns_the_plaquettes_by_one_unit(shape, size):
    w = winding_field(shape, size)
    p = U1Gauge.plaquettes(w[None])[0]
    n = math.prod(shape) if size is None else size**2
    f = torch.zeros(shape, dtype=F64)
    if size is None:
        f[:] = 2 * math.pi / n
    else:
        f[:size, :size] = 2 * math.pi / n
    f[0, 0] -= 2 * math.pi
    assert torch.allclose(p, f, atol=1e-10)
    if size is not None:  # only links strictly inside the square move
        inside = torch.zeros(2, *shape, dtype=torch.bool)
        inside[0, :size, 1:size] = True
        inside[1, 1:size, :size] = True
        assert w[~inside].abs().max() == 0
    u1 = U1Gauge(shape, beta=1.0)
    smooth = 0.05 * torch.randn(3, 2, *shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    for sign in (1, -1):
        moved = u1.project(smooth + sign * w)
        assert torch.equal(u1.topological_charge(moved) - u1.topological_charge(smooth), torch.full((3,), sign * 1.0))


def test_bad_winding_size_names_the_value():
    with pytest.raises(ValueError, match="winding_size must be in"):
        winding_field((6, 8), 6)
    with pytest.raises(ValueError, match="winding_size must be in"):
        winding_field((4, 4), 9)
    with pytest.raises(ValueError, match="winding_moves"):
        WindingHMC(U1Gauge((4, 4), 1.0), HMC(U1Gauge((4, 4), 1.0)), winding_moves=-1)


@pytest.mark.parametrize("theory", [U1Gauge((6, 6), beta=3.0), Schwinger((4, 4), beta=3.0, kappa=0.26)])
def test_winding_move_accepts_with_the_metropolis_ratio_of_the_full_action(theory):
    gen = torch.Generator().manual_seed(5)
    sampler = WindingHMC(theory, HMC(theory), winding_size=None, generator=gen)
    x = theory.project(0.4 * torch.randn(256, *theory.field_shape, dtype=F64, generator=torch.Generator().manual_seed(1)))
    state = gen.get_state()
    proposal = sampler._proposal(x)
    u = torch.rand(256, generator=gen, dtype=F64)
    gen.set_state(state)
    new, s_new = sampler.wind(x)
    delta = theory.action(proposal) - theory.action(x)  # the full action: gauge part and −log det(D†D)
    take = torch.log(u) < -delta
    assert torch.equal(new, torch.where(take.view(-1, 1, 1, 1), proposal, x))
    assert torch.allclose(s_new, torch.where(take, theory.action(proposal), theory.action(x)))
    assert 0 < take.sum() < 256  # both outcomes occur
    assert sampler.winding_acceptance == pytest.approx(float(take.double().mean()))
    if isinstance(theory, Schwinger):  # the determinant changes the acceptance
        gauge_only = torch.log(u) < -(theory.gauge_action(proposal) - theory.gauge_action(x))
        assert not torch.equal(gauge_only, take)


def test_registry_builds_winding_hmc_over_the_right_hmc():
    gen = torch.Generator().manual_seed(0)
    opts = {"determinant": "pseudofermion", "cg_tol": 1e-9, "winding_size": 3, "winding_moves": 2}
    s = make_chain_sampler("winding_hmc", Schwinger((4, 4), beta=1.0, kappa=0.2), SamplerConfig(options=opts), gen)
    assert isinstance(s.hmc, PseudofermionHMC) and s.winding_moves == 2 and s.winding_size == 3
    s = make_chain_sampler("winding_hmc", U1Gauge((4, 4), beta=1.0), SamplerConfig(options={**opts, "winding_size": 0}),
                           gen)
    assert type(s.hmc) is HMC and s.winding_size is None
    s.step_size = 0.3
    assert s.hmc.step_size == 0.3 and s.state_attrs() == {"step_size": 0.3}


@pytest.mark.slow
def test_winding_hmc_samples_all_sectors_of_u1_at_beta_6():
    """8×8, β = 6, 16 chains × 300 trajectories (seed 1): χ_t and ⟨cos P⟩ within 3σ of the exact torus values,
    τ_int(Q²) < 5 (HMC alone: > 40 at this length)."""
    u1 = U1Gauge((8, 8), beta=6.0)
    gen = torch.Generator().manual_seed(1)
    sampler = WindingHMC(u1, HMC(u1, n_leapfrog=10, step_size=0.1, generator=gen), generator=gen)
    x = sampler.thermalize(torch.zeros(16, 2, 8, 8, dtype=F64), 60)
    q2, plaq = [], []
    for _ in range(300):
        x = sampler.step(x).x
        q2.append(u1.topological_charge(x).numpy() ** 2 / 64)
        plaq.append(u1.mean_plaquette(x).numpy())
    chi_t = gamma_method(list(np.array(q2).T))
    assert abs(chi_t.mean - exact.u1_topological_susceptibility(6.0, 64)) < 3 * chi_t.error
    assert chi_t.tau_int < 5
    p = gamma_method(list(np.array(plaq).T))
    assert abs(p.mean - exact.u1_mean_plaquette(6.0, 64)) < 3 * p.error
    assert 0.1 < sampler.winding_acceptance < 0.6


def test_winding_move_beyond_the_exact_volume_accepts_at_a_pseudofermion_field():
    """Where the determinant is too dear to store (V > max_exact_volume), the move is accepted on
    S_g + φ†(D†D)⁻¹φ at φ drawn from the heat bath at the current fields: exact for the joint (θ, φ) chain."""
    theory = Schwinger((4, 4), beta=2.0, kappa=0.24)
    theory.max_exact_volume = 8  # pretend 4×4 is large
    gen = torch.Generator().manual_seed(3)
    sampler = WindingHMC(theory, PseudofermionHMC(theory, cg_tol=1e-12), generator=gen)
    assert sampler._pseudofermion
    x = theory.project(0.4 * torch.randn(64, 2, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(2)))
    state = gen.get_state()
    proposal = sampler._proposal(x)
    phi = theory.pseudofermion_heatbath(x, gen)
    u = torch.rand(64, generator=gen, dtype=F64)
    gen.set_state(state)
    new, stored = sampler.wind(x)
    delta = theory.pseudofermion_action(proposal, phi, 1e-12) - theory.pseudofermion_action(x, phi, 1e-12)
    take = torch.log(u) < -delta
    assert torch.equal(new, torch.where(take.view(-1, 1, 1, 1), proposal, x))
    assert torch.allclose(stored, theory.gauge_action(new))  # what such an ensemble stores
