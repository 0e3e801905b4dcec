"""Gaussian variational start for φ⁴: symmetric (Hartree) or broken (two vacua), whichever is better.

For S = Σ_x[−2κ Σ_μ φ_x φ_{x+μ̂} + (1 − 2λ)φ_x² + λφ_x⁴] on a periodic lattice of V sites in d dimensions,
take q = a Gaussian of constant mean φ₀ and momentum-diagonal covariance G(p) = 1/K(p). With
A(p) = 2(1 − 2λ) − 4κ Σ_μ cos p_μ and σ² = V⁻¹ Σ_p G(p) (the site variance),

    ⟨S⟩_q = V[(1 − 2λ − 2κd)φ₀² + λφ₀⁴ + 6λφ₀²σ² + 3λσ⁴] + ½ Σ_p A(p) G(p),
    H[q]  = ½ Σ_p ln(2πe G(p)),        F = ⟨S⟩_q − H[q] = KL(q‖p) − ln Z.

Stationarity gives the gap equations K(p) = A(p) + 12λ(φ₀² + σ²) and, for φ₀ ≠ 0,
φ₀² = (2κd + 2λ − 1)/(2λ) − 3σ² (so K(0) = 8λφ₀² > 0). φ₀ = 0 is the Hartree solution of
`fourier.hartree_mass_shift`. The broken ansatz is the mixture ½ q(φ₀) + ½ q(−φ₀) (`VacuumMixture`
pushed through `FourierScaling`), whose entropy is H + ln 2 while the two vacua are far apart, so its free
energy is F(φ₀) − ln 2 (a lower bound, tight when m√V ≫ 1). `choose_vacuum` returns the lower of the two:
the reverse KL of the flow at step 0, before any coupling has learned anything (Gaussian variational
method, e.g. Feynman & Kleinert, PRA 34 (1986) 5080; for flows cf. the symmetrised mixtures of
Nicoli et al., PRL 126 (2021) 032001).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np

from actions.lattice import validate_shape
from .base import FlowError
from .fourier import hartree_mass_shift, quadratic_kernel

__all__ = ["GaussianVacuum", "gaussian_free_energy", "symmetric_vacuum", "broken_vacuum", "choose_vacuum"]


@dataclass(frozen=True)
class GaussianVacuum:
    """φ₀ (0: symmetric), the kernel K(p) (FFT order, float64) and the variational free energy F."""

    phi0: float
    kernel: np.ndarray
    free_energy: float

    @property
    def broken(self) -> bool:
        return self.phi0 > 0


def gaussian_free_energy(shape: Sequence[int], kappa: float, lam: float, phi0: float, kernel: np.ndarray) -> float:
    """F = ⟨S⟩_q − H[q] of the single Gaussian N(φ₀·1, F⁻¹ diag(1/K) F) (module docstring)."""
    shape = validate_shape(shape, "shape")
    volume, d = math.prod(shape), len(shape)
    g = 1.0 / np.asarray(kernel, dtype=np.float64)
    sigma2 = float(g.mean())
    a = quadratic_kernel(shape, kappa, lam)
    p2 = phi0 * phi0
    mean_s = volume * ((1 - 2 * lam - 2 * kappa * d) * p2 + lam * p2 * p2 + 6 * lam * p2 * sigma2
                       + 3 * lam * sigma2 * sigma2) + 0.5 * float(np.sum(a * g))
    entropy = 0.5 * float(np.sum(np.log(2 * math.pi * math.e * g)))
    return mean_s - entropy


def symmetric_vacuum(shape: Sequence[int], kappa: float, lam: float) -> GaussianVacuum:
    """φ₀ = 0 and the Hartree kernel K = A + 12λσ² (the ``init="action"`` start of `FourierScaling`)."""
    a = quadratic_kernel(shape, kappa, lam)
    kernel = a + hartree_mass_shift(a, lam)
    return GaussianVacuum(0.0, kernel, gaussian_free_energy(shape, kappa, lam, 0.0, kernel))


def broken_vacuum(shape: Sequence[int], kappa: float, lam: float, *, tol: float = 1e-12,
                  max_iter: int = 100_000) -> GaussianVacuum | None:
    """The broken-phase solution of the gap equations, or None where there is none (λ ≤ 0 included).

    Iterates σ² ↦ V⁻¹ Σ_p 1/K(p; σ²) from σ² = 0; K decreases with σ², so the iterates increase
    monotonically to the smallest fixed point (the stable one), or φ₀² reaches 0 (no broken solution).
    The mixture's free energy includes −ln 2 (two vacua).
    """
    shape = validate_shape(shape, "shape")
    if not lam > 0:
        return None
    a = quadratic_kernel(shape, kappa, lam)
    top = (2 * kappa * len(shape) + 2 * lam - 1) / (2 * lam)
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
    return GaussianVacuum(phi0, kernel, gaussian_free_energy(shape, kappa, lam, phi0, kernel) - math.log(2.0))


def choose_vacuum(shape: Sequence[int], kappa: float, lam: float, mode: str | bool = "auto") -> GaussianVacuum:
    """``mode``: ``"auto"`` (the lower free energy), True (broken; an error where there is no broken
    solution) or False (symmetric)."""
    if not (mode == "auto" or mode is True or mode is False):
        raise FlowError(f"vacua must be 'auto', true or false, got {mode!r}")
    if mode is False:
        return symmetric_vacuum(shape, kappa, lam)
    broken = broken_vacuum(shape, kappa, lam)
    if mode is True:
        if broken is None:
            raise FlowError(f"vacua: no broken-phase Gaussian solution at kappa={kappa}, lam={lam}; "
                            "use vacua: auto or false")
        return broken
    symmetric = symmetric_vacuum(shape, kappa, lam)
    return broken if broken is not None and broken.free_energy < symmetric.free_energy else symmetric
