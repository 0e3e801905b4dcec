"""Real scalar φ⁴ theory on a periodic lattice (Nicoli et al. 2021; Vaitl et al. 2024).

Hopping form, used internally:
    S(φ) = Σ_x [ −2κ Σ_μ φ_x φ_{x+μ̂} + (1 − 2λ) φ_x² + λ φ_x⁴ ],
    ∂S/∂φ_x = −2κ Σ_μ (φ_{x+μ̂} + φ_{x−μ̂}) + 2(1 − 2λ) φ_x + 4λ φ_x³.
Standard form (Albergo et al. 2019): S(ϕ) = Σ_x [ Σ_μ (ϕ_{x+μ̂} − ϕ_x)² + m² ϕ_x² + λ₄ ϕ_x⁴ ].
They are one theory: ϕ = √κ φ, m² = (1 − 2λ)/κ − 2d, λ₄ = λ/κ² (`Phi4.from_standard`).
Z2 symmetry: S(−φ) = S(φ). Fields are ``phi: (B, L0, L1)`` (any number of lattice dimensions d).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .lattice import shift, validate_shape, volume

__all__ = ["Phi4", "standard_action"]


def standard_action(phi: torch.Tensor, m2: float, lam4: float) -> torch.Tensor:
    """S(ϕ) = Σ_x [Σ_μ (ϕ_{x+μ̂} − ϕ_x)² + m² ϕ_x² + λ₄ ϕ_x⁴] of Albergo et al. (2019); ``(B,)``.

    Written directly from the standard form (not via the hopping form) so the two can be tested
    against each other.
    """
    nd = phi.dim() - 1
    kinetic = sum((shift(phi, mu, 1, nd) - phi) ** 2 for mu in range(nd))
    density = kinetic + m2 * phi**2 + lam4 * phi**4
    return density.flatten(1).sum(-1)


class Phi4:
    """φ⁴ theory in the hopping form with couplings ``kappa`` (κ) and ``lam`` (λ).

    Example:
        >>> phi4 = Phi4(shape=(8, 8), kappa=0.2, lam=0.0)
        >>> phi4.action(torch.zeros(3, 8, 8, dtype=torch.float64))
        tensor([0., 0., 0.], dtype=torch.float64)
    """

    theory = "phi4"

    def __init__(self, shape: Sequence[int], kappa: float, lam: float) -> None:
        self.shape = validate_shape(shape, "shape")
        self.ndim = len(self.shape)
        kappa, lam = float(kappa), float(lam)
        if not math.isfinite(kappa):
            raise ValueError(f"kappa must be finite, got {kappa}")
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be >= 0 (the action is unbounded below otherwise), got {lam}")
        if lam == 0 and not abs(kappa) < 1 / (2 * self.ndim):
            raise ValueError(
                f"kappa must satisfy |kappa| < 1/(2d) = {1 / (2 * self.ndim):g} at lam = 0 "
                f"(free field; otherwise unstable), got {kappa}"
            )
        self.kappa = kappa
        self.lam = lam

    # -- parametrisations ---------------------------------------------------------------------------
    @classmethod
    def from_standard(cls, shape: Sequence[int], m2: float, lam4: float) -> "Phi4":
        """Build from the standard couplings (m², λ₄): solve (2d + m²)κ + 2λ₄κ² = 1, λ = λ₄κ²."""
        d = len(validate_shape(shape, "shape"))
        m2, lam4 = float(m2), float(lam4)
        if lam4 < 0:
            raise ValueError(f"lam4 must be >= 0, got {lam4}")
        b = 2 * d + m2
        if lam4 == 0:
            if b <= 0:
                raise ValueError(f"m2 must be > {-2 * d} at lam4 = 0 (free field), got {m2}")
            kappa = 1.0 / b
        else:
            kappa = (-b + math.sqrt(b * b + 8 * lam4)) / (4 * lam4)
        return cls(shape, kappa=kappa, lam=lam4 * kappa**2)

    @property
    def m2(self) -> float:
        """Standard-form mass m² = (1 − 2λ)/κ − 2d."""
        return (1 - 2 * self.lam) / self.kappa - 2 * self.ndim

    @property
    def lam4(self) -> float:
        """Standard-form quartic coupling λ₄ = λ/κ²."""
        return self.lam / self.kappa**2

    def to_standard_field(self, phi: torch.Tensor) -> torch.Tensor:
        """ϕ = √κ φ: the field of the standard form."""
        return math.sqrt(self.kappa) * phi

    def from_standard_field(self, phi_std: torch.Tensor) -> torch.Tensor:
        """φ = ϕ/√κ: the field of the hopping form."""
        return phi_std / math.sqrt(self.kappa)

    @property
    def couplings(self) -> dict[str, float]:
        return {"kappa": self.kappa, "lam": self.lam}

    @property
    def field_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def volume(self) -> int:
        return volume(self.shape)

    def __repr__(self) -> str:
        return f"Phi4(shape={self.shape}, kappa={self.kappa}, lam={self.lam})"

    # -- action and force ---------------------------------------------------------------------------
    def _neighbour_sum(self, phi: torch.Tensor) -> torch.Tensor:
        """Σ_μ φ_{x+μ̂} (forward neighbours only)."""
        return sum(shift(phi, mu, 1, self.ndim) for mu in range(self.ndim))

    def action(self, phi: torch.Tensor) -> torch.Tensor:
        """S(φ) of the hopping form, ``phi: (B, L0, L1) -> (B,)``."""
        phi2 = phi * phi
        density = -2 * self.kappa * phi * self._neighbour_sum(phi) + (1 - 2 * self.lam) * phi2 + self.lam * phi2 * phi2
        return density.flatten(1).sum(-1)

    def force(self, phi: torch.Tensor) -> torch.Tensor:
        """∂S/∂φ_x = −2κ Σ_μ (φ_{x+μ̂} + φ_{x−μ̂}) + 2(1 − 2λ)φ_x + 4λφ_x³, ``(B, L0, L1)``."""
        neighbours = sum(shift(phi, mu, 1, self.ndim) + shift(phi, mu, -1, self.ndim) for mu in range(self.ndim))
        return -2 * self.kappa * neighbours + 2 * (1 - 2 * self.lam) * phi + 4 * self.lam * phi**3

    def symmetry(self, phi: torch.Tensor) -> torch.Tensor:
        """The Z2 transformation φ ↦ −φ."""
        return -phi

    # -- observables --------------------------------------------------------------------------------
    def magnetization(self, phi: torch.Tensor) -> torch.Tensor:
        """m = V⁻¹ Σ_x φ_x per configuration, ``(B,)``."""
        return phi.flatten(1).mean(-1)

    def two_point(self, phi: torch.Tensor) -> torch.Tensor:
        """G(x) = V⁻¹ Σ_y φ_y φ_{y+x} per configuration by FFT, ``(B, L0, L1)``."""
        dims = tuple(range(1, self.ndim + 1))
        ft = torch.fft.fftn(phi, dim=dims)
        return torch.fft.ifftn(ft.conj() * ft, dim=dims).real / self.volume

    def zero_momentum_correlator(self, phi: torch.Tensor) -> torch.Tensor:
        """C(t) = Σ_y G(t, y) per configuration (t along axis 0), ``(B, L0)``."""
        return self.two_point(phi).flatten(2).sum(-1) if self.ndim > 1 else self.two_point(phi)

    def observables(self, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-configuration measurements (first axis B): m, |m|, m², m⁴, S/V, G(x), C(t).

        Ensemble quantities follow from these: χ₂ = V⟨m²⟩, χ = V(⟨m²⟩ − ⟨|m|⟩²),
        U = 1 − ⟨m⁴⟩/(3⟨m²⟩²), m_eff(t) = arccosh[(C(t−1) + C(t+1))/(2C(t))].
        """
        m = self.magnetization(phi)
        g = self.two_point(phi)
        return {
            "m": m,
            "abs_m": m.abs(),
            "m2": m**2,
            "m4": m**4,
            "action_density": self.action(phi) / self.volume,
            "two_point": g,
            "zero_momentum_correlator": g.flatten(2).sum(-1) if self.ndim > 1 else g,
        }
