"""The Schwinger model: the Wilson–Dirac operator (γ₅-hermiticity, gauge covariance, the free spectrum, det),
CG, the exact and pseudofermion forces against autograd, the heat bath, observables."""
import math

import numpy as np
import pytest
import torch

from actions import Schwinger, U1Gauge, build_theory
from actions import dirac

F64 = torch.float64


def _links(n, shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, *shape, dtype=F64, generator=gen) * 2 - 1) * math.pi


def _gamma5(n):
    return torch.diag(torch.tensor([1.0, -1.0] * (n // 2), dtype=torch.complex128))


@pytest.mark.parametrize("shape", [(4, 4), (4, 6), (6, 2)])
def test_gamma5_hermiticity_and_real_determinant(shape):
    d = dirac.dirac_matrix(_links(3, shape), kappa=0.27)
    g5 = _gamma5(d.shape[-1])
    assert torch.allclose(g5 @ d @ g5, d.conj().transpose(-1, -2), atol=1e-14)
    det = torch.linalg.det(d)
    assert det.imag.abs().max() < 1e-10 * det.abs().max()


def test_stencil_equals_dense_matrix_and_dagger():
    theta = _links(2, (4, 6), seed=1)
    psi = torch.randn(2, 4, 6, 2, dtype=torch.complex128)
    d = dirac.dirac_matrix(theta, 0.3)
    assert torch.allclose(dirac.apply_dirac(theta, psi, 0.3).reshape(2, -1),
                          (d @ psi.reshape(2, -1, 1))[..., 0], atol=1e-13)
    assert torch.allclose(dirac.apply_dirac_dagger(theta, psi, 0.3).reshape(2, -1),
                          (d.conj().transpose(-1, -2) @ psi.reshape(2, -1, 1))[..., 0], atol=1e-13)


def test_gauge_covariance():
    u1 = U1Gauge((4, 6), beta=1.0)
    theta = _links(2, (4, 6), seed=2)
    alpha = torch.rand(2, 4, 6, dtype=F64) * 2 * math.pi
    omega = torch.polar(torch.ones_like(alpha), alpha).reshape(2, -1).repeat_interleave(2, dim=1)
    d, d_g = dirac.dirac_matrix(theta, 0.25), dirac.dirac_matrix(u1.gauge_transform(theta, alpha), 0.25)
    assert torch.allclose(d_g, omega[:, :, None] * d * omega.conj()[:, None, :], atol=1e-13)  # D' = Ω D Ω†
    sw = Schwinger((4, 6), beta=1.0, kappa=0.25)
    assert torch.allclose(sw.action(theta), sw.action(u1.gauge_transform(theta, alpha)), atol=1e-10)


def test_translation_invariance_of_the_action():
    sw = Schwinger((4, 6), beta=1.5, kappa=0.26)
    theta = _links(2, (4, 6), seed=3)
    for dims, shift in (((-1,), 2), ((-2,), 1)):  # in time too: moving the antiperiodic seam is ψ → −ψ on a slice
        moved = torch.roll(theta, shift, dims)
        assert torch.allclose(sw.action(moved), sw.action(theta), atol=1e-10)


@pytest.mark.parametrize("shape,kappa", [((4, 4), 0.2), ((4, 6), 0.25), ((6, 8), 0.31)])
def test_free_spectrum_matches_the_closed_form(shape, kappa):
    d = dirac.dirac_matrix(torch.zeros(1, 2, *shape, dtype=F64), kappa)[0]
    ev = torch.linalg.eigvals(d).numpy()
    exact = dirac.free_eigenvalues(shape, kappa)
    key = lambda z: np.lexsort((np.round(z.imag, 9), np.round(z.real, 9)))  # noqa: E731
    assert np.allclose(ev[key(ev)], exact[key(exact)], atol=1e-12)
    periodic = 1 - 2 * kappa * 2  # p = 0 would be an eigenvalue with periodic time; antiperiodic excludes it
    assert np.abs(ev - periodic).min() > 1e-3


def test_determinant_equals_product_of_eigenvalues():
    d = dirac.dirac_matrix(_links(2, (4, 4), seed=4), 0.28)
    ev = torch.linalg.eigvals(d)
    sw = Schwinger((4, 4), beta=1.0, kappa=0.28)
    log_det = sw.log_det(_links(2, (4, 4), seed=4))
    assert torch.allclose(log_det, 2 * ev.abs().log().sum(-1), atol=1e-10)
    assert torch.allclose(torch.linalg.det(d), ev.prod(-1), rtol=1e-10)


def test_cg_reaches_its_residual_and_the_dense_solution():
    sw = Schwinger((6, 6), beta=1.0, kappa=0.26)
    theta = _links(3, (6, 6), seed=5)
    phi = sw.pseudofermion_heatbath(theta, torch.Generator().manual_seed(0))
    for tol in (1e-6, 1e-12):
        chi, iters, residual = sw.solve_normal(theta, phi, tol=tol)
        assert residual.max() <= tol and iters > 0
    d = sw.dirac_matrix(theta)
    dense = torch.linalg.solve(d.conj().transpose(-1, -2) @ d, phi.reshape(3, -1, 1))[..., 0]
    assert torch.allclose(chi.reshape(3, -1), dense, atol=1e-9)


@pytest.mark.parametrize("shape", [(4, 4), (4, 6)])
def test_exact_force_equals_autograd(shape):
    sw = Schwinger(shape, beta=2.0, kappa=0.27)
    theta = _links(3, shape, seed=6).requires_grad_()
    (grad,) = torch.autograd.grad(sw.action(theta).sum(), theta)
    assert torch.allclose(sw.force(theta.detach()), grad, atol=1e-10)
    assert sw.fermion_force(theta.detach()).abs().max() > 1e-2  # the determinant does push


def test_pseudofermion_action_and_force_equal_the_dense_computation():
    sw = Schwinger((4, 6), beta=2.0, kappa=0.27)
    theta = _links(3, (4, 6), seed=7)
    phi = sw.pseudofermion_heatbath(theta, torch.Generator().manual_seed(1))
    x = theta.clone().requires_grad_()
    d = sw.dirac_matrix(x)
    chi = torch.linalg.solve(d.conj().transpose(-1, -2) @ d, phi.reshape(3, -1, 1))[..., 0]
    s_pf = sw.gauge_action(x) + (phi.reshape(3, -1).conj() * chi).sum(-1).real
    (grad,) = torch.autograd.grad(s_pf.sum(), x)
    assert torch.allclose(sw.pseudofermion_action(theta, phi, tol=1e-12), s_pf.detach(), atol=1e-8)
    assert torch.allclose(sw.pseudofermion_force(theta, phi, tol=1e-12), grad, atol=1e-8)


def test_heatbath_gives_the_gaussian_pseudofermion_density():
    """φ = D†η: φ†(D†D)⁻¹φ = η†η, a sum of 2V exponentials of mean 1, so its mean is 2V (4σ)."""
    sw = Schwinger((4, 4), beta=1.0, kappa=0.3)
    theta = _links(1, (4, 4), seed=8).expand(400, 2, 4, 4).contiguous()
    phi = sw.pseudofermion_heatbath(theta, torch.Generator().manual_seed(2))
    s_f = sw.pseudofermion_action(theta, phi) - sw.gauge_action(theta)
    n = 2 * 16
    assert abs(float(s_f.mean()) - n) < 4 * math.sqrt(n / 400)


def test_kappa_zero_is_pure_u1_and_the_mass_form():
    theta = _links(2, (4, 4), seed=9)
    sw, u1 = Schwinger((4, 4), beta=1.3, kappa=0.0), U1Gauge((4, 4), beta=1.3)
    assert torch.equal(sw.action(theta), u1.action(theta))
    assert torch.equal(sw.force(theta), u1.force(theta))
    assert set(sw.observables(theta)) == set(u1.observables(theta))
    assert sw.log_z_exact() == u1.log_z_exact()
    assert Schwinger((4, 4), beta=1.0, mass=0.5).kappa == pytest.approx(0.2)
    assert build_theory("schwinger", [4, 4], {"beta": 1.0, "kappa": 0.25}).kappa == 0.25


@pytest.mark.parametrize("couplings,word", [({"beta": 1.0}, "kappa or mass"),
                                            ({"beta": 1.0, "kappa": 0.2, "mass": 0.1}, "kappa or mass"),
                                            ({"beta": 1.0, "kappa": 0.7}, "kappa must be"),
                                            ({"beta": 1.0, "mass": -3.0}, "mass must be"),
                                            ({"beta": -1.0, "kappa": 0.2}, "beta must be"),
                                            ({"beta": 1.0, "kapa": 0.2}, "kapa")])
def test_bad_couplings_name_the_value(couplings, word):
    with pytest.raises(ValueError, match=word):
        build_theory("schwinger", [4, 4], couplings)


def test_condensate_and_pion_correlator_from_the_propagator():
    sw = Schwinger((4, 6), beta=1.0, kappa=0.24)
    theta = _links(2, (4, 6), seed=10)
    obs = sw.observables(theta)
    g = (2 * 0.24 * torch.linalg.inv(sw.dirac_matrix(theta))).reshape(2, 4, 6, 2, 4, 6, 2)
    assert torch.allclose(obs["condensate"], torch.einsum("bxyaxya->b", g).real / 24)
    c = torch.zeros(2, 4, dtype=F64)
    for y0 in range(4):
        for y1 in range(6):
            for x0 in range(4):
                c[:, (x0 - y0) % 4] += (g[:, x0, :, :, y0, y1, :].abs() ** 2).sum((1, 2, 3))
    assert torch.allclose(obs["pion_correlator"], c / 24)
    assert (obs["pion_correlator"] > 0).all()


def test_free_pion_correlator_is_symmetric_in_time():
    sw = Schwinger((8, 4), beta=1.0, kappa=0.2)
    c = sw.observables(torch.zeros(1, 2, 8, 4, dtype=F64))["pion_correlator"][0]
    assert torch.allclose(c[1:], c[1:].flip(0), atol=1e-14)
    assert (c[1:5] < c[:4]).all()  # decays towards the middle


def test_dense_determinant_survives_set_num_threads_at_16x16():
    """torch 2.13's batched CPU LU breaks for n ≥ 256 after torch.set_num_threads(2): the Schwinger model's
    determinant, force and propagator go one matrix at a time and agree with numpy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sw = Schwinger((16, 16), beta=2.0, kappa=0.26)
        theta = _links(3, (16, 16), seed=11)
        log_det = sw.log_det(theta)
        d = sw.dirac_matrix(theta).numpy()
        assert np.allclose(log_det.numpy(), [2 * np.linalg.slogdet(m)[1] for m in d], atol=1e-8)
        assert torch.isfinite(sw.fermion_force(theta)).all()
    finally:
        torch.set_num_threads(threads)
