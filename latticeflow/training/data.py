"""Target samples a flow is trained on (forward KL, maximum likelihood) or judged against (forward ESS):
HMC ensembles of a theory, many chains as a batch (`latticeflow.samplers.hmc`).

- `hmc_ensemble`: ``n_chains × rounds`` configurations, sweep-major, after 200 tuned thermalisation
  trajectories, every 3rd trajectory kept (generator seeded by ``seed``).
- `hmc_reference`: chain-major configurations with an exact symmetry move x ↦ −x applied with probability ½
  to every stored one (φ ↦ −φ; U(1): θ ↦ −θ, Q ↦ −Q), so that the ensemble is symmetric even where HMC
  does not tunnel, and a record that checks the main observables of the theory's analysis table against
  their exact values (errors from the spread of the per-chain means, `analysis.summary.chain_mean`).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ..analysis.summary import chain_mean
from ..samplers.hmc import HMC, hmc_chains

__all__ = ["hmc_ensemble", "hmc_reference"]


def hmc_ensemble(action, n_chains: int = 512, rounds: int = 40, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    """``n_chains × rounds`` HMC configurations (200 tuned thermalisation trajectories, every 3rd kept),
    sweep-major: ``(rounds · n_chains, *field_shape)``."""
    gen = torch.Generator().manual_seed(seed)
    hmc = HMC(action, n_leapfrog=10, step_size=0.1, generator=gen)
    x = hmc.thermalize(action.hot_start(n_chains, generator=gen), 200)
    return torch.cat([sweep.x for sweep in hmc_chains(hmc, x, rounds, save_every=3)]).to(dtype)


def hmc_reference(action, n_chains: int = 16, *, start: torch.Tensor | None = None, n_thermalize: int = 200,
                  n_configurations: int = 4096, every: int = 4, seed: int = 12345, device="cpu") -> dict[str, Any]:
    """HMC configurations of ``action`` (float64, chain-major ``(n_chains · k, *field_shape)``) and a record.

    ``n_chains`` chains from ``start`` (``(n_chains, *field_shape)``; default a hot start), ``n_thermalize``
    trajectories with step-size tuning (`HMC.thermalize`), then one configuration per chain every ``every``
    trajectories until ``n_configurations``, each with the symmetry move of the module docstring (one
    generator seeded by ``seed`` drives everything). Returned: {"x", "chains", "record"} with record
    {"n_configurations", "n_chains", "n_thermalize", "every", "seconds", "acceptance", "step_size", "checks"};
    checks: {name: {"value", "exact", "error"}} per main primary observable of ``action.table_rows()``.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    hmc = HMC(action, n_leapfrog=10, step_size=0.1, generator=gen)
    if start is not None:
        x = start.to(device)
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
    observables, checks = action.observables(xs), {}
    for row in action.table_rows():
        if row.main and row.func is None:
            value, error = chain_mean((row.factor * observables[row.inputs[0]]).double(), n_chains)
            checks[row.name] = {"value": value, "exact": row.exact, "error": error}
    return {"x": xs, "chains": n_chains,
            "record": {"n_configurations": int(xs.shape[0]), "n_chains": n_chains, "n_thermalize": n_thermalize,
                       "every": every, "seconds": time.perf_counter() - t0, "acceptance": float(np.mean(accepted)),
                       "step_size": hmc.step_size, "checks": checks}}
