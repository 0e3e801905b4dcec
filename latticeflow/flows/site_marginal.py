"""The target of the layers before a `SiteConditional`: the drawn sites integrated out exactly.

With φ⁴ in hopping form, S = Σ_x [U(φ_x) − ½ b_x φ_x], every bond joins an even and an odd site, so

    p(φ_even) ∝ exp(−Σ_{x even} U(φ_x)) Π_{x odd} Z(b_x),   Z(b) = ∫ dφ e^{−U(φ) + bφ},

and the odd sites given the even ones are what `SiteConditional` draws, from q̃(φ | b) ∝ e^{−I[U](φ) + bφ} (I[U]
the chord of U between grid nodes). The layers before it model the even sites only, while the odd entries pass
through as the base's N(0, 1) noise z. Per configuration, log w of the whole flow is log w of the pair (those
layers, this target) plus Σ_odd [ε(φ_x) − c(b_x)], with ε = I[U] − U the grid error and c(b) = E_q̃[ε | b], for

    S_marg(φ_even, z_odd) = Σ_{x even} U(φ_x) − Σ_{x odd} [F(b_x) − ½ z_x² − ½ log 2π],   F = log Z̃ + c,

Z̃ the normaliser of q̃. That sum has mean zero given the even sites, so the pair has exactly the reverse KL of the
whole flow against p, and its path gradient is the whole flow's with the odd sites' grid-error term averaged
out. Reverse-KL training on the pair (`Flow.marginal`, used by `Trainer`) skips the layer's tables at every
odd site, about half of a training step. Its log weights miss only the grid noise, Var ≈ 10⁻⁶ per odd site.
F(b) is tabulated once, in float64, on nodes of spacing 1/32 in b, together with F'(b) by autograd, and is
interpolated by cubic Hermite polynomials (error below 10⁻⁸). Beyond the nodes it continues linearly; it grows as
R|b| there, because q̃ lives on [−R, R].

Example:
    >>> from actions import Phi4
    >>> from latticeflow.flows.site_conditional import SiteConditional
    >>> theory = Phi4((4, 4), kappa=0.3, lam=0.5)
    >>> layer = SiteConditional((4, 4), 1, theory.site_potential, theory.neighbour_field).double()
    >>> target = SiteMarginal(layer, theory.site_potential)
    >>> x = torch.randn(2, 4, 4, dtype=torch.float64)
    >>> target.action(x).shape, target.force(x).shape
    (torch.Size([2]), torch.Size([2, 4, 4]))
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["SiteMarginal", "NODE_SPACING"]

NODE_SPACING = 1 / 32  # h of the log Z̃(b) table
_LOG_2PI = math.log(2 * math.pi)
_SERIES = 1e-4  # below this |d| the series of log((e^d − 1)/d) (error < 1e-12)
_SUB = 6  # Gauss–Legendre points per grid cell for c(b) (the integrand is smooth within a cell)
_CHUNK = 1 << 22  # (b node, point) entries per pass of the table build


def _log_expm1_ratio(d: torch.Tensor) -> torch.Tensor:
    """g(d) = log((e^d − 1)/d), stable for every real d (g(d) = g(|d|) + min(d, 0))."""
    a = d.abs()
    small = a < _SERIES
    a_safe = torch.where(small, torch.ones_like(a), a)
    big = a_safe + torch.log(-torch.expm1(-a_safe)) - torch.log(a_safe)
    return torch.where(small, a / 2 + a * a / 24, big) + d.clamp(max=0)


class SiteMarginal:
    """S_marg of the module docstring: ``action(x) -> (B,)`` and ``force(x) = ∂S_marg/∂x``, for x with the even
    sites' fields and the odd sites' base noise (the input of ``layer``, a `SiteConditional`)."""

    def __init__(self, layer: torch.nn.Module, site_potential: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.layer, self.site_potential = layer, site_potential
        self.neighbour_field = layer.neighbour_field
        shape = tuple(layer.mask.shape)
        # |b| of neighbours at four times the grid bound: the table's end, beyond it the linear continuation
        self.b_max = 4.0 * float(self.neighbour_field(torch.full((1, *shape), layer.bound, dtype=torch.float64)).abs().max())
        self.n_half = int(math.ceil(self.b_max / NODE_SPACING))
        self.h = self.b_max / self.n_half
        b = torch.linspace(-self.b_max, self.b_max, 2 * self.n_half + 1, dtype=torch.float64)
        grid = torch.linspace(-layer.bound, layer.bound, layer.n_grid, dtype=torch.float64)
        rows = max(1, _CHUNK // (layer.n_grid * _SUB))
        with torch.inference_mode(False), torch.enable_grad():
            parts = [_log_z_corrected(grid, site_potential, layer.spacing, bs) for bs in b.split(rows)]
        self._table64 = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Horner coefficients a0…a3 of every cell in t, ``(n − 1, 4)``; F' at the nodes) in ``like``'s dtype."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            f, m = self._table64
            hm = self.h * m
            coef = torch.stack([f[:-1], hm[:-1], -3 * f[:-1] - 2 * hm[:-1] + 3 * f[1:] - hm[1:],
                                2 * f[:-1] + hm[:-1] - 2 * f[1:] + hm[1:]], -1)
            self._tables[key] = (coef.to(device=like.device, dtype=like.dtype), m.to(device=like.device, dtype=like.dtype))
        return self._tables[key]

    def log_z(self, b: torch.Tensor) -> torch.Tensor:
        """F(b) = log Z̃(b) + c(b), elementwise (cubic Hermite on the nodes, linear beyond ±b_max)."""
        coef, m = self._table(b)
        bc = b.clamp(-self.b_max, self.b_max)
        u = bc / self.h + self.n_half
        k = u.detach().floor().long().clamp(0, coef.shape[0] - 1)
        t = u - k
        a = coef.index_select(0, k.reshape(-1)).reshape(*k.shape, 4)  # one row gather per point
        inner = a[..., 0] + t * (a[..., 1] + t * (a[..., 2] + t * a[..., 3]))
        end = torch.where(b > 0, m[-1], m[0])
        return inner + end * (b - bc)

    def action(self, x: torch.Tensor) -> torch.Tensor:
        """S_marg per configuration, ``(B, *shape) -> (B,)``."""
        odd = self.layer.mask
        even_x = torch.where(odd, torch.zeros_like(x), x)
        b = self.neighbour_field(even_x)
        s_even = torch.where(odd, torch.zeros_like(x), self.site_potential(x))
        s_odd = torch.where(odd, 0.5 * x * x + 0.5 * _LOG_2PI - self.log_z(b), torch.zeros_like(x))
        return (s_even + s_odd).flatten(1).sum(-1)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """∂S_marg/∂x (autograd through `action`)."""
        with torch.enable_grad():
            x_ = x.detach().requires_grad_()
            (g,) = torch.autograd.grad(self.action(x_).sum(), x_)
        return g


def _log_z_corrected(grid: torch.Tensor, site_potential: Callable[[torch.Tensor], torch.Tensor], spacing: float,
                     b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F(b) = log Z̃(b) + c(b) and dF/db (autograd, float64) for the b of a chunk: Z̃ the normaliser of the
    piecewise-exponential density of `SiteConditional` (f_b the linear interpolation of −U + bφ on ``grid``),
    c(b) = E_q̃[I[U] − U | b] (I[U] the chord of U) by Gauss–Legendre with `_SUB` points per cell."""
    b = b.detach().requires_grad_()
    node_u = site_potential(grid)
    f = -node_u + b.unsqueeze(-1) * grid
    d = f[..., 1:] - f[..., :-1]  # a cell of exponent step d holds e^{f_k} Δ (e^d − 1)/d
    log_z = torch.logsumexp(f[..., :-1] + math.log(spacing) + _log_expm1_ratio(d), -1)
    nodes, weights = np.polynomial.legendre.leggauss(_SUB)  # on [−1, 1]
    t = torch.as_tensor((nodes + 1) / 2, dtype=grid.dtype)  # within a cell, in units of Δ
    w = torch.as_tensor(weights / 2, dtype=grid.dtype).repeat(grid.numel() - 1)
    phi = (grid[:-1].unsqueeze(-1) + spacing * t).flatten()
    chord = (node_u[:-1].unsqueeze(-1) * (1 - t) + node_u[1:].unsqueeze(-1) * t).flatten()
    eps = chord - site_potential(phi)  # I[U] − U, the grid error of log q̃ at φ
    log_q = -chord + b.unsqueeze(-1) * phi - log_z.unsqueeze(-1)
    c = (torch.exp(log_q) * eps * w).sum(-1) * spacing
    value = log_z + c
    (slope,) = torch.autograd.grad(value.sum(), b)
    return value.detach(), slope
