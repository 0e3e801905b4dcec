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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import exact, phi4_variational
from .lattice import momentum_cos_sum, shift, validate_shape
from .theory import TableRow, Theory, check_coupling_keys

__all__ = ["Phi4", "standard_action", "second_moment_xi"]


def second_moment_xi(chi2: float, f: float, length: int, signed: bool = False) -> float:
    """Second-moment correlation length ξ₂ = √((χ₂/F − 1)/(4 sin²(π/L))) from χ₂ = V⟨m²⟩ and
    F = ⟨|φ̃(p_min)|²⟩/V, p_min = 2π/L (Cooper, Freedman & Preston 1982; Caracciolo et al., PRL 74, 2969 (1995)).

    Where χ₂/F < 1 (no positive estimate: ξ ≪ 1, within noise of χ₂/F = 1) NaN, or with ``signed``
    −√((1 − χ₂/F)/(4 sin²(π/L))), continuous through 0, so that the Gamma method's error propagation of the
    analysis table always has a finite value."""
    ratio = chi2 / f if f > 0 else math.nan
    if not math.isfinite(ratio) or length < 2 or (ratio < 1 and not signed):
        return math.nan
    return math.copysign(math.sqrt(abs(ratio - 1) / (4 * math.sin(math.pi / length) ** 2)), ratio - 1)


def standard_action(phi: torch.Tensor, m2: float, lam4: float) -> torch.Tensor:
    """S(ϕ) = Σ_x [Σ_μ (ϕ_{x+μ̂} − ϕ_x)² + m² ϕ_x² + λ₄ ϕ_x⁴] of Albergo et al. (2019); ``(B,)``.

    Written directly from the standard form (not via the hopping form) so the two can be tested
    against each other.
    """
    nd = phi.dim() - 1
    kinetic = sum((shift(phi, mu, 1, nd) - phi) ** 2 for mu in range(nd))
    density = kinetic + m2 * phi**2 + lam4 * phi**4
    return density.flatten(1).sum(-1)


