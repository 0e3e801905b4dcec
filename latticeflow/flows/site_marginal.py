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

__all__ = ["SiteMarginal", "WindowSum", "NODE_SPACING"]

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
        self.b_max = _table_end(layer)
        self.n_half = int(math.ceil(self.b_max / NODE_SPACING))
        self.h = self.b_max / self.n_half
        self._coef64, self._slope64 = _f_table(layer, site_potential, self.h, self.n_half)
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Horner coefficients a0…a3 of every cell in t, ``(n − 1, 4)``; F' at the nodes) in ``like``'s dtype."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = (self._coef64.to(device=like.device, dtype=like.dtype),
                                 self._slope64.to(device=like.device, dtype=like.dtype))
        return self._tables[key]

    def log_z(self, b: torch.Tensor) -> torch.Tensor:
        """F(b) = log Z̃(b) + c(b), elementwise (cubic Hermite on the nodes, linear beyond ±b_max); its backward
        multiplies by F'(b) of the same polynomial, kept from the forward pass (`_HermiteLookup`)."""
        coef, m = self._table(b)
        return _HermiteLookup.apply(b, coef, m[0], m[-1], self.h, self.n_half, self.b_max)

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


class _HermiteLookup(torch.autograd.Function):
    """F(b) from the Horner coefficients of every cell (one row gather per point) and, where b needs a gradient,
    F'(b) = (a1 + 2 a2 t + 3 a3 t²)/h saved for the backward: one multiply instead of autograd through Horner.
    Once differentiable (nothing here takes second derivatives through F)."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, coef: torch.Tensor, low: torch.Tensor, high: torch.Tensor, h: float,
                n_half: int, b_max: float) -> torch.Tensor:
        bc = b.clamp(-b_max, b_max)
        u = bc / h + n_half
        k = u.floor().long().clamp(0, coef.shape[0] - 1)
        t = u - k
        a = coef.index_select(0, k.reshape(-1)).reshape(*k.shape, 4)
        a0, a1, a2, a3 = a.unbind(-1)
        end = torch.where(b > 0, high, low)
        value = a0 + t * (a1 + t * (a2 + t * a3)) + end * (b - bc)
        if ctx.needs_input_grad[0]:
            inside = (b >= -b_max) & (b <= b_max)
            ctx.save_for_backward(torch.where(inside, (a1 + t * (2 * a2 + 3 * t * a3)) / h, end))
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None, None, None, None, None


def _table_end(layer: torch.nn.Module) -> float:
    """b_max: |b| of neighbours at four times the grid bound of ``layer``; beyond it F continues linearly."""
    shape = tuple(layer.mask.shape)
    return 4.0 * float(layer.neighbour_field(torch.full((1, *shape), layer.bound, dtype=torch.float64)).abs().max())


def _f_table(layer: torch.nn.Module, site_potential: Callable[[torch.Tensor], torch.Tensor], h: float,
             n_half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """F on the nodes b_i = (i − n_half) h, i = 0…2 n_half (float64 quadrature, `_log_z_corrected`), as the Horner
    coefficients of the cubic Hermite of every cell in t = (b − b_i)/h, ``(2 n_half, 4)``, and F' at the nodes."""
    b = h * torch.arange(-n_half, n_half + 1, dtype=torch.float64)
    grid = torch.linspace(-layer.bound, layer.bound, layer.n_grid, dtype=torch.float64)
    rows = max(1, _CHUNK // (layer.n_grid * _SUB))
    with torch.inference_mode(False), torch.enable_grad():
        parts = [_log_z_corrected(grid, site_potential, layer.spacing, bs) for bs in b.split(rows)]
    f, slope = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    hm = h * slope
    coef = torch.stack([f[:-1], hm[:-1], -3 * f[:-1] - 2 * hm[:-1] + 3 * f[1:] - hm[1:],
                        2 * f[:-1] + hm[:-1] - 2 * f[1:] + hm[1:]], -1)
    return coef, slope


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


class WindowSum:
    """Σ_j F(a + s g + c_j) at the grid nodes g = 0…G−1 for every row of c ``(n, J)``: the node log-density term
    of `two_level.MarginalSiteConditional` (a = −2κR, s = 2κΔ).

    F is tabulated afresh (float64 quadrature, `_log_z_corrected`) on nodes of spacing h = s/m, m the smallest
    integer with h ≤ `NODE_SPACING`, so a + s g + c_j falls at the same fraction t of its cell at every g: the
    G values of one (row, j) are one gather of cells k₀ + m g and one contraction with (1, t, t², t³), and the
    backward needs only (0, 1, 2t, 3t²)/h. c beyond the table (|c| above ~30κR, far outside any field) is clamped
    and every node continued linearly with the end slope F'(±b_max): not `SiteMarginal.log_z`'s continuation there,
    but a deterministic, continuous function of c, so the density the layer samples (and its log q) stays exact.

    Example:
        >>> from actions import Phi4
        >>> from latticeflow.flows.site_conditional import SiteConditional
        >>> theory = Phi4((4, 4), kappa=0.3, lam=0.5)
        >>> layer = SiteConditional((4, 4), 1, theory.site_potential, theory.neighbour_field)
        >>> table = WindowSum(layer, theory.site_potential, start=-2.4, step=0.6 / 16, n_nodes=129)
        >>> table(torch.zeros(3, 4, dtype=torch.float64)).shape
        torch.Size([3, 129])
    """

    def __init__(self, layer: torch.nn.Module, site_potential: Callable[[torch.Tensor], torch.Tensor], *,
                 start: float, step: float, n_nodes: int) -> None:
        if step == 0:
            raise ValueError("WindowSum needs a nonzero step 2κΔ (κ = 0 leaves no neighbour terms)")
        self.stride = max(1, int(math.ceil(abs(step) / NODE_SPACING)))
        self.h, self.n_nodes = abs(step) / self.stride, int(n_nodes)
        # a negative step (κ < 0) walks the table downwards: the same windows from the last node, flipped
        self.flip = step < 0
        self.start = float(start + (self.n_nodes - 1) * step) if self.flip else float(start)
        n_half = int(math.ceil(_table_end(layer) / self.h))
        self.low = -n_half * self.h  # node i at low + i h
        self._coef64, slope = _f_table(layer, site_potential, self.h, n_half)
        self._ends64 = (slope[0], slope[-1])
        # the first cell of a window: u = (start + c − low)/h in [0, u_max], u_max the last window's first cell
        self.u_max = float(self._coef64.shape[0] - 1 - self.stride * (self.n_nodes - 1))
        if self.u_max < 1:
            raise ValueError("the F table is too short for a window of the grid")
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the Horner coefficients of every window, ``(u_max + 1, 4, G)``; F' at the table's ends) in ``like``'s
        dtype: window k₀ holds the cells k₀ + m g, so a lookup gathers one contiguous row per (row, j);
        coefficient-major, so that a row's contraction with its (1, t, t², t³) is one (1, 4J) × (4J, G) product."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            cpu = self._coef64.device  # not the default device (the meta lane of the tests sets that)
            starts = torch.arange(int(self.u_max) + 1, device=cpu).unsqueeze(-1)
            windows = self._coef64[starts + self.stride * torch.arange(self.n_nodes, device=cpu)]
            windows = windows.transpose(1, 2).contiguous()
            ends = torch.stack(list(self._ends64))
            self._tables[key] = (windows.to(device=like.device, dtype=like.dtype),
                                 ends.to(device=like.device, dtype=like.dtype))
        return self._tables[key]

    def __call__(self, c: torch.Tensor) -> torch.Tensor:
        """``(n, J) -> (n, G)``: Σ_j F(a + s g + c_j)."""
        windows, ends = self._table(c)
        value = _WindowLookup.apply(c, windows, ends, self)
        return value.flip(-1) if self.flip else value


