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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["HMC", "HMCStep", "Sweep", "hmc_chains", "tune_trajectory", "tuned_run"]

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
        # the position update on the theory's field space (x + εp on flat space, on the circle for angles)
        self._update: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor] = (
            getattr(action, "update", None) or (lambda x, p, eps: x + eps * p))

    # -- resumable state ----------------------------------------------------------------------------
    def state_attrs(self) -> dict[str, float]:
        """What a resumed chain needs besides the fields and the RNG state: the frozen step size."""
        return {"step_size": self.step_size}

    def load_state_attrs(self, attrs) -> None:
        self.step_size = float(attrs["step_size"])

    # -- integrators --------------------------------------------------------------------------------
    def _leapfrog(self, x: torch.Tensor, p: torch.Tensor, eps: float | torch.Tensor,
                  force: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        force, update = force or self.action.force, self._update
        p = p - 0.5 * eps * force(x)
        for i in range(self.n_leapfrog):
            x = update(x, p, eps)
            p = p - (eps if i < self.n_leapfrog - 1 else 0.5 * eps) * force(x)
        return self._project(x), p

    def _omelyan(self, x: torch.Tensor, p: torch.Tensor, eps: float | torch.Tensor,
                 force: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        force, update, lam = force or self.action.force, self._update, OMELYAN_LAMBDA
        for _ in range(self.n_leapfrog):
            p = p - lam * eps * force(x)
            x = update(x, p, 0.5 * eps)
            p = p - (1 - 2 * lam) * eps * force(x)
            x = update(x, p, 0.5 * eps)
            p = p - lam * eps * force(x)
        return self._project(x), p

    def _integrate(self, x: torch.Tensor, p: torch.Tensor,
                   force: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One trajectory of the chosen integrator with this trajectory's (jittered) step size."""
        integrate = self._leapfrog if self.integrator == "leapfrog" else self._omelyan
        eps: float | torch.Tensor = self.step_size
        if self.step_size_jitter:  # random trajectory length: avoids resonant, non-ergodic modes (Mackenzie 1989)
            # a 0-d float64 tensor on the fields' device (no host sync); the same draw and the same
            # float64 arithmetic as a Python float, so the chain of a given seed is unchanged
            u = torch.rand((), generator=self.generator, dtype=torch.float64, device=x.device)
            eps = self.step_size * (1 + self.step_size_jitter * (2 * u - 1))
        return integrate(x, p, eps, force)

    # -- one trajectory -----------------------------------------------------------------------------
    def step(self, x: torch.Tensor, action_x: torch.Tensor | None = None) -> HMCStep:
        """One trajectory for every chain with Metropolis accept/reject."""
        gen = self.generator
        p = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        s0 = self.action.action(x) if action_x is None else action_x
        h0 = 0.5 * (p * p).flatten(1).sum(-1) + s0
        x1, p1 = self._integrate(x, p)
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


@dataclass
class Sweep:
    """What a chain iterator yields every ``save_every`` updates: the fields ``x``, their ``action``, whether
    each chain accepted any update since the last sweep, the last ``delta_h``, the sweep number, and over
    every update since the last sweep the number of acceptances and Σ e^{−ΔH} (0-d float64 tensors on the
    fields' device: no host sync) and the number of updates per chain ``n_updates``."""

    x: torch.Tensor
    action: torch.Tensor
    accepted: torch.Tensor
    delta_h: torch.Tensor
    index: int
    n_accepted: torch.Tensor | None = None
    sum_exp_minus_delta_h: torch.Tensor | None = None
    n_updates: int = 1


def hmc_chains(sampler, x: torch.Tensor, n_sweeps: int | None = None, *, save_every: int = 1,
               seconds: float | None = None, first_sweep: int = 0) -> Iterator[Sweep]:
    """Run the chains ``x: (n_chains, …)`` of ``sampler`` (`HMC` or any sampler with the same ``step``) and
    yield a `Sweep` after every ``save_every`` updates: ``n_sweeps`` of them, or until ``seconds`` of wall
    time have passed (whichever comes first; at least one), with no host sync inside.

    Example:
        >>> from actions import Phi4
        >>> hmc = HMC(Phi4((4, 4), kappa=0.1, lam=0.0), generator=torch.Generator().manual_seed(0))
        >>> [s.index for s in hmc_chains(hmc, torch.zeros(2, 4, 4, dtype=torch.float64), 3)]
        [0, 1, 2]
    """
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}")
    t0 = time.perf_counter()
    action_x = None
    sweep = first_sweep
    while n_sweeps is None or sweep - first_sweep < n_sweeps:
        accepted = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        n_acc = torch.zeros((), dtype=torch.float64, device=x.device)
        edh = torch.zeros((), dtype=torch.float64, device=x.device)
        for _ in range(save_every):
            step = sampler.step(x, action_x)
            x, action_x = step.x, step.action
            accepted |= step.accepted
            n_acc += step.accepted.to(torch.float64).sum()
            edh += torch.exp(-step.delta_h.to(torch.float64)).nan_to_num(0.0).sum()
        yield Sweep(x, action_x, accepted, step.delta_h, sweep, n_acc, edh, save_every)
        sweep += 1
        if seconds is not None and time.perf_counter() - t0 >= seconds:
            return


def tune_trajectory(sampler, x: torch.Tensor, n_thermalize: int, trajectory_length: float = 1.0) -> torch.Tensor:
    """Thermalise ``x`` with ``sampler`` (`HMC` or one with its ``thermalize``) at a tuned trajectory length:
    the step size tuned to the target acceptance (``n_thermalize`` trajectories, `HMC.thermalize`), then
    ``n_leapfrog`` set so that ε·n_leapfrog ≈ ``trajectory_length`` and the step size re-tuned
    (max(20, n_thermalize // 3) trajectories). Returns the thermalised fields.

    Example:
        >>> from actions import Phi4
        >>> hmc = HMC(Phi4((4, 4), kappa=0.1, lam=0.0), generator=torch.Generator().manual_seed(0))
        >>> tune_trajectory(hmc, torch.zeros(8, 4, 4, dtype=torch.float64), 40).shape
        torch.Size([8, 4, 4])
    """
    x = sampler.thermalize(x, n_thermalize)
    sampler.n_leapfrog = max(1, round(trajectory_length / sampler.step_size))
    return sampler.thermalize(x, max(20, n_thermalize // 3))


def tuned_run(sampler, x: torch.Tensor, *, n_thermalize: int, seconds: float, measure: Callable[[torch.Tensor], Any],
              trajectory_length: float = 1.0, min_sweeps: int = 16) -> dict[str, Any]:
    """A fair timed HMC run of ``sampler``: `tune_trajectory`, then the chains (`hmc_chains`) for ``seconds``
    of wall time, at least ``min_sweeps`` sweeps, ``measure(x)`` after every one. Returns {"measurements",
    "acceptance" (per sweep, mean over chains), "thermalize_seconds", "wall_seconds", "cpu_seconds"}."""
    t0 = time.perf_counter()
    x = tune_trajectory(sampler, x, n_thermalize, trajectory_length)
    out: dict[str, Any] = {"measurements": [], "acceptance": [], "thermalize_seconds": time.perf_counter() - t0}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for sweep in hmc_chains(sampler, x):
        out["measurements"].append(measure(sweep.x))
        out["acceptance"].append(sweep.accepted.double().mean())  # kept on the device: no sync per sweep
        if len(out["measurements"]) >= min_sweeps and time.perf_counter() - wall0 >= seconds:
            break
    out["acceptance"] = torch.stack(out["acceptance"]).cpu().tolist()
    out.update(wall_seconds=time.perf_counter() - wall0, cpu_seconds=time.process_time() - cpu0)
    return out
