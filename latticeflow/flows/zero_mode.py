"""Zero-mode (magnetization) spline: a learned odd map of the field's lattice average (broken phase), or of the
mean over a set S of sites (``mask``: the two-level flow's learned sites A2 ∪ A1e near criticality, where the
magnetization is far from Gaussian; there V → |S|, 1 → 1_S below, and translation equivariance holds for the
shifts that map S onto itself).

For a real scalar field x on V sites with magnetization M = V⁻¹ Σ_x x_x,

    y = x + (g(M) − M) · 1,

with g a monotone rational-quadratic spline (Durkan et al. 2019; `latticeflow.flows.splines`) from
[−B_in, B_in] onto [−B_out, B_out], with slope-1 tails outside. Only the zero mode moves: the fluctuations
x − M·1 are unchanged and mean(y) = g(M). With the matrix determinant lemma,

    J = I + (g′(M) − 1) V⁻¹ 1 1ᵀ,     log|det J| = log g′(M),
    J⁻¹ = I + (1/g′(M) − 1) V⁻¹ 1 1ᵀ,  ∇ₓ log|det J| = V⁻¹ ∂_M log g′(M) · 1,
    inverse: M = g⁻¹(mean(y)),  x = y − (g(M) − M) · 1,

so both score hooks are closed-form (g′ = J^{−T}(g − ∇ log|det J|), r′ = Jᵀ r + ∇ log|det J|) and cost O(V).
The spline parameters are mirrored (widths, heights and knot derivatives symmetric about the centre),
so g is odd and the layer is Z2 equivariant, T(−x) = −T(x); it is translation equivariant.

Why: in the broken phase (e.g. κ = 0.3, λ = 0.022 on 16×8, Vaitl et al. 2024) the two vacua ±v differ in
every site at once. Local couplings cannot agree on one sign across the lattice and produce domains; this
layer moves the whole field into a vacuum in one step. `ZeroModeSpline.from_action` initialises g as the
quantile map from the Gaussian zero mode that the layer receives (N(0, σ₀²)) to the constant-field
(mean-field) magnetization density p(m) ∝ exp(−V[(1 − 2λ − 2dκ) m² + λ m⁴]) that the theory provides
(`actions.Phi4.mean_field_magnetization_density`, `actions.phi4_variational`); training refines it. Where that
density is unimodal (symmetric phase) the layer starts as the identity. Caveat: the mean-field test
(1 − 2λ − 2dκ < 0) calls more couplings broken than are (every κ ≥ 0 at λ ≥ 0.5), so use the layer only
where the phase is known to be broken. Measured (`bench quality --targets phi4_16x8`, 240 s): it does not
improve the broken-phase target over the plain spline flow; hence ``flow.zero_mode`` is off by default.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import ndtr, ndtri
from torch import nn

from actions.lattice import validate_shape
from .base import Bijection, FlowError
from .splines import rq_spline, rq_spline_inverse, rq_spline_params

__all__ = ["ZeroModeSpline"]

MIN_BIN = 1e-4
MIN_DERIVATIVE = 1e-4
MAX_INIT_DERIVATIVE = 1e4
_SOFTPLUS_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def _inverse_softmax(fractions: np.ndarray, k: int) -> np.ndarray:
    """raw with MIN_BIN + (1 − k·MIN_BIN)·softmax(raw) = fractions (fractions sum to 1, each > MIN_BIN)."""
    f = np.maximum(fractions, MIN_BIN * (1 + 1e-6))
    return np.log((f - MIN_BIN) / (1 - k * MIN_BIN))


class ZeroModeSpline(Bijection):
    """y = x + (g(M) − M)·1_S, M = mean of x over the sites S, g an odd RQ spline of ``n_bins`` bins.

    Args:
        shape: lattice extents; the field is ``(B, *shape)``.
        mask: optional bool ``shape`` tensor, the sites S (default: every site). With a mask the formulas of the
            module docstring hold with V → |S| and 1 → 1_S; the other sites pass through unchanged (the two-level
            flow's learned sites A2 ∪ A1e, `latticeflow.flows.two_level`).
        n_bins: K (even, ≥ 2).
        bound_in, bound_out: g maps [−bound_in, bound_in] onto [−bound_out, bound_out] (slope-1 tails outside).
        widths, heights, derivatives: optional initial raw spline parameters (K, K, K − 1), mirrored on use;
            default zeros: equal bins and unit derivatives, the identity when bound_in = bound_out.
    """

    def __init__(self, shape: Sequence[int], *, n_bins: int = 16, bound_in: float = 1.0, bound_out: float | None = None,
                 widths=None, heights=None, derivatives=None, mask: torch.Tensor | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.shape = validate_shape(shape, "shape")
        self.ndim = len(self.shape)
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.dtype != torch.bool or tuple(mask.shape) != self.shape or not bool(mask.any()):
                raise FlowError(f"zero-mode spline: mask must be a non-empty bool tensor of shape {self.shape}, got "
                                f"{mask.dtype} {tuple(mask.shape)} with {int(mask.sum())} sites")
            mask = mask.to(torch.empty(0, device=device).device)  # where the parameters go (default device if None)
            # from the architecture, never from a checkpoint (so that weights carry over between lattice sizes)
            self.register_buffer("mask", mask.clone(), persistent=False)
            self.n_sites = int(mask.sum())
        else:
            self.mask = None
            self.n_sites = int(np.prod(self.shape))
        if not isinstance(n_bins, int) or n_bins < 2 or n_bins % 2:
            raise FlowError(f"zero-mode spline: n_bins must be an even integer >= 2, got {n_bins!r}")
        bound_out = bound_in if bound_out is None else bound_out
        if not (bound_in > 0 and bound_out > 0):
            raise FlowError(f"zero-mode spline: bounds must be > 0, got {bound_in!r}, {bound_out!r}")
        self.n_bins, self.bound_in, self.bound_out = n_bins, float(bound_in), float(bound_out)
        dtype = dtype or torch.get_default_dtype()

        def param(value, n):
            t = torch.zeros(n, dtype=dtype, device=device) if value is None else \
                torch.as_tensor(np.asarray(value, dtype=np.float64)).to(dtype=dtype, device=device).clone()
            if t.shape != (n,):
                raise FlowError(f"zero-mode spline: expected {n} raw parameters, got shape {tuple(t.shape)}")
            return nn.Parameter(t)

        self.raw_widths = param(widths, n_bins)
        self.raw_heights = param(heights, n_bins)
        self.raw_derivatives = param(derivatives, n_bins - 1)

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_action(cls, action, *, input_std: float | None = None, n_bins: int = 16,
                    dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "ZeroModeSpline":
        """g = the quantile map from N(0, σ₀²) (σ₀ = ``input_std``, default V^{−1/2}: the zero mode of N(0, 1)
        fields) to the theory's mean-field magnetization density (``action.mean_field_magnetization()`` and
        ``action.mean_field_magnetization_density(m)``, as `actions.Phi4` offers them). Identity (on ±5σ₀)
        where that density is unimodal.

        Example:
            >>> from actions import Phi4
            >>> layer = ZeroModeSpline.from_action(Phi4((4, 4, 4), kappa=0.1, lam=0.0), dtype=torch.float64)
            >>> x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
            >>> bool((layer(x)[0] - x).abs().max() < 1e-12)  # symmetric phase: the identity
            True
        """
        needs = ("shape", "mean_field_magnetization", "mean_field_magnetization_density")
        if not all(hasattr(action, k) for k in needs):
            raise FlowError(f"ZeroModeSpline.from_action needs a theory with {', '.join(needs)} (φ⁴); got {action!r}")
        shape = validate_shape(action.shape, "shape")
        volume = int(np.prod(shape))
        sigma0 = float(input_std) if input_std is not None else volume ** -0.5
        vacuum = float(action.mean_field_magnetization())
        if not vacuum > 0:
            return cls(shape, n_bins=n_bins, bound_in=5 * sigma0, dtype=dtype, device=device)
        m = np.linspace(-2 * vacuum, 2 * vacuum, 40001)
        density = action.mean_field_magnetization_density(m)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(m))])
        norm = cdf[-1]  # trapezoidal ∫ p(m) dm
        cdf /= norm
        z_max = 4.0
        probs = np.linspace(ndtr(-z_max), ndtr(z_max), n_bins + 1)  # equal-probability bins
        x = sigma0 * ndtri(probs)
        y = np.interp(probs, cdf, m)
        x, y = 0.5 * (x - x[::-1]), 0.5 * (y - y[::-1])  # exactly mirrored
        b_in, b_out = float(x[-1]), float(y[-1])
        # knot derivatives: density ratio p_in(x_k)/p_out(y_k), bounded
        p_in = np.exp(-0.5 * (x / sigma0) ** 2) / (sigma0 * math.sqrt(2 * math.pi))
        p_out = np.interp(y, m, density) / norm
        slopes = np.clip(p_in / np.maximum(p_out, 1e-300), MIN_DERIVATIVE * 10, MAX_INIT_DERIVATIVE)[1:-1]
        widths = _inverse_softmax(np.diff(x) / (2 * b_in), n_bins)
        heights = _inverse_softmax(np.diff(y) / (2 * b_out), n_bins)
        t = slopes - MIN_DERIVATIVE
        derivatives = t + np.log(-np.expm1(-t)) - _SOFTPLUS_SHIFT  # softplus⁻¹, stable for large t
        # the layer mirrors raw parameters as r + flip(r): store halves of these symmetric values
        return cls(shape, n_bins=n_bins, bound_in=b_in, bound_out=b_out, widths=widths / 2, heights=heights / 2,
                   derivatives=derivatives / 2, dtype=dtype, device=device)

    # -- the spline g ---------------------------------------------------------------------------------
    def knots(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(knot_x, knot_y, δ), each (K + 1,), mirrored so that g is odd."""
        w = self.raw_widths + self.raw_widths.flip(0)
        h = self.raw_heights + self.raw_heights.flip(0)
        d = self.raw_derivatives + self.raw_derivatives.flip(0)
        kx, _, delta = rq_spline_params(w, w, d, -self.bound_in, self.bound_in, min_bin=MIN_BIN,
                                        min_derivative=MIN_DERIVATIVE)
        _, ky, _ = rq_spline_params(h, h, d, -self.bound_out, self.bound_out, min_bin=MIN_BIN,
                                    min_derivative=MIN_DERIVATIVE)
        # exactly antisymmetric knots (the cumulative sums are not), so that g(−m) = −g(m) to round-off
        return 0.5 * (kx - kx.flip(0)), 0.5 * (ky - ky.flip(0)), delta

    def _g(self, m: torch.Tensor, with_dlog: bool):
        """(g(m), log g′(m), ∂ log g′/∂m or None) for m of shape (B,)."""
        kx, ky, delta = (t.expand(m.shape[0], -1) for t in self.knots())
        inside = m.abs() < self.bound_in
        gm, log_gp, dlog = rq_spline(m.clamp(-self.bound_in, self.bound_in), kx, ky, delta, with_dlog=with_dlog)
        tail = m + torch.sign(m) * (self.bound_out - self.bound_in)
        gm = torch.where(inside, gm, tail)
        log_gp = torch.where(inside, log_gp, torch.zeros_like(log_gp))
        if dlog is not None:
            dlog = torch.where(inside, dlog, torch.zeros_like(dlog))
        return gm, log_gp, dlog

    def _g_inverse(self, my: torch.Tensor):
        """(g⁻¹(my), log g′(g⁻¹(my)))."""
        kx, ky, delta = (t.expand(my.shape[0], -1) for t in self.knots())
        inside = my.abs() < self.bound_out
        m, log_gp = rq_spline_inverse(my.clamp(-self.bound_out, self.bound_out), kx, ky, delta)
        tail = my - torch.sign(my) * (self.bound_out - self.bound_in)
        return torch.where(inside, m, tail), torch.where(inside, log_gp, torch.zeros_like(log_gp))

    # -- the map --------------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        if x.dim() <= self.ndim or tuple(x.shape[-self.ndim:]) != self.shape:
            raise FlowError(f"field shape {tuple(x.shape)} does not match (B, *{self.shape}) of ZeroModeSpline")

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return x.flatten(1).mean(1)
        return (x * self.mask.to(x.dtype)).flatten(1).sum(1) / self.n_sites  # no boolean index: no host sync

    def _shifted(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        shift = shift.reshape((-1,) + (1,) * self.ndim)
        return x + (shift if self.mask is None else shift * self.mask.to(x.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        m = self._mean(x)
        gm, log_gp, _ = self._g(m, False)
        return self._shifted(x, gm - m), log_gp

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(y)
        my = self._mean(y)
        m, log_gp = self._g_inverse(my)
        return self._shifted(y, m - my), -log_gp

    def forward_with_score(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g′ = J^{−T}(g − ∇ log g′(M)) = v + (1/g′ − 1)·mean_S(v)·1_S with v = g − |S|⁻¹ ∂_M log g′ · 1_S."""
        self._check(x)
        m = self._mean(x)
        gm, log_gp, dlog = self._g(m, True)
        y = self._shifted(x, gm - m)
        with torch.no_grad():
            v = self._shifted(g.detach(), -dlog.detach() / self.n_sites)
            g_new = self._shifted(v, (torch.exp(-log_gp.detach()) - 1) * self._mean(v))
        return y, log_gp, g_new

    def inverse_with_score(self, y: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """r′ = Jᵀ r + ∇ log g′(M) = r + ((g′ − 1)·mean_S(r) + |S|⁻¹ ∂_M log g′)·1_S at M = g⁻¹(mean_S(y))."""
        x, logdet_inv = self.inverse(y)
        with torch.no_grad():
            m = self._mean(x.detach())
            _, log_gp, dlog = self._g(m, True)
            r = r.detach()
            r_new = self._shifted(r, (torch.exp(log_gp) - 1) * self._mean(r) + dlog / self.n_sites)
        return x, logdet_inv, r_new

    def extra_repr(self) -> str:
        sites = "" if self.mask is None else f", sites={self.n_sites}"
        return (f"shape={self.shape}{sites}, n_bins={self.n_bins}, bound_in={self.bound_in:.4g}, "
                f"bound_out={self.bound_out:.4g}")
