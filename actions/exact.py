"""Exact results: the free scalar field (φ⁴ at λ = 0) and 2D U(1) Wilson gauge theory on the torus.

Free field (hopping form at λ = 0; e.g. Montvay & Münster, *Quantum Fields on a Lattice*, 1994):
    S = Σ_x [−2κ Σ_μ φ_x φ_{x+μ̂} + φ_x²] = ½ φᵀAφ  on a periodic L0 × L1 (× …) lattice, d dimensions.
A is diagonal in momentum space, p_μ = 2π n_μ / L_μ:
    A(p) = 2 (1 − 2κ Σ_μ cos p_μ),   positive definite iff 0 < κ < 1/(2d) (we require κ > 0),
    G(x) = ⟨φ_0 φ_x⟩ = V⁻¹ Σ_p e^{ipx} / A(p),      χ₂ = V⟨m²⟩ = Σ_x G(x) = 1/A(0),
    ln Z = (V/2) ln 2π − ½ Σ_p ln A(p),             ⟨S⟩/V = ½ (equipartition).
    ⟨|φ̃(p)|²⟩/V = 1/A(p), so the second-moment correlation length (p_min = 2π/L e_μ, L = L0)
    ξ₂ = √((A(p_min)/A(0) − 1)/(4 sin²(π/L))) = √(κ/(1 − 2dκ)) for every L.

2D U(1) (Wilson 1974) with S = −β Σ_x cos P(x) on an L0 × L1 torus with V = L0 L1 plaquettes, measure
∏_links dθ/2π. Expanding e^{β cos P} = Σ_n I_n(β) e^{inP} and integrating every link forces one common
n on all plaquettes (Gross & Witten 1980; Rusakov 1990; Bonati & Rossi, PRD 99, 054503 (2019),
arXiv:1901.09830):
    Z = Σ_{n∈ℤ} I_n(β)^V          (exact in this normalisation; V = 1: Z = e^β, V = 2: Z = I_0(2β)),
    ⟨cos P⟩ = Σ_n I_n'(β) I_n^{V−1} / Z,   I_n' = (I_{n−1} + I_{n+1})/2   → I_1/I_0 as V → ∞,
    ⟨W(A)⟩ = Σ_n I_{n−1}(β)^A I_n(β)^{V−A} / Z  (contractible loop of area A) → (I_1/I_0)^A.
Equivalently the plaquette angles are uniform on {P ∈ (−π, π]^V : Σ_x P_x ∈ 2πℤ} with weight
∏_x e^{β cos P_x}. Geometric charge Q = (2π)⁻¹ Σ_x wrap(P_x) ∈ ℤ, |Q| < V/2. With a θ-term e^{iθQ},
    Z(θ) = Σ_n f(n − θ/2π)^V,   f(ν) = (2π)⁻¹ ∫_{−π}^{π} dφ e^{β cos φ + iνφ} = Σ_m I_m(β) sinc(ν − m),
(sinc x = sin πx / πx; f(n) = I_n(β)), so ⟨Q²⟩ = −∂²_θ ln Z(θ)|₀, χ_t = ⟨Q²⟩/V, and
    P(Q) = Z⁻¹ ∫_ℝ dν f(ν)^V e^{2πiνQ} = Fourier coefficients of the trigonometric polynomial Z(θ)/Z.
As V → ∞, χ_t → ⟨φ²⟩/(4π²) with φ ∝ e^{β cos φ} on (−π, π] (Bonati & Rossi 2019); corrections are
O((I_1/I_0)^V). All Bessel functions are used scaled (``scipy.special.ive``) and ratios r_n = I_n/I_0,
so no overflow occurs for large β·V.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import ive, logsumexp, zeta

from .lattice import momentum_cos_sum

__all__ = [
    "free_field_kernel",
    "free_field_propagator",
    "free_field_chi2",
    "free_field_zero_momentum_correlator",
    "free_field_log_z",
    "free_field_action_density",
    "free_field_second_moment_xi",
    "u1_log_z",
    "u1_mean_plaquette",
    "u1_wilson_loop",
    "u1_topological_susceptibility",
    "u1_charge_distribution",
    "u1_charge_allocation",
    "u1_infinite_volume_susceptibility",
]


# ------------------------------------------------------------------------------------------------
# Free field
# ------------------------------------------------------------------------------------------------
def _check_free(shape: Sequence[int], kappa: float) -> tuple[tuple[int, ...], float]:
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of lattice extents, got {shape!r}") from None
    if len(dims) < 1 or any(s <= 0 or s != o for s, o in zip(dims, shape)):
        raise ValueError(f"shape extents must be positive integers, got {list(shape)!r}")
    kappa = float(kappa)
    bound = 1.0 / (2 * len(dims))
    if not (0.0 < kappa < bound):
        raise ValueError(
            f"kappa must be in (0, {bound:g}) for the free field in d={len(dims)}, got {kappa:g}"
        )
    return dims, kappa


def free_field_kernel(shape: Sequence[int], kappa: float) -> np.ndarray:
    """A(p) = 2(1 − 2κ Σ_μ cos p_μ) on the FFT momentum grid p_μ = 2πn_μ/L_μ (numpy fft order)."""
    dims, kappa = _check_free(shape, kappa)
    return 2.0 * (1.0 - 2.0 * kappa * momentum_cos_sum(dims))


def free_field_propagator(shape: Sequence[int], kappa: float) -> np.ndarray:
    """G(x) = ⟨φ_0 φ_x⟩ = V⁻¹ Σ_p e^{ipx}/A(p) = ifftn(1/A).real, an array of the lattice shape."""
    return np.fft.ifftn(1.0 / free_field_kernel(shape, kappa)).real


def free_field_chi2(shape: Sequence[int], kappa: float) -> float:
    """χ₂ = V⟨m²⟩ = Σ_x G(x) = 1/A(0) = 1/(2(1 − 2dκ)), m = V⁻¹ Σ_x φ_x."""
    dims, kappa = _check_free(shape, kappa)
    return 1.0 / (2.0 * (1.0 - 2.0 * len(dims) * kappa))


def free_field_zero_momentum_correlator(shape: Sequence[int], kappa: float) -> np.ndarray:
    """C(t) = Σ_y G(t, y), t along axis 0 (shape ``(L0,)``); C(t) = L0⁻¹ Σ_{p0} e^{ip0 t}/A(p0, 0)."""
    g = free_field_propagator(shape, kappa)
    return g.reshape(g.shape[0], -1).sum(axis=1)


def free_field_log_z(shape: Sequence[int], kappa: float) -> float:
    """ln Z = ln ∫dφ e^{−S} = (V/2) ln 2π − ½ Σ_p ln A(p)."""
    a = free_field_kernel(shape, kappa)
    return float(0.5 * a.size * math.log(2 * math.pi) - 0.5 * np.log(a).sum())


def free_field_action_density() -> float:
    """⟨S⟩/V = ½ tr(A A⁻¹)/V = ½ for any shape and κ (equipartition of a Gaussian)."""
    return 0.5


def free_field_second_moment_xi(shape: Sequence[int], kappa: float) -> float:
    """ξ₂ = √((χ₂/F − 1)/(4 sin²(π/L))) with χ₂ = 1/A(0), F = ⟨|φ̃(p_min)|²⟩/V = 1/A(p_min), p_min = 2π/L e_0
    (L = L0 ≥ 2); equal to √(κ/(1 − 2dκ)) on every lattice."""
    a = free_field_kernel(shape, kappa)
    length = a.shape[0]
    if length < 2:
        raise ValueError(f"shape needs L0 >= 2 for a nonzero momentum, got {list(shape)!r}")
    ratio = float(a[(1,) + (0,) * (a.ndim - 1)] / a.flat[0])
    return math.sqrt((ratio - 1) / (4 * math.sin(math.pi / length) ** 2))


# ------------------------------------------------------------------------------------------------
# 2D U(1)
# ------------------------------------------------------------------------------------------------
def _check_u1(beta: float, volume: int) -> tuple[float, int]:
    beta = float(beta)
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be > 0, got {beta}")
    if int(volume) != volume or volume < 1:
        raise ValueError(f"volume must be an integer >= 1 (number of plaquettes), got {volume}")
    return beta, int(volume)


def _n_max(beta: float) -> int:
    """Cut-off for Σ_n: I_n/I_0 ≲ e^{−n²/2β} and ≲ (β/2)^n/n!, so this keeps all terms > 1e-30."""
    return int(40 + 12 * math.sqrt(beta))


def _log_bessel_ratios(beta: float) -> tuple[np.ndarray, np.ndarray]:
    """n = −N..N and ln(I_n(β)/I_0(β)) (−inf where it underflows)."""
    n_max = _n_max(beta)
    n = np.arange(-n_max, n_max + 1)
    with np.errstate(divide="ignore"):
        log_r = np.log(ive(np.abs(n), beta)) - math.log(ive(0, beta))
    return n, log_r


def _times(k: int, log_r: np.ndarray) -> np.ndarray:
    """k · ln r with 0 · (−inf) = 0 (ln of r^k)."""
    return k * log_r if k else np.zeros_like(log_r)


def u1_log_z(beta: float, volume: int) -> float:
    """ln Z = ln Σ_n I_n(β)^V, the measure being ∏_links dθ/2π (so Z = 1 at β → 0).

    Computed as Vβ + V ln ive(0, β) + logsumexp_n V ln(I_n/I_0).
    """
    beta, vol = _check_u1(beta, volume)
    _, log_r = _log_bessel_ratios(beta)
    return float(vol * (beta + math.log(ive(0, beta))) + logsumexp(vol * log_r))


def u1_wilson_loop(beta: float, volume: int, area: int) -> float:
    """⟨W⟩ = ⟨cos Σ_{x∈A} P_x⟩ = Σ_n I_{n−1}^A I_n^{V−A} / Σ_n I_n^V for a contractible loop of
    ``area`` = A plaquettes (0 ≤ A ≤ V); → (I_1/I_0)^A as V → ∞, and W(A) = W(V − A)."""
    beta, vol = _check_u1(beta, volume)
    if int(area) != area or not (0 <= area <= vol):
        raise ValueError(f"area must be an integer in [0, volume={vol}], got {area}")
    area = int(area)
    _, log_r = _log_bessel_ratios(beta)
    # log_r[k] ↔ n = k − N, so I_{n−1} ↔ log_r[k − 1]; the dropped end term is < 1e-30.
    log_num = _times(area, log_r[:-1]) + _times(vol - area, log_r[1:])
    return float(np.exp(logsumexp(log_num) - logsumexp(vol * log_r)))


def u1_mean_plaquette(beta: float, volume: int) -> float:
    """⟨cos P⟩ = ∂_β ln Z / V = Σ_n ½(I_{n−1} + I_{n+1}) I_n^{V−1} / Σ_n I_n^V (= W(A = 1))."""
    return u1_wilson_loop(beta, volume, 1)


def _f_ratio(nu: np.ndarray, beta: float) -> np.ndarray:
    """r(ν) = f(ν)/I_0(β) = Σ_m (I_m/I_0) sinc(ν − m), f as above (sinc x = sin πx/πx).

    Exact: e^{β cos φ} = Σ_m I_m(β) e^{imφ}, and (2π)⁻¹ ∫_{−π}^{π} e^{i(ν−m)φ} dφ = sinc(ν − m).
    """
    m = np.arange(-_n_max(beta), _n_max(beta) + 1)
    rho = ive(np.abs(m), beta) / ive(0, beta)
    nu = np.asarray(nu, dtype=np.float64)
    out = np.empty(nu.shape)
    flat, res = nu.reshape(-1), out.reshape(-1)
    chunk = max(1, 2**20 // m.size)
    for start in range(0, flat.size, chunk):
        res[start:start + chunk] = np.sinc(flat[start:start + chunk, None] - m[None, :]) @ rho
    return out


def _f_ratio_at_integers(beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n, r_n = I_n/I_0, r'_n, r''_n at integer ν = n, from sinc'(k) = (−1)^k/k, sinc''(k) =
    −2(−1)^k/k² (k ≠ 0), sinc'(0) = 0, sinc''(0) = −π²/3."""
    n = np.arange(-_n_max(beta), _n_max(beta) + 1)
    rho = ive(np.abs(n), beta) / ive(0, beta)
    k = n[:, None] - n[None, :]
    kk = np.where(k == 0, 1, k).astype(np.float64)
    sign = np.where(k % 2 == 0, 1.0, -1.0)
    d1 = np.where(k == 0, 0.0, sign / kk)
    d2 = np.where(k == 0, -(math.pi**2) / 3, -2 * sign / kk**2)
    return n, rho, d1 @ rho, d2 @ rho


