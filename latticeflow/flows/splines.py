"""Monotone rational-quadratic splines, elementwise (Durkan, Bekasov, Murray, Papamakarios, NeurIPS 2019).

K bins with knots (x_k, y_k), k = 0 … K, widths w_k, heights h_k and knot derivatives δ_k > 0. In bin k,
with ξ = (x − x_k)/w_k and s_k = h_k/w_k,

    f(x)    = y_k + h_k [s_k ξ² + δ_k ξ(1−ξ)] / D,      D = s_k + (δ_{k+1} + δ_k − 2s_k) ξ(1−ξ),
    f'(x)   = s_k² [δ_{k+1} ξ² + 2s_k ξ(1−ξ) + δ_k (1−ξ)²] / D²,
    ∂ log f'/∂x = (1/w_k) [N'/N − 2 D'/D],   N = δ_{k+1}ξ² + 2s_kξ(1−ξ) + δ_k(1−ξ)²,

and the inverse is the stable root of a quadratic in ξ (Durkan et al., eq. 6–8):
a = h_k(s_k − δ_k) + Δy c, b = h_k δ_k − Δy c, c₀ = −s_k Δy (c = δ_{k+1} + δ_k − 2s_k, Δy = y − y_k),
ξ = 2c₀ / (−b − √(b² − 4ac₀)).

`rq_spline_params` turns unnormalised conditioner outputs into widths, heights and derivatives such that
zero outputs give the identity (equal bins, δ = 1). Two layouts:
- interval [−B, B] with identity tails outside (φ⁴; δ_0 = δ_K = 1 so f' is continuous at ±B);
- circle [−π, π) with δ_0 = δ_K shared (Rezende et al., ICML 2020, "Normalizing flows on tori and
  spheres"): f(−π) = −π, f(π) = π and matching slopes make f a diffeomorphism of the circle.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["rq_spline_params", "rq_spline", "rq_spline_inverse", "MIN_BIN", "MIN_DERIVATIVE"]

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
_SOFTPLUS_ONE = math.log(math.expm1(1.0 - MIN_DERIVATIVE))  # softplus(_SOFTPLUS_ONE) + MIN_DERIVATIVE = 1


def rq_spline_params(raw_widths: torch.Tensor, raw_heights: torch.Tensor, raw_derivatives: torch.Tensor,
                     left: float, right: float, circular: bool = False, *, min_bin: float = MIN_BIN,
                     min_derivative: float = MIN_DERIVATIVE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(knot_x, knot_y, δ) of shapes (…, K+1) from conditioner outputs (…, K), (…, K), (…, K−1) or (…, K).

    Widths and heights: MIN_BIN + (1 − K·MIN_BIN)·softmax, times (right − left). Interior derivatives:
    MIN_DERIVATIVE + softplus(raw + c) with c chosen so raw = 0 gives δ = 1. Interval layout: δ_0 = δ_K = 1
    (``raw_derivatives`` has K−1 entries); circular layout: δ_0 = δ_K = the first of K entries.
    ``min_bin`` / ``min_derivative`` override the floors (MIN_BIN, MIN_DERIVATIVE).
    """
    k = raw_widths.shape[-1]
    span = right - left
    w = (min_bin + (1 - k * min_bin) * torch.softmax(raw_widths, -1)) * span
    h = (min_bin + (1 - k * min_bin) * torch.softmax(raw_heights, -1)) * span
    shift = _SOFTPLUS_ONE if min_derivative == MIN_DERIVATIVE else math.log(math.expm1(1.0 - min_derivative))
    d = min_derivative + F.softplus(raw_derivatives + shift)
    if circular:
        d = torch.cat([d, d[..., :1]], -1)
    else:
        one = torch.ones_like(d[..., :1])
        d = torch.cat([one, d, one], -1)
    zero = torch.zeros_like(w[..., :1])
    knot_x = torch.cat([zero, torch.cumsum(w, -1)], -1) + left
    knot_y = torch.cat([zero, torch.cumsum(h, -1)], -1) + left
    # pin the last knot exactly to `right` (cumsum round-off would otherwise leave a gap)
    knot_x = torch.cat([knot_x[..., :-1], torch.full_like(knot_x[..., :1], right)], -1)
    knot_y = torch.cat([knot_y[..., :-1], torch.full_like(knot_y[..., :1], right)], -1)
    return knot_x, knot_y, d


def _bin_terms(knots: torch.Tensor, v: torch.Tensor, knot_x: torch.Tensor, knot_y: torch.Tensor, d: torch.Tensor):
    """Bin index of v in ``knots`` and the bin's (x_k, w_k, y_k, h_k, δ_k, δ_{k+1}), each shaped like v."""
    k = knot_x.shape[-1] - 1
    idx = (v.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True).clamp(0, k - 1)

    def pick(t, shift=0):
        return t.gather(-1, idx + shift).squeeze(-1)

    x_k, y_k = pick(knot_x), pick(knot_y)
    return x_k, pick(knot_x, 1) - x_k, y_k, pick(knot_y, 1) - y_k, pick(d), pick(d, 1)


def rq_spline(x: torch.Tensor, knot_x: torch.Tensor, knot_y: torch.Tensor, d: torch.Tensor,
              with_dlog: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(f(x), log f'(x), ∂ log f'/∂x or None) for x inside [knot_x₀, knot_x_K]; differentiable in x and knots."""
    x_k, w, y_k, h, d0, d1 = _bin_terms(knot_x, x, knot_x, knot_y, d)
    s = h / w
    xi = ((x - x_k) / w).clamp(0.0, 1.0)
    om = 1 - xi
    xo = xi * om
    c = d1 + d0 - 2 * s
    den = s + c * xo
    y = y_k + h * (s * xi * xi + d0 * xo) / den
    num = d1 * xi * xi + 2 * s * xo + d0 * om * om
    log_fprime = 2 * torch.log(s) + torch.log(num) - 2 * torch.log(den)
    dlog = None
    if with_dlog:
        with torch.no_grad():
            dnum = 2 * d1 * xi + 2 * s * (1 - 2 * xi) - 2 * d0 * om
            dden = c * (1 - 2 * xi)
            dlog = (dnum / num - 2 * dden / den) / w
    return y, log_fprime, dlog


def rq_spline_inverse(y: torch.Tensor, knot_x: torch.Tensor, knot_y: torch.Tensor,
                      d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f⁻¹(y), log f'(f⁻¹(y))) for y inside [knot_y₀, knot_y_K], by the stable quadratic root."""
    x_k, w, y_k, h, d0, d1 = _bin_terms(knot_y, y, knot_x, knot_y, d)
    s = h / w
    dy = y - y_k
    c = d1 + d0 - 2 * s
    a = h * (s - d0) + dy * c
    b = h * d0 - dy * c
    c0 = -s * dy
    disc = (b * b - 4 * a * c0).clamp_min(0.0)
    xi = ((2 * c0) / (-b - torch.sqrt(disc))).clamp(0.0, 1.0)
    x = x_k + xi * w
    om = 1 - xi
    xo = xi * om
    den = s + c * xo
    num = d1 * xi * xi + 2 * s * xo + d0 * om * om
    log_fprime = 2 * torch.log(s) + torch.log(num) - 2 * torch.log(den)
    return x, log_fprime
