"""Flows for real scalar fields ``phi: (B, L0, …, L_{d−1})`` on checkerboard masks, in any dimension d.

- `AffineCoupling` (RealNVP, Dinh et al. 2017): y_b = x_b e^{s(x_a)} + t(x_a), log f' = s.
- `AdditiveCoupling` (NICE; Z2Nice with an odd conditioner, Nicoli et al. 2020): y_b = x_b + t(x_a).
- `Z2AffineCoupling`: y_b = x_b e^{s(x_a)} + t(x_a) with s even and t odd in x_a (a `ParityNet`), so
  every layer is odd while gaining per-site, field-dependent scales.
- `GlobalScaling`: y = e^{a} ⊙ x with a learned per-site log-scale a (logdet Σ a).
With an odd conditioner (tanh, no biases) every Z2Nice layer is odd, T(−z) = −T(z), and with the
symmetric N(0, 1) base q(−φ) = q(φ): the flow cannot drop one vacuum of the broken phase.
Checkerboard masks (Σ_μ x_μ even / odd) and conditioners work for any d: fully connected (``fc``) always,
periodic convolutions (``cnn``) for d = 1, 2, 3 (torch has no Conv4d).

Example:
    >>> layer = AffineCoupling((4, 4, 2), parity=0, hidden=[4])
    >>> y, logdet = layer(torch.ones(3, 4, 4, 2))
    >>> y.shape, logdet.tolist()  # the last conditioner layer starts at zero: the identity
    (torch.Size([3, 4, 4, 2]), [0.0, 0.0, 0.0])
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from actions.lattice import checkerboard_mask
from .base import Bijection, FlowError
from .conditioners import CONV_DIMS, ConvNet, DenseNet, ParityNet
from .coupling import Coupling

__all__ = ["AffineCoupling", "AdditiveCoupling", "GlobalScaling", "ParitySiteConditioner", "SiteConditioner",
           "Z2AffineCoupling", "check_conditioner"]


def check_conditioner(kind: str, shape: Sequence[int]) -> None:
    """Raise `FlowError` (one line) where conditioner ``kind`` cannot take a lattice of ``shape``."""
    if kind not in ("cnn", "fc"):
        raise FlowError(f"flow.conditioner must be 'cnn' or 'fc', got {kind!r}")
    if kind == "cnn" and len(shape) not in CONV_DIMS:
        raise FlowError(f"flow.conditioner 'cnn' needs a 1D, 2D or 3D lattice (torch has no Conv{len(shape)}d), "
                        f"got shape {list(shape)}; use 'fc'")


def at_sites(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A CNN's output ``(B, C, L0, …)`` at the flat sites ``idx``: ``(B, C, n)``. A channels-last output (the CPU
    convolutions) is gathered in its own layout, so that no copy converts it forth and its gradient back."""
    if out.is_contiguous() or out.dim() not in (4, 5):
        return out.flatten(2).index_select(2, idx)
    b, c = out.shape[:2]
    return out.movedim(1, -1).reshape(b, -1, c).index_select(1, idx).transpose(1, 2)


class SiteConditioner(nn.Module):
    """c(x_a) for a scalar field: CNN on the masked field, or an MLP from the a-sites to the b-sites.

    Returns ``(B, C, n_b)``: the parameters at the b-sites, in the order of ``idx_b``.
    """

    def __init__(self, shape: Sequence[int], mask: torch.Tensor, out_channels: int, kind: str, hidden: Sequence[int],
                 kernel_size: int, activation: str, bias: bool, dilation: int | Sequence[int] = 1) -> None:
        super().__init__()
        check_conditioner(kind, shape)
        self.shape, self.kind, self.out_channels = tuple(shape), kind, out_channels
        flat = mask.flatten()
        self.register_buffer("idx_a", torch.nonzero(~flat).flatten())
        self.register_buffer("idx_b", torch.nonzero(flat).flatten())
        if kind == "cnn":
            self.net = ConvNet(1, out_channels, hidden, kernel_size, activation, bias, dilation, ndim=len(self.shape))
        else:
            self.net = DenseNet(len(self.idx_a), len(self.idx_b), out_channels, hidden, activation, bias)

    def forward(self, x_frozen: torch.Tensor) -> torch.Tensor:
        if self.kind == "cnn":
            return at_sites(self.net(x_frozen.unsqueeze(1)), self.idx_b)
        return self.net(x_frozen.flatten(1).index_select(1, self.idx_a))


