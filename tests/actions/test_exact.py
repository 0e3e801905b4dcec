"""Exact results in `actions.exact` against independent computations.

Free field: dense V×V matrix A = Hessian of S (torch autograd, float64), inverted / slogdet.
2D U(1): brute-force integration over plaquette angles (V = 2, 3, 4) and over gauge-fixed link angles
(2×2 torus), f(ν) by Gauss–Legendre quadrature, finite differences of ln Z, and the V → ∞ limits.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import iv

from actions import exact

# ------------------------------------------------------------------------------------------------
# Free field
# ------------------------------------------------------------------------------------------------
FREE_CASES = [((4, 6), 0.2), ((2, 3, 4), 0.12), ((7,), 0.45), ((3, 5), 0.249)]


def dense_kernel(shape, kappa) -> np.ndarray:
    """A = ∂²S/∂φ∂φ of S = Σ_x[−2κ Σ_μ φ_x φ_{x+μ̂} + φ_x²], flattened in C order."""
    nd = len(shape)

    def action(flat):
        phi = flat.reshape(shape)
        hop = sum(phi * torch.roll(phi, -1, dims=mu) for mu in range(nd))
        return (-2 * kappa * hop + phi**2).sum()

    v = int(np.prod(shape))
    return torch.autograd.functional.hessian(action, torch.zeros(v, dtype=torch.float64)).numpy()


@pytest.mark.parametrize("shape,kappa", FREE_CASES)
def test_free_field_against_dense_matrix(shape, kappa):
    a = dense_kernel(shape, kappa)
    v = a.shape[0]
    g = np.linalg.inv(a)
    g0 = g[0].reshape(shape)  # ⟨φ_0 φ_x⟩
    np.testing.assert_allclose(exact.free_field_propagator(shape, kappa), g0, rtol=0, atol=1e-10)
    # translation invariance of the dense inverse: ⟨φ_y φ_{y+x}⟩ = G(x) for a random y
    y = tuple(s // 2 for s in shape)
    idx = np.arange(v).reshape(shape)
    row = g[idx[y]][np.roll(idx, [-c for c in y], axis=tuple(range(len(shape)))).reshape(-1)]
    np.testing.assert_allclose(row.reshape(shape), g0, atol=1e-10)
    assert exact.free_field_chi2(shape, kappa) == pytest.approx(g.sum() / v, abs=1e-10)
    c_t = g0.reshape(shape[0], -1).sum(axis=1)
    np.testing.assert_allclose(exact.free_field_zero_momentum_correlator(shape, kappa), c_t, atol=1e-10)
    sign, logdet = np.linalg.slogdet(a)
    assert sign == 1
    log_z = 0.5 * v * math.log(2 * math.pi) - 0.5 * logdet
    assert exact.free_field_log_z(shape, kappa) == pytest.approx(log_z, abs=1e-10)
    # ⟨S⟩ = ½ tr(A G) = V/2
    assert 0.5 * np.trace(a @ g) / v == pytest.approx(exact.free_field_action_density(), abs=1e-12)
    kernel = exact.free_field_kernel(shape, kappa)
    np.testing.assert_allclose(np.sort(kernel.ravel()), np.linalg.eigvalsh(a), atol=1e-10)


def test_free_field_log_z_derivative_is_hopping_expectation():
    # ∂_κ ln Z = −⟨∂_κ S⟩ = 2 Σ_x Σ_μ ⟨φ_x φ_{x+μ̂}⟩ = 2 V Σ_μ G(μ̂)
    shape, kappa, h = (6, 4), 0.17, 1e-5
    deriv = (exact.free_field_log_z(shape, kappa + h) - exact.free_field_log_z(shape, kappa - h)) / (2 * h)
    g = exact.free_field_propagator(shape, kappa)
    assert deriv == pytest.approx(2 * 24 * (g[1, 0] + g[0, 1]), rel=1e-8)


def test_free_field_errors():
    with pytest.raises(ValueError, match=r"kappa must be in \(0, 0.25\) for the free field in d=2, got 0.3"):
        exact.free_field_propagator((4, 4), 0.3)
    for bad in (0.0, -0.1, 0.25):
        with pytest.raises(ValueError, match="kappa"):
            exact.free_field_chi2((4, 4), bad)
    with pytest.raises(ValueError, match="kappa"):
        exact.free_field_log_z((2, 2, 2), 1 / 6)
    with pytest.raises(ValueError, match="shape"):
        exact.free_field_kernel((4, 0), 0.1)


# ------------------------------------------------------------------------------------------------
# 2D U(1): brute force over plaquette angles (uniform on Σ_x P_x ∈ 2πℤ, weight ∏ e^{β cos P})
# ------------------------------------------------------------------------------------------------
def plaquette_grid(v: int, n: int) -> np.ndarray:
    """(v, n^{v−1}) plaquette angles: v−1 free on a periodic grid, the last = −Σ of the others.
    The trapezoid rule on this grid is spectrally accurate for smooth periodic integrands."""
    axis = -math.pi + 2 * math.pi * np.arange(n) / n
    free = np.stack([g.ravel() for g in np.meshgrid(*([axis] * (v - 1)), indexing="ij")])
    return np.vstack([free, -free.sum(axis=0)])


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("v", [2, 3, 4])
def test_u1_small_volume_brute_force(v, beta):
    p = plaquette_grid(v, {2: 200, 3: 80, 4: 48}[v])
    w = np.exp(beta * np.cos(p).sum(axis=0))
    z = w.mean()  # ∫ ∏_{x<V} dP_x/2π e^{−S}
    assert exact.u1_log_z(beta, v) == pytest.approx(math.log(z), abs=1e-11)
    assert exact.u1_mean_plaquette(beta, v) == pytest.approx((w * np.cos(p[0])).mean() / z, abs=1e-11)
    for area in range(v + 1):
        loop = (w * np.cos(p[:area].sum(axis=0))).mean() / z
        assert exact.u1_wilson_loop(beta, v, area) == pytest.approx(loop, abs=1e-11)


def test_u1_closed_forms_small_volume():
    for beta in (0.3, 1.0, 3.0):
        assert exact.u1_log_z(beta, 1) == pytest.approx(beta, abs=1e-12)  # P ≡ 0: Z = e^β
        assert exact.u1_log_z(beta, 2) == pytest.approx(math.log(iv(0, 2 * beta)), abs=1e-12)
        assert exact.u1_mean_plaquette(beta, 2) == pytest.approx(iv(1, 2 * beta) / iv(0, 2 * beta), abs=1e-12)
        assert exact.u1_topological_susceptibility(beta, 2) == 0.0
        q, prob = exact.u1_charge_distribution(beta, 2, q_max=2)
        np.testing.assert_array_equal(q, [-2, -1, 0, 1, 2])
        np.testing.assert_array_equal(prob, [0, 0, 1, 0, 0])


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_u1_charge_v3_brute_force(beta):
    # V = 3: Q ∈ {−1, 0, 1}; Q = +1 iff P0, P1 ∈ (−π, π] with P0 + P1 > π (then wrap(P2) = 2π − P0 − P1).
    def weight(p1, p0):
        return math.exp(beta * (math.cos(p0) + math.cos(p1) + math.cos(p0 + p1)))

    opts = dict(epsabs=1e-15, epsrel=1e-13)
    z1 = integrate.dblquad(weight, 0, math.pi, lambda p0: math.pi - p0, lambda p0: math.pi, **opts)[0]
    z = (2 * math.pi) ** 2 * math.exp(exact.u1_log_z(beta, 3))
    q, prob = exact.u1_charge_distribution(beta, 3, q_max=2)
    np.testing.assert_array_equal(q, [-2, -1, 0, 1, 2])
    np.testing.assert_allclose(prob, [0, z1 / z, 1 - 2 * z1 / z, z1 / z, 0], atol=1e-11)
    assert exact.u1_topological_susceptibility(beta, 3) == pytest.approx(2 * z1 / z / 3, abs=1e-11)


def test_u1_link_level_2x2_torus():
    """Z, ⟨cos P⟩, W on a 2×2 torus from the link angles themselves (measure dθ/2π per link),
    gauge-fixed on the tree θ₁(0,0) = θ₀(0,0) = θ₀(0,1) = 0; 5 links on an 18⁵ periodic grid."""
    beta, n = 1.0, 18
    axis = 2 * math.pi * np.arange(n) / n
    free = np.meshgrid(*([axis] * 5), indexing="ij", sparse=True)
    theta = [[None] * 2 for _ in range(2)], [[None] * 2 for _ in range(2)]
    theta[0][0][0] = theta[0][0][1] = theta[1][0][0] = 0.0
    theta[0][1][0], theta[0][1][1], theta[1][0][1], theta[1][1][0], theta[1][1][1] = free

    def plaq(x0, x1):  # P(x) = θ₀(x) + θ₁(x+0̂) − θ₀(x+1̂) − θ₁(x)
        return (theta[0][x0][x1] + theta[1][(x0 + 1) % 2][x1]
                - theta[0][x0][(x1 + 1) % 2] - theta[1][x0][x1])

    p = {x: plaq(*x) for x in itertools.product(range(2), range(2))}
    w = np.exp(beta * sum(np.cos(px) for px in p.values()))
    z = w.mean()
    assert exact.u1_log_z(beta, 4) == pytest.approx(math.log(z), abs=1e-12)
    mean_plaq = np.mean([(w * np.cos(px)).mean() for px in p.values()]) / z
    assert exact.u1_mean_plaquette(beta, 4) == pytest.approx(mean_plaq, abs=1e-12)
    w2 = (w * np.cos(p[0, 0] + p[1, 0])).mean() / z  # 2×1 loop (area 2, by Stokes)
    assert exact.u1_wilson_loop(beta, 4, 2) == pytest.approx(w2, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# 2D U(1): internal consistency and limits
# ------------------------------------------------------------------------------------------------
_GL_X, _GL_W = np.polynomial.legendre.leggauss(400)


def f_quad(nu: float, beta: float) -> float:
    """f(ν) = π⁻¹ ∫_0^π e^{β cos φ} cos(νφ) dφ by 400-point Gauss–Legendre (entire integrand:
    converged to round-off for ν ≲ 100)."""
    phi = 0.5 * math.pi * (_GL_X + 1)
    return 0.5 * float(np.sum(_GL_W * np.exp(beta * np.cos(phi)) * np.cos(nu * phi)))


@pytest.mark.parametrize("beta", [0.4, 1.0, 5.0])
def test_f_sinc_series_against_quadrature(beta):
    nus = np.array([0.0, 0.25, 0.5, 1.0, 1.7, 3.0, 12.3, 37.5])
    got = exact._f_ratio(nus, beta) * iv(0, beta)
    want = [f_quad(nu, beta) for nu in nus]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * iv(0, beta))


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_susceptibility_two_ways_and_finite_difference(beta):
    for v in (5, 16, 64):
        q, prob = exact.u1_charge_distribution(beta, v)
        assert prob.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(prob, prob[::-1], atol=1e-15)
        chi = exact.u1_topological_susceptibility(beta, v)
        assert (q**2 * prob).sum() / v == pytest.approx(chi, rel=1e-10)
    # ⟨Q²⟩ = −∂²_θ ln Z(θ) with Z(θ) = Σ_n f(n − θ/2π)^V, f by quadrature, 5-point stencil in θ
    v, h = 16, 0.05
    n = np.arange(-20, 21)

    def log_z_theta(theta):
        return math.log(sum(f_quad(k - theta / (2 * math.pi), beta) ** v for k in n))

    l = [log_z_theta(k * h) for k in (-2, -1, 0, 1, 2)]
    second = (-l[0] + 16 * l[1] - 30 * l[2] + 16 * l[3] - l[4]) / (12 * h**2)
    assert -second / v == pytest.approx(exact.u1_topological_susceptibility(beta, v), rel=1e-6)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 4.0])
def test_plaquette_is_beta_derivative_of_log_z(beta):
    h = 1e-3
    for v in (3, 10, 64):
        l = [exact.u1_log_z(beta + k * h, v) for k in (-2, -1, 1, 2)]
        deriv = (l[0] - 8 * l[1] + 8 * l[2] - l[3]) / (12 * h)
        assert deriv / v == pytest.approx(exact.u1_mean_plaquette(beta, v), abs=1e-9)


@pytest.mark.parametrize("beta,ratio", [(1.0, 0.44639), (2.0, 0.69777)])
def test_u1_infinite_volume_limits(beta, ratio):
    v = 10**4
    r = iv(1, beta) / iv(0, beta)
    assert r == pytest.approx(ratio, abs=5e-6)
    assert exact.u1_mean_plaquette(beta, v) == pytest.approx(r, abs=1e-12)
    assert exact.u1_wilson_loop(beta, v, 6) == pytest.approx(r**6, abs=1e-12)
    assert exact.u1_log_z(beta, 5 * 10**5) == pytest.approx(5 * 10**5 * math.log(iv(0, beta)), rel=1e-12)
    weight = lambda x: math.exp(beta * math.cos(x))  # noqa: E731
    phi2 = integrate.quad(lambda x: x * x * weight(x), -math.pi, math.pi, epsabs=0, epsrel=1e-13)[0] / \
        integrate.quad(weight, -math.pi, math.pi, epsabs=0, epsrel=1e-13)[0]
    chi_inf = phi2 / (4 * math.pi**2)
    assert exact.u1_infinite_volume_susceptibility(beta) == pytest.approx(chi_inf, rel=1e-10)
    assert exact.u1_topological_susceptibility(beta, v) == pytest.approx(chi_inf, rel=1e-6)
    q, prob = exact.u1_charge_distribution(beta, v)
    assert (q**2 * prob).sum() / v == pytest.approx(chi_inf, rel=1e-6)


def test_u1_reference_values_8x8():
    """Numbers quoted for HMC checks (V = 64)."""
    assert exact.u1_mean_plaquette(1.0, 64) == pytest.approx(0.4463899659, abs=1e-10)
    assert exact.u1_mean_plaquette(2.0, 64) == pytest.approx(0.6977746580, abs=1e-10)
    assert exact.u1_topological_susceptibility(1.0, 64) == pytest.approx(0.0406362361, abs=1e-10)
    assert exact.u1_topological_susceptibility(2.0, 64) == pytest.approx(0.0193640455, abs=1e-10)


def test_u1_errors():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            exact.u1_log_z(bad, 4)
    for fn in (exact.u1_log_z, exact.u1_mean_plaquette, exact.u1_topological_susceptibility,
               exact.u1_charge_distribution):
        with pytest.raises(ValueError, match="volume"):
            fn(1.0, 0)
    with pytest.raises(ValueError, match="area"):
        exact.u1_wilson_loop(1.0, 4, 5)
    with pytest.raises(ValueError, match="q_max"):
        exact.u1_charge_distribution(1.0, 8, q_max=-1)
