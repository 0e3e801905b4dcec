"""Gauge-equivariant circular-spline coupling for 2D U(1) (Rezende et al., ICML 2020, "Normalizing flows on
tori and spheres"; as the plaquette transform of Kanwar et al. 2020 / Albergo et al. 2021).

The active plaquette P ∈ (−π, π] is mapped by h(P) = wrap(f(P) + t), f a rational-quadratic spline on
[−π, π] with K bins and one shared boundary derivative δ_0 = δ_K, so f(±π) = ±π with equal slopes: a
diffeomorphism of the circle; t is a learned rotation. All parameters come from the frozen region
(`GaugeCoupling`), so the flow density is gauge invariant. The active link absorbs the change,
θ' = θ + h(P) − P. Unlike NCP the inverse is closed-form (the quadratic root, no bisection):
P = f⁻¹(wrap(P' − t)). log h' = log f'(P), and ∂ log h'/∂θ_b = ∂ log f'/∂P in closed form.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from actions.u1 import wrap
from .splines import rq_spline, rq_spline_inverse, rq_spline_params
from .u1 import GaugeCoupling

__all__ = ["CircularSplineCoupling"]


class CircularSplineCoupling(GaugeCoupling):
    """One gauge-equivariant coupling whose plaquette transform is a circular RQ spline of ``n_bins`` bins."""

    def __init__(self, shape: Sequence[int], layer: int, *, n_bins: int = 8, hidden: Sequence[int] = (8, 8),
                 kernel_size: int = 3, activation: str = "tanh", dilation: int | Sequence[int] = 1,
                 loops: bool = True) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        super().__init__(shape, layer, 3 * n_bins + 1, hidden=hidden, kernel_size=kernel_size,
                         activation=activation, dilation=dilation, loops=loops)
        self.n_bins = n_bins

    def conditioner_params(self, x_frozen: torch.Tensor):
        """(rest, knot_x, knot_y, δ, t): knots and derivatives (B, n_b, K + 1), rotation t (B, n_b)."""
        rest, out = self.gauge_features(x_frozen)
        k = self.n_bins
        w, h, d = (out[:, i * k:(i + 1) * k].transpose(1, 2) for i in range(3))
        knot_x, knot_y, deriv = rq_spline_params(w, h, d, -math.pi, math.pi, circular=True)
        return rest, knot_x, knot_y, deriv, out[:, 3 * k]

    def _spline(self, x, params, with_dlog: bool):
        rest, knot_x, knot_y, deriv, t = params
        p = wrap(x + rest)
        f, log_fprime, dlog = rq_spline(p, knot_x, knot_y, deriv, with_dlog=with_dlog)
        return wrap(f + t - rest), log_fprime, dlog

    def transform(self, x, params):
        y, log_fprime, _ = self._spline(x, params, False)
        return y, log_fprime

    def transform_with_dlog(self, x, params):
        y, log_fprime, dlog = self._spline(x, params, True)
        return y, log_fprime, dlog, None

    def dlog_fprime(self, x, params):
        return self._spline(x, params, True)[2]

    def inverse_transform(self, y, params):
        rest, knot_x, knot_y, deriv, t = params
        tau = wrap(y + rest - t)
        p, log_fprime = rq_spline_inverse(tau, knot_x, knot_y, deriv)
        return wrap(p - rest), log_fprime