def u1_topological_susceptibility(beta: float, volume: int) -> float:
    """χ_t = ⟨Q²⟩/V = −V⁻¹ ∂²_θ ln Z(θ)|_{θ=0}, Z(θ) = Σ_n f(n − θ/2π)^V; with r = f/I_0,
        ⟨Q²⟩ = −(4π²)⁻¹ Σ_n [V(V−1) r_n^{V−2} r_n'² + V r_n^{V−1} r_n''] / Σ_n r_n^V
    (r_n = I_n/I_0 decays super-exponentially, so the sum converges fast for V ≥ 3).
    V ≤ 2 gives exactly 0: one plaquette is trivial, and for two wrap(P_1) = −wrap(P_0).
    Absolute accuracy ~1e-15 (round-off is clipped at 0 where χ_t itself is below that)."""
    beta, vol = _check_u1(beta, volume)
    if vol <= 2:
        return 0.0
    _, r, r1, r2 = _f_ratio_at_integers(beta)
    with np.errstate(divide="ignore", under="ignore"):
        log_r = np.log(r)  # r_n = I_n/I_0 > 0 (or 0 after underflow → −inf, harmless here)
    scale = logsumexp(vol * log_r)
    t1 = np.exp((vol - 2) * log_r - scale) * vol * (vol - 1) * r1**2
    t2 = np.exp((vol - 1) * log_r - scale) * vol * r2
    q2 = -(t1.sum() + t2.sum()) / (4 * math.pi**2)
    return max(0.0, float(q2 / vol))


