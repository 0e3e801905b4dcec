"""Two-level decimation of 2D φ⁴ (``flow.decimate: 2``): besides the odd sites, an eighth of the lattice is drawn
from its exact conditional, and the learned layers model 3/8 of the sites instead of half.

The sites of an L0 × L1 lattice (extents divisible by 4) fall into four sets:

    odd   x0 + x1 odd          (1/2)   drawn last, given the even sites (`SiteConditional`)
    A2    (2i + 1, 2j + 1)     (1/4)
    A1e   (2i, 2j), i + j even (1/8)
    A1o   (2i, 2j), i + j odd  (1/8)   drawn given A2 ∪ A1e (`MarginalSiteConditional`)

With the odd sites integrated out, p(φ_even) ∝ exp(−Σ_even U) Π_odd e^{F(b_o)} (`SiteMarginal`, F = log Z). An
odd site (2i, 2j ± 1) has the A1 neighbours (2i, 2j) and (2i, 2j ± 2), of opposite class, so every term F(b_o)
holds exactly one A1o site, and the A1o sites are independent given A2 ∪ A1e:

    p(φ_a | A2, A1e) ∝ exp(−U(φ_a) + Σ_{k=1}^{4} F(2κ φ_a + c_k)),   c_k = 2κ Σ (the other three neighbours of o_k),

o_k the four odd neighbours of a. `MarginalSiteConditional` draws φ_a by the inverse CDF of the piecewise-exponential
interpolation of this log-density on the grid of `SiteConditional`, so log q is the density actually sampled.
The layers before it model A2 ∪ A1e: `CosetFourierScaling` on A2 (the coset (1, 1) + 2Z², started from the A2
marginal of the Hartree Gaussian) and `CosetSplineCoupling`s alternating between A1e given A2 and A2 given A1e,
each convolving the other set on its half-size lattice (with ``flow.magnetization`` also the set's mean M as a
second channel), and with ``flow.zero_mode`` a `ZeroModeSpline` of the mean of A2 ∪ A1e. Reverse-KL training integrates the odd sites out
(`Flow.marginal`) and keeps this layer, so the pair has exactly the whole flow's reverse KL.

Example:
    >>> from actions import Phi4
    >>> from latticeflow.flows import build_flow
    >>> flow = build_flow({"family": "spline", "vacua": False, "decimate": 2, "n_layers": 2}, Phi4((8, 8), kappa=0.3, lam=0.5))
    >>> [type(layer).__name__ for layer in flow.layers][-2:]
    ['MarginalSiteConditional', 'SiteConditional']
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from actions.lattice import checkerboard_mask, validate_shape
from .base import FlowError
from .conditioners import circular_pad
from .coupling import Coupling
from .fourier import FourierScaling
from .phi4 import AffineCoupling
from .site_conditional import MARGIN, SPACING, SiteConditional
from .site_marginal import SiteMarginal, WindowSum
from .spline import SplineCoupling

__all__ = ["ColourSplineCoupling", "CosetFourierScaling", "CosetGaussianShift", "CosetSplineCoupling",
           "MarginalSiteConditional", "colour_mask", "two_level_masks"]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = validate_shape(shape, "shape")
    if len(shape) != 2 or any(s % 4 for s in shape):
        raise FlowError(f"two-level decimation needs a 2D lattice with extents divisible by 4, got shape {list(shape)}")
    return shape


def two_level_masks(shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """The sets A2, A1e, A1o and odd of the module docstring as boolean masks of ``shape``.

    Example:
        >>> m = two_level_masks((4, 4))
        >>> [int(m[k].sum()) for k in ("A2", "A1e", "A1o", "odd")]
        [4, 2, 2, 8]
    """
    shape = _check_shape(shape)
    half = tuple(s // 2 for s in shape)
    a2, a1e, a1o = (torch.zeros(shape, dtype=torch.bool) for _ in range(3))
    a2[1::2, 1::2] = True
    a1e[0::2, 0::2] = checkerboard_mask(half, 0)
    a1o[0::2, 0::2] = checkerboard_mask(half, 1)
    return {"A2": a2, "A1e": a1e, "A1o": a1o, "odd": checkerboard_mask(shape, 1)}


class CosetFourierScaling(FourierScaling):
    """`FourierScaling` of the sites (2i + o, 2j + o), o = ``offset``; the other sites pass unchanged.

    A field on a coset of 2Z^d keeps its support under multiplication by an a(p) invariant under p → p + π e_μ
    (every μ), so the map is F⁻¹ e^{a} F on the coset's V/2^d modes: logdet = 2^{−d} Σ_p a(p).
    """

    def __init__(self, shape: Sequence[int], offset: int, log_scale: torch.Tensor | np.ndarray | None = None, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        shape = _check_shape(shape)
        super().__init__(shape, log_scale, dtype=dtype, device=device)
        support = torch.zeros(shape, dtype=torch.bool)
        support[offset::2, offset::2] = True
        self.offset = int(offset)
        self.register_buffer("support", support.to(device) if device is not None else support, persistent=False)

    def _aliases(self) -> list[list[int]]:
        return [list(s) for s in itertools.product(*[(0, n // 2) for n in self.shape])]

    @classmethod
    def from_action(cls, action, offset: int = 1, *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> "CosetFourierScaling":
        """Started from the coset marginal of `FourierScaling.from_action`'s Gaussian: a = ½ log 2^{−d} Σ_s A⁻¹(p + s).

        Example:
            >>> from actions import Phi4
            >>> layer = CosetFourierScaling.from_action(Phi4((8, 8), kappa=0.1, lam=0.0), dtype=torch.float64)
            >>> bool(torch.allclose(layer.log_scale, torch.roll(layer.log_scale, 4, 0)))
            True
        """
        full = FourierScaling.from_action(action, dtype=torch.float64)
        inv_kernel = torch.exp(2 * full.log_scale.detach())
        shifts = list(itertools.product(*[(0, n // 2) for n in full.shape]))
        cov = sum(torch.roll(inv_kernel, list(s), (0, 1)) for s in shifts) / len(shifts)
        return cls(full.shape, offset, 0.5 * torch.log(cov), dtype=dtype, device=device)

    @property
    def log_scale(self) -> torch.Tensor:
        """a(p), even and invariant under p → p + π e_μ, on the full FFT grid."""
        a = super().log_scale
        aliases = self._aliases()
        return sum(torch.roll(a, s, (0, 1)) for s in aliases) / len(aliases)

    def _multiply(self, x: torch.Tensor, a: torch.Tensor, sign: float) -> torch.Tensor:
        support = self.support
        return torch.where(support, super()._multiply(x.masked_fill(~support, 0.0), a, sign), x)

    def _logdet(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (a.sum() / len(self._aliases())).expand(x.shape[: -self.ndim])

    def extra_repr(self) -> str:
        return f"shape={self.shape}, offset={self.offset}"


class CosetSplineCoupling(SplineCoupling):
    """`SplineCoupling` of the sites (2i + t, 2j + t), t = ``target`` (only its half-lattice checkerboard class
    ``target_class`` if given), given the sites (2i + s, 2j + s), s = ``source`` (only ``source_class``, the rest
    hidden). The conditioner convolves the source on its half-size lattice; its output at (i, j) drives the target
    site (2i + t, 2j + t). With ``magnetization`` the conditioner also sees the mean M of the visible source sites
    as a constant second channel (odd under Z2, translation invariant): the local maps can depend on the global
    magnetization, which near criticality sets the local fluctuations."""

    def __init__(self, shape: Sequence[int], target: int, source: int, *, target_class: int | None = None,
                 source_class: int | None = None, magnetization: bool = False, **kwargs) -> None:
        shape = _check_shape(shape)
        if target == source:
            raise FlowError("a coset coupling needs different target and source cosets")
        if kwargs.get("conditioner", "cnn") != "cnn":
            raise FlowError(f"a coset coupling needs a cnn conditioner, got {kwargs.get('conditioner')!r}")
        half = tuple(s // 2 for s in shape)
        target_half = torch.ones(half, dtype=torch.bool) if target_class is None else checkerboard_mask(half, target_class)
        super().__init__(half, 0, mask=target_half, channels=2 if magnetization else 1, **kwargs)
        self.magnetization = bool(magnetization)
        full = torch.zeros(shape, dtype=torch.bool)
        full[target::2, target::2] = target_half
        self.mask, self.idx_b = full, torch.nonzero(full.flatten()).flatten()
        self.target, self.source = int(target), int(source)
        visible = torch.ones(half, dtype=torch.bool) if source_class is None else checkerboard_mask(half, source_class)
        self.register_buffer("visible", visible, persistent=False)
        self.n_visible = int(visible.sum())
        self.needs_masked_input = False

    def conditioner_params(self, x_frozen: torch.Tensor):
        s = self.source
        source = x_frozen[..., s::2, s::2].masked_fill(~self.visible, 0.0)
        if self.magnetization:
            m = source.flatten(1).sum(1) / self.n_visible
            source = torch.stack([source, m.reshape(-1, 1, 1).expand_as(source)], 1)
        return super().conditioner_params(source)

    def extra_repr(self) -> str:
        extra = ", magnetization" if self.magnetization else ""
        return f"target={self.target}, source={self.source}, sites={int(self.idx_b.numel())}{extra}"


def colour_mask(half: Sequence[int], coset: int, colour: int) -> torch.Tensor:
    """Colour ``colour`` (0–3) of coset ``coset`` as a mask of the half lattice ``half`` (site (i, j) of the half
    lattice is (2i + coset, 2j + coset)). A2 (coset 1): colour 2(i mod 2) + (j mod 2). A1e (coset 0, i + j even),
    in its rotated coordinates u = (i + j)/2, v = (i − j)/2: colour 2(u mod 2) + (v mod 2).

    With the odd sites and A1o integrated out, p(A2, A1e) ∝ e^{−Σ U} Π_a H_a, every factor H_a (a ∈ A1o) holding
    the four A2 sites of a 2 × 2 block of the A2 lattice and the four A1e sites of a plaquette of the A1e lattice:
    one site of every colour of both. So the sites of one colour are independent given all the others.

    Example:
        >>> [int(colour_mask((4, 4), 1, c).sum()) for c in range(4)], [int(colour_mask((4, 4), 0, c).sum()) for c in range(4)]
        ([4, 4, 4, 4], [2, 2, 2, 2])
    """
    i = torch.arange(half[0]).reshape(-1, 1)
    j = torch.arange(half[1]).reshape(1, -1)
    if coset == 1:
        return (2 * (i % 2) + (j % 2)) == colour
    u, v = torch.div(i + j, 2, rounding_mode="floor"), torch.div(i - j, 2, rounding_mode="floor")
    return ((i + j) % 2 == 0) & ((2 * (u % 2) + (v % 2)) == colour)


class ColourSplineCoupling(SplineCoupling):
    """`SplineCoupling` of the sites of one colour of A2 (``coset`` 1) or A1e (``coset`` 0) given every other
    learned site (`colour_mask`): the conditioner convolves two channels on the half lattice, A1e ((2i, 2j), A1o
    zeroed) and A2 ((2i + 1, 2j + 1)), with the target sites zeroed. Under the target density the sites of one
    colour are independent given the rest, so the layer can hold their exact conditional. The targets of a colour
    lie on one coset of 2Z² of the half lattice, so the conditioner's heads run there only (`ParityNet.on_coset`):
    a training step at L = 64 costs 1.3–1.5× less than with heads on the whole half lattice."""

    def __init__(self, shape: Sequence[int], coset: int, colour: int, **kwargs) -> None:
        shape = _check_shape(shape)
        if any(s % 8 for s in shape):  # the A1e colours are periodic only on half lattices of extents 4k
            raise FlowError(f"colour couplings need a 2D lattice with extents divisible by 8, got shape {list(shape)}")
        half = tuple(s // 2 for s in shape)
        target_half = colour_mask(half, coset, colour)
        super().__init__(half, 0, mask=target_half, channels=2, **kwargs)
        full = torch.zeros(shape, dtype=torch.bool)
        full[coset::2, coset::2] = target_half
        self.mask, self.idx_b = full, torch.nonzero(full.flatten()).flatten()
        self.target, self.source, self.colour = int(coset), 1 - int(coset), int(colour)
        hidden0 = checkerboard_mask(half, 1) | (target_half if coset == 0 else torch.zeros_like(target_half))
        hidden1 = target_half if coset == 1 else torch.zeros_like(target_half)
        self.register_buffer("visible", torch.stack([~hidden0, ~hidden1]), persistent=False)
        self.needs_masked_input = False

    def conditioner_params(self, x_frozen: torch.Tensor):
        source = torch.stack([x_frozen[..., 0::2, 0::2], x_frozen[..., 1::2, 1::2]], 1).masked_fill(~self.visible, 0.0)
        return super().conditioner_params(source)

    def extra_repr(self) -> str:
        return f"coset={self.target}, colour={self.colour}, sites={int(self.idx_b.numel())}"


class CosetGaussianShift(Coupling):
    """y = e^{s} x + (w ⋆ x_A2) at the A1e sites: the Gaussian conditional of A1e given A2, learned.

    w is a periodic k × k filter of the A2 half lattice (no bias, so the layer is odd), s one scalar; log f' = s.
    k = 5 at every lattice size, so the weights carry over between sizes (on a half lattice below 5 sites the
    stencil wraps around).
    `from_action` starts both from the Hartree Gaussian of `FourierScaling.from_action`: w the least-squares
    prediction of an A1 site from the k × k stencil of A2 sites, e^{2s} its residual variance, so the start
    couples A1e to A2 as the Gaussian does instead of drawing A1e independently.
    """

    def __init__(self, shape: Sequence[int], kernel_size: int = 5, weight: torch.Tensor | None = None,
                 log_sigma: float = 0.0) -> None:
        masks = two_level_masks(shape)
        super().__init__(masks["A1e"])
        self.kernel_size = int(kernel_size)
        half = tuple(s // 2 for s in masks["A1e"].shape)
        if self.kernel_size % 2 == 0 or self.kernel_size // 2 > min(half):
            raise FlowError(f"kernel_size must be odd and at most {2 * min(half) + 1}, got {kernel_size}")
        w = torch.zeros(self.kernel_size, self.kernel_size) if weight is None else torch.as_tensor(weight).clone()
        self.weight = torch.nn.Parameter(w.reshape(1, 1, self.kernel_size, self.kernel_size).float())
        self.log_sigma = torch.nn.Parameter(torch.tensor(float(log_sigma)))
        self.register_buffer("target_half", checkerboard_mask(half, 0).flatten().nonzero().flatten(), persistent=False)
        self.needs_masked_input = False

    @classmethod
    def from_action(cls, action, kernel_size: int = 5) -> "CosetGaussianShift":
        """w, s from the Hartree Gaussian (C(r) = V⁻¹ Σ_p e^{2a(p)} e^{ipr}): w = C_ss⁻¹ C_sa, e^{2s} = C(0) − C_sa·w."""
        a = FourierScaling.from_action(action, dtype=torch.float64).log_scale.detach()
        cov = torch.fft.ifftn(torch.exp(2 * a)).real
        shape = cov.shape
        r = [(2 * d0 + 1, 2 * d1 + 1) for d0 in range(-(kernel_size // 2), kernel_size // 2 + 1)
             for d1 in range(-(kernel_size // 2), kernel_size // 2 + 1)]

        def c(u: tuple[int, int]) -> float:
            return float(cov[u[0] % shape[0], u[1] % shape[1]])

        c_ss = torch.tensor([[c((ri[0] - rj[0], ri[1] - rj[1])) for rj in r] for ri in r], dtype=torch.float64)
        c_sa = torch.tensor([c(ri) for ri in r], dtype=torch.float64)
        # least squares with the minimum norm: on a half lattice smaller than the stencil, sites repeat in it
        w = torch.linalg.pinv(c_ss, hermitian=True) @ c_sa
        var = float(cov[0, 0]) - float(c_sa @ w)
        return cls(action.shape, kernel_size, w.reshape(kernel_size, kernel_size), 0.5 * float(np.log(var)))

    def conditioner_params(self, x_frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        src = x_frozen[..., 1::2, 1::2].unsqueeze(1)
        pad = self.kernel_size // 2
        t = torch.nn.functional.conv2d(circular_pad(src, pad), self.weight.to(src.dtype)).flatten(1)
        t = t.index_select(1, self.target_half)
        return self.log_sigma.to(t.dtype).expand_as(t), t

    # y = x e^s + t, log f' = s: RealNVP's elementwise map and its parameter cotangents
    transform = AffineCoupling.transform
    inverse_transform = AffineCoupling.inverse_transform
    param_cotangents = AffineCoupling.param_cotangents

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class MarginalSiteConditional(SiteConditional):
    """The A1o sites drawn from p(φ_a | A2, A1e) ∝ exp(−U(φ_a) + Σ_k F(2κφ_a + c_k)) of the module docstring.

    Args:
        shape: lattice extents (2D, divisible by 4).
        site_potential: U(φ), elementwise.
        neighbour_field: b(φ) = 2κ Σ_{±μ} φ_{x±μ̂}.
        marginal: the `SiteMarginal` of the odd sites' `SiteConditional` (its F, log Z to 10⁻⁵); the layer's
            `WindowSum` tabulates the same F anew for the sums over k at the grid nodes.
        field_scale: σ of the fields (the grid bound holds for neighbours within 6σ).
    """

    _table_width = 16  # the gathered window: four F terms × four Horner coefficients per (site, node)

    def __init__(self, shape: Sequence[int], site_potential: Callable[[torch.Tensor], torch.Tensor],
                 neighbour_field: Callable[[torch.Tensor], torch.Tensor], marginal: SiteMarginal, *,
                 field_scale: float = 1.0, spacing: float = SPACING) -> None:
        masks = two_level_masks(shape)
        unit = torch.zeros(1, *shape, dtype=torch.float64)
        unit[0, 0, 0] = 1.0
        two_kappa = float(neighbour_field(unit)[0, 1, 0])
        bound = _bound(site_potential, marginal, two_kappa, field_scale)
        super().__init__(shape, 0, site_potential, neighbour_field, bound=bound, spacing=spacing, mask=masks["A1o"])
        self.marginal, self.two_kappa = marginal, two_kappa
        self.window = WindowSum(marginal.layer, marginal.site_potential, start=-two_kappa * self.bound,
                                step=two_kappa * self.spacing, n_nodes=self.n_grid)
        self.register_buffer("even", ~masks["odd"], persistent=False)

    def conditioner_params(self, x_frozen: torch.Tensor) -> torch.Tensor:
        """c_k at the A1o sites, ``(B, n_b, 4)``: b of the four odd neighbours without this site (x_frozen is zero
        at the A1o sites; the odd sites' noise is hidden here)."""
        n = self.neighbour_field(x_frozen.masked_fill(~self.even, 0.0))
        c = torch.stack([torch.roll(n, shift, axis) for axis in (-2, -1) for shift in (1, -1)], -1)
        return c.flatten(1, -2).index_select(1, self.idx_b)

    def _node_log_density(self, c: torch.Tensor) -> torch.Tensor:
        """−U(φ_k) + Σ_j F(2κφ_k + c_j) at the grid nodes, ``(n, 4) -> (n, G)``."""
        return self.log_density.to(c.dtype) + self.window(c)

    def _mirror(self, c: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        return sign.unsqueeze(-1) * c

    def marginal_target(self, action) -> None:
        """None: training keeps this layer (only the odd sites, the last layer, are integrated out)."""
        return None


def _bound(site_potential, marginal: SiteMarginal, two_kappa: float, field_scale: float,
           smallest: float = 4.0) -> float:
    """The smallest R = ``smallest`` · 2^{k/4} at which the log-density at ±R lies `MARGIN` below its peak when the
    other neighbours of the four odd sites all sit at 6σ (c_k = 3 · 2κ · 6σ)."""
    c = 3 * two_kappa * 6 * field_scale
    for k in range(25):
        bound = smallest * 2 ** (k / 4)
        phi = torch.linspace(-bound, bound, 8001, dtype=torch.float64)
        f = -site_potential(phi) + 4 * marginal.log_z(two_kappa * phi + c)
        if float(f.max() - f[-1]) >= MARGIN:
            return bound
    raise ValueError("no grid bound up to 64 σ holds the A1o conditional")
