"""The Gaussian variational start for φ⁴ (`actions.phi4_variational`, `Phi4.gaussian_vacuum`) and the
`VacuumMixture` base.

The base is checked against a direct two-Gaussian logsumexp and autograd in float64, and by its sample
moments; the gap equations and the stationarity of the variational free energy F are checked directly; and
the Monte Carlo estimate of ⟨log q + S⟩ of the flow `build_flow` starts from reproduces F within 4σ (seeded).
The composed flows (VacuumMixture + Fourier + couplings) run through the generic family tests: the default
spline and z2affine configs of tests/flows/helpers.py are in the broken phase (κ = 0.3, λ = 0.02).
"""
import math

import numpy as np
import pytest
import torch

from actions import Phi4
from actions.phi4_variational import broken_vacuum, choose_vacuum, symmetric_vacuum
from latticeflow.flows import FlowError, StandardNormal, VacuumMixture, build_flow

F64 = torch.float64
BROKEN = dict(kappa=0.3, lam=0.022)  # the paper's couplings, deep in the broken phase


def test_mixture_log_prob_and_score_against_logsumexp_and_autograd():
    base = VacuumMixture((4, 3), 0.7).double()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, 3, generator=g, dtype=F64) * 1.3
    z[:2] += 0.7
    z[2] -= 0.7
    n = 12
    comp = torch.stack([-0.5 * ((z - s * 0.7) ** 2).flatten(1).sum(1) for s in (1, -1)])
    ref = torch.logsumexp(comp, 0) - math.log(2) - 0.5 * n * math.log(2 * math.pi)
    assert float((base.log_prob(z) - ref).abs().max()) < 1e-12
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(base.log_prob(zz).sum(), zz)
    assert float((base.score(z) - grad).abs().max()) < 1e-12
    # large |m Σz|: the log cosh stays finite and exact
    far = torch.full((1, 4, 3), 5.0, dtype=F64)
    assert torch.isfinite(base.log_prob(far)).all()
    assert abs(float(base.log_prob(far)) - float(ref.new_tensor(-0.5 * 12 * (5 - 0.7) ** 2 - math.log(2)
                                                                 - 0.5 * n * math.log(2 * math.pi)))) < 1e-9


def test_mixture_float32_large_lattice_zero_magnetization_and_empty_batch():
    """float32 on 64 × 64 near a vacuum agrees with float64 to float32 rounding of the result (the three
    terms −½Σz², −½Dm², |mΣz| are each ~10⁴ and cancel); the autograd gradient at Σz = 0 exactly is the
    score −z + m tanh(0) = −z; an empty batch gives an empty result."""
    base64 = VacuumMixture((64, 64), 1.8).double()
    z = torch.randn(4, 64, 64, generator=torch.Generator().manual_seed(5), dtype=F64) * 0.8
    z[:2] += 1.8
    z[2:] -= 1.8
    ref = base64.log_prob(z)
    got = VacuumMixture((64, 64), 1.8).log_prob(z.float()).double()
    assert float(((got - ref) / ref.abs()).abs().max()) < 1e-6
    zero = torch.randint(-8, 9, (2, 12), generator=torch.Generator().manual_seed(6)).to(F64) / 8
    zero[:, -1] -= zero.sum(1)  # dyadic: Σz = 0 exactly
    zero = zero.reshape(2, 4, 3).requires_grad_(True)
    small = VacuumMixture((4, 3), 0.7).double()
    (grad,) = torch.autograd.grad(small.log_prob(zero).sum(), zero)
    assert float((grad - small.score(zero.detach())).abs().max()) < 1e-12
    assert float((grad + zero.detach()).abs().max()) < 1e-12
    assert small.log_prob(torch.zeros(0, 4, 3, dtype=F64)).shape == (0,)


def test_mixture_is_z2_symmetric_and_zero_shift_is_the_standard_normal():
    base = VacuumMixture((4, 4), 1.2).double()
    z = torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert float((base.log_prob(z) - base.log_prob(-z)).abs().max()) < 1e-12
    assert float((base.score(-z) + base.score(z)).abs().max()) < 1e-12
    zero, normal = VacuumMixture((4, 4), 0.0).double(), StandardNormal((4, 4)).double()
    assert float((zero.log_prob(z) - normal.log_prob(z)).abs().max()) < 1e-12
    assert float((zero.score(z) - normal.score(z)).abs().max()) < 1e-12