def _coset_of(mask: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor] | None:
    """(offset o, the flat indices of the masked sites on the coarse lattice of o + 2Z^d) when every masked site
    lies on that one coset and every extent is even; otherwise None.

    Example:
        >>> m = torch.zeros(4, 4, dtype=torch.bool); m[1, 0] = m[3, 2] = True
        >>> _coset_of(m)
        ((1, 0), tensor([0, 3]))
    """
    if mask.dim() == 0 or any(n % 2 for n in mask.shape) or not bool(mask.any()):
        return None
    sites = torch.nonzero(mask)
    offset = sites[0] % 2
    if not bool((sites % 2 == offset).all()):
        return None
    offset = tuple(int(o) for o in offset)
    coarse = mask[tuple(slice(o, None, 2) for o in offset)]
    return offset, torch.nonzero(coarse.flatten()).flatten()


class ParitySiteConditioner(SiteConditioner):
    """(even, odd) parameters at the b-sites, each ``(B, C, n_b)``: even(−x_a) = even(x_a), odd(−x_a) = −odd(x_a)."""

    def __init__(self, shape: Sequence[int], mask: torch.Tensor, n_even: int, n_odd: int, kind: str,
                 hidden: Sequence[int], kernel_size: int, dilation: int | Sequence[int] = 1, channels: int = 1) -> None:
        nn.Module.__init__(self)
        check_conditioner(kind, shape)
        self.shape, self.kind, self.channels = tuple(shape), kind, int(channels)
        flat = mask.flatten()
        self.register_buffer("idx_a", torch.nonzero(~flat).flatten())
        self.register_buffer("idx_b", torch.nonzero(flat).flatten())
        self.net = ParityNet(kind, n_even, n_odd, hidden, kernel_size, dilation, n_in=len(self.idx_a),
                             n_out=len(self.idx_b), ndim=len(self.shape), channels=channels)
        # targets on one coset of 2Z^d (the colour couplings): the heads run there only, a quarter of their work
        coset = _coset_of(mask) if kind == "cnn" else None
        self.coset = None if coset is None else coset[0]  # the offset o of o + 2Z^d, or None
        if coset is not None:
            self.register_buffer("idx_coset", coset[1], persistent=False)

    def forward(self, x_frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_frozen``: ``(B, *shape)``, or ``(B, channels, *shape)`` with extra (Z2-odd) input channels."""
        if self.kind == "cnn":
            x = x_frozen.unsqueeze(1) if self.channels == 1 else x_frozen
            if x.dim() != len(self.shape) + 2 or x.shape[1] != self.channels:
                raise ValueError(f"conditioner input of shape {tuple(x_frozen.shape)}, expected (B, {self.channels}, "
                                 f"*{self.shape})")
            if self.coset is not None:
                even, odd = self.net.on_coset(x, self.coset, 2)
                return at_sites(even, self.idx_coset), at_sites(odd, self.idx_coset)
            even, odd = self.net(x)
            return at_sites(even, self.idx_b), at_sites(odd, self.idx_b)
        return self.net(x_frozen.flatten(1).index_select(1, self.idx_a))


class AffineCoupling(Coupling):
    """RealNVP: y_b = x_b e^{s} + t, (s, t) = c(x_a); log f' = s."""

    def __init__(self, shape: Sequence[int], parity: int, *, conditioner: str = "cnn", hidden: Sequence[int] = (16, 16),
                 kernel_size: int = 3, activation: str = "tanh", dilation: int | Sequence[int] = 1) -> None:
        mask = checkerboard_mask(shape, parity)
        super().__init__(mask)
        self.net = SiteConditioner(shape, mask, 2, conditioner, hidden, kernel_size, activation, bias=True,
                                   dilation=dilation)
        self.needs_masked_input = conditioner == "cnn"  # the FC conditioner gathers the a-sites itself

    def conditioner_params(self, x_frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x_frozen)
        return out[:, 0], out[:, 1]

    def transform(self, x, params):
        s, t = params
        return x * torch.exp(s) + t, s

    def inverse_transform(self, y, params):
        s, t = params
        return (y - t) * torch.exp(-s), s

    def param_cotangents(self, u_b, x_b, params, cache):
        """∂/∂(s, t) of Σ [s + u_b (x e^s + t)] = (1 + u_b x e^s, u_b)."""
        s = params[0].detach()
        return 1 + u_b * x_b * torch.exp(s), u_b


class Z2AffineCoupling(AffineCoupling):
    """Z2-equivariant RealNVP: y_b = x_b e^{s(x_a)} + t(x_a), s even and t odd, so T(−x) = −T(x)."""

    def __init__(self, shape: Sequence[int], parity: int, *, conditioner: str = "cnn", hidden: Sequence[int] = (16, 16),
                 kernel_size: int = 3, activation: str = "tanh", dilation: int | Sequence[int] = 1) -> None:
        mask = checkerboard_mask(shape, parity)
        Coupling.__init__(self, mask)
        self.net = ParitySiteConditioner(shape, mask, 1, 1, conditioner, hidden, kernel_size, dilation)
        self.needs_masked_input = conditioner == "cnn"

    def conditioner_params(self, x_frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        even, odd = self.net(x_frozen)
        return even[:, 0], odd[:, 0]


class AdditiveCoupling(Coupling):
    """NICE / Z2Nice: y_b = x_b + t(x_a), log f' = 0; ``odd=True`` makes t odd (no biases, tanh)."""

    def __init__(self, shape: Sequence[int], parity: int, *, conditioner: str = "cnn", hidden: Sequence[int] = (16, 16),
                 kernel_size: int = 3, activation: str = "tanh", odd: bool = True,
                 dilation: int | Sequence[int] = 1) -> None:
        mask = checkerboard_mask(shape, parity)
        super().__init__(mask)
        self.net = SiteConditioner(shape, mask, 1, conditioner, hidden, kernel_size, activation, bias=not odd,
                                   dilation=dilation)
        self.needs_masked_input = conditioner == "cnn"  # the FC conditioner gathers the a-sites itself

    def conditioner_params(self, x_frozen: torch.Tensor) -> torch.Tensor:
        return self.net(x_frozen)[:, 0]

    def transform(self, x, t):
        return x + t, torch.zeros_like(x)

    def inverse_transform(self, y, t):
        return y - t, torch.zeros_like(y)

    def param_cotangents(self, u_b, x_b, t, cache):
        """∂/∂t of Σ u_b (x_b + t) = u_b."""
        return (u_b,)


class GlobalScaling(Bijection):
    """y = e^{a} ⊙ x with a learned log-scale ``a`` (init 0); logdet = Σ_x a_x.

    ``per_site=True``: one a per site (Nicoli et al. 2020, with FC conditioners); ``per_site=False``: one
    scalar a for all sites, which keeps a CNN flow translation-equivariant.
    """

    def __init__(self, shape: Sequence[int], per_site: bool = True) -> None:
        super().__init__()
        self.n_sites = int(torch.Size(shape).numel())
        self.log_scale = nn.Parameter(torch.zeros(*shape) if per_site else torch.zeros(()))

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        total = self.log_scale.sum() if self.log_scale.dim() else self.log_scale * self.n_sites
        return total.expand(x.shape[0])

    def forward(self, x):
        return x * torch.exp(self.log_scale), self._logdet(x)

    def inverse(self, y):
        return y * torch.exp(-self.log_scale), -self._logdet(y)

    def forward_with_score(self, x, g):
        y, logdet = self.forward(x)
        return y, logdet, (g * torch.exp(-self.log_scale)).detach()

    def inverse_with_score(self, y, r):
        x, logdet_inv = self.inverse(y)
        return x, logdet_inv, (r * torch.exp(self.log_scale)).detach()
