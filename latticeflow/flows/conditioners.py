"""Conditioner networks c(x_a) of coupling layers.

- `ConvNet`: periodic (circularly padded) convolutions over the d lattice axes (`PeriodicConv`: Conv1d,
  Conv2d or Conv3d for d = 1, 2, 3; torch has no Conv4d) — translation equivariant, scales to large
  lattices (Albergo et al. 2019; Kanwar et al. 2020).
- `DenseNet`: fully connected on the flattened frozen sites (the paper's "Alt FC", Vaitl et al. 2024); any d.
``bias=False`` with an odd activation (tanh) makes the network odd, c(−x) = −c(x) (Z2Nice, Nicoli 2020).
The last layer starts at zero, so every coupling starts as the identity.

Example:
    >>> net = ConvNet(1, 2, hidden=[4], ndim=3)
    >>> net(torch.zeros(5, 1, 4, 4, 2)).shape
    torch.Size([5, 2, 4, 4, 2])
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "CONV_DIMS", "ODD_ACTIVATIONS", "ConvNet", "DenseNet", "ParityNet", "PeriodicConv",
           "PeriodicConv1d", "PeriodicConv2d", "PeriodicConv3d", "circular_pad", "make_activation"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "gelu": nn.GELU}
ODD_ACTIVATIONS = {"tanh"}


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class _CircularPad(torch.autograd.Function):
    """Periodic padding of the last ``ndim`` axes by concatenation; the backward folds the border
    cotangents back onto the sites they copy (a few slice additions instead of zero-fill + scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: int, ndim: int) -> torch.Tensor:
        ctx.pad, ctx.ndim = pad, ndim
        for axis in range(-ndim, 0):
            n = x.shape[axis]
            x = torch.cat([x.narrow(axis, n - pad, pad), x, x.narrow(axis, 0, pad)], dim=axis)
        return x

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        p = ctx.pad
        if ctx.ndim == 2:  # one copy of the core and eight border additions (the loop below copies twice)
            return _fold_2d(g, p), None, None
        for axis in reversed(range(-ctx.ndim, 0)):
            n = g.shape[axis] - 2 * p
            core = g.narrow(axis, p, n).clone()
            core.narrow(axis, 0, p).add_(g.narrow(axis, n + p, p))
            core.narrow(axis, n - p, p).add_(g.narrow(axis, 0, p))
            g = core
        return g, None, None


def _fold_2d(g: torch.Tensor, p: int) -> torch.Tensor:
    """The adjoint of 2D periodic padding by ``p``: the core of ``g`` plus its four borders and four corners,
    each added onto the sites it copies."""
    h, w = g.shape[-2] - 2 * p, g.shape[-1] - 2 * p
    core = g[..., p:p + h, p:p + w].clone()
    rows, cols = slice(p, p + h), slice(p, p + w)
    low, high = slice(0, p), slice(h - p, h)  # the core's first and last p rows (or columns: w for h)
    left, right = slice(0, p), slice(w - p, w)
    core[..., high, :] += g[..., :p, cols]
    core[..., low, :] += g[..., p + h:, cols]
    core[..., :, right] += g[..., rows, :p]
    core[..., :, left] += g[..., rows, p + w:]
    core[..., high, right] += g[..., :p, :p]
    core[..., high, left] += g[..., :p, p + w:]
    core[..., low, right] += g[..., p + h:, :p]
    core[..., low, left] += g[..., p + h:, p + w:]
    return core


def circular_pad(x: torch.Tensor, pad: int, ndim: int = 2) -> torch.Tensor:
    """Periodic padding of the last ``ndim`` axes by ``pad`` sites.

    Same values as ``F.pad(x, (pad,) * 2 * ndim, mode="circular")`` at a fraction of its cost, forward and
    backward, for the small convolutions of lattice flows (measured: 6.6 vs 8.1 ms forward and 13 vs
    49 ms forward+backward for a (4096, 16, 8, 8) tensor).

    Example:
        >>> circular_pad(torch.arange(3.0).view(1, 3), 1, ndim=1)
        tensor([[2., 0., 1., 2., 0.]])
    """
    if pad == 0:
        return x
    if pad > min(x.shape[-ndim:]):
        raise ValueError(f"circular padding {pad} exceeds the lattice extent {tuple(x.shape[-ndim:])}")
    return _CircularPad.apply(x, pad, ndim)


#: the channels-last memory format of a lattice dimension's convolution input (CPU; see `_Periodic.forward`)
_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


#: the most input channels for which a 2D periodic convolution on the CPU uses the im2col kernel (`_Periodic`)
NATIVE_MAX_IN_CHANNELS = 4


