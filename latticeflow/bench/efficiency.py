"""`latticeflow bench efficiency`: HMC and winding HMC against neural MCMC where HMC freezes: τ_int(Q) and the
cost of 10⁴ independent Q against β for 2D U(1) (Kanwar et al., PRL 125, 121601 (2020), Fig. 3; winding HMC:
Albandea et al., arXiv 2106.14234).
Protocol: docs/benchmarks.md#efficiency."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from actions import U1Gauge
from actions.exact import u1_mean_plaquette, u1_topological_susceptibility
from ..analysis import reverse_ess, tau_int_summary, text_table
from ..analysis.verdict import markov_checks, verdict
from ..io import result_header, strict
from .beta_plots import plot_tau_and_cost
from .gauge_flow import anneal_from, train_gauge_flow
from ..samplers.hmc import HMC, tuned_run
from ..samplers.nmcmc import nmcmc_chains
from ..samplers.winding_hmc import WindingHMC
from ..training import Trainer

__all__ = ["POINTS", "QUICK_POINTS", "run_efficiency_bench", "format_efficiency_table", "plot_efficiency"]

POINTS: tuple[tuple[int, float], ...] = tuple((8, b) for b in (2.0, 3.0, 4.0, 5.0, 6.0, 7.0)) + \
    tuple((16, b) for b in (2.0, 3.0, 4.0, 5.0, 6.0))
QUICK_POINTS: tuple[tuple[int, float], ...] = ((8, 2.0), (8, 4.0))
SETTINGS = {"hmc_seconds": 60.0, "hmc_chains": 32, "hmc_thermalize": 300, "train_seconds": 20.0,
            "train_batch": 64, "nmcmc_chains": 16, "nmcmc_configs": 32768, "nmcmc_batch": 4096, "independent": 1e4}
QUICK_SETTINGS = {"hmc_seconds": 2.0, "hmc_chains": 8, "hmc_thermalize": 40, "train_seconds": 2.0,
                  "train_batch": 32, "nmcmc_chains": 8, "nmcmc_configs": 2048, "nmcmc_batch": 1024, "independent": 1e4}
MIN_TAU_PER_CHAIN = 50.0
#: ``--theory``: whether the theory has its own module (`efficiency_schwinger`)
THEORIES = {"u1": False, "schwinger": True}
SAMPLERS = (("hmc", "HMC", "tab:red"), ("winding_hmc", "winding HMC", "tab:green"),
            ("nmcmc", "NMCMC (flow)", "tab:blue"))  # result key, label, colour


def _series_stats(q: np.ndarray, plaq: np.ndarray, volume: int, beta: float, seconds: float) -> dict[str, Any]:
    """Statistics of per-chain series ``q``, ``plaq`` of shape (n_chains, n): τ_int, χ_t, ⟨cos P⟩, verdict
    (`analysis.summary.tau_int_summary`; a Q that never changes has τ_int ≥ the chain length)."""
    n_chains, n = q.shape
    series = {"Q": q, "<cos P>": plaq, "chi_t": q ** 2 / volume}
    sq = tau_int_summary(q, min_tau_per_chain=MIN_TAU_PER_CHAIN, frozen_is_lower_bound=True)
    sp = tau_int_summary(plaq, exact=u1_mean_plaquette(beta, volume))
    sc = tau_int_summary(series["chi_t"], exact=u1_topological_susceptibility(beta, volume))
    checks = markov_checks({k: list(v) for k, v in series.items()},
                           {"Q": sq["tau_int"], "<cos P>": sp["tau_int"], "chi_t": sc["tau_int"]})
    configs_per_s = n_chains * n / seconds
    return {"n_chains": n_chains, "chain_length": n, "seconds": seconds, "configs_per_s": configs_per_s,
            "tau_int_q": sq["tau_int"], "tau_int_q_err": sq["tau_int_error"], "tau_int_plaquette": sp["tau_int"],
            "tau_int_lower_bound": sq["lower_bound"], "q_changes": sq["changes"], "chi_t": sc["mean"],
            "chi_t_err": sc["error"], "chi_t_pull": sc["pull"], "plaquette": sp["mean"], "plaquette_err": sp["error"],
            "plaquette_pull": sp["pull"], "verdict": verdict(checks),
            "cost_1e4_seconds": 1e4 * 2 * max(sq["tau_int"], 0.5) / configs_per_s, "cost_is_lower_bound": sq["lower_bound"]}


def _measure(action: U1Gauge, x: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Q (rounded) and ⟨cos P⟩ of ``x``, as (rows, k) arrays of k chains."""
    x = x.double()
    return action.topological_charge(x).round().numpy().reshape(-1, k), action.mean_plaquette(x).numpy().reshape(-1, k)


