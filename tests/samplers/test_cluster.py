"""Brower–Tamayo cluster sampler for φ⁴: the Swendsen–Wang kernel keeps e^{−S} stationary (exact enumeration of the
signs), the free field, a 2×2 lattice in the broken phase against a 4-dimensional quadrature, and mixing between
the two vacua of the 16×8 broken phase where HMC does not tunnel.

The number of configurations of the 2×2 test is LATTICEFLOW_CLUSTER_2X2_CONFIGS (default 4096 chains × 2048
steps ≈ 8.4·10⁶; the issue's criterion is 4σ at 10⁶); ``-s`` prints the pulls.
"""
import itertools
import math
import os
import types

import numpy as np
import pytest
import torch

from actions import Phi4, U1Gauge, exact
from latticeflow.analysis import gamma_method
from latticeflow.analysis.diagnostics import split_rhat
from latticeflow.samplers import HMC
from latticeflow.samplers.cluster import Cluster, swendsen_wang

F64 = torch.float64


# -- the Swendsen–Wang kernel -----------------------------------------------------------------------
def _sign_distribution(action, magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All 2^V sign patterns ``(2^V, *shape)`` and their exact probabilities ∝ e^{−S(s|φ|)} at fixed |φ|."""
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=magnitude.numel())), dtype=F64)
    signs = signs.view(-1, *magnitude.shape)
    log_w = -action.action(signs * magnitude)
    return signs, torch.softmax(log_w, 0)


def _chi2_after_one_update(action, kernel_action, magnitude, n, seed) -> tuple[float, int]:
    """Draw ``n`` sign patterns from the exact distribution, apply one SW update built from ``kernel_action``,
    return (χ² of the histogram of the result against the exact distribution, degrees of freedom)."""
    gen = torch.Generator().manual_seed(seed)
    signs, prob = _sign_distribution(action, magnitude)
    start = torch.multinomial(prob, n, replacement=True, generator=gen)
    phi = swendsen_wang(kernel_action, signs[start] * magnitude, gen)
    assert torch.equal(phi.abs(), (signs[start] * magnitude).abs())  # |φ| unchanged
    code = ((phi.flatten(1) < 0).long() * (2 ** torch.arange(magnitude.numel() - 1, -1, -1))).sum(1)
    counts = torch.bincount(code, minlength=prob.numel()).to(F64)  # signs[i] has code i (+ → bit 0)
    expected = n * prob
    return float(((counts - expected) ** 2 / expected).sum()), prob.numel() - 1


SHAPES = [(1,), (2,), (3,), (2, 2), (1, 3), (2, 3), (2, 1, 2), (2, 2, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_swendsen_wang_keeps_the_exact_sign_distribution_stationary(shape):
    """Stationarity of e^{−S} at fixed |φ|: exact samples stay exact after one update (χ² within 4σ)."""
    action = Phi4(shape, kappa=0.5, lam=0.1)
    magnitude = 0.5 + torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    chi2, dof = _chi2_after_one_update(action, action, magnitude, n=200_000, seed=2)
    assert chi2 < dof + 4 * math.sqrt(2 * dof), (chi2, dof)


@pytest.mark.parametrize("wrong_kappa", [0.25, 1.0])
@pytest.mark.parametrize("shape", [(2, 2), (3,), (2, 3)], ids=lambda s: "x".join(map(str, s)))
def test_a_wrong_bond_probability_fails_the_stationarity_test(shape, wrong_kappa):
    """The test above has power: bonds drawn with 1 − exp(−2κ|φφ|) or 1 − exp(−8κ|φφ|) (a factor 2 off, or on
    extent-2 axes one bond per pair instead of two) are caught."""
    action = Phi4(shape, kappa=0.5, lam=0.1)
    wrong = types.SimpleNamespace(kappa=wrong_kappa, lam=0.1, ndim=len(shape))
    magnitude = 0.5 + torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    chi2, dof = _chi2_after_one_update(action, wrong, magnitude, n=200_000, seed=2)
    assert chi2 > dof + 10 * math.sqrt(2 * dof), (chi2, dof)


@pytest.mark.parametrize("shape", [(8, 8), (4, 4, 4), (5,), (2, 2), (1, 4)], ids=lambda s: "x".join(map(str, s)))
def test_swendsen_wang_flips_signs_only(shape):
    """φ' = ±φ site by site (|φ| unchanged); a bijection of the signs. S changes in general (links between
    clusters flipped differently); when every link is a bond the update is the global Z2 flip and S is unchanged."""
    action = Phi4(shape, kappa=0.3, lam=0.02)
    gen = torch.Generator().manual_seed(3)
    phi = torch.randn(64, *shape, generator=gen, dtype=F64)
    out = swendsen_wang(action, phi, gen)
    assert torch.equal(out.abs(), phi.abs())
    assert ((out == phi) | (out == -phi)).all()
    if action.volume > 2:
        assert not torch.allclose(action.action(out), action.action(phi))  # S is *not* conserved
    ordered = 5.0 * torch.ones(64, *shape, dtype=F64)  # p = 1 − e^{−4·0.3·25} = 1 − 10⁻¹³ on every link
    ordered.view(64, -1)[:, 0] = 6.0
    flipped = swendsen_wang(action, ordered, torch.Generator().manual_seed(4))
    global_sign = flipped.flatten(1)[:, :1].sign() * ordered.flatten(1)[:, :1].sign()
    assert torch.equal(flipped, global_sign.view(-1, *(1,) * len(shape)) * ordered)
    assert 10 < int((global_sign < 0).sum()) < 54  # each chain flips with probability ½
    assert torch.allclose(action.action(flipped), action.action(ordered), rtol=1e-14, atol=0)


# -- interface --------------------------------------------------------------------------------------
def test_cluster_rejects_non_phi4_actions_and_antiferromagnetic_kappa():
    with pytest.raises(ValueError, match="kappa and lam"):
        Cluster(U1Gauge((4, 4), beta=1.0))
    with pytest.raises(ValueError, match="action.kappa must be > 0"):
        Cluster(Phi4((4, 4), kappa=-0.2, lam=0.1))
    with pytest.raises(ValueError, match="action.kappa must be > 0"):
        Cluster(Phi4((4, 4), kappa=0.0, lam=0.1))
    with pytest.raises(ValueError, match="cluster_every"):
        Cluster(Phi4((4, 4), kappa=0.2, lam=0.1), cluster_every=0)


@pytest.mark.parametrize("shape", [(1,), (5,), (1, 1), (2, 2), (2, 1, 3), (3, 4)], ids=lambda s: "x".join(map(str, s)))
def test_step_returns_the_action_of_the_returned_fields(shape):
    action = Phi4(shape, kappa=0.25, lam=0.05)
    sampler = Cluster(action, n_leapfrog=4, step_size=0.2, generator=torch.Generator().manual_seed(5))
    x, s = torch.randn(16, *shape, dtype=F64), None
    for _ in range(3):
        out = sampler.step(x, s)
        x, s = out.x, out.action
        assert out.x.shape == (16, *shape) and out.accepted.shape == out.delta_h.shape == (16,)
        assert torch.allclose(out.action, action.action(out.x), rtol=1e-12, atol=1e-12)


def test_float32_fields_stay_float32():
    action = Phi4((6, 6), kappa=0.3, lam=0.022)
    sampler = Cluster(action, n_leapfrog=4, step_size=0.1, generator=torch.Generator().manual_seed(6))
    out = sampler.step(torch.randn(8, 6, 6))
    assert out.x.dtype == out.action.dtype == torch.float32
    assert torch.allclose(out.action, action.action(out.x), rtol=1e-5)


def test_same_seed_gives_identical_chains():
    action = Phi4((8, 8), kappa=0.3, lam=0.022)

    def run(seed):
        sampler = Cluster(action, n_leapfrog=5, step_size=0.2, generator=torch.Generator().manual_seed(seed))
        x = sampler.thermalize(torch.ones(8, 8, 8, dtype=F64), 5)
        return torch.stack([sampler.step(x).x for _ in range(3)])

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_cluster_every_and_the_delegated_step_size_and_state():
    action = Phi4((4, 4), kappa=0.3, lam=0.02)
    sampler = Cluster(action, step_size=0.05, cluster_every=3, generator=torch.Generator().manual_seed(0))
    calls = []
    update = sampler.cluster_update
    sampler.cluster_update = lambda x: calls.append(1) or update(x)
    x = torch.randn(4, 4, 4, dtype=F64)
    for _ in range(7):
        x = sampler.step(x).x
    assert len(calls) == 3  # before steps 0, 3, 6
    sampler.step_size = 0.3
    assert sampler.hmc.step_size == 0.3 and sampler.step_size == 0.3
    assert sampler.state_attrs() == {"step_size": 0.3, "cluster_every": 3, "cluster_phase": 7 % 3}
    resumed = Cluster(action, cluster_every=3)
    resumed.load_state_attrs(sampler.state_attrs())
    assert resumed.step_size == 0.3 and resumed.n_steps % 3 == sampler.n_steps % 3  # the schedule continues
    with pytest.raises(ValueError, match="cluster_every is 2 but the ensemble was written with cluster_every=3"):
        Cluster(action, cluster_every=2).load_state_attrs(sampler.state_attrs())


def test_thermalize_tunes_the_hmc_step_size_towards_the_target():
    action = Phi4((8, 8), kappa=0.2, lam=0.0)
    sampler = Cluster(action, n_leapfrog=5, step_size=1.5, target_acceptance=0.8,
                      generator=torch.Generator().manual_seed(0))
    rates = []
    x = sampler.thermalize(torch.randn(32, 8, 8, dtype=F64), 200, callback=lambda t, rate, eps: rates.append(rate))
    assert len(rates) == 200 and sampler.step_size < 1.0
    acc = np.mean([float(sampler.step(x).accepted.double().mean()) for _ in range(20)])
    assert 0.6 < acc < 0.95


# -- physics ----------------------------------------------------------------------------------------
def _series(sampler, x, n_therm, n_steps, observables):
    """Thermalise, then ``n_steps`` steps; returns {name: (n_chains, n_steps)} of per-configuration values."""
    x = sampler.thermalize(x, n_therm)
    out = {k: [] for k in observables}
    s = None
    for _ in range(n_steps):
        step = sampler.step(x, s)
        x, s = step.x, step.action
        for k, f in observables.items():
            out[k].append(f(x, s).numpy())
    return {k: np.stack(v, 1) for k, v in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize("shape,kappa", [((8, 8), 0.2), ((4, 4, 4), 0.1)], ids=["8x8", "4x4x4"])
def test_cluster_reproduces_the_free_field(shape, kappa):
    """λ = 0: χ₂ = V⟨m²⟩ = 1/A(0) and ⟨S⟩/V = ½, within 3σ."""
    action = Phi4(shape, kappa=kappa, lam=0.0)
    gen = torch.Generator().manual_seed(21)
    sampler = Cluster(action, n_leapfrog=8, step_size=0.2, generator=gen)
    v = action.volume
    data = _series(sampler, torch.randn(32, *shape, generator=gen, dtype=F64), 100, 1500,
                   {"chi2": lambda x, s: v * x.flatten(1).mean(1) ** 2, "s": lambda x, s: s / v})
    chi2 = gamma_method(list(data["chi2"]))
    assert abs(chi2.mean - exact.free_field_chi2(shape, kappa)) < 3 * chi2.error, chi2
    s = gamma_method(list(data["s"]))
    assert abs(s.mean - 0.5) < 3 * s.error, s


def two_by_two_quadrature(kappa: float, lam: float, n: int = 40, a: float = 5.0, n0: int = 56,
                          a0: float = 10.0) -> tuple[float, float]:
    """(⟨m²⟩, ⟨|m|⟩) on the periodic 2×2 lattice = ∫d⁴φ O e^{−S} / ∫d⁴φ e^{−S} by direct quadrature.

    S = Σ_x [(1 − 2λ)φ_x² + λφ_x⁴] − 4κ(φ₀₀φ₁₀ + φ₀₁φ₁₁ + φ₀₀φ₀₁ + φ₁₀φ₁₁) (each neighbour pair is linked twice,
    once per direction ±μ̂), written here independently of `Phi4`. Integrated in the orthonormal momentum basis
    u = Hφ (H the 4×4 Hadamard matrix / 2, Jacobian 1, u₀ = 2m): u₁, u₂, u₃ by the trapezoid rule on [−a, a]
    (n nodes; exponentially accurate for a smooth integrand that vanishes at the ends), u₀ by Gauss–Legendre
    on [0, a0] (n0 nodes) — the Z2 symmetry makes the integrand even in u₀, and on u₀ ≥ 0 the observable
    |m| = u₀/2 is smooth (its kink at m = 0 would limit a grid across it to O(h²)).
    """
    node, weight = np.polynomial.legendre.leggauss(n0)
    u0, w0 = a0 / 2 * (node + 1), a0 / 2 * weight
    u = np.linspace(-a, a, n)  # trapezoid: the end weights ½ do not matter, e^{−S} ≈ 0 there
    h = 0.5 * np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=float)
    grid = np.stack(np.meshgrid(u0, u, u, u, indexing="ij")).reshape(4, n0, -1)  # (4, n0, n³)
    p00, p01, p10, p11 = np.einsum("ij,jkl->ikl", h.T, grid)  # φ = Hᵀu, sites 00, 01, 10, 11
    s = sum((1 - 2 * lam) * p ** 2 + lam * p ** 4 for p in (p00, p01, p10, p11)) \
        - 4 * kappa * (p00 * p10 + p01 * p11 + p00 * p01 + p10 * p11)
    f = w0 * np.exp(-(s - s.min())).sum(1)  # ∫du₁du₂du₃ e^{−S} at each u₀ node
    m = u0 / 2
    return float((f * m * m).sum() / f.sum()), float((f * m).sum() / f.sum())


def test_two_by_two_quadrature_converges_and_matches_the_action():
    """The quadrature's action is Phi4's on 2×2; more nodes and a larger box agree to 10⁻⁸; the free field
    (a Gaussian, χ₂ = 1/A(0)) is reproduced."""
    action = Phi4((2, 2), kappa=0.4, lam=0.1)
    phi = torch.randn(5, 2, 2, dtype=F64)
    p00, p01, p10, p11 = phi[:, 0, 0], phi[:, 0, 1], phi[:, 1, 0], phi[:, 1, 1]
    direct = sum(0.8 * p ** 2 + 0.1 * p ** 4 for p in (p00, p01, p10, p11)) \
        - 1.6 * (p00 * p10 + p01 * p11 + p00 * p01 + p10 * p11)
    assert torch.allclose(direct, action.action(phi), rtol=1e-13)
    assert np.allclose(two_by_two_quadrature(0.4, 0.1), two_by_two_quadrature(0.4, 0.1, 44, 5.5, 60, 11.0),
                       rtol=1e-8, atol=0)
    m2_free = two_by_two_quadrature(0.2, 0.0, a0=16.0)[0]  # u₀ ∝ e^{−A(0)u₀²/2}, A(0) = 0.4
    assert m2_free * 4 == pytest.approx(exact.free_field_chi2((2, 2), 0.2), rel=1e-9)


def run_two_by_two(n_configurations: int, *, kappa=0.4, lam=0.1, n_chains=4096, seed=31):
    """Cluster sampler on 2×2 in the broken phase: Gamma-method results for ⟨m²⟩ and ⟨|m|⟩ with their pulls
    against the quadrature."""
    action = Phi4((2, 2), kappa=kappa, lam=lam)
    gen = torch.Generator().manual_seed(seed)
    sampler = Cluster(action, n_leapfrog=5, step_size=0.3, generator=gen)
    n_steps = max(64, -(-n_configurations // n_chains))
    data = _series(sampler, torch.randn(n_chains, 2, 2, generator=gen, dtype=F64), 200, n_steps,
                   {"m": lambda x, s: x.flatten(1).mean(1)})
    m2_exact, abs_m_exact = two_by_two_quadrature(kappa, lam)
    m2, abs_m = gamma_method(list(data["m"] ** 2)), gamma_method(list(np.abs(data["m"])))
    m = gamma_method(list(data["m"]))
    return {"n": m2.n, "m2": m2, "abs_m": abs_m, "m": m, "exact": (m2_exact, abs_m_exact),
            "pulls": ((m2.mean - m2_exact) / m2.error, (abs_m.mean - abs_m_exact) / abs_m.error, m.mean / m.error)}


@pytest.mark.slow
def test_cluster_reproduces_two_by_two_quadrature_in_the_broken_phase():
    """κ = 0.4, λ = 0.1 on 2×2: ⟨|m|⟩ ≈ 1.81 (HMC alone: τ_int(m) ≈ 90 trajectories of length 1); ⟨m²⟩ and
    ⟨|m|⟩ within 4σ of the quadrature and ⟨m⟩ within 4σ of 0."""
    n = int(os.environ.get("LATTICEFLOW_CLUSTER_2X2_CONFIGS", 4096 * 2048))
    r = run_two_by_two(n)
    print(f"\n2x2 kappa=0.4 lam=0.1, N={r['n']}: <m^2> = {r['m2']} (quadrature {r['exact'][0]:.8f}), "
          f"<|m|> = {r['abs_m']} (quadrature {r['exact'][1]:.8f}), <m> = {r['m']}; pulls {r['pulls']}")
    assert r["n"] >= min(n, 10 ** 6)
    assert r["abs_m"].mean > 1.5 and r["m"].tau_int < 2.0  # broken phase; the clusters flip the sign of m
    assert all(abs(p) < 4 for p in r["pulls"]), r["pulls"]


@pytest.mark.slow
def test_clusters_mix_the_vacua_of_the_broken_phase_where_hmc_does_not():
    """16×8, κ = 0.3, λ = 0.022 (two vacua, ⟨|m|⟩ ≈ 1), chains started half in each: split-R̂(m) < 1.05 and ⟨m⟩
    within 4σ of 0 for the cluster sampler; plain HMC, same trajectories, stays in its vacua: R̂ > 1.5 (for chains
    that never leave two equally populated vacua the rank-normalised R̂ saturates near 1.7)."""
    action = Phi4((16, 8), kappa=0.3, lam=0.022)
    start = torch.ones(16, 16, 8, dtype=F64)
    start[::2] = -1.0
    rhat = {}
    for name, cls in (("cluster", Cluster), ("hmc", HMC)):
        gen = torch.Generator().manual_seed(41)
        sampler = cls(action, n_leapfrog=10, step_size=0.1, generator=gen)
        m = _series(sampler, start.clone(), 100, 1000, {"m": lambda x, s: x.flatten(1).mean(1)})["m"]
        rhat[name] = split_rhat(m)
        if name == "cluster":
            g = gamma_method(list(m))
            assert abs(g.mean) < 4 * g.error, g
            assert np.abs(m).mean() > 0.5
    print(f"\nsplit-R̂(m): {rhat}")
    assert rhat["cluster"] < 1.05 and rhat["hmc"] > 1.5, rhat