class _Periodic:
    """Circular padding + valid convolution over the last ``ndim`` axes (mixed into ``nn.ConvNd``)."""

    ndim: int

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0, bias=bias, dilation=dilation)
        self.pad = dilation * (kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = circular_pad(x, self.pad, self.ndim)
        if self._native_cpu(x):
            # a few input channels (a coupling's input layer): oneDNN's gradient with respect to the input is
            # 3x slower than the im2col convolution's for 2 channels (8 x 2 x 36 x 36, 5 x 5 kernels, 2 threads:
            # forward and both backward passes 0.75 against 1.75 ms); the output goes on channels-last
            y = torch.ops.aten.thnn_conv2d(x.contiguous(), self.weight, list(self.kernel_size), self.bias)
            return y.contiguous(memory_format=torch.channels_last)
        if x.device.type == "cpu" and self.ndim in _CHANNELS_LAST:
            # oneDNN's convolutions, forward and backward, are 2–3× faster channels-last for the 16-channel
            # layers of lattice flows (8–10 % per φ⁴ training step, 2 cores); a no-op once the stack is
            # channels-last
            x = x.contiguous(memory_format=_CHANNELS_LAST[self.ndim])
        return super().forward(x)

    def _native_cpu(self, x: torch.Tensor) -> bool:
        """Whether `forward` takes the im2col convolution (CPU, 2D, at most `NATIVE_MAX_IN_CHANNELS` input
        channels, no dilation, no groups)."""
        return (x.device.type == "cpu" and self.ndim == 2 and self.in_channels <= NATIVE_MAX_IN_CHANNELS
                and self.dilation == (1, 1) and self.groups == 1)

    def on_coset(self, x: torch.Tensor, offset: Sequence[int], stride: int) -> torch.Tensor:
        """The output at the sites ``offset`` + ``stride``·n only, ``(B, C_out, L0/stride, …)``: the padded input
        convolved with that stride, 1/stride^d of the work (the heads of a coupling whose targets lie on a
        coset of stride·Z^d, `ParitySiteConditioner`). Each extent must be divisible by ``stride``.

        Example:
            >>> conv = PeriodicConv2d(1, 1, 3)
            >>> x = torch.randn(2, 1, 8, 8)
            >>> bool(torch.allclose(conv.on_coset(x, (1, 0), 2), conv(x)[..., 1::2, 0::2]))
            True
        """
        return self.on_coset_padded(circular_pad(x, self.pad, self.ndim), offset, stride)

    def on_coset_padded(self, x: torch.Tensor, offset: Sequence[int], stride: int) -> torch.Tensor:
        """`on_coset` of an input already padded by ``self.pad`` (`circular_pad`): convolutions of equal reach
        share one padding (the two heads of `ParityNet.on_coset`)."""
        x = x[(..., *(slice(o, None) for o in offset))]
        if x.device.type == "cpu" and self.ndim in _CHANNELS_LAST:
            x = x.contiguous(memory_format=_CHANNELS_LAST[self.ndim])
        return _CONV_FUNCTIONAL[self.ndim](x, self.weight, self.bias, stride, 0, self.dilation)


#: the functional convolution of each lattice dimension (`_Periodic.on_coset`)
_CONV_FUNCTIONAL = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}


class PeriodicConv1d(_Periodic, nn.Conv1d):
    """1D convolution with periodic boundary conditions (see `PeriodicConv2d`)."""

    ndim = 1


class PeriodicConv2d(_Periodic, nn.Conv2d):
    """2D convolution with periodic boundary conditions (`circular_pad` + valid convolution).

    ``dilation`` d spreads the k × k taps over a (d(k−1)+1)² window: a larger receptive field at equal cost.
    """

    ndim = 2


class PeriodicConv3d(_Periodic, nn.Conv3d):
    """3D convolution with periodic boundary conditions (see `PeriodicConv2d`)."""

    ndim = 3


#: the periodic convolution of each lattice dimension that torch has a convolution for
CONV_DIMS = {1: PeriodicConv1d, 2: PeriodicConv2d, 3: PeriodicConv3d}


def PeriodicConv(ndim: int, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,  # noqa: N802
                 dilation: int = 1) -> nn.Module:
    """The periodic convolution over ``ndim`` lattice axes (1, 2 or 3; ``ValueError`` otherwise)."""
    if ndim not in CONV_DIMS:
        raise ValueError(f"periodic convolutions need a 1D, 2D or 3D lattice (torch has no Conv{ndim}d), "
                         f"got {ndim} dimensions")
    return CONV_DIMS[ndim](in_channels, out_channels, kernel_size, bias=bias, dilation=dilation)


