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

__all__ = ["ACTIVATIONS", "ODD_ACTIVATIONS", "ConvNet", "DenseNet", "make_activation"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "gelu": nn.GELU}
ODD_ACTIVATIONS = {"tanh"}


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class ConvNet(nn.Module):
    """Periodic CNN ``(B, C_in, L0, L1) -> (B, C_out, L0, L1)``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: Sequence[int], kernel_size: int = 3,
                 activation: str = "tanh", bias: bool = True) -> None:
        super().__init__()
        sizes = [in_channels, *hidden, out_channels]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2, padding_mode="circular", bias=bias))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
        nn.init.zeros_(layers[-1].weight)
        if bias:
            nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseNet(nn.Module):
    """MLP from the ``n_in`` frozen sites to ``out_channels`` values at each of ``n_out`` sites."""

    def __init__(self, n_in: int, n_out: int, out_channels: int, hidden: Sequence[int], activation: str = "tanh",
                 bias: bool = True) -> None:
        super().__init__()
        sizes = [n_in, *hidden, n_out * out_channels]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
        nn.init.zeros_(layers[-1].weight)
        if bias:
            nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.out_channels, self.n_out = out_channels, n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], self.out_channels, self.n_out)
