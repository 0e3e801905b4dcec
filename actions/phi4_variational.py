"""Gaussian variational and mean-field approximations of φ⁴: the physics a φ⁴ flow starts from.

For S = Σ_x[−2κ Σ_μ φ_x φ_{x+μ̂} + (1 − 2λ)φ_x² + λφ_x⁴] on a periodic lattice of V sites in d dimensions,
take q = a Gaussian of constant mean φ₀ and momentum-diagonal covariance G(p) = 1/K(p). With the quadratic
kernel A(p) = 2(1 − 2λ) − 4κ Σ_μ cos p_μ (`Phi4.quadratic_kernel`) and σ² = V⁻¹ Σ_p G(p) (the site variance),

    ⟨S⟩_q = V[(1 − 2λ − 2κd)φ₀² + λφ₀⁴ + 6λφ₀²σ² + 3λσ⁴] + ½ Σ_p A(p) G(p),
    H[q]  = ½ Σ_p ln(2πe G(p)),        F = ⟨S⟩_q − H[q] = KL(q‖p) − ln Z.

Stationarity gives the gap equations K(p) = A(p) + 12λ(φ₀² + σ²) and, for φ₀ ≠ 0,
φ₀² = (2κd + 2λ − 1)/(2λ) − 3σ² (so K(0) = 8λφ₀² > 0). φ₀ = 0 is the Hartree solution K = A + M with the
self-consistent mass shift M = 12λσ² (`hartree_mass_shift`). The broken ansatz is the mixture
½ q(φ₀) + ½ q(−φ₀), whose entropy is H + ln 2 while the two vacua are far apart, so its free energy is
F(φ₀) − ln 2 (a lower bound, tight when m√V ≫ 1). `choose_vacuum` returns the lower of the two: the reverse
KL of a flow at step 0 that starts from this Gaussian (Gaussian variational method, e.g. Feynman & Kleinert,
PRA 34 (1986) 5080; for flows cf. the symmetrised mixtures of Nicoli et al., PRL 126 (2021) 032001).

Mean field (constant fields φ = m·1): p(m) ∝ exp(−S(m·1)) = exp(−V[(1 − 2λ − 2dκ)m² + λm⁴]), two peaks at
±v, v² = −(1 − 2λ − 2dκ)/(2λ), where 1 − 2λ − 2dκ < 0 and λ > 0 (`mean_field_magnetization_density`).

Every function takes the theory (an `actions.Phi4`: ``quadratic_kernel()``, ``kappa``, ``lam``, ``ndim``,
``volume``); `Phi4.gaussian_vacuum` and `Phi4.mean_field_magnetization_density` call them.

Example:
    >>> from actions import Phi4
    >>> vacuum = choose_vacuum(Phi4((16, 8), kappa=0.3, lam=0.022))
    >>> vacuum.broken, round(vacuum.phi0, 2)
    (True, 2.1)
    >>> choose_vacuum(Phi4((8, 8), kappa=0.2, lam=0.0)).broken
    False
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["GaussianVacuum", "hartree_mass_shift", "gaussian_free_energy", "symmetric_vacuum", "broken_vacuum",
           "choose_vacuum", "mean_field_magnetization", "mean_field_magnetization_density"]


@dataclass(frozen=True)
class GaussianVacuum:
    """φ₀ (0: symmetric), the kernel K(p) (FFT order, float64) and the variational free energy F."""

    phi0: float
    kernel: np.ndarray
    free_energy: float

    @property
    def broken(self) -> bool:
        return self.phi0 > 0


def hartree_mass_shift(a_kernel: np.ndarray, lam: float) -> float:
    """M ≥ 0 solving M = 12λ V⁻¹ Σ_p 1/(A(p) + M) with A + M > 0 (unique: the left side increases, the
    right side decreases in M). Bisection to a relative bracket width of 1e-15; returns the upper end, so
    A + M > 0 holds strictly.

    Example:
        >>> hartree_mass_shift(np.array([2.0, 2.0]), 0.0)
        0.0
        >>> m = hartree_mass_shift(np.array([1.0, 3.0]), 0.1)
        >>> abs(m - 0.6 * (1 / (1 + m) + 1 / (3 + m))) < 1e-12
        True
    """
    if lam == 0:
        return 0.0
    c = 12.0 * lam / a_kernel.size
    lo = max(0.0, -float(a_kernel.min()))

    def excess(m: float) -> float:
        return m - c * float(np.sum(1.0 / (a_kernel + m)))

    step = 1.0
    hi = lo + step
    while excess(hi) < 0:
        step *= 2
        hi = lo + step
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi or hi - lo <= 1e-15 * hi:
            break
        if excess(mid) >= 0:
            hi = mid
        else:
            lo = mid
    return hi


def gaussian_free_energy(theory, phi0: float, kernel: np.ndarray) -> float:
    """F = ⟨S⟩_q − H[q] of the single Gaussian N(φ₀·1, F⁻¹ diag(1/K) F) (module docstring)."""
    kappa, lam, d, volume = float(theory.kappa), float(theory.lam), theory.ndim, theory.volume
    g = 1.0 / np.asarray(kernel, dtype=np.float64)
    sigma2 = float(g.mean())
    a = theory.quadratic_kernel()
    p2 = phi0 * phi0
    mean_s = volume * ((1 - 2 * lam - 2 * kappa * d) * p2 + lam * p2 * p2 + 6 * lam * p2 * sigma2
                       + 3 * lam * sigma2 * sigma2) + 0.5 * float(np.sum(a * g))
    entropy = 0.5 * float(np.sum(np.log(2 * math.pi * math.e * g)))
    return mean_s - entropy


def symmetric_vacuum(theory) -> GaussianVacuum:
    """φ₀ = 0 and the Hartree kernel K = A + 12λσ²."""
    a = theory.quadratic_kernel()
    kernel = a + hartree_mass_shift(a, float(theory.lam))
    return GaussianVacuum(0.0, kernel, gaussian_free_energy(theory, 0.0, kernel))


def broken_vacuum(theory, *, tol: float = 1e-12, max_iter: int = 100_000) -> GaussianVacuum | None:
    """The broken-phase solution of the gap equations, or None where there is none (λ ≤ 0 included).

    Iterates σ² ↦ V⁻¹ Σ_p 1/K(p; σ²) from σ² = 0; K decreases with σ², so the iterates increase
    monotonically to the smallest fixed point (the stable one), or φ₀² reaches 0 (no broken solution).
    The mixture's free energy includes −ln 2 (two vacua).
    """
    kappa, lam = float(theory.kappa), float(theory.lam)
    if not lam > 0:
        return None
    a = theory.quadratic_kernel()
    top = (2 * kappa * theory.ndim + 2 * lam - 1) / (2 * lam)
    sigma2 = 0.0
    for _ in range(max_iter):
        p2 = top - 3 * sigma2
        if p2 <= 0:
            return None
        kernel = a + 12 * lam * (p2 + sigma2)
        if kernel.min() <= 0:
            return None
        new = float(np.mean(1.0 / kernel))
        if abs(new - sigma2) <= tol * new:
            sigma2 = new
            break
        sigma2 = new
    else:
        return None
    p2 = top - 3 * sigma2
    if p2 <= 0:
        return None
    kernel = a + 12 * lam * (p2 + sigma2)
    phi0 = math.sqrt(p2)
    return GaussianVacuum(phi0, kernel, gaussian_free_energy(theory, phi0, kernel) - math.log(2.0))


def choose_vacuum(theory, mode: str | bool = "auto") -> GaussianVacuum:
    """``mode``: ``"auto"`` (the lower free energy), True (broken; a ``ValueError`` where there is no broken
    solution) or False (symmetric)."""
    if not (mode == "auto" or mode is True or mode is False):
        raise ValueError(f"vacua must be auto, true or false, got {mode!r}")
    if mode is False:
        return symmetric_vacuum(theory)
    broken = broken_vacuum(theory)
    if mode is True:
        if broken is None:
            raise ValueError(f"vacua: no broken-phase Gaussian solution at kappa={theory.kappa}, lam={theory.lam}; "
                             "use vacua auto or false")
        return broken
    symmetric = symmetric_vacuum(theory)
    return broken if broken is not None and broken.free_energy < symmetric.free_energy else symmetric


def mean_field_magnetization(theory) -> float:
    """v ≥ 0 minimising the constant-field action S(m·1)/V = (1 − 2λ − 2dκ)m² + λm⁴: v² = −(1 − 2λ − 2dκ)/(2λ)
    where that is positive (λ > 0), else 0 (unimodal p(m))."""
    kappa, lam = float(theory.kappa), float(theory.lam)
    c2 = 1.0 - 2.0 * lam - 2.0 * theory.ndim * kappa
    return math.sqrt(-c2 / (2 * lam)) if lam > 0 and c2 < 0 else 0.0


def mean_field_magnetization_density(theory, m: np.ndarray) -> np.ndarray:
    """Unnormalised p(m) ∝ exp(−S(m·1)) = exp(−V[(1 − 2λ − 2dκ)m² + λm⁴]) on the grid ``m`` (max set to 1)."""
    kappa, lam = float(theory.kappa), float(theory.lam)
    m = np.asarray(m, dtype=np.float64)
    s = theory.volume * ((1.0 - 2.0 * lam - 2.0 * theory.ndim * kappa) * m ** 2 + lam * m ** 4)
    return np.exp(-(s - s.min()))
