"""Gradient estimators of the KL divergences as surrogate losses (Vaitl, Winkler, Richter, Kessel,
ICLR 2024, arXiv 2403.15881). Every loss *value* is the KL estimate up to log Z; only the gradient that
``loss.backward()`` leaves in the flow's parameters differs between estimators.

Reverse KL(q_θ‖p) = E_{z~q₀}[log q_θ(T_θ z) + S(T_θ z)] + log Z:
- ``standard``: reparameterised total gradient of mean(log q₀(z) − log|det J| + S(x)).
- ``path_inverse`` (Vaitl et al. 2022; Alg. 2): x = T(z) without graph, v = ∇ₓ(log q_θ(x) + S(x)) through
  the inverse pass, then ⟨v, T_θ(z)⟩ with a second, parameter-graph forward.
- ``fast_path`` (Alg. 1): the score s = ∇ₓ log q_θ(x) carried forward with the sample, v = s + ∇S(x),
  surrogate ⟨stopgrad(v), x(θ)⟩: no inverse pass, no root finding.
Forward KL(p‖q_θ) = E_{x~p}[−S(x) − log q_θ(x)] − log Z:
- ``standard``: maximum likelihood through the inverse pass.
- ``gdreg`` (Bauer & Mnih 2021; Alg. 3): v = ∇ₓ(log q_θ(x) + S(x)) through the inverse, z detached,
  ⟨v, T_θ(z)⟩ with a parameter-graph forward.
- ``fast_path``: r = −∇S(x) pulled back through the inverse layers, r_z = ∇_z log p^♯(z), surrogate
  ⟨stopgrad(r_z − ∇ log q₀(z)), z(θ)⟩ with z(θ) = T_θ⁻¹(x).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["reverse_kl", "forward_kl", "log_weights", "LogWeights", "REVERSE_ESTIMATORS", "FORWARD_ESTIMATORS"]

REVERSE_ESTIMATORS = ("standard", "path_inverse", "fast_path")
FORWARD_ESTIMATORS = ("standard", "gdreg", "fast_path")


def _inner(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mean_b ⟨v_b, x_b⟩ − its value: zero-valued surrogate carrying the path gradient."""
    s = (v.detach() * x).flatten(1).sum(-1).mean()
    return s - s.detach()


def _attach(loss: torch.Tensor, log_weight: torch.Tensor, v: torch.Tensor | None = None,
            force: torch.Tensor | None = None) -> torch.Tensor:
    loss.log_weight = log_weight.detach()  # type: ignore[attr-defined]  # −S − log q per sample, for ESS
    if v is not None and force is not None:  # sticking the landing: v = ∇ₓ(log q + S) = 0 at q = p
        v, force = v.detach().flatten(1), force.detach().flatten(1)
        loss.landing = torch.stack([v.pow(2).sum(-1).mean(), force.pow(2).sum(-1).mean()])  # type: ignore[attr-defined]
    return loss


def reverse_kl(flow, action, z: torch.Tensor, estimator: str = "fast_path") -> torch.Tensor:
    """Reverse-KL surrogate loss on base samples ``z``; value mean(log q + S) = KL(q‖p) − log Z.

    The returned tensor carries ``.log_weight`` (−S − log q per sample, detached) for ESS monitoring and,
    for the path estimators, ``.landing`` = (mean_b |v_b|², mean_b |∇S(x_b)|²) with v = ∇ₓ(log q + S), the
    integrand of the path gradient: v = 0 for every sample when q = p (sticking the landing, Roeder et al.
    2017), so r = √(|v|²/|∇S|²) measures how far the flow is from exact (`Trainer`'s ``landing_tol``).
    """
    if estimator == "standard":
        x, logdet = flow(z)
        log_q = flow.base.log_prob(z) - logdet
        s = action.action(x)
        return _attach((log_q + s).mean(), -(s + log_q))
    if estimator == "path_inverse":
        with torch.no_grad():
            x = flow(z)[0]
        x_ = x.detach().requires_grad_()
        with torch.enable_grad():
            log_q = flow.log_prob(x_)
            s = action.action(x_)
            (v,) = torch.autograd.grad((log_q + s).sum(), x_)
        x2, _ = flow(z)
        value = (log_q + s).detach().mean()
        return _attach(_inner(v, x2) + value, -(s + log_q), v, action.force(x))
    if estimator == "fast_path":
        x, log_q, score = flow.forward_with_score(z)
        xd = x.detach()
        s = action.action(xd)
        force = action.force(xd)
        v = score + force
        return _attach(_inner(v, x) + (log_q.detach() + s).mean(), -(s + log_q), v, force)
    raise ValueError(f"reverse_kl estimator must be one of {', '.join(REVERSE_ESTIMATORS)}, got {estimator!r}")


