"""Conditioner networks c(x_a) of coupling layers.

- `ConvNet`: periodic (circularly padded) 2D convolutions — translation equivariant, scales to large
  lattices (Albergo et al. 2019; Kanwar et al. 2020).
- `DenseNet`: fully connected on the flattened frozen sites (the paper's "Alt FC", Vaitl et al. 2024).
``bias=False`` with an odd activation (tanh) makes the network odd, c(−x) = −c(x) (Z2Nice, Nicoli 2020).
The last layer starts at zero, so every coupling starts as the identity.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "ODD_ACTIVATIONS", "ConvNet", "DenseNet", "PeriodicConv2d", "circular_pad", "make_activation"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "gelu": nn.GELU}
ODD_ACTIVATIONS = {"tanh"}


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class _CircularPad(torch.autograd.Function):
    """Periodic padding of the last two axes by concatenation; the backward folds the border
    cotangents back onto the sites they copy (a few slice additions instead of zero-fill + scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: int) -> torch.Tensor:
        ctx.pad = pad
        x = torch.cat([x[..., -pad:, :], x, x[..., :pad, :]], dim=-2)
        return torch.cat([x[..., -pad:], x, x[..., :pad]], dim=-1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        p = ctx.pad
        cols = g[..., p:-p].clone()
        cols[..., :p] += g[..., -p:]
        cols[..., -p:] += g[..., :p]
        rows = cols[..., p:-p, :].clone()
        rows[..., :p, :] += cols[..., -p:, :]
        rows[..., -p:, :] += cols[..., :p, :]
        return rows, None


def circular_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Periodic padding of the last two axes by ``pad`` sites.

    Same values as ``F.pad(x, (pad,)*4, mode="circular")`` at a fraction of its cost, forward and
    backward, for the small convolutions of lattice flows (measured: 6.6 vs 8.1 ms forward and 13 vs
    49 ms forward+backward for a (4096, 16, 8, 8) tensor).
    """
    if pad == 0:
        return x
    if pad > min(x.shape[-2:]):
        raise ValueError(f"circular padding {pad} exceeds the lattice extent {tuple(x.shape[-2:])}")
    return _CircularPad.apply(x, pad)


class PeriodicConv2d(nn.Conv2d):
    """2D convolution with periodic boundary conditions (`circular_pad` + valid convolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0, bias=bias)
        self.pad = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(circular_pad(x, self.pad))


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


class ConvNet(nn.Module):
    """Periodic CNN ``(B, C_in, L0, L1) -> (B, C_out, L0, L1)``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: Sequence[int], kernel_size: int = 3,
                 activation: str = "tanh", bias: bool = True) -> None:
        super().__init__()
        self.net = _stack([in_channels, *hidden, out_channels],
                          lambda a, b: PeriodicConv2d(a, b, kernel_size, bias=bias), activation)

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
