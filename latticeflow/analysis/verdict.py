"""A trust verdict for an ensemble's numbers: reliable, or unreliable with the reasons.

`markov_checks` (per-chain observable series) and `weight_checks` (importance log-weights of flow samples
or NMCMC proposals) turn an ensemble into the figures of `latticeflow.analysis.diagnostics`; `verdict`
compares them with thresholds:

- ``rhat_max`` (1.05): rank-normalised split-R̂ of a main observable across chains (Vehtari et al. 2021);
  above it the chains disagree (frozen topology, a stuck NMCMC chain, no thermalisation).
- ``min_tau_per_chain`` (50): the shortest chain must hold this many τ_int of every main observable
  (Wolff 2004: the error of the error is ~√(τ_int/N); the window is unreliable below ~50 τ_int).
- ``khat_max`` (0.7): Pareto k̂ of the importance weights (flow samples) or of the NMCMC proposals'
  weights (Vehtari et al., PSIS, 2024); above it the weights have effectively infinite variance.
- ``max_stuck_fraction`` (0.05): an NMCMC chain's longest run of rejections as a fraction of its length.
- ``pull_max`` (4): |pull| of an observable against a reference ensemble (HMC) or an exact value.

Each reason is one short string naming the figure, its value and the threshold, e.g.
``"Pareto k̂ 1.30 > 0.7 (flow weights)"``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .diagnostics import pareto_khat, split_rhat

__all__ = ["DEFAULT_THRESHOLDS", "verdict", "markov_checks", "weight_checks", "format_verdict"]

DEFAULT_THRESHOLDS: dict[str, float] = {"rhat_max": 1.05, "min_tau_per_chain": 50.0, "khat_max": 0.7,
                                        "max_stuck_fraction": 0.05, "pull_max": 4.0}


def markov_checks(series: Mapping[str, Sequence[np.ndarray]], tau_int: Mapping[str, float]) -> dict[str, Any]:
    """R̂ (≥ 2 chains) and τ_int coverage of the shortest chain, per observable.

    ``series[name]``: one array per chain; ``tau_int[name]``: the Gamma method's τ_int of that observable.
    """
    out: dict[str, Any] = {"rhat": {}, "tau_per_chain": {}}
    for name, chains in series.items():
        lengths = [len(c) for c in chains]
        if len(chains) >= 2 and min(lengths) >= 4:
            try:
                out["rhat"][name] = split_rhat(chains)
            except ValueError:
                out["rhat"][name] = math.nan
        tau = tau_int.get(name, math.nan)
        out["tau_per_chain"][name] = min(lengths) / tau if tau > 0 and math.isfinite(tau) else math.nan
    return out


def weight_checks(log_weight: np.ndarray, label: str) -> dict[str, Any]:
    """Pareto k̂ of importance log-weights (``label``: "flow weights" or "NMCMC proposals")."""
    lw = np.asarray(log_weight, dtype=np.float64)
    lw = lw[np.isfinite(lw) | (lw == -np.inf)]
    try:
        k = pareto_khat(lw)
    except ValueError:
        k = math.nan
    return {"khat": k, "khat_of": label}


def verdict(checks: Mapping[str, Any], thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """{"reliable": bool, "reasons": [str, …]} from the figures of `markov_checks`, `weight_checks`,
    ``longest_rejection_run`` / ``chain_length`` and ``pulls`` ({name: pull against a reference})."""
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    reasons: list[str] = []
    k = checks.get("khat")
    if k is not None and math.isfinite(k) and k > th["khat_max"]:
        reasons.append(f"Pareto k̂ {k:.2f} > {th['khat_max']:g} ({checks.get('khat_of', 'weights')})")
    for name, r in (checks.get("rhat") or {}).items():
        if math.isfinite(r) and r > th["rhat_max"]:
            reasons.append(f"R̂({name}) {r:.3f} > {th['rhat_max']:g}")
    for name, cover in (checks.get("tau_per_chain") or {}).items():
        if math.isfinite(cover) and cover < th["min_tau_per_chain"]:
            reasons.append(f"chain length {cover:.1f} τ_int({name}) < {th['min_tau_per_chain']:g}")
    runs, length = checks.get("longest_rejection_run"), checks.get("chain_length")
    if runs is not None and length:
        frac = max(np.atleast_1d(runs)) / length
        if frac > th["max_stuck_fraction"]:
            reasons.append(f"NMCMC chain stuck for {int(max(np.atleast_1d(runs)))} of {int(length)} steps "
                           f"({frac:.1%} > {th['max_stuck_fraction']:.0%})")
    for name, pull in (checks.get("pulls") or {}).items():
        if pull is not None and not math.isnan(pull) and abs(pull) > th["pull_max"]:
            reasons.append(f"{name} {pull:+.1f}σ from the {checks.get('pull_reference', 'reference')} "
                           f"(|pull| > {th['pull_max']:g})")
    return {"reliable": not reasons, "reasons": reasons}


def format_verdict(v: Mapping[str, Any]) -> str:
    """The table footer line: ``verdict: reliable`` or ``verdict: unreliable — reason; reason``."""
    return "verdict: reliable" if v["reliable"] else "verdict: unreliable — " + "; ".join(v["reasons"])
