"""Coupling layers: x = (x_a, x_b) split by a fixed mask; x_b' = f(x_b; c(x_a)) elementwise, x_a' = x_a.

logdet = Σ_b log f'(x_b). The score hooks are implemented once here from f, log f' and ∂ log f'/∂x_b
(Vaitl et al., ICLR 2024, Alg. 1 and its pull-back counterpart):
  forward:  g_b ← g_b − ∂_b log f';  u_b = g_b / f';
            u_a = g_a − ∇_{x_a}[Σ_b log f'(x_b; c(x_a)) + ⟨u_b, f(x_b; c(x_a))⟩]   (one input-only VJP)
  inverse:  r_b' = f'·r_b + ∂_b log f';
            r_a' = r_a + ∇_{x_a}[⟨r_b, f(x_b; c(x_a))⟩ + Σ_b log f'(x_b; c(x_a))]    (x_b held fixed)
The transformed sites are handled compactly: x_b = x.flatten(1)[:, idx_b] of shape (B, n_b), and the
conditioner returns its parameters at those sites only, so elementwise work is done where it matters.
A subclass writes ``conditioner_params``, ``transform``, ``inverse_transform`` and, if log f' depends
on x_b, ``dlog_fprime`` (or a fused ``transform_with_dlog``).
"""
from __future__ import annotations

from typing import Any

import torch

from .base import Bijection

__all__ = ["Coupling"]


class Coupling(Bijection):
    """Elementwise coupling on the sites where ``mask`` is True (the b-sites), conditioned on the rest.

    ``mask``: bool tensor of the field shape. ``conditioner_params(x_frozen)`` receives x with the
    b-sites set to zero and returns parameters for the b-sites in the order of ``idx_b`` (each a tensor
    with leading dims ``(B, n_b)``, or a tuple of them).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        mask = mask.to(torch.bool)
        self.register_buffer("mask", mask)
        self.register_buffer("idx_b", torch.nonzero(mask.flatten()).flatten())

    # -- to be implemented by a coupling ----------------------------------------------------------
    def conditioner_params(self, x_frozen: torch.Tensor) -> Any:
        raise NotImplementedError

    def transform(self, x_b: torch.Tensor, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise (f(x_b), log f'(x_b)) on ``x_b: (B, n_b)``."""
        raise NotImplementedError

    def inverse_transform(self, y_b: torch.Tensor, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise (f⁻¹(y_b), log f'(f⁻¹(y_b)))."""
        raise NotImplementedError

    def dlog_fprime(self, x_b: torch.Tensor, params: Any) -> torch.Tensor | None:
        """∂ log f'/∂x_b elementwise; ``None`` when log f' does not depend on x_b (affine, additive)."""
        return None

    def transform_with_dlog(self, x_b: torch.Tensor, params: Any):
        """(f, log f', ∂ log f'/∂x_b or None, cache); override to share work between them."""
        y, log_fprime = self.transform(x_b, params)
        return y, log_fprime, self.dlog_fprime(x_b, params), None

    def param_cotangents(self, u_b: torch.Tensor, x_b: torch.Tensor, params: Any, cache: Any):
        """Cotangents ∂/∂params of Σ_b [log f'(x_b; params) + u_b f(x_b; params)], one per tensor of
        ``params`` (same order), or ``None`` to let autograd differentiate ``transform``."""
        return None

    def _vjp(self, inner_terms, x, u_b, x_b, params, cache) -> torch.Tensor | None:
        """∇ₓ of Σ_b [log f' + u_b f] through the conditioner only (x_b held fixed)."""
        cot = self.param_cotangents(u_b, x_b, params, cache)
        if cot is None:
            log_fprime, y_b = inner_terms
            (vjp,) = torch.autograd.grad((log_fprime + u_b * y_b).sum(), x, retain_graph=True, allow_unused=True)
            return vjp
        tensors = params if isinstance(params, tuple) else (params,)
        pairs = [(t, c) for t, c in zip(tensors, cot) if c is not None and t.requires_grad]
        if not pairs:
            return None
        (vjp,) = torch.autograd.grad([t for t, _ in pairs], x, grad_outputs=[c for _, c in pairs],
                                     retain_graph=True, allow_unused=True)
        return vjp

    # -- shared machinery ---------------------------------------------------------------------------
    #: set False when ``conditioner_params`` reads only the a-sites itself (then x is passed unmasked)
    needs_masked_input: bool = True

    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        return x.masked_fill(self.mask, 0.0) if self.needs_masked_input else x

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).index_select(1, self.idx_b)

    def _scatter(self, x: torch.Tensor, values_b: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).index_copy(1, self.idx_b, values_b).view_as(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.conditioner_params(self._frozen(x))
        y_b, log_fprime = self.transform(self._gather(x), params)
        return self._scatter(x, y_b), log_fprime.sum(-1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.conditioner_params(self._frozen(y))
        x_b, log_fprime = self.inverse_transform(self._gather(y), params)
        return self._scatter(y, x_b), -log_fprime.sum(-1)

    def forward_with_score(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not x.requires_grad:
            x = x.detach().requires_grad_()
        params = self.conditioner_params(self._frozen(x))
        x_b = self._gather(x)
        y_b, log_fprime, d, cache = self.transform_with_dlog(x_b, params)
        g_b = self._gather(g)
        if d is not None:
            g_b = g_b - d.detach()
        u_b = (g_b * torch.exp(-log_fprime.detach())).detach()
        vjp = self._vjp((log_fprime, y_b), x, u_b, x_b.detach(), params, cache)
        u_a = g if vjp is None else g - vjp
        score = self._scatter(u_a, u_b).detach()
        return self._scatter(x, y_b), log_fprime.sum(-1), score

    def inverse_with_score(self, y: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not y.requires_grad:
            y = y.detach().requires_grad_()
        params = self.conditioner_params(self._frozen(y))
        x_b, log_fprime = self.inverse_transform(self._gather(y), params)
        x_fixed = x_b.detach()
        f_fixed, log_fprime_fixed, d, cache = self.transform_with_dlog(x_fixed, params)  # graph to y_a via params
        r_in = self._gather(r).detach()
        r_b = r_in * torch.exp(log_fprime_fixed.detach())
        if d is not None:
            r_b = r_b + d.detach()
        vjp = self._vjp((log_fprime_fixed, f_fixed), y, r_in, x_fixed, params, cache)
        r_a = r if vjp is None else r + vjp
        score = self._scatter(r_a, r_b.detach()).detach()
        return self._scatter(y, x_b), -log_fprime.sum(-1), score
