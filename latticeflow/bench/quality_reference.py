"""Exact ln Z and the HMC reference ensemble of `latticeflow bench quality` (see `latticeflow.bench.quality`)."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from actions.exact import free_field_log_z, u1_charge_distribution, u1_log_z, u1_mean_plaquette
from ..samplers.hmc import HMC

if TYPE_CHECKING:
    from .quality_targets import Target

__all__ = ["exact_log_z", "reference_ensemble"]


# -- exact values and the HMC reference ----------------------------------------------------------------
def exact_log_z(target: Target) -> float | None:
    """ln Z in the flows' measure (Lebesgue dφ / dθ), or None where no exact value is known."""
    if target.theory == "phi4":
        if target.couplings["lam"] == 0:
            return free_field_log_z(target.shape, target.couplings["kappa"])
        return None
    volume = target.shape[0] * target.shape[1]
    return u1_log_z(target.couplings["beta"], volume) + 2 * volume * math.log(2 * math.pi)


def _charge_configuration(shape: tuple[int, int], q: int) -> torch.Tensor:
    """A U(1) configuration ``(2, L0, L1)`` with every plaquette angle 2πQ/V (geometric charge Q)."""
    l0, l1 = shape
    volume = l0 * l1
    x0 = torch.arange(l0, dtype=torch.float64).view(-1, 1).expand(l0, l1)
    x1 = torch.arange(l1, dtype=torch.float64).view(1, -1).expand(l0, l1)
    theta1 = 2 * math.pi * q * x0 / volume
    theta0 = torch.where(x0 == l0 - 1, -2 * math.pi * q * x1 / l1, torch.zeros_like(x0))
    return torch.remainder(torch.stack([theta0, theta1]) + math.pi, 2 * math.pi) - math.pi


def _charge_allocation(beta: float, volume: int, n_chains: int) -> list[int]:
    """Charge of each chain: n_Q = round(n P(Q)) for ±Q alike (exact P(Q)), the rest at Q = 0."""
    qs, p = u1_charge_distribution(beta, volume)
    counts = {int(q): int(round(n_chains * pq)) for q, pq in zip(qs, p) if q > 0}
    while 2 * sum(counts.values()) > n_chains:
        counts[max(q for q, c in counts.items() if c)] -= 1
    out = [q for q, c in counts.items() for _ in range(c)]
    out = out + [-q for q in out]
    return [0] * (n_chains - len(out)) + out


def reference_ensemble(target: Target, *, n_chains: int = 16, n_thermalize: int = 200, n_configurations: int = 4096,
                       every: int = 4, seed: int = 12345, device="cpu") -> dict[str, Any]:
    """HMC configurations of the target (float64, chain-major ``(n_chains · k, *field_shape)``) and a record.

    ``n_chains`` chains, ``n_thermalize`` trajectories with step-size tuning (`HMC.thermalize`), then one
    configuration per chain every ``every`` trajectories until ``n_configurations``. Each stored
    configuration gets an exact symmetry move with probability ½ (φ ↦ −φ; U(1): θ ↦ −θ, i.e. Q ↦ −Q),
    so the reference is symmetric even where HMC does not tunnel (φ⁴ broken phase). U(1) chains start
    in topological sectors allocated by the exact P(Q) (`_charge_allocation`), because HMC barely
    changes Q at large β. Returned: {"x", "chains", "record"} with record {"n_configurations",
    "n_chains", "seconds", "acceptance", "step_size", "checks", "note"}.
    """
    t0 = time.perf_counter()
    action = target.action()
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    hmc = HMC(action, n_leapfrog=10, step_size=0.1, generator=gen)
    volume = target.shape[0] * target.shape[1]
    if target.theory == "u1":
        charges = _charge_allocation(target.couplings["beta"], volume, n_chains)
        x = torch.stack([_charge_configuration(target.shape, q) for q in charges]).to(device)
    else:
        charges = None
        x = torch.randn(n_chains, *action.field_shape, dtype=torch.float64, generator=gen, device=device)
    x = hmc.thermalize(x, n_thermalize)
    rounds = max(1, math.ceil(n_configurations / n_chains))
    stored, accepted = [], []
    for _ in range(rounds):
        for _ in range(every):
            step = hmc.step(x)
            x = step.x
            accepted.append(float(step.accepted.double().mean()))
        flip = torch.rand(n_chains, generator=gen, dtype=torch.float64, device=device) < 0.5
        sign = torch.where(flip, -1.0, 1.0).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        y = sign * x
        stored.append(action.project(y) if hasattr(action, "project") else y)
    xs = torch.stack(stored, dim=1)  # (chains, rounds, …): chain-major after reshape
    xs = xs.reshape(n_chains * rounds, *action.field_shape)
    chains = n_chains
    checks = _reference_checks(target, action, xs, chains)
    record = {"n_configurations": int(xs.shape[0]), "n_chains": n_chains, "n_thermalize": n_thermalize,
              "every": every, "seconds": time.perf_counter() - t0, "acceptance": float(np.mean(accepted)),
              "step_size": hmc.step_size, "checks": checks, "note": None}
    if target.theory == "u1":
        record["initial_charges"] = charges
        if target.couplings["beta"] >= 4:
            record["note"] = ("approximate: HMC is frozen in topology at this beta, so the reference's charge "
                              "distribution is the starting allocation (exact P(Q) rounded to whole chains, "
                              "see checks.q2), not an equilibrium measurement; within a sector it is HMC")
    return {"x": xs, "chains": chains, "record": record}


def _chain_mean_err(values: torch.Tensor, chains: int) -> tuple[float, float]:
    """Mean and error from the spread of the per-chain means (includes autocorrelation)."""
    per_chain = values.double().reshape(chains, -1).mean(1)
    err = float(per_chain.std() / math.sqrt(chains)) if chains > 1 else float("nan")
    return float(per_chain.mean()), err


def _reference_checks(target: Target, action, xs: torch.Tensor, chains: int) -> dict[str, Any]:
    """Observables of the reference with errors over chains, against exact values where known."""
    volume = target.shape[0] * target.shape[1]
    checks: dict[str, Any] = {}
    if target.theory == "phi4":
        m, e = _chain_mean_err(action.action(xs) / volume, chains)
        checks["action_density"] = {"value": m, "error": e, "exact": 0.5 if target.couplings["lam"] == 0 else None}
        m, e = _chain_mean_err(action.magnetization(xs).abs(), chains)
        checks["abs_magnetization"] = {"value": m, "error": e, "exact": None}
    else:
        beta = target.couplings["beta"]
        m, e = _chain_mean_err(action.mean_plaquette(xs), chains)
        checks["mean_plaquette"] = {"value": m, "error": e, "exact": u1_mean_plaquette(beta, volume)}
        qs, p = u1_charge_distribution(beta, volume)
        m, e = _chain_mean_err(action.topological_charge(xs) ** 2, chains)
        checks["q2"] = {"value": m, "error": e, "exact": float(np.sum(np.asarray(qs) ** 2 * p))}
    return checks
