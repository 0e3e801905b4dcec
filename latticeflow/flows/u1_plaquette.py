"""Plaquette-marginal layer for 2D U(1) on the torus: the character-expansion structure as a flow layer.

On an L0 × L1 torus the Wilson measure factorises over plaquettes up to one global constraint:
    Z = Σ_n I_n(β)^V,   p(P) ∝ Π_x e^{β cos P_x} on {Σ_x P_x ∈ 2πℤ},
and the n ≠ 0 terms are suppressed by (I₁/I₀)^V (0.3 % at 8×8, β = 6). Under the uniform (Haar) base the
V − 1 plaquettes P_1 … P_{V−1} are independent and uniform; the last, P_V = −Σ_{x<V} P_x mod 2π, is fixed
by them. This layer maps, with two learned circular RQ splines (Rezende et al., ICML 2020):
  A. every P_x, x < V, by the bulk spline h: P_x → h(P_x); P_V absorbs −Σ_x (h(P_x) − P_x);
  B. P_V by the last spline h_V, and spreads its change evenly over the others:
     P_V → h_V(P_V),  P_x → P_x − (h_V(P_V) − P_V)/(V − 1)   (the changes δ sum to zero).
Q = Σ_x P_x/2π (wrapped plaquettes) is not kept: it comes from the winding of P_V, and with the product
measure its distribution is nearly the exact one.
Both splines start at the quantile map of the theory's single-plaquette density e^{β cos P}/(2π I₀(β))
(`U1Gauge.plaquette_marginal_log_density`: the physics stays in `actions`). In Gaussian
approximation step B is the exact conditioning of independent plaquettes on their sum; with the quantile
initialisation the reverse ESS at step 0 is 0.98 at 8×8, β = 2, and 0.84 at β = 6 (0.96 at 16×16, β = 6).

In the coordinates (P_{x<V}, gauge, holonomies) the map is triangular with log-det
Σ_{x<V} log h'(P_x) + log h_V'(P_V^A). The links absorb the plaquette changes δ (Σ δ = 0) through the fixed
integer solve `link_update` (a spanning-tree-like choice: θ₁ on the row x₁ = 0, then θ₀), so the change
depends on plaquettes only: gauge equivariant, the density gauge invariant. The special plaquette
(L0 − 1, L1 − 1) and the solve break translation equivariance (the couplings after it keep theirs).
The score hooks use autograd through this cheap, closed-form map and its closed-form inverse.
This is specific to two dimensions, where plaquettes are independent variables; see the README.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from actions.u1 import U1Gauge, wrap
from .base import Bijection, FlowError
from .splines import rq_spline, rq_spline_inverse, rq_spline_params

__all__ = ["PlaquetteMarginal", "link_update", "marginal_spline_init"]

#: log ρ(P) of one plaquette angle, elementwise on a float64 tensor (`U1Gauge.plaquette_marginal_log_density`)
LogDensity = Callable[[torch.Tensor], torch.Tensor]


def link_update(delta: torch.Tensor) -> torch.Tensor:
    """Link changes δθ ``(B, 2, L0, L1)`` whose plaquettes are ``delta: (B, L0, L1)`` (needs Σ_x δ_x = 0).

    With P(x) = θ₀(x) + θ₁(x+0̂) − θ₀(x+1̂) − θ₁(x): column sums C(x₀) = Σ_{x₁} δ(x₀, x₁) are carried by
    δθ₁(x₀, 0) = Σ_{y<x₀} C(y); the rest, column by column, by δθ₀(x₀, x₁) = −Σ_{y<x₁} δ'(x₀, y).
    """
    col = delta.sum(2)  # (B, L0)
    t1_row = torch.cumsum(col, 1) - col  # exclusive cumulative sum over x0
    resid = delta.clone()
    resid[:, :, 0] = resid[:, :, 0] - col
    t0 = -(torch.cumsum(resid, 2) - resid)
    t1 = torch.zeros_like(delta)
    t1[:, :, 0] = t1_row
    return torch.stack([t0, t1], 1)


#: floors of the marginal splines: the von Mises tails carry masses far below the couplings' MIN_BIN
MARGINAL_MIN_BIN = 1e-6
MARGINAL_MIN_DERIVATIVE = 1e-6


def _inv_softplus(v: np.ndarray) -> np.ndarray:
    return v + np.log(-np.expm1(-v))


def marginal_spline_init(log_density: LogDensity, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (widths, heights, derivatives) of the circular RQ spline s ≈ −π + 2π F(P), F the CDF of the
    single-plaquette density ρ = exp(log_density) (e.g. e^{β cos P}/(2π I₀(β))): equal bins in P, heights
    2π·(bin masses), knot slopes 2π ρ(P_k); ρ is normalised again by trapezoid quadrature, then inverted
    through the parametrisation of `rq_spline_params` with the floors MARGINAL_MIN_BIN / _DERIVATIVE."""

    def density(p: np.ndarray) -> np.ndarray:
        return np.exp(log_density(torch.as_tensor(p, dtype=torch.float64)).detach().cpu().numpy())

    grid = np.linspace(-math.pi, math.pi, 64 * n_bins * 64 + 1)
    dens = density(grid)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    norm = cdf[-1]
    knots = np.linspace(-math.pi, math.pi, n_bins + 1)
    mass = np.diff(np.interp(knots, grid, cdf / norm))
    frac = np.maximum((mass - MARGINAL_MIN_BIN) / (1 - n_bins * MARGINAL_MIN_BIN), 1e-30)
    slope = 2 * math.pi * density(knots[:-1]) / norm  # δ_0 = δ_K at ±π, then interior
    shift = math.log(math.expm1(1.0 - MARGINAL_MIN_DERIVATIVE))
    raw_d = _inv_softplus(np.maximum(slope - MARGINAL_MIN_DERIVATIVE, 1e-30)) - shift
    return np.zeros(n_bins), np.log(frac), raw_d