def forward_kl(flow, action, x: torch.Tensor, estimator: str = "fast_path") -> torch.Tensor:
    """Forward-KL surrogate loss on target samples ``x``; value mean(−S − log q) = KL(p‖q) + log Z.

    Carries ``.log_weight`` = −S − log q per sample (for the forward ESS).
    """
    x = x.detach()
    if estimator == "standard":
        z, logdet_inv = flow.inverse(x)
        log_q = flow.base.log_prob(z) + logdet_inv
        s = action.action(x)
        return _attach((-s - log_q).mean(), -(s + log_q))
    if estimator == "gdreg":
        x_ = x.clone().requires_grad_()
        with torch.enable_grad():
            z, logdet_inv = flow.inverse(x_)
            log_q = flow.base.log_prob(z) + logdet_inv
            s = action.action(x_)
            (v,) = torch.autograd.grad((log_q + s).sum(), x_)
        x2, _ = flow(z.detach())
        value = (-s - log_q).detach().mean()
        return _attach(_inner(v, x2) + value, -(s + log_q))
    if estimator == "fast_path":
        z, logdet_inv, r = flow.inverse_with_score(x, -action.force(x))
        log_q = flow.base.log_prob(z.detach()) + logdet_inv.detach()
        s = action.action(x)
        v = r - flow.base.score(z.detach())
        return _attach(_inner(v, z) + (-s - log_q).mean(), -(s + log_q))
    raise ValueError(f"forward_kl estimator must be one of {', '.join(FORWARD_ESTIMATORS)}, got {estimator!r}")


class LogWeights(NamedTuple):
    """Configurations ``x`` with log q_θ(x) and S(x), float64 ``(B,)``."""

    x: torch.Tensor
    log_q: torch.Tensor
    action: torch.Tensor

    @property
    def log_weight(self) -> torch.Tensor:
        """log w = −S − log q = log p − log q + ln Z per configuration (mean of −log w: KL(q‖p) − ln Z)."""
        return -self.action - self.log_q


@torch.no_grad()
def log_weights(flow, action, x_or_n, *, from_base: bool = False, chunk: int = 4096,
                generator: torch.Generator | None = None) -> LogWeights:
    """log q_θ and S on a batch, evaluated in chunks of ``chunk`` configurations, without a graph.

    ``x_or_n``: target configurations x (log q through the inverse, ``flow.log_prob``); base samples z with
    ``from_base=True`` (x = T_θ(z), log q = log q₀(z) − log|det ∂T/∂z|); or a number n of flow samples
    (``flow.sample`` in chunks, drawn with ``generator``).
    """
    if isinstance(x_or_n, int):
        parts = [flow.sample(min(chunk, x_or_n - i), generator=generator) for i in range(0, x_or_n, chunk)]
        xs, log_qs = zip(*parts)
    else:
        xs, log_qs = [], []
        for c in torch.split(x_or_n, chunk):
            if from_base:
                x, logdet = flow(c)
                xs.append(x)
                log_qs.append(flow.base.log_prob(c).double() - logdet.double())
            else:
                xs.append(c)
                log_qs.append(flow.log_prob(c).double())
    x = torch.cat(xs)
    return LogWeights(x, torch.cat(log_qs).double(), action.action(x).double())
