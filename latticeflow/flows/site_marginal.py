"""The target of the layers before a `SiteConditional`: the drawn sites integrated out exactly.

With φ⁴ in hopping form, S = Σ_x [U(φ_x) − ½ b_x φ_x], every bond joins an even and an odd site, so

    p(φ_even) ∝ exp(−Σ_{x even} U(φ_x)) Π_{x odd} Z(b_x),   Z(b) = ∫ dφ e^{−U(φ) + bφ},

and the odd sites given the even ones are what `SiteConditional` draws. The layers before it model the even
sites only, while the odd entries pass through as the base's N(0, 1) noise z. The pair (those layers, this
target) therefore has the same reverse KL as the whole flow against p, up to the grid error of
`SiteConditional`'s density (Var log(p/q) ~ 10⁻⁶ per odd site):

    S_marg(φ_even, z_odd) = Σ_{x even} U(φ_x) − Σ_{x odd} [log Z̃(b_x) − ½ z_x² − ½ log 2π],

where Z̃ is the normaliser of the density the layer actually samples. Reverse-KL training on this pair skips the
layer's tables of every odd site (about half of a training step), and the odd sites add no noise to the
path gradient. log Z̃(b) is tabulated once per device and dtype on nodes of spacing 1/32 in b, with
its derivative E_q̃[φ | b] (autograd in float64), and interpolated by cubic Hermite polynomials (error
~h⁴ κ₄/384 ≲ 10⁻⁸); beyond the nodes it continues linearly (log Z̃ grows as R|b| there: q̃ lives on [−R, R]).

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

import torch

__all__ = ["SiteMarginal", "NODE_SPACING"]

NODE_SPACING = 1 / 32  # h of the log Z̃(b) table
_LOG_2PI = math.log(2 * math.pi)
_SERIES = 1e-4  # below this |d| the series of log((e^d − 1)/d) (error < 1e-12)


def _log_expm1_ratio(d: torch.Tensor) -> torch.Tensor:
    """g(d) = log((e^d − 1)/d), stable for every real d (g(d) = g(|d|) + min(d, 0))."""
    a = d.abs()
    small = a < _SERIES
    a_safe = torch.where(small, torch.ones_like(a), a)
    big = a_safe + torch.log(-torch.expm1(-a_safe)) - torch.log(a_safe)
    return torch.where(small, a / 2 + a * a / 24, big) + d.clamp(max=0)


class SiteMarginal:
    """S_marg of the module docstring: ``action(x) -> (B,)`` and ``force(x) = ∂S_marg/∂x``, for x with the even
    sites' fields and the odd sites' base noise (the input of ``layer``)."""

    def __init__(self, layer, site_potential: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.layer, self.site_potential = layer, site_potential
        self.neighbour_field = layer.neighbour_field
        shape = tuple(layer.mask.shape)
        # |b| of neighbours at four times the grid bound: the table's end, beyond it the linear continuation
        self.b_max = 4.0 * float(self.neighbour_field(torch.full((1, *shape), layer.bound, dtype=torch.float64)).abs().max())
        n = int(math.ceil(self.b_max / NODE_SPACING))
        self.h = self.b_max / n
        b = torch.linspace(-self.b_max, self.b_max, 2 * n + 1, dtype=torch.float64, requires_grad=True)
        grid = torch.linspace(-layer.bound, layer.bound, layer.n_grid, dtype=torch.float64)
        with torch.enable_grad():
            log_z = _log_z(grid, -site_potential(grid), layer.spacing, b)
            (dlog_z,) = torch.autograd.grad(log_z.sum(), b)
        self._table64 = (log_z.detach(), dlog_z.detach())
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = tuple(t.to(device=like.device, dtype=like.dtype) for t in self._table64)
        return self._tables[key]

    def log_z(self, b: torch.Tensor) -> torch.Tensor:
        """log Z̃(b), elementwise (cubic Hermite on the nodes, linear beyond ±b_max)."""
        f, m = self._table(b)
        bc = b.clamp(-self.b_max, self.b_max)
        u = (bc + self.b_max) / self.h
        k = u.detach().floor().long().clamp(0, f.numel() - 2)
        t = u - k
        t2, t3 = t * t, t * t * t
        inner = ((2 * t3 - 3 * t2 + 1) * f[k] + (t3 - 2 * t2 + t) * self.h * m[k]
                 + (-2 * t3 + 3 * t2) * f[k + 1] + (t3 - t2) * self.h * m[k + 1])
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


def _log_z(grid: torch.Tensor, log_density: torch.Tensor, spacing: float, b: torch.Tensor) -> torch.Tensor:
    """log ∫ e^{f_b} over the piecewise-exponential density of `SiteConditional` (f_b the linear interpolation of
    log_density + bφ on ``grid``), for every b."""
    f = log_density + b.unsqueeze(-1) * grid
    d = f[..., 1:] - f[..., :-1]  # a cell of exponent step d holds e^{f_k} Δ (e^d − 1)/d
    return torch.logsumexp(f[..., :-1] + math.log(spacing) + _log_expm1_ratio(d), -1)
