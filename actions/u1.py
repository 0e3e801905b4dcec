"""Two-dimensional compact U(1) lattice gauge theory with the Wilson action (Wilson 1974).

Links ``theta: (B, 2, L0, L1)`` are angles, kept wrapped to (−π, π] (`wrap`).
Plaquette  P(x) = θ₀(x) + θ₁(x+0̂) − θ₀(x+1̂) − θ₁(x),  action  S = −β Σ_x cos P(x),
force      ∂S/∂θ₀(x) = β[sin P(x) − sin P(x−1̂)],  ∂S/∂θ₁(x) = β[sin P(x−0̂) − sin P(x)].
Gauge transformation θ_μ(x) → θ_μ(x) + α(x) − α(x+μ̂) leaves every P(x) invariant.
Geometric topological charge Q = (2π)⁻¹ Σ_x wrap(P(x)), an integer on the torus.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import exact
from .lattice import shift, validate_shape
from .theory import TableRow, Theory

__all__ = ["U1Gauge", "wrap", "charge_configuration", "winding_field"]


def wrap(angle: torch.Tensor) -> torch.Tensor:
    """Map angles to (−π, π]: wrap(x) = π − ((π − x) mod 2π)."""
    return math.pi - torch.remainder(math.pi - angle, 2 * math.pi)


def charge_configuration(shape: Sequence[int], q: int) -> torch.Tensor:
    """A configuration ``theta: (2, L0, L1)`` (float64, angles in [−π, π)) in the topological sector Q = ``q``:
    every plaquette angle is 2πQ/V. θ₁(x) = 2πQ x₀/V, and θ₀ = −2πQ x₁/L1 on the last row x₀ = L0 − 1 (the
    twist that closes the torus); a start for chains that HMC does not move between sectors.

    Example:
        >>> u1 = U1Gauge((4, 4), beta=1.0)
        >>> u1.topological_charge(charge_configuration((4, 4), 2)[None])
        tensor([2.], dtype=torch.float64)
    """
    l0, l1 = shape
    volume = l0 * l1
    x0 = torch.arange(l0, dtype=torch.float64).view(-1, 1).expand(l0, l1)
    x1 = torch.arange(l1, dtype=torch.float64).view(1, -1).expand(l0, l1)
    theta1 = 2 * math.pi * q * x0 / volume
    theta0 = torch.where(x0 == l0 - 1, -2 * math.pi * q * x1 / l1, torch.zeros_like(x0))
    return torch.remainder(torch.stack([theta0, theta1]) + math.pi, 2 * math.pi) - math.pi


def winding_field(shape: Sequence[int], size: int | None = None) -> torch.Tensor:
    """Link angles ``(2, L0, L1)`` (float64) of a unit instanton: every plaquette of the ``size`` × ``size``
    square at the origin (the whole lattice where ``size`` is None) turns by 2π/size² (2π/V), one of them by
    2π/size² − 2π instead (the same modulo 2π), all other plaquettes by 0; Q changes by +1 (the winding moves of
    Albandea, Hernández, Ramos, Romero-López, arXiv 2106.14234). For a square, only links inside it move
    (those on its edges and outside stay): the minimum-norm solution of ΔP = f on those links (least squares,
    exact since Σ f = 0 and the square's links reach every f with zero sum). The whole lattice gives the
    uniform-flux instanton with Polyakov loops on average unchanged.

    Example:
        >>> w = winding_field((6, 6), 4)
        >>> p = U1Gauge.plaquettes(w[None])[0]
        >>> round(float(wrap(p).sum() / (2 * math.pi)), 9), round(float(p[1, 1] * 16 / (2 * math.pi)), 9)
        (1.0, 1.0)
    """
    l0, l1 = (int(n) for n in shape)
    volume = l0 * l1
    whole = size is None or size == l0 == l1
    if not whole and not 2 <= int(size) < min(l0, l1):
        raise ValueError(f"winding_size must be in [2, {min(l0, l1) - 1}] or 0 (the whole lattice), got {size}")
    n = volume if whole else int(size) ** 2
    f = np.zeros((l0, l1))
    inside = np.ones((l0, l1), bool) if whole else np.zeros((l0, l1), bool)
    if not whole:
        inside[:size, :size] = True
    f[inside] = 2 * math.pi / n
    f[0, 0] -= 2 * math.pi
    # plaquette incidence: P(x) = θ₀(x) + θ₁(x+0̂) − θ₀(x+1̂) − θ₁(x), links indexed (μ, x0, x1)
    idx = np.arange(2 * volume).reshape(2, l0, l1)
    b = np.zeros((volume, 2 * volume))
    for x0 in range(l0):
        for x1 in range(l1):
            row = x0 * l1 + x1
            for link, sign in ((idx[0, x0, x1], 1), (idx[1, (x0 + 1) % l0, x1], 1), (idx[0, x0, (x1 + 1) % l1], -1),
                               (idx[1, x0, x1], -1)):
                b[row, link] += sign
    if whole:
        free = np.ones(2 * volume, bool)
    else:  # links strictly inside the square (both ends inside, not on its edges)
        free = np.zeros((2, l0, l1), bool)
        free[0, :size, 1:size] = True  # θ₀(x) from x to x + 0̂ with 0 < x₁ < size
        free[1, 1:size, :size] = True  # θ₁(x) from x to x + 1̂ with 0 < x₀ < size
        free = free.ravel()
    theta = np.zeros(2 * volume)
    theta[free] = np.linalg.lstsq(b[:, free], f.ravel(), rcond=None)[0]
    return torch.from_numpy(theta.reshape(2, l0, l1))


class U1Gauge(Theory):
    """2D U(1) Wilson gauge theory at coupling ``beta`` (β) on a periodic L0 × L1 lattice.

    Example:
        >>> u1 = U1Gauge(shape=(4, 4), beta=2.0)
        >>> u1.action(torch.zeros(1, 2, 4, 4, dtype=torch.float64))
        tensor([-32.], dtype=torch.float64)
    """

    theory = "u1"
    coupling_keys = ("beta",)
    histogram_observable = "topological_charge"
    cost_observable = "Q"
    cost_estimate = "chi_t = <Q^2>/V"
    scan_observables = ("<cos P>", "chi_t = <Q^2>/V")

    def __init__(self, shape: Sequence[int], beta: float) -> None:
        self.shape = validate_shape(shape, "shape")
        if len(self.shape) != 2:
            raise ValueError(f"shape must have 2 extents for 2D U(1), got {list(self.shape)}")
        beta = float(beta)
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = beta

    @property
    def couplings(self) -> dict[str, float]:
        return {"beta": self.beta}

    @property
    def field_shape(self) -> tuple[int, ...]:
        return (2, *self.shape)

    @property
    def volume(self) -> int:
        """Number of plaquettes V = L0 L1."""
        return math.prod(self.shape)

    def hot_start(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform link angles in (−π, π]."""
        x = (torch.rand((n, *self.field_shape), generator=generator, dtype=dtype, device=device) * 2 - 1) * math.pi
        return wrap(x)

    def __repr__(self) -> str:
        return f"U1Gauge(shape={self.shape}, beta={self.beta})"

    # -- geometry -----------------------------------------------------------------------------------
    @staticmethod
    def plaquettes(theta: torch.Tensor) -> torch.Tensor:
        """P(x) = θ₀(x) + θ₁(x+0̂) − θ₀(x+1̂) − θ₁(x), not wrapped; ``(B, 2, L0, L1) -> (B, L0, L1)``."""
        t0, t1 = theta[:, 0], theta[:, 1]
        return t0 + shift(t1, 0, 1) - shift(t0, 1, 1) - t1

    @staticmethod
    def gauge_transform(theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """θ_μ(x) → wrap(θ_μ(x) + α(x) − α(x+μ̂)); ``alpha: (B, L0, L1)``."""
        out = torch.stack([theta[:, mu] + alpha - shift(alpha, mu, 1) for mu in range(2)], dim=1)
        return wrap(out)

    def symmetry(self, theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random gauge transformation of ``theta`` (the theory's local symmetry)."""
        alpha = (torch.rand(theta.shape[0], *self.shape, generator=generator, dtype=theta.dtype,
                            device="cpu") * 2 * math.pi - math.pi).to(theta.device)
        return self.gauge_transform(theta, alpha)

    def project(self, theta: torch.Tensor) -> torch.Tensor:
        """Bring link angles back to the documented range (−π, π] (used by HMC after each update)."""
        return wrap(theta)

    # -- action and force ---------------------------------------------------------------------------
    def action(self, theta: torch.Tensor) -> torch.Tensor:
        """S = −β Σ_x cos P(x), ``(B,)``."""
        return -self.beta * torch.cos(self.plaquettes(theta)).flatten(1).sum(-1)

    def force(self, theta: torch.Tensor) -> torch.Tensor:
        """∂S/∂θ_μ(x), ``(B, 2, L0, L1)`` (see the module docstring)."""
        sin_p = torch.sin(self.plaquettes(theta))
        f0 = sin_p - shift(sin_p, 1, -1)
        f1 = shift(sin_p, 0, -1) - sin_p
        return self.beta * torch.stack([f0, f1], dim=1)

    def plaquette_marginal_log_density(self, p: torch.Tensor) -> torch.Tensor:
        """log ρ(P) = β cos P − log(2π I₀(β)) of one plaquette angle ``p`` (any shape, elementwise).

        The density of one plaquette when the torus constraint Σ_x P_x ∈ 2πℤ is dropped (the n = 0 term of the
        character expansion; exact on an open lattice). Written as β(cos P − 1) − log(2π e^{−β} I₀(β)), which
        stays finite at any β.
        """
        i0e = float(torch.special.i0e(torch.tensor(self.beta, dtype=torch.float64)))
        return self.beta * (torch.cos(p) - 1.0) - math.log(2 * math.pi * i0e)

    # -- observables --------------------------------------------------------------------------------
    def topological_charge(self, theta: torch.Tensor) -> torch.Tensor:
        """Q = (2π)⁻¹ Σ_x wrap(P(x)), rounded to the integer it is up to round-off; ``(B,)`` floats."""
        q = wrap(self.plaquettes(theta)).flatten(1).sum(-1) / (2 * math.pi)
        return torch.round(q)

    def mean_plaquette(self, theta: torch.Tensor) -> torch.Tensor:
        """V⁻¹ Σ_x cos P(x), ``(B,)``."""
        return torch.cos(self.plaquettes(theta)).flatten(1).mean(-1)

    def wilson_loop(self, theta: torch.Tensor, r: int, t: int) -> torch.Tensor:
        """Re W(r × t) averaged over positions, ``(B,)``.

        By Stokes' theorem on the lattice the loop angle of a contractible r × t rectangle is the sum of
        the plaquette angles it encloses, so W = cos Σ_{x ∈ rect} P(x).
        """
        if not (1 <= r <= self.shape[0] and 1 <= t <= self.shape[1]):
            raise ValueError(f"Wilson loop size must fit the lattice {self.shape}, got {r}x{t}")
        p = self.plaquettes(theta)
        rows = sum(shift(p, 0, i) for i in range(r))
        area = sum(shift(rows, 1, j) for j in range(t))
        return torch.cos(area).flatten(1).mean(-1)

    def polyakov_loop(self, theta: torch.Tensor, mu: int = 0) -> torch.Tensor:
        """|V_⊥⁻¹ Σ_{x⊥} exp(i Σ_{x_μ} θ_μ(x))|, the modulus of the mean Polyakov loop along ``mu``, ``(B,)``."""
        line = theta[:, mu].sum(dim=1 + mu)
        return torch.complex(torch.cos(line), torch.sin(line)).mean(-1).abs()

    # -- analysis -----------------------------------------------------------------------------------
    def table_rows(self) -> list[TableRow]:
        """⟨cos P⟩, S/V, Q, χ_t = ⟨Q²⟩/V, W(1×1), W(2×2) with their exact torus values, |Polyakov loop|."""
        beta, v = self.beta, self.volume
        plaq = exact.u1_mean_plaquette(beta, v)
        return [
            TableRow("<cos P>", ("plaquette",), exact=plaq, main=True),
            TableRow("S/V", ("action_density",), exact=-beta * plaq, main=True),
            TableRow("Q", ("topological_charge",), exact=0.0, main=True),
            TableRow("chi_t = <Q^2>/V", ("q2",), factor=1.0 / v, main=True,
                     exact=exact.u1_topological_susceptibility(beta, v)),
            TableRow("W(1x1)", ("wilson_loop_1x1",), exact=exact.u1_wilson_loop(beta, v, 1)),
            TableRow("W(2x2)", ("wilson_loop_2x2",), exact=exact.u1_wilson_loop(beta, v, 4)),
            TableRow("|Polyakov loop|", ("polyakov_loop",)),
        ]

    def extra_analysis(self, observables: Mapping[str, Any], weights: Any = None) -> dict[str, Any]:
        """The histogram of Q (reweighted with ``weights`` for i.i.d. flow samples) and the exact P(Q)."""
        q = np.asarray(observables["topological_charge"]).round().astype(int)
        values, inverse = np.unique(q, return_inverse=True)
        counts = np.bincount(inverse, weights=weights)
        counts = counts / counts.sum() * len(q)
        qs, probs = exact.u1_charge_distribution(self.beta, self.volume)
        return {"charge_histogram": {"Q": values.tolist(), "count": counts.tolist(),
                                     "exact_Q": np.asarray(qs).tolist(), "exact_P": np.asarray(probs).tolist()}}

    def log_z_exact(self) -> float | None:
        """ln ∫∏dθ e^{−S} (Lebesgue measure: the (2π)^{2V} of the uniform base included)."""
        return exact.u1_log_z(self.beta, self.volume) + 2 * self.volume * math.log(2 * math.pi)

    def observables(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-configuration measurements (first axis B): ⟨cos P⟩, Q, Q², S/V, W(1×1), W(2×2), |Polyakov|."""
        q = self.topological_charge(theta)
        return {
            "plaquette": self.mean_plaquette(theta),
            "topological_charge": q,
            "q2": q**2,
            "action_density": self.action(theta) / self.volume,
            "wilson_loop_1x1": self.wilson_loop(theta, 1, 1),
            "wilson_loop_2x2": self.wilson_loop(theta, 2, 2),
            "polyakov_loop": self.polyakov_loop(theta, 0),
        }
