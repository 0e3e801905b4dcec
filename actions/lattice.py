"""Periodic lattice geometry: shifts, masks and momenta on an L0 × L1 (× …) torus.

Fields are batched, batch first: a scalar field is ``(B, L0, L1)``, a gauge field ``(B, d, L0, L1)``.
A shift by +μ̂ means ``x ↦ x + μ̂`` with periodic boundary conditions, so
``shift(phi, mu, +1)[x] = phi[x + μ̂]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "validate_shape",
    "shift",
    "checkerboard_mask",
    "stripe_mask",
    "momenta",
    "momentum_cos_sum",
    "volume",
]


def validate_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints, or raise ``ValueError`` naming the bad value."""
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"{name} must be a list of lattice extents, got {shape!r}") from None
    if len(out) < 1:
        raise ValueError(f"{name} must have at least one extent, got {shape!r}")
    for s, orig in zip(out, shape):
        if s <= 0 or s != orig:
            raise ValueError(f"{name} extents must be positive integers, got {list(shape)!r}")
    return out


def volume(shape: Sequence[int]) -> int:
    """Number of sites V = Π_μ L_μ."""
    return int(np.prod(shape))


def shift(field: torch.Tensor, mu: int, step: int = 1, ndim: int = 2) -> torch.Tensor:
    """Periodic shift along lattice direction ``mu``; the lattice is the last ``ndim`` axes.

    ``shift(f, mu, +1)[..., x] = f[..., x + μ̂]`` and ``shift(f, mu, -1)[..., x] = f[..., x − μ̂]``.
    """
    return torch.roll(field, shifts=-step, dims=field.dim() - ndim + mu)


def checkerboard_mask(shape: Sequence[int], parity: int = 0, *, device=None,
                      dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Mask that is 1 on sites with Σ_μ x_μ ≡ parity (mod 2), shape ``shape``."""
    grids = torch.meshgrid(*[torch.arange(s, device=device) for s in shape], indexing="ij")
    return ((sum(grids) % 2) == parity).to(dtype)


def stripe_mask(shape: Sequence[int], mu: int, offset: int, period: int = 4, *, device=None,
                dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Mask that is 1 where the coordinate along ``mu`` is ≡ ``offset`` (mod ``period``)."""
    coord = torch.arange(shape[mu], device=device)
    line = (coord % period) == (offset % period)
    view = [1] * len(shape)
    view[mu] = shape[mu]
    return line.view(view).expand(*shape).to(dtype)


def momenta(shape: Sequence[int]) -> list[np.ndarray]:
    """Lattice momenta p_μ = 2π n_μ / L_μ as broadcastable grids (numpy, FFT ordering)."""
    grids = np.meshgrid(*[2 * np.pi * np.fft.fftfreq(s, d=1.0 / s) / s for s in shape], indexing="ij")
    return list(grids)


def momentum_cos_sum(shape: Sequence[int]) -> np.ndarray:
    """Σ_μ cos p_μ on the FFT momentum grid p_μ = 2πn_μ/L_μ (numpy order, float64, shape ``shape``)."""
    cos_sum = np.zeros(tuple(shape))
    for mu, length in enumerate(shape):
        p = 2 * np.pi * np.arange(length) / length
        cos_sum = cos_sum + np.cos(p).reshape([-1 if nu == mu else 1 for nu in range(len(shape))])
    return cos_sum
