"""`bench cluster`: CPU time per independent χ₂ sample of HMC against the Brower–Tamayo cluster sampler for φ⁴
(Brower & Tamayo, PRL 62, 1087 (1989)); target: the cluster sampler ≥ 10× cheaper.
Protocol: docs/benchmarks.md#cluster."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from actions import Phi4
from actions.phi4 import second_moment_xi
from ..analysis import pull, tau_int_summary, text_table
from ..io import result_header, strict
from ..samplers.cluster import Cluster
from ..samplers.hmc import HMC, tuned_run

__all__ = ["run_cluster_bench", "format_cluster_table", "MIN_TAU_PER_CHAIN", "TARGET_COST_RATIO"]

MIN_TAU_PER_CHAIN = 50.0
TARGET_COST_RATIO = 10.0
DEFAULT = {"shape": (32, 32), "seconds": 60.0, "n_chains": 16, "n_thermalize": 300}
RESULT_KEYS = ("hmc", "cluster")  # the samplers' entries of the result
QUICK = {"shape": (8, 8), "seconds": 1.0, "n_chains": 8, "n_thermalize": 40}


def _second_moment_xi(chi2: float, f: float, length: int) -> float | None:
    """`actions.phi4.second_moment_xi`, None where it has no estimate (JSON-friendly)."""
    xi = second_moment_xi(chi2, f, length)
    return None if math.isnan(xi) else xi


def _run(sampler_class: Callable[..., Any], action: Phi4, *, seconds: float, n_chains: int, n_thermalize: int,
         seed: int, trajectory_length: float, **extra: Any) -> dict[str, Any]:
    """Tune and run ``sampler_class(action, …)`` (`HMC` or `Cluster`; ``extra`` goes to it) for ``seconds``
    (`samplers.hmc.tuned_run`), measuring m and F (docs/benchmarks.md#cluster) after every step."""
    gen = torch.Generator().manual_seed(seed)
    sampler = sampler_class(action, n_leapfrog=10, step_size=0.1, target_acceptance=0.8, step_size_jitter=0.2,
                            generator=gen, **extra)
    x = torch.randn(n_chains, *action.shape, generator=gen, dtype=torch.float64)

    def measure(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # m and F = |φ̃(p_min)|²/V (axes of extent L0)
        return x.flatten(1).mean(1), action.fourier_pmin(x)

    run = tuned_run(sampler, x, n_thermalize=n_thermalize, seconds=seconds, measure=measure,
                    trajectory_length=trajectory_length)
    m, f = (torch.stack(v, 1).cpu().numpy() for v in zip(*run["measurements"]))  # (n_chains, chain_length)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chi2, abs_m, fmom = [tau_int_summary(s, min_tau_per_chain=MIN_TAU_PER_CHAIN)
                             for s in (action.volume * m * m, np.abs(m), f)]
    configurations, cpu_per_config = m.size, run["cpu_seconds"] / m.size
    out = {"n_leapfrog": sampler.n_leapfrog, "step_size": sampler.step_size, "acceptance": float(np.mean(run["acceptance"])),
           "chain_length": m.shape[1], "configurations": configurations, "cpu_seconds": run["cpu_seconds"],
           "wall_seconds": run["wall_seconds"], "thermalize_seconds": run["thermalize_seconds"],
           "cpu_seconds_per_configuration": cpu_per_config,
           "wall_seconds_per_configuration": run["wall_seconds"] / configurations,
           "chi2": chi2["mean"], "chi2_err": chi2["error"], "tau_int_chi2": chi2["tau_int"],
           "tau_int_chi2_err": chi2["tau_int_error"], "chi2_lower_bound": chi2["lower_bound"],
           "abs_m": abs_m["mean"], "abs_m_err": abs_m["error"], "tau_int_abs_m": abs_m["tau_int"],
           "abs_m_lower_bound": abs_m["lower_bound"],
           "xi_second_moment": _second_moment_xi(chi2["mean"], fmom["mean"], action.shape[0]),
           "cost_per_independent_chi2": 2 * max(chi2["tau_int"], 0.5) * cpu_per_config,
           "cost_is_lower_bound": chi2["lower_bound"], "warnings": sorted({str(w.message).split(";")[0] for w in caught})}
    return {**out, **extra}


def run_cluster_bench(*, shape: Sequence[int] | None = None, kappa: float = 0.331, lam: float = 0.5,
                      seconds: float | None = None, n_chains: int | None = None, seed: int = 0,
                      quick: bool = False, n_thermalize: int | None = None, trajectory_length: float = 1.0,
                      cluster_every: int = 1) -> dict[str, Any]:
    """HMC against `Cluster` at (``shape``, κ, λ), ``seconds`` of wall time each (docs/benchmarks.md#cluster).

    Defaults: 32 × 32, 60 s, 16 chains, 300 thermalisation steps; ``quick=True`` changes the defaults to 8 × 8,
    1 s, 8 chains, 40 steps (a CI smoke run; arguments given explicitly still win). Uses the current torch
    thread count (recorded as ``threads``; the issue's numbers are for one thread).
    """
    base = QUICK if quick else DEFAULT
    shape = tuple(int(s) for s in (base["shape"] if shape is None else shape))
    seconds = float(base["seconds"] if seconds is None else seconds)
    n_chains = int(base["n_chains"] if n_chains is None else n_chains)
    n_thermalize = int(base["n_thermalize"] if n_thermalize is None else n_thermalize)
    if n_chains < 2:
        raise ValueError(f"n_chains must be >= 2 (the chains are the Gamma method's replicas), got {n_chains}")
    action = Phi4(shape, kappa=kappa, lam=lam)
    common = dict(seconds=seconds, n_chains=n_chains, n_thermalize=n_thermalize, seed=seed,
                  trajectory_length=trajectory_length)
    hmc, cluster = _run(HMC, action, **common), _run(Cluster, action, cluster_every=cluster_every, **common)
    ratio = hmc["cost_per_independent_chi2"] / cluster["cost_per_independent_chi2"]
    # HMC's cost a lower bound: so is the ratio; the cluster's: an upper bound; both: unknown
    bound = {(True, False): "lower", (False, True): "upper", (True, True): "unknown"}.get(
        (hmc["cost_is_lower_bound"], cluster["cost_is_lower_bound"]), "estimate")
    return strict(result_header(
        "cluster", quick=quick, shape=list(shape), kappa=kappa, lam=lam, seconds=seconds, n_chains=n_chains, seed=seed,
        n_thermalize=n_thermalize, trajectory_length=trajectory_length, hmc=hmc, cluster=cluster,
        chi2_pull=pull(hmc["chi2"], hmc["chi2_err"], cluster["chi2"], cluster["chi2_err"]),
        tau_ratio=hmc["tau_int_chi2"] / cluster["tau_int_chi2"], cost_ratio=ratio, cost_ratio_bound=bound,
        target={"cost_ratio": TARGET_COST_RATIO, "met": bool(ratio >= TARGET_COST_RATIO)}))


def format_cluster_table(result: dict[str, Any]) -> str:
    """One row per sampler: τ_int(χ₂), τ_int(|m|), χ₂, ξ, CPU s/configuration, cost per independent χ₂."""
    rows = [[name, ("> " if r["chi2_lower_bound"] else "") + f"{r['tau_int_chi2']:.3g}", r["tau_int_abs_m"],
             f"{r['chi2']:>9.4g} ± {r['chi2_err']:<4.2g}", r["xi_second_moment"], r["acceptance"], r["n_leapfrog"],
             r["cpu_seconds_per_configuration"],
             ("> " if r["cost_is_lower_bound"] else "") + f"{r['cost_per_independent_chi2']:.3g} s"]
            for name, r in ((k, result[k]) for k in RESULT_KEYS)]
    t, pull = result["target"], result["chi2_pull"]
    return text_table([("sampler", "<8"), ("tau(chi2)", ">11"), ("tau(|m|)", "9.3g"), ("chi2", ">16"), ("xi", "6.2f"),
                       ("acc", "5.2f"), ("n_lf", "4d"), ("cpu s/cfg", "10.3g"), ("cost/indep chi2", ">16")], rows,
                      title=f"phi4 {'x'.join(map(str, result['shape']))} kappa={result['kappa']:g} lam={result['lam']:g}, "
                            f"{result['n_chains']} chains, {result['threads']} thread(s)",
                      notes=[f"HMC/cluster: tau_int(chi2) {result['tau_ratio']:.3g}, cost {result['cost_ratio']:.3g} "
                             f"({result['cost_ratio_bound']}; target >= {t['cost_ratio']:g}: {'met' if t['met'] else 'NOT met'}"
                             f"); chi2 pull between samplers {'—' if pull is None else format(pull, '+.2f')}"])