def u1_infinite_volume_susceptibility(beta: float) -> float:
    """χ_t^∞ = ⟨φ²⟩/(4π²), φ ∝ e^{β cos φ} on (−π, π]; ⟨φ²⟩ = π²/3 + 4 Σ_{k≥1} (−1)^k I_k(β)/(k² I_0(β))
    (Fourier series φ² = π²/3 + 4 Σ_k (−1)^k cos(kφ)/k² on [−π, π])."""
    beta, _ = _check_u1(beta, 1)
    k = np.arange(1, _n_max(beta) + 1)
    phi2 = math.pi**2 / 3 + 4 * np.sum((-1.0) ** k * ive(k, beta) / (k**2 * ive(0, beta)))
    return float(phi2 / (4 * math.pi**2))


def _z_theta_ratio(nu: np.ndarray, beta: float, vol: int) -> np.ndarray:
    """Z(θ)/I_0^V = Σ_n r(n − ν)^V at ν = θ/2π ∈ [−½, ½].

    For small V the terms fall only like |n|^{−V} (f(μ) ≈ e^{−β} sin πμ/πμ at large |μ|), so
    |n| ≤ N is summed directly and the rest with that leading term via Hurwitz ζ:
        Σ_{|n|>N} r(n−ν)^V ≈ (−c₀ sin πν/π)^V Σ_{|n|>N} (−1)^{nV} (n−ν)^{−V},  c₀ = e^{−β}/I_0(β).
    The neglected next order is O(β V N^{−V−1} π^{−V}) ≲ 1e-15 for V ≥ 3."""
    n_direct = _n_max(beta) + 10 if vol >= 12 else max(_n_max(beta) + 10, 2000)
    n = np.arange(-n_direct, n_direct + 1)
    r = _f_ratio(n[None, :] - nu[:, None], beta)
    total = (r**vol).sum(axis=1)
    c0 = math.exp(-2 * beta) / ive(0, beta)
    q_plus, q_minus = n_direct + 1 - nu, n_direct + 1 + nu
    if vol % 2 == 0:
        tail = zeta(vol, q_plus) + zeta(vol, q_minus)
    else:  # Σ_{j≥0} (−1)^j (j+q)^{−s} = 2^{−s} [ζ(s, q/2) − ζ(s, (q+1)/2)]
        alt = lambda q: 2.0**-vol * (zeta(vol, q / 2) - zeta(vol, (q + 1) / 2))  # noqa: E731
        tail = (-1.0) ** (n_direct + 1) * (alt(q_plus) - alt(q_minus))
    return total + (-c0 * np.sin(np.pi * nu) / np.pi) ** vol * tail


