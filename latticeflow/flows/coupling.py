"""Coupling layers: x = (x_a, x_b) split by a fixed mask; x_b' = f(x_b; c(x_a)) elementwise, x_a' = x_a.

logdet = Σ_b log f'(x_b). The score hooks are implemented once here from f, log f' and ∂ log f'/∂x_b
(Vaitl et al., ICLR 2024, Alg. 1 and its pull-back counterpart):
  forward:  g_b ← g_b − ∂_b log f';  u_b = g_b / f';
            u_a = g_a − ∇_{x_a}[Σ_b log f'(x_b; c(x_a)) + ⟨u_b, f(x_b; c(x_a))⟩]   (one input-only VJP)
  inverse:  r_b' = f'·r_b + ∂_b log f';
            r_a' = r_a + ∇_{x_a}[⟨r_b, f(x_b; c(x_a))⟩ + Σ_b log f'(x_b; c(x_a))]    (x_b held fixed)
A subclass writes only ``conditioner_params``, ``transform``, ``inverse_transform`` and ``dlog_fprime``.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import Bijection, sum_sites

__all__ = ["Coupling"]


class Coupling(Bijection):
    """Elementwise coupling on the sites where ``mask`` is True (the b-sites), conditioned on the rest.

    ``mask``: bool tensor of the field shape. Parameters returned by ``conditioner_params`` are any
    structure the subclass's ``transform`` understands; they must depend on x only through the
    a-sites (the base class passes x with the b-sites set to zero).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    # -- to be implemented by a coupling ----------------------------------------------------------
    def conditioner_params(self, x_frozen: torch.Tensor) -> Any:
        raise NotImplementedError

    def transform(self, x: torch.Tensor, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise (f(x), log f'(x)) on the whole field (only b-sites are used)."""
        raise NotImplementedError

    def inverse_transform(self, y: torch.Tensor, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise (f⁻¹(y), log f'(f⁻¹(y)))."""
        raise NotImplementedError

    def dlog_fprime(self, x: torch.Tensor, params: Any) -> torch.Tensor | None:
        """∂ log f'/∂x_b elementwise; ``None`` when log f' does not depend on x_b (affine, additive)."""
        return None

    # -- shared machinery ---------------------------------------------------------------------------
    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, torch.zeros((), dtype=x.dtype, device=x.device), x)

    def _logdet(self, log_fprime: torch.Tensor) -> torch.Tensor:
        return sum_sites(torch.where(self.mask, log_fprime, torch.zeros((), dtype=log_fprime.dtype, device=log_fprime.device)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.conditioner_params(self._frozen(x))
        y, log_fprime = self.transform(x, params)
        return torch.where(self.mask, y, x), self._logdet(log_fprime)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.conditioner_params(self._frozen(y))
        x, log_fprime = self.inverse_transform(y, params)
        return torch.where(self.mask, x, y), -self._logdet(log_fprime)

    def forward_with_score(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not x.requires_grad:
            x = x.detach().requires_grad_()
        params = self.conditioner_params(self._frozen(x))
        y, log_fprime = self.transform(x, params)
        g_b = g
        d = self.dlog_fprime(x, params)
        if d is not None:
            g_b = g_b - d.detach()
        u_b = (g_b * torch.exp(-log_fprime.detach())).detach()
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        inner = torch.where(self.mask, log_fprime + u_b * y, zero).sum()
        (vjp,) = torch.autograd.grad(inner, x, retain_graph=True, allow_unused=True)
        u_a = g if vjp is None else g - vjp
        score = torch.where(self.mask, u_b, u_a).detach()
        return torch.where(self.mask, y, x), self._logdet(log_fprime), score

    def inverse_with_score(self, y: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not y.requires_grad:
            y = y.detach().requires_grad_()
        params = self.conditioner_params(self._frozen(y))
        x, log_fprime = self.inverse_transform(y, params)
        x = torch.where(self.mask, x, y)
        x_fixed = x.detach()
        f_fixed, log_fprime_fixed = self.transform(x_fixed, params)  # graph to y_a only (via params)
        zero = torch.zeros((), dtype=y.dtype, device=y.device)
        r_b = r * torch.exp(log_fprime_fixed.detach())
        d = self.dlog_fprime(x_fixed, params)
        if d is not None:
            r_b = r_b + d.detach()
        inner = torch.where(self.mask, r.detach() * f_fixed + log_fprime_fixed, zero).sum()
        (vjp,) = torch.autograd.grad(inner, y, retain_graph=True, allow_unused=True)
        r_a = r if vjp is None else r + vjp
        score = torch.where(self.mask, r_b, r_a).detach()
        return x, -self._logdet(log_fprime), score
