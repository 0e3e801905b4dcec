"""Decimated φ⁴ flows: the flow models the even sublattice, every odd site comes from its exact conditional.

With nearest-neighbour couplings the odd sites are independent given the even ones (`SiteConditional`), so

    q(φ) = q_even(φ_even) · Π_{x odd} q(φ_x | b_x),   q(·|b) ≈ p(·|b) = e^{−U + bφ}/Z(b),

and log w = log p_even(φ_even) − log q_even(φ_even) up to the conditional's grid error (a variance of about 1e−6
per odd site): the flow's error budget is spent on half the sites, and KL(q‖p) is the even marginal's alone.
The even layers here leave the odd sites, which hold their own N(0, 1) noise for the last layer, untouched:

- `SublatticeFourierScaling`: y = F⁻¹(e^{a(p)} F x) on the even sites. A field on the even sublattice has
  x̃(p + π) = x̃(p) (π = (π, …, π)), so with a(p) = a(p + π) the map keeps it there; its log-determinant on the
  V/2 even modes is ½ Σ_p a(p). Started from the Gaussian (Hartree) field, whose even marginal has the
  covariance ½[1/A(p) + 1/A(p + π)] (`FourierScaling.from_action`'s kernel A).
- `SublatticeSplineCoupling`: a `SplineCoupling` on the even sites with x₀ ≡ c (mod 2) given the other even sites;
  its conditioner never sees the odd sites. In 2D the two classes are the two halves of the (diagonal)
  nearest-neighbour lattice of the even sites.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from actions.lattice import checkerboard_mask, validate_shape
from .base import FlowError
from .fourier import FourierScaling
from .spline import SplineCoupling

__all__ = ["SublatticeFourierScaling", "SublatticeSplineCoupling", "sublattice_class_mask"]


def _check_even(shape: Sequence[int]) -> tuple[int, ...]:
    shape = validate_shape(shape, "shape")
    if any(s % 2 for s in shape):
        raise FlowError(f"a decimated flow needs even lattice extents, got shape {list(shape)}")
    return shape


def sublattice_class_mask(shape: Sequence[int], cls: int) -> torch.Tensor:
    """The even sites (Σ_μ x_μ even) with x₀ ≡ ``cls`` (mod 2), shape ``shape``.

    Example:
        >>> sublattice_class_mask((4, 4), 1).int().tolist()[:2]
        [[0, 0, 0, 0], [0, 1, 0, 1]]
    """
    x0 = torch.arange(shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    return checkerboard_mask(shape, 0) & ((x0 % 2) == cls)


class SublatticeFourierScaling(FourierScaling):
    """`FourierScaling` of the even sites; the odd sites pass unchanged. a(p) = a(−p) = a(p + π); logdet ½ Σ_p a(p)."""

    def __init__(self, shape: Sequence[int], log_scale: torch.Tensor | np.ndarray | None = None, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__(_check_even(shape), log_scale, dtype=dtype, device=device)
        self.register_buffer("even", checkerboard_mask(self.shape, 0, device=device), persistent=False)

    @classmethod
    def from_action(cls, action, *, init: str = "action", floor: float | None = None,
                    dtype: torch.dtype | None = None, device: torch.device | str | None = None
                    ) -> "SublatticeFourierScaling":
        """Started from the even marginal of `FourierScaling.from_action`'s Gaussian: a = ½ log ½[A⁻¹(p) + A⁻¹(p + π)].

        Example:
            >>> from actions import Phi4
            >>> layer = SublatticeFourierScaling.from_action(Phi4((4, 4), kappa=0.1, lam=0.0), dtype=torch.float64)
            >>> bool(torch.allclose(layer.log_scale, torch.roll(layer.log_scale, (2, 2), (0, 1))))
            True
        """
        full = FourierScaling.from_action(action, init=init, floor=floor, dtype=torch.float64)
        inv_kernel = torch.exp(2 * full.log_scale.detach())  # A⁻¹(p)
        half = [s // 2 for s in full.shape]
        even_cov = 0.5 * (inv_kernel + torch.roll(inv_kernel, half, tuple(range(full.ndim))))
        return cls(full.shape, 0.5 * torch.log(even_cov), dtype=dtype, device=device)

    @property
    def log_scale(self) -> torch.Tensor:
        """a(p), even and invariant under p → p + π, on the full FFT grid."""
        a = super().log_scale
        return 0.5 * (a + torch.roll(a, [s // 2 for s in self.shape], tuple(range(self.ndim))))

    def _multiply(self, x: torch.Tensor, a: torch.Tensor, sign: float) -> torch.Tensor:
        """F⁻¹(e^{sign·a} F x) on the even sites, the odd ones unchanged: `FourierScaling`'s forward, inverse and
        score hooks (J symmetric, logdet constant) then hold for the even block as they stand."""
        even = self.even
        return torch.where(even, super()._multiply(x.masked_fill(~even, 0.0), a, sign), x)

    def _logdet(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (0.5 * a.sum()).expand(x.shape[: -self.ndim])


class SublatticeSplineCoupling(SplineCoupling):
    """`SplineCoupling` of the even sites of class ``cls`` (`sublattice_class_mask`) given the other even sites.

    ``compact`` (default: 2D with a CNN conditioner): in 2D the classes are the square lattices (2i + c, 2j + c) of
    half the extent, so the conditioner convolves the other class there, x[o::2, o::2], a quarter of the sites
    (a site's four diagonal neighbours lie within its 3 × 3 stencil). Otherwise it convolves the full lattice with
    the odd sites and this class zeroed.
    """

    def __init__(self, shape: Sequence[int], cls: int, *, compact: bool | None = None, **kwargs) -> None:
        shape = _check_even(shape)
        mask = sublattice_class_mask(shape, cls)
        if compact is None:
            compact = len(shape) == 2 and kwargs.get("conditioner", "cnn") == "cnn"
        self.compact = compact
        if compact:
            if len(shape) != 2 or kwargs.get("conditioner", "cnn") != "cnn":
                raise FlowError(f"a compact sublattice coupling needs a 2D lattice and a cnn conditioner, got shape "
                                f"{list(shape)} and {kwargs.get('conditioner')!r}")
            half = tuple(s // 2 for s in shape)  # the conditioner lives on the other class's lattice
            super().__init__(half, 0, mask=torch.ones(half, dtype=torch.bool), **kwargs)
            self.mask, self.idx_b = mask, torch.nonzero(mask.flatten()).flatten()
            self.source = 1 - cls
            self.needs_masked_input = False
        else:
            super().__init__(shape, 0, mask=mask, **kwargs)
            self.register_buffer("hidden_sites", mask | ~checkerboard_mask(shape, 0), persistent=False)
            self.needs_masked_input = True

    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.compact else x.masked_fill(self.hidden_sites, 0.0)

    def conditioner_params(self, x_frozen: torch.Tensor):
        if self.compact:  # the other class, (B, L0/2, L1/2); parameters in the row-major order of this class = idx_b
            o = self.source
            x_frozen = x_frozen[..., o::2, o::2]
        return super().conditioner_params(x_frozen)
