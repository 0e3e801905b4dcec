"""`bench cluster`: CPU time per independent χ₂ sample of HMC against the Brower–Tamayo cluster sampler for φ⁴.

Brower & Tamayo, PRL 62, 1087 (1989): Swendsen–Wang clusters of the embedded Ising signs alternated with HMC
for the magnitudes (`latticeflow.samplers.cluster.Cluster`). Near the critical point HMC's slowest mode, the
magnetisation, decorrelates in τ_int ∝ ξ^z trajectories (z ≈ 2); the clusters flip it in O(1) updates.
Default point: 32 × 32, κ = 0.331, λ = 0.5 (ξ ≈ 8 by the second-moment definition below). Target of the issue:
the cluster sampler's cost per independent χ₂ sample at least 10× below HMC's.

Both samplers are tuned alike, as `latticeflow.bench.efficiency` tunes HMC: ``n_chains`` chains from a
Gaussian start, the step size tuned to acceptance 0.8 (`HMC.thermalize`), then the number of leapfrog steps
set so that the trajectory length ε·n_lf ≈ ``trajectory_length`` (1) and the step size re-tuned; step-size
jitter ±20 %. Then each runs for ``seconds`` of wall time, measuring m = V⁻¹ Σ_x φ_x after every step (one
step = one HMC trajectory; for the cluster sampler one SW update plus one trajectory). Reported per sampler:

- τ_int of χ₂ = V m² and of |m| by the Gamma method with the chains as replicas (Wolff 2004); a chain shorter
  than 50 τ_int sets ``*_lower_bound`` (τ_int, and the cost, are then lower bounds);
- χ₂ = V⟨m²⟩ and ⟨|m|⟩ with errors, and the pull of χ₂ between the two samplers (must be O(1));
- the second-moment correlation length ξ = [χ₂/F − 1]^{1/2} / (2 sin(π/L₀)), F = V⁻¹⟨|Σ_x φ_x e^{ip·x}|²⟩ at the
  smallest non-zero momenta (averaged over the directions of extent L₀);
- CPU seconds (``time.process_time``) and wall seconds per configuration (one chain, one step), and the cost
  per independent χ₂ sample 2 τ_int(χ₂) × CPU seconds per configuration;
- ``cost_ratio`` = HMC cost / cluster cost (and ``tau_ratio``).

Returns strict JSON (NaN/inf → null)::

    {"benchmark": "cluster", "quick", "threads", "shape", "kappa", "lam", "seconds", "n_chains", "seed",
     "hmc":     {"n_leapfrog", "step_size", "acceptance", "chain_length", "configurations", "cpu_seconds",
                 "wall_seconds", "cpu_seconds_per_configuration", "wall_seconds_per_configuration",
                 "chi2", "chi2_err", "tau_int_chi2", "tau_int_chi2_err", "chi2_lower_bound",
                 "abs_m", "abs_m_err", "tau_int_abs_m", "abs_m_lower_bound", "xi_second_moment",
                 "cost_per_independent_chi2", "cost_is_lower_bound", "thermalize_seconds", "warnings"},
     "cluster": {… the same …, "cluster_every"},
     "chi2_pull", "tau_ratio", "cost_ratio", "cost_ratio_bound", "target": {"cost_ratio", "met"}}
"""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from actions import Phi4
from ..analysis import gamma_method
from ..samplers.cluster import Cluster
from ..samplers.hmc import HMC
from ._json import strict as _strict

__all__ = ["run_cluster_bench", "format_cluster_table", "MIN_TAU_PER_CHAIN", "TARGET_COST_RATIO"]

MIN_TAU_PER_CHAIN = 50.0
TARGET_COST_RATIO = 10.0
DEFAULT = {"shape": (32, 32), "seconds": 60.0, "n_chains": 16, "n_thermalize": 300}
RESULT_KEYS = ("hmc", "cluster")  # the samplers' entries of the result
QUICK = {"shape": (8, 8), "seconds": 1.0, "n_chains": 8, "n_thermalize": 40}


def _second_moment_xi(chi2: float, f: float, length: int) -> float | None:
    if not (f > 0 and chi2 / f > 1):
        return None
    return math.sqrt(chi2 / f - 1) / (2 * math.sin(math.pi / length))


