"""Fourier scaling layer: a learned, momentum-diagonal linear map of a real scalar field.

For ``phi: (B, L0, …, L_{d−1})`` (any number d of lattice axes, the last d axes) on a periodic lattice,

    y = F⁻¹( e^{a(p)} ⊙ F x ),   p_μ = 2π n_μ / L_μ,   a(p) = a(−p) real,

with F the discrete Fourier transform over the lattice axes. Because a is even, the multiplier is
Hermitian-even and y is real; the map is a real symmetric circulant matrix J (a periodic convolution
with an even kernel), so it is linear, odd (T(−x) = −T(x)) and translation equivariant, and

    log|det J| = Σ_p a(p)            (independent of x),
    inverse:     x = F⁻¹(e^{−a} F y),  log|det| = −Σ_p a(p),
    scores:      g' = J^{−T} g = F⁻¹(e^{−a} F g),   r' = Jᵀ r = F⁻¹(e^{a} F r)

(∇ log|det J| = 0, J = Jᵀ). a is stored as a raw parameter on the full momentum grid (FFT order) and
symmetrised, a = ½(raw(p) + raw(−p)), so it is exactly even and every entry is trainable; the FFTs use
``rfftn`` / ``irfftn`` over the last d axes on the half spectrum.

Initialisation from φ⁴ in hopping form, S = Σ_x[−2κ Σ_μ φ_x φ_{x+μ̂} + (1 − 2λ)φ_x² + λφ_x⁴], whose quadratic
part is S₀ = ½ Σ_p A(p)|φ̃(p)|²/V with A(p) = 2(1 − 2λ) − 4κ Σ_μ cos p_μ. With a(p) = −½ log A(p) the flow
z ~ N(0, 1) ↦ y samples the Gaussian e^{−S₀} exactly: at λ = 0 (free field) q = p, reverse ESS = 1 and
KL = 0 at step 0. See e.g. Albergo et al., "Introduction to normalizing flows for lattice field theory",
arXiv:2101.08176 (2021) for flows of scalar fields, and Komijani & Marinkovic, "Generative models for scalar
field theories: how to deal with poor scaling?", arXiv:2301.01504 (2023) for momentum-space, free-field
inspired layers against the poor scaling near criticality. `FourierScaling.from_action` asks the theory
(`actions.Phi4.quadratic_kernel`, `actions.Phi4.gaussian_vacuum`; the formulas in `actions.phi4_variational`):

- ``init="action"`` (default): the best mean-zero translation-invariant Gaussian, i.e. the minimiser of
  the reverse KL(q‖p) over this layer's family applied to N(0, 1) (Gaussian variational / Hartree
  approximation). Using ⟨φ⁴⟩ = 3σ⁴ it is A_eff(p) = A(p) + M with the self-consistent mass shift
  M = 12λσ², σ² = V⁻¹ Σ_p 1/A_eff(p) (`actions.phi4_variational.hartree_mass_shift`; M = 0 at λ = 0, so
  this *is* −½ log A for the free field). A_eff > 0 always, also in the broken phase (A(0) < 0) and at large λ, with no
  arbitrary cut-off; ``floor`` (default None: none) optionally clips A_eff from below.
- ``init="quadratic"``: the quadratic part alone, A(p) clipped from below at ``floor`` (default 0.1:
  no mode is widened by more than √10 relative to N(0, 1); it only acts where A(p) < 0.1, i.e. near or
  beyond the critical point, where the quartic term, not A, bounds the fluctuations).
- ``init="identity"``: a = 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from actions.lattice import validate_shape
from .base import Bijection, FlowError

__all__ = ["FourierScaling", "INITS"]

INITS = ("action", "quadratic", "identity")
QUADRATIC_FLOOR = 0.1


class FourierScaling(Bijection):
    """y = F⁻¹(e^{a(p)} F x) with a learned even log-scale a(p) = a(−p) per momentum; logdet = Σ_p a(p).

    Args:
        shape: lattice extents (L0, L1, …); the field is ``(B, *shape)``.
        log_scale: optional initial a(p) on the full FFT momentum grid (``shape``); symmetrised. Default 0.
        dtype, device: of the parameter (default: torch's default dtype, CPU); ``.to()`` works as usual.

    The parameter ``raw`` is unconstrained; the effective log-scale is `log_scale` = ½(raw(p) + raw(−p)).
    """

    def __init__(self, shape: Sequence[int], log_scale: torch.Tensor | np.ndarray | None = None, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.shape = validate_shape(shape, "shape")
        self.ndim = len(self.shape)
        dtype = dtype or torch.get_default_dtype()
        if log_scale is None:
            raw = torch.zeros(self.shape, dtype=dtype, device=device)
        else:
            raw = torch.as_tensor(log_scale).detach().to(dtype=dtype, device=device).clone()
            if tuple(raw.shape) != self.shape:
                raise FlowError(f"log_scale has shape {tuple(raw.shape)}, expected the lattice shape {self.shape}")
            if not torch.isfinite(raw).all():
                raise FlowError("log_scale must be finite")
        self.raw = nn.Parameter(raw)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_action(cls, action, *, init: str = "action", floor: float | None = None,
                    dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "FourierScaling":
        """The layer on ``action.shape`` initialised from the theory's Gaussian physics: its
        ``quadratic_kernel()`` A(p) and, for ``init="action"``, its symmetric ``gaussian_vacuum(False)``
        (the Hartree kernel A + M), as `actions.Phi4` offers them.

        ``init``: ``"action"`` (Gaussian-variational A_eff = A + M, exact free field at λ = 0), ``"quadratic"``
        (A clipped at ``floor``, default 0.1) or ``"identity"`` (a = 0); see the module docstring.

        Example:
            >>> from actions import Phi4
            >>> layer = FourierScaling.from_action(Phi4((4, 4, 4), kappa=0.1, lam=0.0), dtype=torch.float64)
            >>> a = -0.5 * np.log(Phi4((4, 4, 4), kappa=0.1, lam=0.0).quadratic_kernel())
            >>> bool(np.abs(layer.log_scale.detach().numpy() - a).max() < 1e-14)
            True
        """
        if init not in INITS:
            raise FlowError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        needs = ("shape", "quadratic_kernel") + (("gaussian_vacuum",) if init == "action" else ())
        if not all(hasattr(action, k) for k in needs):
            raise FlowError(f"FourierScaling.from_action needs a theory with {', '.join(needs)} (φ⁴); got {action!r}")
        shape = validate_shape(action.shape, "shape")
        if init == "identity":
            return cls(shape, dtype=dtype, device=device)
        if init == "action":
            kernel = np.asarray(action.gaussian_vacuum(False).kernel, dtype=np.float64)
            if floor is not None:
                kernel = np.maximum(kernel, float(floor))
        else:
            floor = QUADRATIC_FLOOR if floor is None else float(floor)
            if not floor > 0:
                raise FlowError(f"floor must be > 0, got {floor}")
            kernel = np.maximum(np.asarray(action.quadratic_kernel(), dtype=np.float64), floor)
        if not (kernel > 0).all():
            raise FlowError("the initial kernel A(p) is not positive; pass floor > 0")
        return cls(shape, -0.5 * np.log(kernel), dtype=dtype, device=device)

    # -- the map ------------------------------------------------------------------------------------
    @property
    def log_scale(self) -> torch.Tensor:
        """a(p) = ½(raw(p) + raw(−p)) on the full FFT grid; exactly even."""
        dims = tuple(range(self.ndim))
        neg = torch.roll(torch.flip(self.raw, dims), shifts=(1,) * self.ndim, dims=dims)  # raw(−p)
        return 0.5 * (self.raw + neg)

    def _dims(self) -> tuple[int, ...]:
        return tuple(range(-self.ndim, 0))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() <= self.ndim or tuple(x.shape[-self.ndim:]) != self.shape:
            raise FlowError(f"field shape {tuple(x.shape)} does not match (B, *{self.shape}) of FourierScaling")

    def _multiply(self, x: torch.Tensor, a: torch.Tensor, sign: float) -> torch.Tensor:
        """F⁻¹(e^{sign·a} F x) over the lattice axes (half spectrum; exact since a is even)."""
        dims = self._dims()
        half = a[..., : self.shape[-1] // 2 + 1]
        xf = torch.fft.rfftn(x, dim=dims)
        return torch.fft.irfftn(xf * torch.exp(sign * half), s=self.shape, dim=dims)

    def _logdet(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return a.sum().expand(x.shape[: -self.ndim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        a = self.log_scale
        return self._multiply(x, a, 1.0), self._logdet(a, x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(y)
        a = self.log_scale
        return self._multiply(y, a, -1.0), -self._logdet(a, y)

    def forward_with_score(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y, logdet, g') with g' = J^{−T}(g − ∇logdet) = F⁻¹(e^{−a} F g) (J symmetric, logdet constant)."""
        y, logdet = self.forward(x)
        with torch.no_grad():
            g_new = self._multiply(g.detach(), self.log_scale.detach(), -1.0)
        return y, logdet, g_new

    def inverse_with_score(self, y: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, logdet_inv, r') with r' = Jᵀ r + ∇logdet = F⁻¹(e^{a} F r)."""
        x, logdet_inv = self.inverse(y)
        with torch.no_grad():
            r_new = self._multiply(r.detach(), self.log_scale.detach(), 1.0)
        return x, logdet_inv, r_new

    def extra_repr(self) -> str:
        return f"shape={self.shape}"