def _stack(sizes: Sequence[int], layer, activation: str) -> nn.Sequential:
    """layer(a, b) for consecutive sizes with activations between; the last layer starts at zero."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(layer(a, b))
        if i < len(sizes) - 2:
            layers.append(make_activation(activation))
    nn.init.zeros_(layers[-1].weight)
    if layers[-1].bias is not None:
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


def _dilations(dilation: int | Sequence[int], n: int) -> list[int]:
    """One dilation per convolution: an int for all, or a list of ``n``."""
    if isinstance(dilation, int):
        return [dilation] * n
    dilation = list(dilation)
    if len(dilation) != n:
        raise ValueError(f"dilation needs one entry per convolution ({n}), got {dilation}")
    return dilation


class ConvNet(nn.Module):
    """Periodic CNN ``(B, C_in, L0, …) -> (B, C_out, L0, …)`` over ``ndim`` lattice axes (1, 2 or 3);
    ``dilation`` per convolution (int or list)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: Sequence[int], kernel_size: int = 3,
                 activation: str = "tanh", bias: bool = True, dilation: int | Sequence[int] = 1,
                 ndim: int = 2) -> None:
        super().__init__()
        dil = iter(_dilations(dilation, len(hidden) + 1))
        self.net = _stack([in_channels, *hidden, out_channels],
                          lambda a, b: PeriodicConv(ndim, a, b, kernel_size, bias=bias, dilation=next(dil)), activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseNet(nn.Module):
    """MLP from the ``n_in`` frozen sites to ``out_channels`` values at each of ``n_out`` sites."""

    def __init__(self, n_in: int, n_out: int, out_channels: int, hidden: Sequence[int], activation: str = "tanh",
                 bias: bool = True) -> None:
        super().__init__()
        self.net = _stack([n_in, *hidden, n_out * out_channels], lambda a, b: nn.Linear(a, b, bias=bias), activation)
        self.out_channels, self.n_out = out_channels, n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], self.out_channels, self.n_out)


class ParityNet(nn.Module):
    """Z2-graded conditioner: an odd trunk h(x) (tanh, no biases, so h(−x) = −h(x)) and two heads,
    ``odd = W_o h`` (no bias) and ``even = W_e (h ⊙ h) + b``, so odd(−x) = −odd(x) and even(−x) = even(x).

    ``kind`` is ``cnn`` (periodic convolutions over ``ndim`` lattice axes on ``(B, channels, L0, …)``, heads are
    k^d convolutions) or ``fc`` (``(B, n_in)`` to ``(B, C, n_out)``). Both heads start at zero. Used by the Z2-equivariant
    affine and spline couplings (even log-scales, odd shifts, mirrored spline parameters).
    """

    def __init__(self, kind: str, n_even: int, n_odd: int, hidden: Sequence[int], kernel_size: int = 3,
                 dilation: int | Sequence[int] = 1, n_in: int = 1, n_out: int = 1, ndim: int = 2,
                 channels: int = 1) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a parity conditioner needs at least one hidden layer")
        if channels != 1 and kind != "cnn":
            raise ValueError(f"extra input channels need the cnn conditioner, got {kind!r}")
        self.kind, self.n_even, self.n_odd, self.n_out = kind, n_even, n_odd, n_out
        if kind == "cnn":
            dil = _dilations(dilation, len(hidden) + 1)
            it = iter(dil)
            make = lambda a, b, bias: PeriodicConv(ndim, a, b, kernel_size, bias=bias, dilation=next(it))  # noqa: E731
            sizes = [channels, *hidden]  # input channels, every one odd under Z2
        else:
            make = lambda a, b, bias: nn.Linear(a, b, bias=bias)  # noqa: E731
            sizes = [n_in, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [make(a, b, False), nn.Tanh()]
        self.trunk = nn.Sequential(*layers)
        k_out = n_out if kind == "fc" else 1
        head_dil = dil[-1] if kind == "cnn" else 1
        if kind == "cnn":
            self.odd = PeriodicConv(ndim, hidden[-1], n_odd, kernel_size, bias=False, dilation=head_dil)
            self.even = PeriodicConv(ndim, hidden[-1], n_even, kernel_size, bias=True, dilation=head_dil)
        else:
            self.odd = nn.Linear(hidden[-1], n_odd * k_out, bias=False)
            self.even = nn.Linear(hidden[-1], n_even * k_out, bias=True)
        for head in (self.odd, self.even):
            nn.init.zeros_(head.weight)
            if head.bias is not None:
                nn.init.zeros_(head.bias)

    def on_coset(self, x: torch.Tensor, offset: Sequence[int], stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(even, odd) of a cnn at the sites ``offset`` + ``stride``·n only, each ``(B, C, L0/stride, …)``: the trunk
        runs on the whole lattice, the heads (most of the work) on the coset."""
        if self.kind != "cnn":
            raise ValueError(f"coset outputs need the cnn conditioner, got {self.kind!r}")
        h = circular_pad(self.trunk(x), self.odd.pad, self.odd.ndim)  # one padding for both heads (same reach)
        return self.even.on_coset_padded(h * h, offset, stride), self.odd.on_coset_padded(h, offset, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(even, odd): cnn ``(B, C_e, L0, …)``, ``(B, C_o, L0, …)``; fc ``(B, C_e, n_out)``, ``(B, C_o, n_out)``."""
        h = self.trunk(x)
        even, odd = self.even(h * h), self.odd(h)
        if self.kind == "fc":
            return even.view(x.shape[0], self.n_even, self.n_out), odd.view(x.shape[0], self.n_odd, self.n_out)
        return even, odd