def _run(sampler_class: Callable[..., Any], action: Phi4, *, seconds: float, n_chains: int, n_thermalize: int,
         seed: int, trajectory_length: float, **extra: Any) -> dict[str, Any]:
    """Tune and run ``sampler_class(action, …)`` (`HMC` or `Cluster`; ``extra`` goes to it) for ``seconds``."""
    gen = torch.Generator().manual_seed(seed)
    sampler = sampler_class(action, n_leapfrog=10, step_size=0.1, target_acceptance=0.8, step_size_jitter=0.2,
                            generator=gen, **extra)
    x = torch.randn(n_chains, *action.shape, generator=gen, dtype=torch.float64)
    t0 = time.perf_counter()
    x = sampler.thermalize(x, n_thermalize)
    sampler.n_leapfrog = max(1, round(trajectory_length / sampler.step_size))
    x = sampler.thermalize(x, max(20, n_thermalize // 3))
    t_therm = time.perf_counter() - t0

    dims = tuple(range(1, action.ndim + 1))
    long_axes = [mu for mu, n in enumerate(action.shape) if n == action.shape[0]]
    ms, fs, acc = [], [], []
    s = None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds or len(ms) < 16:
        step = sampler.step(x, s)
        x, s = step.x, step.action
        ms.append(x.flatten(1).mean(1))
        ft = torch.fft.fftn(x, dim=dims)
        fs.append(sum(ft[(slice(None),) + tuple(1 if nu == mu else 0 for nu in range(action.ndim))].abs() ** 2
                      for mu in long_axes) / (len(long_axes) * action.volume))
        acc.append(step.accepted.to(torch.float64).mean())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    v = action.volume
    m = torch.stack(ms, 1).cpu().numpy()  # (n_chains, chain_length)
    f = torch.stack(fs, 1).cpu().numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chi2, abs_m, fmom = gamma_method(list(v * m * m)), gamma_method(list(np.abs(m))), gamma_method(list(f))
    n = m.shape[1]
    configurations = m.size
    cpu_per_config = cpu / configurations
    chi2_lower = n < MIN_TAU_PER_CHAIN * chi2.tau_int
    out = {"n_leapfrog": sampler.n_leapfrog, "step_size": sampler.step_size,
           "acceptance": float(torch.stack(acc).mean()), "chain_length": n, "configurations": configurations,
           "cpu_seconds": cpu, "wall_seconds": wall, "thermalize_seconds": t_therm,
           "cpu_seconds_per_configuration": cpu_per_config, "wall_seconds_per_configuration": wall / configurations,
           "chi2": chi2.mean, "chi2_err": chi2.error, "tau_int_chi2": chi2.tau_int,
           "tau_int_chi2_err": chi2.tau_int_error, "chi2_lower_bound": bool(chi2_lower),
           "abs_m": abs_m.mean, "abs_m_err": abs_m.error, "tau_int_abs_m": abs_m.tau_int,
           "abs_m_lower_bound": bool(n < MIN_TAU_PER_CHAIN * abs_m.tau_int),
           "xi_second_moment": _second_moment_xi(chi2.mean, fmom.mean, action.shape[0]),
           "cost_per_independent_chi2": 2 * max(chi2.tau_int, 0.5) * cpu_per_config,
           "cost_is_lower_bound": bool(chi2_lower),
           "warnings": sorted({str(w.message).split(";")[0] for w in caught})}
    return {**out, **extra}


def run_cluster_bench(*, shape: Sequence[int] | None = None, kappa: float = 0.331, lam: float = 0.5,
                      seconds: float | None = None, n_chains: int | None = None, seed: int = 0,
                      quick: bool = False, n_thermalize: int | None = None, trajectory_length: float = 1.0,
                      cluster_every: int = 1) -> dict[str, Any]:
    """HMC against `Cluster` at (``shape``, κ, λ), ``seconds`` of wall time each (see the module docstring).

    Defaults: 32 × 32, 60 s, 16 chains, 300 thermalisation steps; ``quick=True`` changes the defaults to 8 × 8,
    1 s, 8 chains, 40 steps (a CI smoke run; arguments given explicitly still win). Uses the current torch
    thread count (recorded as ``threads``; the issue's numbers are for one thread).
    """
    base = QUICK if quick else DEFAULT
    shape = tuple(int(s) for s in (base["shape"] if shape is None else shape))
    seconds = float(base["seconds"] if seconds is None else seconds)
    n_chains = int(base["n_chains"] if n_chains is None else n_chains)
    n_thermalize = int(base["n_thermalize"] if n_thermalize is None else n_thermalize)
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if n_chains < 2:
        raise ValueError(f"n_chains must be >= 2 (the chains are the Gamma method's replicas), got {n_chains}")
    action = Phi4(shape, kappa=kappa, lam=lam)
    common = dict(seconds=seconds, n_chains=n_chains, n_thermalize=n_thermalize, seed=seed,
                  trajectory_length=trajectory_length)
    hmc = _run(HMC, action, **common)
    cluster = _run(Cluster, action, cluster_every=cluster_every, **common)
    error = math.hypot(hmc["chi2_err"], cluster["chi2_err"])
    ratio = hmc["cost_per_independent_chi2"] / cluster["cost_per_independent_chi2"]
    if hmc["cost_is_lower_bound"] and not cluster["cost_is_lower_bound"]:
        bound = "lower"  # HMC's cost is at least this: the ratio too
    elif cluster["cost_is_lower_bound"] and not hmc["cost_is_lower_bound"]:
        bound = "upper"
    elif hmc["cost_is_lower_bound"]:
        bound = "unknown"
    else:
        bound = "estimate"
    out = {"benchmark": "cluster", "quick": quick, "threads": torch.get_num_threads(), "shape": list(shape),
           "kappa": kappa, "lam": lam, "seconds": seconds, "n_chains": n_chains, "seed": seed,
           "n_thermalize": n_thermalize, "trajectory_length": trajectory_length,
           "hmc": hmc, "cluster": cluster,
           "chi2_pull": (hmc["chi2"] - cluster["chi2"]) / error if error > 0 else None,
           "tau_ratio": hmc["tau_int_chi2"] / cluster["tau_int_chi2"],
           "cost_ratio": ratio, "cost_ratio_bound": bound,
           "target": {"cost_ratio": TARGET_COST_RATIO, "met": bool(ratio >= TARGET_COST_RATIO)}}
    return json.loads(json.dumps(_strict(out), allow_nan=False))


def format_cluster_table(result: dict[str, Any]) -> str:
    """One row per sampler: τ_int(χ₂), τ_int(|m|), χ₂, ξ, CPU s/configuration, cost per independent χ₂."""
    lines = [f"phi4 {'x'.join(map(str, result['shape']))} kappa={result['kappa']:g} lam={result['lam']:g}, "
             f"{result['n_chains']} chains, {result['threads']} thread(s)",
             f"{'sampler':<8} {'tau(chi2)':>11} {'tau(|m|)':>9} {'chi2':>16} {'xi':>6} {'acc':>5} {'n_lf':>4} "
             f"{'cpu s/cfg':>10} {'cost/indep chi2':>16}", "-" * 96]
    for name in RESULT_KEYS:
        r = result[name]
        tau = ("> " if r["chi2_lower_bound"] else "") + f"{r['tau_int_chi2']:.3g}"
        xi = "—" if r["xi_second_moment"] is None else f"{r['xi_second_moment']:.2f}"
        cost = ("> " if r["cost_is_lower_bound"] else "") + f"{r['cost_per_independent_chi2']:.3g} s"
        lines.append(f"{name:<8} {tau:>11} {r['tau_int_abs_m']:>9.3g} {r['chi2']:>9.4g} ± {r['chi2_err']:<4.2g} "
                     f"{xi:>6} {r['acceptance']:>5.2f} {r['n_leapfrog']:>4} "
                     f"{r['cpu_seconds_per_configuration']:>10.3g} {cost:>16}")
    pull = "—" if result["chi2_pull"] is None else f"{result['chi2_pull']:+.2f}"
    lines.append(f"HMC/cluster: tau_int(chi2) {result['tau_ratio']:.3g}, cost {result['cost_ratio']:.3g} "
                 f"({result['cost_ratio_bound']}; target >= {result['target']['cost_ratio']:g}: "
                 f"{'met' if result['target']['met'] else 'NOT met'}); chi2 pull between samplers {pull}")
    return "\n".join(lines)