def u1_charge_distribution(beta: float, volume: int,
                           q_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """P(Q) = Z⁻¹ ∫_ℝ dν f(ν)^V e^{2πiνQ} for Q = −q_max..q_max; returns ``(Q, P)``.

    Z(θ)/Z = Σ_Q P(Q) e^{iθQ} is a trigonometric polynomial (|Q| < V/2), so P(Q) is the exact
    discrete Fourier transform of Z(θ_j), θ_j = 2πj/N, for N ≥ 2 q_cut + 1 with q_cut ≥ the largest
    Q of non-negligible (< 1e-20 relative) probability. Default ``q_max``: that cut-off, then
    Σ_Q P(Q) = 1 to round-off; a smaller ``q_max`` returns the exact (not renormalised) P(Q).
    Absolute accuracy of each P(Q) ~ V·1e-16 (round-off in f^V)."""
    beta, vol = _check_u1(beta, volume)
    if q_max is not None and (int(q_max) != q_max or q_max < 0):
        raise ValueError(f"q_max must be a non-negative integer, got {q_max}")
    support = (vol - 1) // 2  # |Σ wrap(P)| < πV
    if support == 0:  # V ≤ 2: Q = 0 identically
        q = np.arange(-(q_max or 0), (q_max or 0) + 1)
        return q, (q == 0).astype(np.float64)
    sigma = math.sqrt(vol * u1_infinite_volume_susceptibility(beta))
    q_cut = min(support, int(math.ceil(min(12 * sigma, 5 * math.sqrt(vol)))) + 8)
    q_out = q_cut if q_max is None else int(q_max)
    n_theta = 2 * max(q_cut, min(q_out, support)) + 1
    j = np.arange(n_theta)
    nu = np.where(j <= n_theta // 2, j, j - n_theta) / n_theta
    z = _z_theta_ratio(nu, beta, vol)
    coeff = np.fft.fft(z).real / n_theta  # Z(θ) = Σ_Q c_Q e^{iθQ} ⇒ c_Q = N⁻¹ Σ_j Z(θ_j) e^{−iθ_j Q}
    q = np.arange(-q_out, q_out + 1)
    prob = np.where(np.abs(q) <= support, coeff[q % n_theta], 0.0)
    prob = np.maximum(prob, 0.0) / coeff.sum()  # clip round-off (≲ V·1e-16) negatives in far tails
    return q, prob


def u1_charge_allocation(beta: float, volume: int, n_chains: int) -> list[int]:
    """Topological charge of each of ``n_chains`` chains from the exact P(Q): n_Q = round(n_chains · P(Q)) chains
    at Q and as many at −Q for Q > 0 (the largest |Q| reduced until they fit), the rest at Q = 0; ordered
    [0, …, 0, the positive charges, their negatives]. A start for chains frozen in topology.

    Example:
        >>> u1_charge_allocation(2.0, 64, 16)
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, -1, -1, -1, -1, -2]
    """
    qs, p = u1_charge_distribution(beta, volume)
    counts = {int(q): int(round(n_chains * pq)) for q, pq in zip(qs, p) if q > 0}
    while 2 * sum(counts.values()) > n_chains:
        counts[max(q for q, c in counts.items() if c)] -= 1
    out = [q for q, c in counts.items() for _ in range(c)]
    out = out + [-q for q in out]
    return [0] * (n_chains - len(out)) + out