def _run_hmc(action: U1Gauge, settings: dict, seed: int, winding: bool = False) -> dict[str, Any]:
    """Tuned HMC (`samplers.hmc.tuned_run`: trajectory length ≈ 1) from a random start for ``hmc_seconds``;
    with ``winding``, winding HMC (one whole-lattice instanton proposal after every trajectory)."""
    gen, k = torch.Generator().manual_seed(seed), settings["hmc_chains"]
    hmc = HMC(action, n_leapfrog=10, step_size=0.1, target_acceptance=0.8, step_size_jitter=0.2, generator=gen)
    sampler = WindingHMC(action, hmc, generator=gen) if winding else hmc
    x = (torch.rand(k, *action.field_shape, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    run = tuned_run(sampler, x, n_thermalize=settings["hmc_thermalize"], seconds=settings["hmc_seconds"],
                    measure=lambda x: _measure(action, x, k))
    q, p = (np.concatenate(v).T for v in zip(*run["measurements"]))
    out = _series_stats(q, p, action.volume, action.beta, run["wall_seconds"])
    out.update(acceptance=float(np.mean(run["acceptance"])), step_size=hmc.step_size, n_leapfrog=hmc.n_leapfrog,
               thermalize_seconds=run["thermalize_seconds"])
    if winding:
        out["winding_acceptance"] = sampler.winding_acceptance
    return out


_anneal_from = anneal_from  # the name the tests know


def _train_flow(action: U1Gauge, previous, settings: dict, seed: int) -> Trainer:
    return train_gauge_flow(action, previous, settings["train_batch"], settings["train_seconds"], seed)


def _run_nmcmc(flow, action: U1Gauge, settings: dict, seed: int) -> dict[str, Any]:
    k, gen = settings["nmcmc_chains"], torch.Generator().manual_seed(seed + 1)
    series, acc, lw = [], [], []
    t0 = time.perf_counter()
    for batch, _ in nmcmc_chains(flow, action, settings["nmcmc_configs"] // k, max(1, settings["nmcmc_batch"] // k),
                                 k, generator=gen):
        series.append(_measure(action, batch.x, k))  # rows are sweep-major: (sweeps, k)
        acc.append(batch.accepted)
        lw.append(batch.proposal_log_weight)
    q, p = (np.concatenate(v).T for v in zip(*series))
    out = _series_stats(q, p, action.volume, action.beta, time.perf_counter() - t0)
    out.update(acceptance=float(np.mean(np.concatenate(acc))), reverse_ess=reverse_ess(np.concatenate(lw)))
    return out


def run_efficiency_bench(*, quick: bool = False, points=None, settings: dict | None = None, seed: int = 0,
                         seconds: float | None = None, progress: Callable[[dict], None] | None = None,
                         plot: str | None = None, theory: str = "u1", sizes=None) -> dict[str, Any]:
    """Run the HMC / winding HMC / NMCMC comparison over ``points`` (default `POINTS`, or `QUICK_POINTS` with
    ``quick``); ``seconds`` overrides the HMC seconds per point (``settings["hmc_seconds"]``). ``theory``:
    ``u1`` (pure gauge, exact values) or ``schwinger`` (`efficiency_schwinger`, there ``sizes`` keeps only those L);
    ``plot``: the PNG (default bench_efficiency.png, bench_efficiency_schwinger.png)."""
    if theory not in THEORIES:
        raise ValueError(f"--theory must be {' or '.join(THEORIES)}, got {theory!r}")
    if sizes is not None:
        try:
            sizes = [int(v) for v in (sizes.split(",") if isinstance(sizes, str) else sizes)]
        except ValueError:
            raise ValueError(f"--sizes must be comma-separated lattice sizes such as 8,16, got {sizes!r}") from None
    if THEORIES[theory]:  # the Schwinger model: its own module
        from .efficiency_schwinger import run_schwinger_efficiency

        return run_schwinger_efficiency(quick=quick, points=points, settings=settings, seed=seed, seconds=seconds,
                                        sizes=sizes, progress=progress, plot=plot or "bench_efficiency_schwinger.png")
    plot = plot or "bench_efficiency.png"
    st = {**(QUICK_SETTINGS if quick else SETTINGS), **(settings or {}),
          **({} if seconds is None else {"hmc_seconds": seconds})}
    out = result_header("efficiency", quick=quick, settings=st, points=[])
    previous, trained, last_l = None, 0.0, None
    for L, beta in points or (QUICK_POINTS if quick else POINTS):
        action = U1Gauge((L, L), beta=beta)
        if L != last_l:
            previous, trained, last_l = None, 0.0, L
        hmc = _run_hmc(action, st, seed)
        winding = _run_hmc(action, st, seed, winding=True)
        trainer = _train_flow(action, previous, st, seed)
        previous, trained = trainer.flow, trained + trainer.wall_time
        nm = _run_nmcmc(trainer.flow, action, st, seed)
        nm.update(train_seconds=trainer.wall_time, train_seconds_total=trained, train_steps=trainer.step_count,
                  cost_1e4_seconds=nm["cost_1e4_seconds"] + trained)
        out["points"].append({"L": L, "beta": beta, "hmc": hmc, "winding_hmc": winding, "nmcmc": nm,
                              "exact": {"chi_t": u1_topological_susceptibility(beta, L * L),
                                        "plaquette": u1_mean_plaquette(beta, L * L)},
                              "tau_ratio": hmc["tau_int_q"] / nm["tau_int_q"],
                              "cost_ratio": hmc["cost_1e4_seconds"] / nm["cost_1e4_seconds"],
                              "winding_tau_ratio": winding["tau_int_q"] / nm["tau_int_q"],
                              "winding_cost_ratio": winding["cost_1e4_seconds"] / nm["cost_1e4_seconds"]})
        if progress:
            progress(out["points"][-1])
    if plot:
        out["plot"] = plot_efficiency(out, plot)
    return strict(out)


def format_efficiency_table(result: dict[str, Any]) -> str:
    """One row per (L, β, sampler): τ_int(Q), χ_t against exact, configurations/s, cost to 10⁴ independent Q."""
    if THEORIES.get(result.get("theory", "u1")):
        from .efficiency_schwinger import format_schwinger_table

        return format_schwinger_table(result)
    rows = []
    for p in result["points"]:
        for name, _, _ in SAMPLERS:
            if name not in p:  # results from before winding HMC joined
                continue
            r, v = p[name], p[name]["verdict"]
            tau = f"{r['tau_int_q']:.3g}"
            tau = f"> {tau}" if r["tau_int_lower_bound"] else f"{tau}({r['tau_int_q_err']:.2g})"
            rows.append([p["L"], p["beta"], name, tau,
                         r["tau_int_plaquette"],
                         None if r["chi_t_err"] is None else f"{r['chi_t']:.5f}({1e5 * r['chi_t_err']:.0f})",
                         p["exact"]["chi_t"], r["chi_t_pull"], r["configs_per_s"], r["acceptance"],
                         ("> " if r["cost_is_lower_bound"] else "") + f"{r['cost_1e4_seconds']:.3g} s",
                         " reliable" if v["reliable"] else " unreliable: " + "; ".join(v["reasons"])[:60]])
        rows.append(f"{'':>3} {'':>4} {'ratio':<7} {'HMC/NMCMC':>12} τ_int(Q) {p['tau_ratio']:.3g}"
                    f"{' (HMC a lower bound)' if p['hmc']['tau_int_lower_bound'] else ''}; cost {p['cost_ratio']:.3g}"
                    f" (NMCMC training {p['nmcmc']['train_seconds_total']:.0f} s counted)")
        if "winding_hmc" in p:
            rows.append(f"{'':>3} {'':>4} {'ratio':<7} {'winding/NMCMC':>12} τ_int(Q) {p['winding_tau_ratio']:.3g}; "
                        f"cost {p['winding_cost_ratio']:.3g}; winding moves accepted "
                        f"{p['winding_hmc']['winding_acceptance']:.3f}")
    return text_table([("L", ">3"), ("beta", ">4g"), ("sampler", "<7"), ("tau_int(Q)", ">12"), ("tau(cosP)", "9.3g"),
                       ("chi_t", ">16"), ("exact", "9.5f"), ("pull", "+6.1f"), ("cfg/s", "7.0f"), ("acc", "5.2f"),
                       ("t(1e4 indep. Q)", ">16"), (" verdict", "")], rows)


def plot_efficiency(result: dict[str, Any], path: str) -> str:
    """τ_int(Q) against β (log scale; open markers: HMC lower bounds) and the cost to 10⁴ independent Q."""
    return plot_tau_and_cost(result, path, SAMPLERS, "2D U(1): autocorrelation of Q (open: lower bound)")


def progress_line(p: dict) -> str:
    if "kappa" in p:
        from .efficiency_schwinger import progress_line as schwinger_line

        return schwinger_line(p)
    return (f"{p['L']}x{p['L']} beta={p['beta']:g}: tau_int(Q) HMC {p['hmc']['tau_int_q']:.3g}"
            f"{' (lower bound)' if p['hmc']['tau_int_lower_bound'] else ''}, NMCMC {p['nmcmc']['tau_int_q']:.3g}; "
            f"acceptance {p['nmcmc']['acceptance']:.2f}")