class Phi4(Theory):
    """φ⁴ theory in the hopping form with couplings ``kappa`` (κ) and ``lam`` (λ), in any dimension d ≥ 1.

    Example:
        >>> phi4 = Phi4(shape=(8, 8), kappa=0.2, lam=0.0)
        >>> phi4.action(torch.zeros(3, 8, 8, dtype=torch.float64))
        tensor([0., 0., 0.], dtype=torch.float64)
    """

    theory = "phi4"
    coupling_keys = ("kappa", "lam", "m2", "lam4")
    histogram_observable = "m"
    scan_observables = ("binder U", "chi = V(<m^2>-<|m|>^2)", "xi/L")
    crossing_observable = "binder U"

    def __init__(self, shape: Sequence[int], kappa: float, lam: float) -> None:
        self.shape = validate_shape(shape, "shape")
        self.ndim = len(self.shape)
        kappa, lam = float(kappa), float(lam)
        if not math.isfinite(kappa):
            raise ValueError(f"kappa must be finite, got {kappa}")
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam} (the action is unbounded below otherwise)")
        if lam == 0 and not abs(kappa) < 1 / (2 * self.ndim):
            raise ValueError(
                f"kappa must satisfy |kappa| < {1 / (2 * self.ndim):g} at lam = 0 "
                f"(= 1/(2d); the free field is unstable otherwise), got {kappa}"
            )
        self.kappa = kappa
        self.lam = lam

    # -- parametrisations ---------------------------------------------------------------------------
    @classmethod
    def from_standard(cls, shape: Sequence[int], m2: float, lam4: float) -> "Phi4":
        """Build from the standard couplings (m², λ₄): solve (2d + m²)κ + 2λ₄κ² = 1, λ = λ₄κ²."""
        d = len(validate_shape(shape, "shape"))
        m2, lam4 = float(m2), float(lam4)
        if not lam4 >= 0:
            raise ValueError(f"lam4 must be >= 0, got {lam4}")
        b = 2 * d + m2
        if lam4 == 0:
            if b <= 0:
                raise ValueError(f"m2 must be > {-2 * d} at lam4 = 0 (free field), got {m2:g}")
            kappa = 1.0 / b
        else:
            kappa = (-b + math.sqrt(b * b + 8 * lam4)) / (4 * lam4)
        return cls(shape, kappa=kappa, lam=lam4 * kappa**2)

    @classmethod
    def from_couplings(cls, shape: Sequence[int], couplings: Mapping[str, Any]) -> "Phi4":
        """Hopping form (``kappa``, ``lam``; ``lam`` defaults to 0) or standard form (``m2``, ``lam4``)."""
        check_coupling_keys(couplings, cls.coupling_keys, cls.theory)
        c = {k: v for k, v in couplings.items() if v is not None}
        hopping, standard = ("kappa" in c or "lam" in c), ("m2" in c or "lam4" in c)
        if hopping and standard:
            raise ValueError("kappa: give either (kappa, lam) or (m2, lam4), not both")
        if standard:
            if "m2" not in c or "lam4" not in c:
                raise ValueError(f"m2 and lam4 are both needed for the standard form, got m2={c.get('m2')}, "
                                 f"lam4={c.get('lam4')}")
            return cls.from_standard(shape, m2=c["m2"], lam4=c["lam4"])
        if "kappa" not in c:
            raise ValueError("kappa is required for theory phi4 (or give m2 and lam4)")
        return cls(shape, kappa=c["kappa"], lam=c.get("lam", 0.0))

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

    # -- one site given its neighbours (the decimation of `latticeflow.flows.site_conditional`) ------------------
    def site_potential(self, phi: torch.Tensor) -> torch.Tensor:
        """U(φ) = (1 − 2λ)φ² + λφ⁴, the on-site part of S, elementwise.

        A site x given the rest has the density p(φ_x | rest) ∝ exp(−U(φ_x) + b_x φ_x), b_x = `neighbour_field`.

        Example:
            >>> Phi4((4, 4), kappa=0.3, lam=0.5).site_potential(torch.tensor([0.0, 1.0, 2.0])).tolist()
            [0.0, 0.5, 8.0]
        """
        phi2 = phi * phi
        return (1 - 2 * self.lam) * phi2 + self.lam * phi2 * phi2

    def neighbour_field(self, phi: torch.Tensor) -> torch.Tensor:
        """b_x = 2κ Σ_{±μ} φ_{x±μ̂}, ``(B, L0, …) -> (B, L0, …)``: the field a site feels from its 2d neighbours,
        S = Σ_x [U(φ_x) − ½ b_x φ_x]."""
        return 2 * self.kappa * sum(shift(phi, mu, 1, self.ndim) + shift(phi, mu, -1, self.ndim)
                                    for mu in range(self.ndim))

    def quadratic_kernel(self) -> np.ndarray:
        """A(p) = 2(1 − 2λ) − 4κ Σ_μ cos p_μ: the quadratic part S₂ = ½ Σ_p A(p)|φ̃_p|²/V of the action
        on the FFT momentum grid (numpy order, float64); the free-field kernel at λ = 0."""
        return 2.0 * (1.0 - 2.0 * self.lam) - 4.0 * self.kappa * momentum_cos_sum(self.shape)

    @property
    def free(self) -> bool:
        """λ = 0 with 0 < κ < 1/(2d): the Gaussian free field, solved exactly (`actions.exact`)."""
        return self.lam == 0.0 and 0 < self.kappa < 1 / (2 * self.ndim)

    # -- the physics a flow starts from (`actions.phi4_variational`) -------------------------------
    def gaussian_vacuum(self, vacua: str | bool = "auto") -> "phi4_variational.GaussianVacuum":
        """The Gaussian variational vacuum: ``vacua`` False is the symmetric (Hartree) one, φ₀ = 0 and
        K = A + 12λσ²; True the broken one, ½N(+φ₀, 1/K) + ½N(−φ₀, 1/K) (``ValueError`` where there is
        none); ``"auto"`` the one of lower variational free energy F = KL(q‖p) − ln Z.

        Example:
            >>> Phi4((8, 8), kappa=0.2, lam=0.0).gaussian_vacuum().broken
            False
            >>> vacuum = Phi4((16, 8), kappa=0.3, lam=0.022).gaussian_vacuum()
            >>> vacuum.broken, vacuum.kernel.shape
            (True, (16, 8))
        """
        return phi4_variational.choose_vacuum(self, vacua)

    def gaussian_free_energy(self, phi0: float, kernel: np.ndarray) -> float:
        """F = ⟨S⟩_q − H[q] of the Gaussian N(φ₀·1, F⁻¹ diag(1/K(p)) F) (`actions.phi4_variational`)."""
        return phi4_variational.gaussian_free_energy(self, phi0, kernel)

    def mean_field_magnetization(self) -> float:
        """v ≥ 0 minimising the constant-field action density (1 − 2λ − 2dκ)m² + λm⁴; 0 where p(m) is unimodal."""
        return phi4_variational.mean_field_magnetization(self)

    def mean_field_magnetization_density(self, m: np.ndarray) -> np.ndarray:
        """Unnormalised p(m) ∝ exp(−S(m·1)) = exp(−V[(1 − 2λ − 2dκ)m² + λm⁴]) on the grid ``m`` (max 1).

        Example:
            >>> Phi4((4, 4), kappa=0.3, lam=0.022).mean_field_magnetization_density(np.array([0.0])).tolist()
            [1.0]
        """
        return phi4_variational.mean_field_magnetization_density(self, m)

    # -- analysis -----------------------------------------------------------------------------------
    def table_rows(self) -> list[TableRow]:
        """m, |m|, χ₂ = V⟨m²⟩, χ = V(⟨m²⟩ − ⟨|m|⟩²), U = 1 − ⟨m⁴⟩/(3⟨m²⟩²), ξ₂/L (`second_moment_xi` of χ₂ and
        F = ⟨fourier_pmin⟩, L = L0; negative where χ₂/F < 1), S/V, G(t, 0, …) at t = 0, 1, L0/2 (exact free-field values at λ = 0)."""
        v = float(self.volume)
        free = self.free
        g = exact.free_field_propagator(self.shape, self.kappa) if free else None
        origin = (0,) * (self.ndim - 1)
        rows = [
            TableRow("m", ("m",), exact=0.0, main=True),
            TableRow("|m|", ("abs_m",), main=True),
            TableRow("chi2 = V<m^2>", ("m2",), factor=v, main=True,
                     exact=exact.free_field_chi2(self.shape, self.kappa) if free else None),
            TableRow("chi = V(<m^2>-<|m|>^2)", ("m2", "abs_m"), func=lambda m2, am: v * (m2 - am**2)),
            TableRow("binder U", ("m4", "m2"), func=lambda m4, m2: 1 - m4 / (3 * m2**2), exact=0.0 if free else None),
        ]
        length = self.shape[0]
        if length > 1:
            rows.append(TableRow("xi/L", ("m2", "fourier_pmin"),
                                 func=lambda m2, f: second_moment_xi(v * m2, f, length, signed=True) / length,
                                 exact=exact.free_field_second_moment_xi(self.shape, self.kappa) / length
                                 if free else None))
        rows += [
            TableRow("S/V", ("action_density",), main=True,
                     exact=exact.free_field_action_density() if free else None),
        ]
        for t in sorted({0, 1, self.shape[0] // 2}):
            if t < self.shape[0]:
                idx = (t, *origin)
                name = f"G({','.join(map(str, idx))})" if self.ndim != 2 else f"G({t},0)"
                rows.append(TableRow(name, (("two_point", idx),), exact=float(g[idx]) if free else None))
        return rows

    def two_point_exact(self) -> np.ndarray | None:
        """The exact G(x) (free field) or None."""
        return exact.free_field_propagator(self.shape, self.kappa) if self.free else None

    def log_z_exact(self) -> float | None:
        return exact.free_field_log_z(self.shape, self.kappa) if self.free else None

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
        """C(t) = Σ_y G(t, y) per configuration (t along axis 0, y the other d − 1 axes), ``(B, L0)``."""
        return self.two_point(phi).flatten(2).sum(-1) if self.ndim > 1 else self.two_point(phi)

    def fourier_pmin(self, phi: torch.Tensor) -> torch.Tensor:
        """F = |φ̃(p_min)|²/V averaged over the lowest nonzero momenta p_min = 2π/L e_μ of the axes μ of
        extent L = L0 (all d axes on a hypercube), φ̃(p) = Σ_x φ_x e^{ipx}; ``(B,)``.

        Each |φ̃|² is that of the profile Σ_{x⊥} φ_x along μ: O(V) work, no FFT of the whole lattice.
        """
        length = self.shape[0]
        n = torch.arange(length, dtype=phi.dtype, device=phi.device)
        cos, sin = torch.cos(2 * math.pi * n / length), torch.sin(2 * math.pi * n / length)
        axes = [mu for mu, extent in enumerate(self.shape) if extent == length]
        total = torch.zeros(phi.shape[0], dtype=phi.dtype, device=phi.device)
        for mu in axes:
            others = tuple(1 + nu for nu in range(self.ndim) if nu != mu)
            profile = phi.sum(dim=others) if others else phi  # (B, L)
            total = total + (profile @ cos) ** 2 + (profile @ sin) ** 2
        return total / (len(axes) * self.volume)

    def observables(self, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-configuration measurements (first axis B): m, |m|, m², m⁴, S/V, F = |φ̃(p_min)|²/V
        (`fourier_pmin`), G(x) ``(B, *shape)``, C(t) ``(B, L0)``; m = V⁻¹ Σ_x φ_x, G(x) = V⁻¹ Σ_y φ_y φ_{y+x},
        C(t) = Σ_y G(t, y).

        Ensemble quantities follow from these: χ₂ = V⟨m²⟩, χ = V(⟨m²⟩ − ⟨|m|⟩²),
        U = 1 − ⟨m⁴⟩/(3⟨m²⟩²), ξ₂ = √((χ₂/⟨F⟩ − 1)/(4 sin²(π/L))), m_eff(t) = arccosh[(C(t−1) + C(t+1))/(2C(t))].
        """
        m = self.magnetization(phi)
        g = self.two_point(phi)
        return {
            "m": m,
            "abs_m": m.abs(),
            "m2": m**2,
            "m4": m**4,
            "action_density": self.action(phi) / self.volume,
            "fourier_pmin": self.fourier_pmin(phi),
            "two_point": g,
            "zero_momentum_correlator": g.flatten(2).sum(-1) if self.ndim > 1 else g,
        }