class _CircleSpline(nn.Module):
    """A learned circular RQ spline s, shared by all plaquettes, used as the CDF side: the layer's forward
    map is h = s⁻¹ (uniform → marginal), its inverse h⁻¹ = s; both closed form."""

    def __init__(self, log_density: LogDensity, n_bins: int) -> None:
        super().__init__()
        w, h, d = marginal_spline_init(log_density, n_bins)
        self.raw = nn.Parameter(torch.tensor(np.stack([w, h, d]), dtype=torch.get_default_dtype()))

    def _knots(self, like: torch.Tensor):
        kx, ky, d = rq_spline_params(self.raw[0], self.raw[1], self.raw[2], -math.pi, math.pi, circular=True,
                                     min_bin=MARGINAL_MIN_BIN, min_derivative=MARGINAL_MIN_DERIVATIVE)
        shape = (*like.shape, kx.shape[-1])
        return kx.expand(shape), ky.expand(shape), d.expand(shape)

    def forward(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h(p), log h'(p)) with h = s⁻¹."""
        y, log_sprime = rq_spline_inverse(p, *self._knots(p))
        return y, -log_sprime

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h⁻¹(y), log h'(h⁻¹(y))) = (s(y), −log s'(y))."""
        p, log_sprime, _ = rq_spline(y, *self._knots(y))
        return p, -log_sprime


class PlaquetteMarginal(Bijection):
    """The plaquette-marginal layer on link angles ``theta: (B, 2, L0, L1)`` (see the module docstring).

    ``log_density``: the single-plaquette log density its splines start from, asked of the theory by
    `from_action` (`U1Gauge.plaquette_marginal_log_density`); used at construction only.
    """

    def __init__(self, shape: Sequence[int], log_density: LogDensity, n_bins: int = 32) -> None:
        super().__init__()
        if len(shape) != 2:
            raise FlowError(f"flow: the plaquette-marginal layer needs a 2D lattice, got shape {list(shape)}")
        if n_bins < 2:
            raise FlowError(f"flow.marginal_bins must be an integer >= 2, got {n_bins}")
        self.shape = tuple(shape)
        self.n_plaq = shape[0] * shape[1]
        self.bulk = _CircleSpline(log_density, n_bins)
        self.last = _CircleSpline(log_density, n_bins)

    @classmethod
    def from_action(cls, action: U1Gauge, n_bins: int = 32) -> "PlaquetteMarginal":
        """The layer for ``action``, initialised from its `plaquette_marginal_log_density`."""
        return cls(action.shape, action.plaquette_marginal_log_density, n_bins)

    def _delta(self, d_bulk: torch.Tensor, d_last: torch.Tensor) -> torch.Tensor:
        """Plaquette changes (B, L0, L1) of steps A (bulk d_bulk, B × (V−1)) and B (d_last, B)."""
        v = self.n_plaq
        d_a_last = -d_bulk.sum(1)
        full = torch.cat([d_bulk - (d_last / (v - 1)).unsqueeze(1), (d_a_last + d_last).unsqueeze(1)], 1)
        return full.view(-1, *self.shape)

    def _plaquettes(self, theta: torch.Tensor) -> torch.Tensor:
        if tuple(theta.shape[2:]) != self.shape:
            raise FlowError(f"field shape {tuple(theta.shape[1:])} does not match the layer's {(2, *self.shape)}")
        return wrap(U1Gauge.plaquettes(theta)).flatten(1)

    def forward(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self._plaquettes(theta)
        h_bulk, ld_bulk = self.bulk(p[:, :-1])
        d_bulk = h_bulk - p[:, :-1]
        p_last = wrap(p[:, -1] - d_bulk.sum(1))
        h_last, ld_last = self.last(p_last)
        delta = self._delta(d_bulk, h_last - p_last)
        return wrap(theta + link_update(delta)), ld_bulk.sum(1) + ld_last

    def inverse(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self._plaquettes(theta)
        p_last, ld_last = self.last.inverse(p[:, -1])
        d_last = p[:, -1] - p_last
        q_bulk = wrap(p[:, :-1] + (d_last / (self.n_plaq - 1)).unsqueeze(1))
        p_bulk, ld_bulk = self.bulk.inverse(q_bulk)
        delta = self._delta(q_bulk - p_bulk, d_last)
        return wrap(theta - link_update(delta)), -(ld_bulk.sum(1) + ld_last)

    def forward_with_score(self, x: torch.Tensor, g: torch.Tensor):
        """g' = J^{−T}(g − ∇ₓ log|det J|): ∇ logdet by autograd, J^{−T} as the VJP of the inverse map."""
        xg = x if x.requires_grad else x.detach().requires_grad_()
        y, logdet = self.forward(xg)
        (dlog,) = torch.autograd.grad(logdet.sum(), xg, retain_graph=True)
        yd = y.detach().requires_grad_()
        xi, _ = self.inverse(yd)
        (score,) = torch.autograd.grad(xi, yd, grad_outputs=(g - dlog).detach())
        return y, logdet, score.detach()

    def inverse_with_score(self, y: torch.Tensor, r: torch.Tensor):
        """r' = Jᵀ r + ∇ₓ log|det J| at x = T⁻¹(y), by one VJP of the forward map."""
        x, logdet_inv = self.inverse(y)
        xd = x.detach().requires_grad_()
        y2, logdet = self.forward(xd)
        (score,) = torch.autograd.grad((y2 * r.detach()).sum() + logdet.sum(), xd)
        return x, logdet_inv, score.detach()
