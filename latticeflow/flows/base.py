"""Bijections with log-determinants and the score hooks of the fast path gradient.

Every layer T: x ↦ y offers (Vaitl, Winkler, Richter, Kessel, ICLR 2024, arXiv 2403.15881):
- ``forward(x) -> (y, logdet)`` with logdet = log|det ∂y/∂x| per batch element;
- ``inverse(y) -> (x, logdet_inv)`` with logdet_inv = −logdet(x);
- ``forward_with_score(x, g) -> (y, logdet, g')``: the score of the pushed-forward density,
  g' = J^{−T}(g − ∇ₓ logdet), given g = ∇ₓ log q(x) (the paper's Alg. 1 recursion);
- ``inverse_with_score(y, r) -> (x, logdet_inv, r')``: the pulled-back score, r' = Jᵀ r + ∇ₓ logdet.
Scores are returned detached (they enter the surrogate losses as stop-gradient quantities); the
outputs y / x keep their graph to the parameters so one parameter backward follows.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bijection", "FlowError", "NotInvertibleError", "DomainError", "sum_sites"]


class FlowError(ValueError):
    """A flow was built or used wrongly (bad config, wrong field shape)."""


class NotInvertibleError(FlowError):
    """The layer has no inverse (or its inverse failed to converge)."""


class DomainError(FlowError):
    """Input outside the layer's domain (e.g. non-finite values)."""


def sum_sites(t: torch.Tensor) -> torch.Tensor:
    """Σ over every axis but the batch axis, ``(B, …) -> (B,)``."""
    return t.flatten(1).sum(-1)


class Bijection(nn.Module):
    """Base class of flow layers; subclasses implement ``forward``, ``inverse`` and the two score hooks."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotInvertibleError(f"{type(self).__name__} has no inverse")

    def forward_with_score(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_with_score")

    def inverse_with_score(self, y: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement inverse_with_score")
