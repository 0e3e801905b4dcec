"""Exact ln Z and the HMC reference ensemble of `latticeflow bench quality` (see `latticeflow.bench.quality`)."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from actions.exact import u1_charge_distribution
from ..samplers.hmc import HMC, hmc_chains

if TYPE_CHECKING:
    from .quality_targets import Target

__all__ = ["exact_log_z", "reference_ensemble"]


def exact_log_z(target: Target) -> float | None:
    """ln Z in the flows' measure (Lebesgue dφ / dθ), or None where no exact value is known."""
    return target.action().log_z_exact()


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
    configuration gets an exact symmetry move x ↦ −x with probability ½ (φ ↦ −φ; U(1): θ ↦ −θ, Q ↦ −Q),
    so the reference is symmetric even where HMC does not tunnel (φ⁴ broken phase). With ``target.sectors``
    the chains start in topological sectors allocated by the exact P(Q) (`_charge_allocation`). Returned:
    {"x", "chains", "record"} with record {"n_configurations", "n_chains", "seconds", "acceptance",
    "step_size", "checks", "note"}.
    """
    t0 = time.perf_counter()
    action, device = target.action(), torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    hmc = HMC(action, n_leapfrog=10, step_size=0.1, generator=gen)
    charges = _charge_allocation(target.couplings["beta"], action.volume, n_chains) if target.sectors else None
    if charges is not None:
        x = torch.stack([_charge_configuration(target.shape, q) for q in charges]).to(device)
    else:
        x = action.hot_start(n_chains, generator=gen, dtype=torch.float64, device=device)
    x = hmc.thermalize(x, n_thermalize)
    stored, accepted = [], []
    for sweep in hmc_chains(hmc, x, every * max(1, math.ceil(n_configurations / n_chains))):
        accepted.append(float(sweep.accepted.double().mean()))
        if (sweep.index + 1) % every == 0:
            flip = torch.rand(n_chains, generator=gen, dtype=torch.float64, device=device) < 0.5
            sign = torch.where(flip, -1.0, 1.0).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            stored.append(action.project(sign * sweep.x))
    xs = torch.stack(stored, dim=1).reshape(-1, *action.field_shape)  # (chains, rounds, …): chain-major
    record = {"n_configurations": int(xs.shape[0]), "n_chains": n_chains, "n_thermalize": n_thermalize,
              "every": every, "seconds": time.perf_counter() - t0, "acceptance": float(np.mean(accepted)),
              "step_size": hmc.step_size, "checks": _reference_checks(action, xs, n_chains), "note": target.note}
    if charges is not None:
        record["initial_charges"] = charges
    return {"x": xs, "chains": n_chains, "record": record}


def _reference_checks(action, xs: torch.Tensor, chains: int) -> dict[str, Any]:
    """The main primary observables of the analysis table (`table_rows`) with errors from the spread of the
    per-chain means (autocorrelation included), against their exact values where known."""
    observables = action.observables(xs)
    checks: dict[str, Any] = {}
    for row in action.table_rows():
        if row.main and row.func is None:
            per_chain = (row.factor * observables[row.inputs[0]]).double().reshape(chains, -1).mean(1)
            checks[row.name] = {"value": float(per_chain.mean()), "exact": row.exact,
                                "error": float(per_chain.std() / math.sqrt(chains)) if chains > 1 else float("nan")}
    return checks
