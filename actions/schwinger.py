"""The 2D Schwinger model: U(1) gauge links with N_f = 2 degenerate Wilson fermions (Schwinger 1962; on the
lattice e.g. Albergo et al. arXiv 2106.05934, Abbott et al. arXiv 2207.08945).

Links ``theta: (B, 2, L0, L1)`` as for `U1Gauge`; the fermions are integrated out. With the Wilson–Dirac
operator D of `actions.dirac` (hopping form, κ; antiperiodic in time = axis 0) the effective action is

    S(θ) = −β Σ_x cos P(x) − log det(D†D),       log det(D†D) = 2 log |det D|

(N_f = 2 degenerate flavours: det(D)² = det(D†D) ≥ 0, as det D is real by γ₅-hermiticity). Nothing is dropped:
at κ = 0, D = 1 and S is the pure gauge action. In the bare-mass form D_m = D/(2κ), κ = 1/(2m + 4),
log det(D_m†D_m) = log det(D†D) − 4V log(2κ), a constant: the stored ``action`` is always the hopping form's S.
The determinant is exact and dense (O((2V)³) per configuration): meant for V ≤ 16 × 16. Its force is
−2 Re tr(D⁻¹ ∂D/∂θ_μ(x)) (`dirac.dirac_derivative`); the pseudofermion form φ†(D†D)⁻¹φ with its heat bath and
force serves HMC on any volume (`pseudofermion_action`).

Observables (per configuration, dense inverse G = D_m⁻¹ = 2κ D⁻¹, exact traces): the gauge ones of `U1Gauge`,
the condensate Σ = V⁻¹ Re tr G (one flavour; = −⟨ψ̄ψ⟩ with ⟨ψ(x) ψ̄(y)⟩ = G(x, y)), and the pion correlator
C(t) = V⁻¹ Σ_y Σ_{x: x₀ − y₀ ≡ t} tr[G(x, y)† G(x, y)] (isovector pseudoscalar, connected, all V sources), whose
cosh effective mass is m_π.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import dirac
from .theory import TableRow
from .u1 import U1Gauge

__all__ = ["Schwinger"]


class Schwinger(U1Gauge):
    """2D U(1) at ``beta`` with two Wilson fermions at hopping parameter ``kappa`` (or bare ``mass``:
    κ = 1/(2m + 4)) on an L0 × L1 torus, antiperiodic in time (axis 0).

    Example:
        >>> sw = Schwinger((4, 4), beta=2.0, kappa=0.2)
        >>> theta = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
        >>> bool(torch.allclose(sw.force(theta), torch.zeros_like(theta), atol=1e-12))
        True
    """

    theory = "schwinger"
    coupling_keys = ("beta", "kappa", "mass")
    correlator_observable = "pion_correlator"
    #: the largest V = L0 L1 whose ensembles store the exact effective action (16 × 16)
    max_exact_volume = 256

    def __init__(self, shape: Sequence[int], beta: float, kappa: float | None = None,
                 mass: float | None = None) -> None:
        super().__init__(shape, beta)
        if (kappa is None) == (mass is None):
            raise ValueError(f"kappa or mass (exactly one) is required for theory schwinger, got kappa={kappa}, "
                             f"mass={mass}")
        if mass is not None:
            mass = float(mass)
            if not (math.isfinite(mass) and mass > -2.0):
                raise ValueError(f"mass must be > -2 (kappa = 1/(2 mass + 4) > 0), got {mass}")
            kappa = 1.0 / (2.0 * mass + 4.0)
        kappa = float(kappa)
        if not (math.isfinite(kappa) and 0.0 <= kappa < 0.5):
            raise ValueError(f"kappa must be in [0, 0.5), got {kappa}")
        self.kappa = kappa

    @property
    def couplings(self) -> dict[str, float]:
        return {"beta": self.beta, "kappa": self.kappa}

    @property
    def mass(self) -> float:
        """Bare mass m = 1/(2κ) − 2 (∞ at κ = 0)."""
        return math.inf if self.kappa == 0 else 1.0 / (2.0 * self.kappa) - 2.0

    def __repr__(self) -> str:
        return f"Schwinger(shape={self.shape}, beta={self.beta}, kappa={self.kappa})"

    # -- fermion pieces -------------------------------------------------------------------------------
    def dirac(self, theta: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """D ψ (hopping form), spinors ``(B, …, L0, L1, 2)`` complex."""
        return dirac.apply_dirac(theta, psi, self.kappa)

    def dirac_dagger(self, theta: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """D† ψ = γ₅ D γ₅ ψ."""
        return dirac.apply_dirac_dagger(theta, psi, self.kappa)

    def normal(self, theta: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """D†D ψ (hermitian, positive definite)."""
        return self.dirac_dagger(theta, self.dirac(theta, psi))

    def dirac_matrix(self, theta: torch.Tensor) -> torch.Tensor:
        """Dense D, ``(B, 2V, 2V)`` complex."""
        return dirac.dirac_matrix(theta, self.kappa)

    def log_det(self, theta: torch.Tensor) -> torch.Tensor:
        """log det(D†D) = 2 log |det D|, ``(B,)`` (dense LU; differentiable)."""
        if self.kappa == 0:
            return torch.zeros(theta.shape[0], dtype=theta.dtype, device=theta.device)
        return 2.0 * dirac.log_abs_det(self.dirac_matrix(theta))

    def gauge_action(self, theta: torch.Tensor) -> torch.Tensor:
        """S_g = −β Σ_x cos P(x), ``(B,)``."""
        return super().action(theta)

    def action(self, theta: torch.Tensor) -> torch.Tensor:
        """S = S_g − log det(D†D), ``(B,)`` (exact determinant)."""
        return self.gauge_action(theta) - self.log_det(theta)

    def fermion_force(self, theta: torch.Tensor) -> torch.Tensor:
        """∂/∂θ_μ(x) of −log det(D†D) = −2 Re tr(D⁻¹ ∂D/∂θ_μ(x)), from the dense inverse; ``(B, 2, L0, L1)``."""
        if self.kappa == 0:
            return torch.zeros_like(theta)
        b, _, l0, l1 = theta.shape
        n = 2 * l0 * l1
        inverse = dirac.inverse(self.dirac_matrix(theta))
        rows = inverse.conj().reshape(b, n, l0, l1, 2)  # left_j = conj(row j of D⁻¹)
        unit = torch.eye(n, dtype=inverse.dtype, device=theta.device).view(1, n, l0, l1, 2).expand(b, n, l0, l1, 2)
        return -2.0 * dirac.dirac_derivative(theta, rows, unit, self.kappa).real

    def force(self, theta: torch.Tensor) -> torch.Tensor:
        """∂S/∂θ_μ(x): the Wilson gauge force plus `fermion_force`."""
        return super().force(theta) + self.fermion_force(theta)

    def stored_action(self, theta: torch.Tensor) -> torch.Tensor:
        """What an ensemble row stores as its action: S with the exact determinant for V ≤ `max_exact_volume`,
        beyond that only S_g (the determinant's dense LU would cost O((2V)³) per configuration)."""
        return self.action(theta) if self.volume <= self.max_exact_volume else self.gauge_action(theta)

    # -- pseudofermions -------------------------------------------------------------------------------
    def pseudofermion_heatbath(self, theta: torch.Tensor, generator: torch.Generator | None = None
                               ) -> torch.Tensor:
        """φ = D†η with η complex Gaussian (density ∝ e^{−η†η}): φ is distributed ∝ e^{−φ†(D†D)⁻¹φ}."""
        b, _, l0, l1 = theta.shape
        cdtype = torch.complex128 if theta.dtype == torch.float64 else torch.complex64
        eta = torch.randn((b, l0, l1, 2), generator=generator, dtype=cdtype, device=theta.device)  # E|η|² = 1
        return self.dirac_dagger(theta, eta)

    def solve_normal(self, theta: torch.Tensor, phi: torch.Tensor, tol: float = 1e-10
                     ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """χ = (D†D)⁻¹ φ by conjugate gradients to relative residual ``tol`` (`dirac.conjugate_gradient`)."""
        u = dirac.links(theta)
        return dirac.conjugate_gradient(
            lambda v: dirac.apply_dirac_dagger(theta, dirac.apply_dirac(theta, v, self.kappa, u), self.kappa, u),
            phi, tol=tol)

    def pseudofermion_action(self, theta: torch.Tensor, phi: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
        """S_g + φ†(D†D)⁻¹φ, ``(B,)``: its average over the heat bath of φ is S up to a constant."""
        chi, _, _ = self.solve_normal(theta, phi, tol)
        return self.gauge_action(theta) + (phi.conj() * chi).flatten(1).sum(1).real

    def pseudofermion_force(self, theta: torch.Tensor, phi: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
        """∂/∂θ of `pseudofermion_action`: the gauge force − 2 Re (Dχ)† ∂D χ, χ = (D†D)⁻¹φ."""
        chi, _, _ = self.solve_normal(theta, phi, tol)
        psi = self.dirac(theta, chi)
        return super().force(theta) - 2.0 * dirac.dirac_derivative(theta, psi, chi, self.kappa).real

    # -- observables ----------------------------------------------------------------------------------
    def propagator(self, theta: torch.Tensor) -> torch.Tensor:
        """G = D_m⁻¹ = 2κ D⁻¹, ``(B, 2V, 2V)`` (dense)."""
        return 2.0 * self.kappa * dirac.inverse(self.dirac_matrix(theta))

    def fermion_observables(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Σ = V⁻¹ Re tr G, ``(B,)``, and C_π(t), ``(B, L0)`` (module docstring)."""
        b, _, l0, l1 = theta.shape
        v = l0 * l1
        g = self.propagator(theta).reshape(b, l0, l1, 2, l0, l1, 2)
        condensate = torch.diagonal(g.reshape(b, 2 * v, 2 * v), dim1=1, dim2=2).sum(-1).real / v
        weight = (g.abs() ** 2).sum((3, 6))  # Σ_spin |G(x, y)|², (B, x0, x1, y0, y1)
        per_dt = torch.stack([torch.roll(weight, shifts=-y0, dims=1)[:, :, :, y0, :] for y0 in range(l0)], 1)
        pion = per_dt.sum((1, 3, 4)) / v  # shift x0 by y0 (antiperiodicity cancels in |G|²): t = x0 − y0
        return {"condensate": condensate, "pion_correlator": pion}

    def observables(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The `U1Gauge` observables (``action_density`` = S/V with the determinant) plus `fermion_observables`
        when κ > 0."""
        out = super().observables(theta)
        if self.kappa > 0:
            out.update(self.fermion_observables(theta))
        return out

    # -- analysis -------------------------------------------------------------------------------------
    def table_rows(self) -> list[TableRow]:
        """The `U1Gauge` rows (exact values only at κ = 0, where the model is pure U(1)), the condensate and
        C_π(1)/C_π(0)."""
        rows = super().table_rows()
        if self.kappa == 0:
            return rows
        rows = [TableRow(r.name, r.inputs, r.func, r.factor, None, r.main) for r in rows if r.name != "S/V"]
        rows.append(TableRow("S/V (with det)", ("action_density",)))
        rows.append(TableRow("Sigma = tr G / V", ("condensate",), main=True))
        return rows

    def extra_analysis(self, observables: Mapping[str, Any], weights: Any = None) -> dict[str, Any]:
        """The Q histogram; the exact P(Q) of pure U(1) only at κ = 0."""
        out = super().extra_analysis(observables, weights)
        if self.kappa > 0:
            out["charge_histogram"].pop("exact_Q")
            out["charge_histogram"].pop("exact_P")
        return out

    def log_z_exact(self) -> float | None:
        return super().log_z_exact() if self.kappa == 0 else None