def test_mixture_samples_have_the_right_moments():
    n, m = 20000, 1.5
    base = VacuumMixture((4, 4), m).double()
    z = base.sample((n,), generator=torch.Generator().manual_seed(2))
    mag = z.flatten(1).mean(1)
    sign = torch.sign(mag)
    # one sign for the whole field, each with probability 1/2 (binomial σ = 0.5/√n)
    assert abs(float((sign > 0).double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(n)
    fluct = z - sign.reshape(-1, 1, 1) * m
    assert abs(float(fluct.mean())) < 4 / math.sqrt(16 * n)
    assert abs(float(fluct.var()) - 1) < 4 * math.sqrt(2 / (16 * n))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_mixture_rejects_a_bad_shift(bad):
    with pytest.raises(FlowError, match="shift"):
        VacuumMixture((4, 4), bad)


def test_broken_solution_solves_the_gap_equations():
    shape, kappa, lam = (16, 8), BROKEN["kappa"], BROKEN["lam"]
    theory = Phi4(shape, kappa, lam)
    vac = broken_vacuum(theory)
    assert vac is not None and vac.broken
    sigma2 = float(np.mean(1 / vac.kernel))
    assert abs(vac.phi0 ** 2 - ((4 * kappa + 2 * lam - 1) / (2 * lam) - 3 * sigma2)) < 1e-9
    expect = theory.quadratic_kernel() + 12 * lam * (vac.phi0 ** 2 + sigma2)
    assert np.abs(vac.kernel - expect).max() < 1e-9
    assert abs(vac.kernel.flat[0] - 8 * lam * vac.phi0 ** 2) < 1e-9  # K(0) = 8λφ₀²
    assert 1.9 < vac.phi0 < 2.4  # between ⟨|M|⟩ ≈ 1.9 (HMC) and the mean-field 2.35


def test_free_energy_is_stationary_at_the_solutions():
    """F is minimal over (φ₀, K) at the gap-equation solution: small perturbations only raise it."""
    shape = (8, 8)
    for theory in (Phi4(shape, **BROKEN), Phi4(shape, kappa=0.25, lam=0.5)):
        vac = broken_vacuum(theory) if theory.lam == BROKEN["lam"] else symmetric_vacuum(theory)
        f0 = theory.gaussian_free_energy(vac.phi0, vac.kernel) - (math.log(2) if vac.broken else 0)
        assert abs(f0 - vac.free_energy) < 1e-9
        rng = np.random.default_rng(0)
        for _ in range(5):
            dk = 1 + 0.02 * rng.standard_normal(vac.kernel.shape)
            dk = 0.5 * (dk + np.roll(np.flip(dk), 1, axis=(0, 1)))  # keep K even
            dphi = 0.02 * rng.standard_normal() if vac.broken else 0.0
            f = theory.gaussian_free_energy(vac.phi0 + dphi, vac.kernel * dk)
            assert f - (math.log(2) if vac.broken else 0) > vac.free_energy - 1e-9


def test_choose_vacuum_picks_the_phase():
    assert Phi4((8, 8), kappa=0.2, lam=0.0).gaussian_vacuum().broken is False       # free field
    assert Phi4((8, 8), kappa=0.25, lam=0.5).gaussian_vacuum().broken is False      # symmetric (no broken solution)
    assert Phi4((16, 8), **BROKEN).gaussian_vacuum().broken is True
    assert Phi4((16, 8), **BROKEN).gaussian_vacuum(False).broken is False
    assert choose_vacuum(Phi4((16, 8), **BROKEN), "auto").phi0 == Phi4((16, 8), **BROKEN).gaussian_vacuum().phi0
    with pytest.raises(ValueError, match="no broken-phase"):
        Phi4((8, 8), kappa=0.25, lam=0.5).gaussian_vacuum(True)
    with pytest.raises(ValueError, match="got 'yes'"):
        Phi4((8, 8), kappa=0.25, lam=0.5).gaussian_vacuum("yes")


@pytest.mark.parametrize("shape,kappa,lam", [((4, 4, 4), 0.2, 0.02), ((6, 4, 4), 0.15, 0.05), ((16,), 0.6, 0.02)])
def test_gap_equations_in_d_dimensions(shape, kappa, lam):
    """In d = 3 and d = 1 the broken solution (where there is one) solves φ₀² = (2κd + 2λ − 1)/(2λ) − 3σ² and
    K = A + 12λ(φ₀² + σ²), and `auto` picks the lower free energy."""
    theory = Phi4(shape, kappa=kappa, lam=lam)
    symmetric = symmetric_vacuum(theory)
    assert abs(np.mean(1 / symmetric.kernel) * 12 * lam - (symmetric.kernel - theory.quadratic_kernel()).flat[0]) < 1e-9
    vac = broken_vacuum(theory)
    if vac is not None:
        sigma2 = float(np.mean(1 / vac.kernel))
        assert abs(vac.phi0 ** 2 - ((2 * kappa * len(shape) + 2 * lam - 1) / (2 * lam) - 3 * sigma2)) < 1e-9
        assert np.abs(vac.kernel - theory.quadratic_kernel() - 12 * lam * (vac.phi0 ** 2 + sigma2)).max() < 1e-9
    best = min([symmetric] + ([vac] if vac is not None else []), key=lambda v: v.free_energy)
    assert theory.gaussian_vacuum().free_energy == best.free_energy


@pytest.mark.parametrize("shape,couplings", [((8, 8), BROKEN), ((4, 2, 8), dict(kappa=0.2, lam=0.02))],
                         ids=["8x8", "4x2x8"])
@pytest.mark.parametrize("family", ["spline", "z2affine"])
def test_default_flow_starts_at_the_variational_free_energy(family, shape, couplings):
    """The couplings start at the identity, so q is the Gaussian mixture: ⟨log q + S⟩_q = F (4σ, seed 0),
    in d = 2 and d = 3."""
    action = Phi4(shape, **couplings)
    flow = build_flow({"family": family, "n_layers": 2, "hidden": [4]}, action).double()  # couplings: identity
    assert isinstance(flow.base, VacuumMixture)
    z = flow.base.sample((4000,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, logdet = flow(z)
        a = flow.base.log_prob(z) - logdet + action.action(x)
    err = float(a.std()) / math.sqrt(len(a))
    expect = broken_vacuum(action).free_energy
    assert abs(float(a.mean()) - expect) < 4 * err
    # the vacua sit at ±φ₀
    mag = x.flatten(1).mean(1).abs()
    assert abs(float(mag.mean()) - broken_vacuum(action).phi0) < 0.02
    # and the broken start is far better than the symmetric one (by ≈ 14 nats at 8×8, 17 at 4×2×8)
    assert symmetric_vacuum(action).free_energy - expect > 10


def test_symmetric_phase_keeps_the_standard_normal_base():
    flow = build_flow({"family": "spline"}, Phi4((8, 8), kappa=0.25, lam=0.5))
    assert isinstance(flow.base, StandardNormal)
    flow = build_flow({"family": "spline", "vacua": False}, Phi4((8, 8), **BROKEN))
    assert isinstance(flow.base, StandardNormal)
    flow = build_flow({"family": "spline", "zero_mode": True}, Phi4((8, 8), **BROKEN))
    assert isinstance(flow.base, StandardNormal)  # the zero-mode layer takes over
    flow = build_flow({"family": "z2nice"}, Phi4((8, 8), **BROKEN))
    assert isinstance(flow.base, StandardNormal)  # vacua: false for the old families
    flow = build_flow({"family": "realnvp", "vacua": True, "conditioner": "fc"}, Phi4((8, 8), **BROKEN))
    assert isinstance(flow.base, VacuumMixture)
    assert abs(float(flow.base.shift) - broken_vacuum(Phi4((8, 8), **BROKEN)).phi0) < 1e-6


def test_transfer_keeps_the_vacuum_shift_and_refuses_the_other_base():
    from latticeflow.transfer import ArchitectureMismatch, transfer_state

    small = build_flow({"family": "spline", "n_layers": 2}, Phi4((8, 8), **BROKEN))
    large = build_flow({"family": "spline", "n_layers": 2}, Phi4((16, 8), kappa=0.28, lam=0.022))
    own = float(large.base.shift)
    assert abs(own - float(small.base.shift)) > 0.1  # another coupling: another vacuum
    transfer_state(large, small.state_dict())
    assert float(large.base.shift) == own  # the new action's shift, consistent with its Fourier start
    symmetric = build_flow({"family": "spline", "n_layers": 2, "vacua": False}, Phi4((16, 8), **BROKEN))
    with pytest.raises(ArchitectureMismatch, match="base.shift"):
        transfer_state(symmetric, small.state_dict())
    with pytest.raises(ArchitectureMismatch, match=r"base.shift.*not in the checkpoint.*flow.vacua: false"):
        transfer_state(large, symmetric.state_dict())  # an old checkpoint: the line says what to set


def test_sampling_an_old_checkpoint_says_to_set_vacua_false(tmp_path):
    """A broken-phase spline checkpoint from before `flow.vacua` (standard-normal base, no base.shift)
    loaded under the default config: one line naming base.shift and what to set; with vacua: false it loads."""
    from latticeflow.config import ConfigError, config_from_dict
    from latticeflow.io import save_checkpoint
    from latticeflow.pipeline.sample_flow import load_flow

    flow_cfg = {"family": "spline", "n_layers": 2}
    raw = {"name": "t", "seed": 0, "action": {"theory": "phi4", "shape": [8, 8], **BROKEN}, "flow": flow_cfg,
           "output": {"dir": str(tmp_path)}}
    old = build_flow(dict(flow_cfg, vacua=False), Phi4((8, 8), **BROKEN))
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"flow": old.state_dict(), "theory": "phi4"})
    with pytest.raises(ConfigError, match=r"base\.shift.*set flow\.vacua.*false") as err:
        load_flow(config_from_dict(raw), path)
    assert "\n" not in str(err.value)
    _, loaded = load_flow(config_from_dict(dict(raw, flow=dict(flow_cfg, vacua=False))), path)
    assert isinstance(loaded.base, StandardNormal)