class _WindowLookup(torch.autograd.Function):
    """`WindowSum` for a positive step: the forward gathers the window of each (row, j) and contracts the J
    windows of a row with their (1, t, t², t³) in one batched product; the backward contracts Σ_g grad_g a_g with
    (0, 1, 2t, 3t²)/h, or takes the end slope where c was clamped. The gathered windows are kept for the
    backward when c needs a gradient (4 n J G floats: 34 MB in float32 at L = 64, batch 8; the path-gradient step runs
    the backward twice, so the second gather cost more than the memory). Once differentiable."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, windows: torch.Tensor, ends: torch.Tensor, table: "WindowSum") -> torch.Tensor:
        u_raw = (c + (table.start - table.low)) / table.h
        u = u_raw.clamp(0.0, table.u_max)
        k0 = u.floor().long().clamp(0, int(table.u_max) - 1)  # t in [0, 1], also at u_max; NaN gives NaN, no bad index
        t = u - k0
        n, j = c.shape
        a = windows.index_select(0, k0.reshape(-1)).view(n, 4 * j, -1)  # (n, J·4, G)
        powers = torch.stack([torch.ones_like(t), t, t * t, t * t * t], -1)  # (n, J, 4)
        value = torch.bmm(powers.view(n, 1, 4 * j), a).view(n, -1)
        outside = u_raw - u  # in cells; the linear continuation with the end slope
        end = torch.where(outside > 0, ends[1], ends[0])
        value = value + (outside * table.h * end).sum(-1, keepdim=True)
        ctx.save_for_backward(a if ctx.needs_input_grad[0] else None, t, end, outside)
        ctx.h = table.h
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, t, end, outside = ctx.saved_tensors
        n, j = t.shape
        moments = torch.bmm(a, grad.unsqueeze(-1)).view(n, j, 4)  # Σ_g grad_g a_g
        d = torch.stack([torch.zeros_like(t), torch.ones_like(t), 2 * t, 3 * t * t], -1) / ctx.h
        inside = (moments * d).sum(-1)
        return torch.where(outside == 0, inside, end * grad.sum(-1, keepdim=True)), None, None, None
