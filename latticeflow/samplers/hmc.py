"""Hybrid Monte Carlo for any action with an analytic force (Duane, Kennedy, Pendleton, Roweth 1987).

H(x, p) = ½ Σ p² + S(x); a trajectory integrates Hamilton's equations with ``n_leapfrog`` steps of
the leapfrog or the 2nd-order minimum-norm (Omelyan) integrator, then accepts with min(1, e^{−ΔH}).
Many independent chains run as the batch dimension. The step size is tuned during thermalisation to
a target acceptance and then frozen; each trajectory draws its step size uniformly within
±``step_size_jitter`` of it, independently of the state (detailed balance holds for each draw), which
breaks the resonances of a fixed trajectory length (Mackenzie 1989). ⟨e^{−ΔH}⟩ = 1 is a
built-in check of reversibility and area preservation (Creutz 1988).
Periodic fields (U(1) link angles) are projected back with ``action.project`` after each update.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["HMC", "HMCStep"]

OMELYAN_LAMBDA = 0.1931833275037836  # Omelyan, Mryglod, Folk (2003), minimum-norm 2nd order


@dataclass
class HMCStep:
    """Result of one HMC trajectory per chain: new fields, acceptance flags and ΔH, all ``(B, …)``."""

    x: torch.Tensor
    accepted: torch.Tensor
    delta_h: torch.Tensor
    action: torch.Tensor


class HMC:
    """Batched HMC: ``x: (n_chains, *field_shape)``; ``action`` offers ``action(x)`` and ``force(x)``.

    Example:
        >>> from actions import Phi4
        >>> hmc = HMC(Phi4((4, 4), kappa=0.1, lam=0.0), n_leapfrog=5, step_size=0.2,
        ...           generator=torch.Generator().manual_seed(0))
        >>> step = hmc.step(torch.zeros(8, 4, 4, dtype=torch.float64))
        >>> step.x.shape, step.accepted.dtype
        (torch.Size([8, 4, 4]), torch.bool)
    """

    def __init__(self, action, *, n_leapfrog: int = 10, step_size: float = 0.1,
                 integrator: str = "leapfrog", target_acceptance: float = 0.8,
                 step_size_jitter: float = 0.2, generator: torch.Generator | None = None) -> None:
        if n_leapfrog < 1:
            raise ValueError(f"sampler.n_leapfrog must be >= 1, got {n_leapfrog}")
        if not step_size > 0:
            raise ValueError(f"sampler.step_size must be > 0, got {step_size}")
        if integrator not in ("leapfrog", "omelyan"):
            raise ValueError(f"sampler.integrator must be 'leapfrog' or 'omelyan', got {integrator!r}")
        if not 0 < target_acceptance < 1:
            raise ValueError(f"sampler.target_acceptance must be in (0, 1), got {target_acceptance}")
        self.action = action
        self.n_leapfrog = int(n_leapfrog)
        self.step_size = float(step_size)
        self.integrator = integrator
        self.target_acceptance = float(target_acceptance)
        if not 0 <= step_size_jitter < 1:
            raise ValueError(f"sampler.step_size_jitter must be in [0, 1), got {step_size_jitter}")
        self.step_size_jitter = float(step_size_jitter)
        self.generator = generator
        self._project: Callable[[torch.Tensor], torch.Tensor] = getattr(action, "project", None) or (lambda x: x)

    # -- integrators --------------------------------------------------------------------------------
    def _leapfrog(self, x: torch.Tensor, p: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        force = self.action.force
        p = p - 0.5 * eps * force(x)
        for i in range(self.n_leapfrog):
            x = x + eps * p
            p = p - (eps if i < self.n_leapfrog - 1 else 0.5 * eps) * force(x)
        return self._project(x), p

    def _omelyan(self, x: torch.Tensor, p: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        force, lam = self.action.force, OMELYAN_LAMBDA
        for _ in range(self.n_leapfrog):
            p = p - lam * eps * force(x)
            x = x + 0.5 * eps * p
            p = p - (1 - 2 * lam) * eps * force(x)
            x = x + 0.5 * eps * p
            p = p - lam * eps * force(x)
        return self._project(x), p

    # -- one trajectory -----------------------------------------------------------------------------
    def step(self, x: torch.Tensor, action_x: torch.Tensor | None = None) -> HMCStep:
        """One trajectory for every chain with Metropolis accept/reject."""
        gen = self.generator
        p = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        s0 = self.action.action(x) if action_x is None else action_x
        h0 = 0.5 * (p * p).flatten(1).sum(-1) + s0
        integrate = self._leapfrog if self.integrator == "leapfrog" else self._omelyan
        eps = self.step_size
        if self.step_size_jitter:  # random trajectory length: avoids resonant, non-ergodic modes (Mackenzie 1989)
            u = float(torch.rand((), generator=gen, dtype=torch.float64, device=x.device))
            eps *= 1 + self.step_size_jitter * (2 * u - 1)
        x1, p1 = integrate(x, p, eps)
        s1 = self.action.action(x1)
        h1 = 0.5 * (p1 * p1).flatten(1).sum(-1) + s1
        delta_h = h1 - h0
        u = torch.rand(x.shape[0], generator=gen, dtype=x.dtype, device=x.device)
        accepted = torch.log(u) < -delta_h  # NaN ΔH (blown-up trajectory) is rejected
        view = (-1,) + (1,) * (x.dim() - 1)
        x_new = torch.where(accepted.view(view), x1, x)
        s_new = torch.where(accepted, s1, s0)
        return HMCStep(x_new, accepted, delta_h, s_new)

    def thermalize(self, x: torch.Tensor, n_steps: int, *, tune: bool = True,
                   callback: Callable[[int, float, float], None] | None = None) -> torch.Tensor:
        """Run ``n_steps`` trajectories, adapting the step size towards ``target_acceptance``.

        log ε ← log ε + γ_t (ā − a*) with ā the acceptance averaged over chains and γ_t = 1/√(t + 1);
        the final ε is the geometric mean over the second half of thermalisation, then frozen.
        """
        log_eps = math.log(self.step_size)
        history: list[float] = []
        action_x = None
        for t in range(n_steps):
            out = self.step(x, action_x)
            x, action_x = out.x, out.action
            rate = float(out.accepted.to(torch.float64).mean())
            if tune:
                log_eps += (rate - self.target_acceptance) / math.sqrt(t + 1)
                log_eps = min(log_eps, math.log(10.0))
                self.step_size = math.exp(log_eps)
                if t >= n_steps // 2:
                    history.append(log_eps)
            if callback is not None:
                callback(t, rate, self.step_size)
        if tune and history:
            self.step_size = math.exp(sum(history) / len(history))
        return x
