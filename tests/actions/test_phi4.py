"""φ⁴ action: force against autograd, symmetries, the two parametrisations."""
import math

import pytest
import torch

from actions import Phi4
from actions.phi4 import standard_action

F64 = torch.float64


@pytest.mark.parametrize("shape", [(8, 8), (16, 8), (6,), (4, 4, 4)])
@pytest.mark.parametrize("kappa,lam", [(0.12, 0.0), (0.3, 0.022), (0.15, 1.3)])
def test_force_equals_autograd(shape, kappa, lam):
    phi4 = Phi4(shape, kappa=kappa, lam=lam)
    phi = (2 * torch.randn(5, *shape, dtype=F64)).requires_grad_()
    (grad,) = torch.autograd.grad(phi4.action(phi).sum(), phi)
    assert torch.allclose(phi4.force(phi), grad, rtol=0, atol=1e-10 * (1 + grad.abs().max()))


def test_action_matches_explicit_site_sum():
    phi4 = Phi4((3, 4), kappa=0.27, lam=0.1)
    phi = torch.randn(1, 3, 4, dtype=F64)
    s = 0.0
    for x0 in range(3):
        for x1 in range(4):
            f = phi[0, x0, x1]
            hop = f * (phi[0, (x0 + 1) % 3, x1] + phi[0, x0, (x1 + 1) % 4])
            s += -2 * 0.27 * hop + (1 - 0.2) * f**2 + 0.1 * f**4
    assert abs(float(phi4.action(phi)[0]) - float(s)) < 1e-12


def test_z2_and_translation_invariance():
    phi4 = Phi4((16, 8), kappa=0.3, lam=0.022)
    phi = torch.randn(7, 16, 8, dtype=F64)
    s = phi4.action(phi)
    assert torch.allclose(phi4.action(phi4.symmetry(phi)), s, rtol=1e-14, atol=0)
    shifted = torch.roll(phi, shifts=(3, 5), dims=(1, 2))
    assert torch.allclose(phi4.action(shifted), s, rtol=1e-13, atol=0)
    obs, obs_shift = phi4.observables(phi), phi4.observables(shifted)
    for name in ("m2", "abs_m", "two_point"):
        assert torch.allclose(obs[name], obs_shift[name], atol=1e-12)


@pytest.mark.parametrize("kappa,lam", [(0.3, 0.022), (0.2, 0.0), (0.25, 0.5)])
def test_standard_and_hopping_forms_are_one_theory(kappa, lam):
    hop = Phi4((8, 8), kappa=kappa, lam=lam)
    std = Phi4.from_standard((8, 8), m2=hop.m2, lam4=hop.lam4)
    assert math.isclose(std.kappa, kappa, rel_tol=1e-12) and math.isclose(std.lam, lam, rel_tol=1e-12, abs_tol=1e-15)
    phi = torch.randn(4, 8, 8, dtype=F64)
    # S_standard(√κ φ) = S_hopping(φ), written independently
    s_std = standard_action(hop.to_standard_field(phi), hop.m2, hop.lam4)
    assert torch.allclose(s_std, hop.action(phi), rtol=1e-12, atol=1e-10)
    assert torch.allclose(hop.from_standard_field(hop.to_standard_field(phi)), phi, atol=1e-14)


def test_paper_couplings_in_standard_form():
    # κ = 0.3, λ = 0.022: m² = (1 − 0.044)/0.3 − 4, λ₄ = 0.022/0.09
    p = Phi4((16, 8), kappa=0.3, lam=0.022)
    assert math.isclose(p.m2, 0.956 / 0.3 - 4, rel_tol=1e-12)
    assert math.isclose(p.lam4, 0.022 / 0.09, rel_tol=1e-12)


def test_two_point_by_fft_equals_direct_sum():
    phi4 = Phi4((4, 6), kappa=0.2, lam=0.0)
    phi = torch.randn(2, 4, 6, dtype=F64)
    g = phi4.two_point(phi)
    direct = torch.zeros_like(g)
    for a in range(4):
        for b in range(6):
            direct[:, a, b] = (phi * torch.roll(phi, shifts=(-a, -b), dims=(1, 2))).mean((1, 2))
    assert torch.allclose(g, direct, atol=1e-12)
    assert torch.allclose(phi4.zero_momentum_correlator(phi), direct.sum(-1), atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(shape=(8, 8), kappa=0.3, lam=0.0), "kappa"),
    (dict(shape=(8, 8), kappa=0.2, lam=-0.1), "lam"),
    (dict(shape=(0, 8), kappa=0.2, lam=0.1), "shape"),
])
def test_bad_couplings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Phi4(**kwargs)
