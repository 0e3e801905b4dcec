"""Rational-quadratic spline couplings for real scalar fields ``phi: (B, L0, …)`` on checkerboard masks (any d).

y_b = f(x_b; θ(x_a)) with f a monotone rational-quadratic spline of K bins on [−B, B] and the identity
outside (linear tails; Durkan, Bekasov, Murray, Papamakarios 2019, "Neural spline flows"); the maths is in
`latticeflow.flows.splines`. f, log f′ and ∂ log f′/∂x_b are closed-form and the inverse is the quadratic
root, so the fast-path score hooks of `Coupling` apply unchanged.

``z2=True`` makes the layer Z2 equivariant, T(−x) = −T(x): the conditioner is a `ParityNet` with even
outputs e(x_a) and odd outputs o(x_a), and every parameter group (widths, heights, interior derivatives)
is built as θ = (e + flip e) + (o − flip o), where flip reverses the bin order. Then θ(−x_a) = flip θ(x_a),
the mirrored spline, and f(−x; flip θ) = −f(x; θ) because the knots of a mirrored spline are mirrored.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from actions.lattice import checkerboard_mask
from .coupling import Coupling
from .phi4 import ParitySiteConditioner, SiteConditioner
from .splines import rq_spline, rq_spline_inverse, rq_spline_params

__all__ = ["SplineCoupling"]


class SplineCoupling(Coupling):
    """RQ-spline coupling: K = ``n_bins`` bins on [−``bound``, ``bound``], identity tails; ``z2`` mirrors it."""

    def __init__(self, shape: Sequence[int], parity: int, *, n_bins: int = 8, bound: float = 4.0, z2: bool = True,
                 conditioner: str = "cnn", hidden: Sequence[int] = (16, 16), kernel_size: int = 3,
                 activation: str = "tanh", dilation: int | Sequence[int] = 1, mask: torch.Tensor | None = None,
                 channels: int = 1) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        mask = checkerboard_mask(shape, parity) if mask is None else mask  # ``mask``: other b-sites than a parity's
        super().__init__(mask)
        self.n_bins, self.bound, self.z2 = n_bins, float(bound), z2
        n_out = 3 * n_bins - 1  # widths K, heights K, interior derivatives K − 1
        if z2:
            self.net = ParitySiteConditioner(shape, mask, n_out, n_out, conditioner, hidden, kernel_size, dilation,
                                             channels=channels)
        elif channels != 1:
            raise ValueError("extra conditioner input channels need z2 (a ParityNet)")
        else:
            self.net = SiteConditioner(shape, mask, n_out, conditioner, hidden, kernel_size, activation, bias=True,
                                       dilation=dilation)
        self.needs_masked_input = conditioner == "cnn"

    def _groups(self, out: torch.Tensor) -> list[torch.Tensor]:
        k = self.n_bins
        return [out[:, :k], out[:, k:2 * k], out[:, 2 * k:]]

    def conditioner_params(self, x_frozen: torch.Tensor):
        """Knots (x_k, y_k) and derivatives δ_k at the b-sites, each ``(B, n_b, K + 1)``."""
        if self.z2:
            even, odd = self.net(x_frozen)
            raw = [e + e.flip(1) + o - o.flip(1) for e, o in zip(self._groups(even), self._groups(odd))]
        else:
            raw = self._groups(self.net(x_frozen))
        w, h, d = (r.transpose(1, 2) for r in raw)
        return rq_spline_params(w, h, d, -self.bound, self.bound)

    def _spline(self, x: torch.Tensor, params, with_dlog: bool):
        inside = x.abs() < self.bound
        xc = x.clamp(-self.bound, self.bound)
        y, log_fprime, dlog = rq_spline(xc, *params, with_dlog=with_dlog)
        y = torch.where(inside, y, x)
        log_fprime = torch.where(inside, log_fprime, torch.zeros_like(log_fprime))
        if dlog is not None:
            dlog = torch.where(inside, dlog, torch.zeros_like(dlog))
        return y, log_fprime, dlog

    def transform(self, x, params):
        y, log_fprime, _ = self._spline(x, params, False)
        return y, log_fprime

    def transform_with_dlog(self, x, params):
        y, log_fprime, dlog = self._spline(x, params, True)
        return y, log_fprime, dlog, None

    def dlog_fprime(self, x, params):
        return self._spline(x, params, True)[2]

    def inverse_transform(self, y, params):
        inside = y.abs() < self.bound
        x, log_fprime = rq_spline_inverse(y.clamp(-self.bound, self.bound), *params)
        return torch.where(inside, x, y), torch.where(inside, log_fprime, torch.zeros_like(log_fprime))
