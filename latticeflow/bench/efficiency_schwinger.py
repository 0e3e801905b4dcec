"""`latticeflow bench efficiency --theory schwinger`: pseudofermion HMC, winding HMC and flow NMCMC (exact
determinant) for the two-flavour Schwinger model against β at κ near critical: τ_int(Q), τ_int(plaquette), χ_t,
the condensate, m_π L, configurations/s and the time to 10⁴ independent Q with all training counted.
Protocol: docs/benchmarks.md#efficiency-schwinger."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from actions import Schwinger
from ..analysis import reverse_ess, tau_int_summary, text_table
from ..analysis.verdict import markov_checks, verdict
from ..io import result_header, strict
from .beta_plots import plot_tau_and_cost
from .gauge_flow import train_gauge_flow
from ..samplers.nmcmc import nmcmc_chains
from ..samplers.pf_hmc import PseudofermionHMC
from ..samplers.hmc import tuned_run
from ..samplers.winding_hmc import WindingHMC
from ..training import Trainer

__all__ = ["POINTS", "QUICK_POINTS", "run_schwinger_efficiency", "format_schwinger_table", "plot_schwinger"]

#: (L, β, κ): κ a little below the critical line (κ_c → 1/4 as β → ∞); m_π L is measured and reported
POINTS: tuple[tuple[int, float, float], ...] = tuple(
    (L, b, k) for L in (8, 16) for b, k in ((1.0, 0.27), (2.0, 0.26), (4.0, 0.255), (6.0, 0.253)))
QUICK_POINTS: tuple[tuple[int, float, float], ...] = ((4, 2.0, 0.26), (4, 4.0, 0.255))
SETTINGS = {"hmc_seconds": 60.0, "hmc_chains": 16, "hmc_thermalize": 60, "train_seconds": {8: 120.0, 16: 600.0},
            "train_batch": {8: 64, 16: 16}, "nmcmc_chains": 16, "nmcmc_configs": {8: 8192, 16: 2048},
            "nmcmc_batch": 1024, "independent": 1e4}
QUICK_SETTINGS = {"hmc_seconds": 2.0, "hmc_chains": 8, "hmc_thermalize": 10, "train_seconds": {4: 2.0},
                  "train_batch": {4: 16}, "nmcmc_chains": 8, "nmcmc_configs": {4: 512}, "nmcmc_batch": 256,
                  "independent": 1e4}
MIN_TAU_PER_CHAIN = 50.0
SAMPLERS = (("hmc", "pseudofermion HMC", "tab:red"), ("winding_hmc", "winding HMC", "tab:green"),
            ("nmcmc", "NMCMC (flow, exact det)", "tab:blue"))


def _per_l(value: Any, L: int) -> Any:
    return value[L] if isinstance(value, dict) else value


def _measure(theory: Schwinger, x: torch.Tensor, k: int) -> tuple[np.ndarray, ...]:
    """Q, ⟨cos P⟩, Σ as (rows, k) arrays and the pion correlator summed over the batch (for m_π)."""
    x = x.double()
    fermion = theory.fermion_observables(x)
    return (theory.topological_charge(x).numpy().reshape(-1, k), theory.mean_plaquette(x).numpy().reshape(-1, k),
            fermion["condensate"].numpy().reshape(-1, k), fermion["pion_correlator"].numpy().reshape(-1, k, x.shape[-2]))


def _pion_mass(corr: np.ndarray) -> tuple[float, float]:
    """cosh effective mass at t = L0/4 of the mean pion correlator, ``corr: (k chains, n, L0)``; error by
    jackknife over the chains."""
    l0 = corr.shape[-1]
    t = max(1, l0 // 4)

    def meff(c: np.ndarray) -> float:
        arg = (c[t - 1] + c[t + 1]) / (2 * c[t])
        return math.acosh(arg) if arg >= 1 else float("nan")

    per_chain = corr.mean(1)
    full = meff(per_chain.mean(0))
    k = per_chain.shape[0]
    jack = np.array([meff(np.delete(per_chain, i, 0).mean(0)) for i in range(k)])
    return full, float(math.sqrt((k - 1) / k * np.sum((jack - jack.mean()) ** 2)))


def _stats(series: list[tuple[np.ndarray, ...]], volume: int, seconds: float) -> dict[str, Any]:
    q, p, sigma, corr = (np.concatenate(v) for v in zip(*series))
    q, p, sigma = q.T, p.T, sigma.T  # (k, n)
    corr = corr.transpose(1, 0, 2)
    n_chains, n = q.shape
    sq = tau_int_summary(q, min_tau_per_chain=MIN_TAU_PER_CHAIN, frozen_is_lower_bound=True)
    sp, ss = tau_int_summary(p), tau_int_summary(sigma)
    sc = tau_int_summary(q ** 2 / volume)
    checks = markov_checks({"Q": list(q), "<cos P>": list(p), "Sigma": list(sigma), "chi_t": list(q ** 2 / volume)},
                           {"Q": sq["tau_int"], "<cos P>": sp["tau_int"], "Sigma": ss["tau_int"],
                            "chi_t": sc["tau_int"]})
    m_pi, m_pi_err = _pion_mass(corr)
    configs_per_s = n_chains * n / seconds
    return {"n_chains": n_chains, "chain_length": n, "seconds": seconds, "configs_per_s": configs_per_s,
            "tau_int_q": sq["tau_int"], "tau_int_q_err": sq["tau_int_error"], "tau_int_lower_bound": sq["lower_bound"],
            "q_changes": sq["changes"], "tau_int_plaquette": sp["tau_int"], "chi_t": sc["mean"], "chi_t_err": sc["error"],
            "plaquette": sp["mean"], "plaquette_err": sp["error"], "condensate": ss["mean"],
            "condensate_err": ss["error"], "m_pi": m_pi, "m_pi_err": m_pi_err, "verdict": verdict(checks),
            "cost_1e4_seconds": 1e4 * 2 * max(sq["tau_int"], 0.5) / configs_per_s, "cost_is_lower_bound": sq["lower_bound"]}


def _run_hmc(theory: Schwinger, st: dict, seed: int, winding: bool) -> dict[str, Any]:
    """Pseudofermion HMC (Omelyan, CG to 1e-10, trajectory length ≈ 1 tuned to acceptance 0.8), optionally with
    one whole-lattice winding move per trajectory (exact determinant in its accept step)."""
    gen, k = torch.Generator().manual_seed(seed), st["hmc_chains"]
    hmc = PseudofermionHMC(theory, n_leapfrog=5, step_size=0.2, integrator="omelyan", target_acceptance=0.8,
                           step_size_jitter=0.2, generator=gen)
    sampler = WindingHMC(theory, hmc, generator=gen) if winding else hmc
    x = theory.hot_start(k, gen)
    run = tuned_run(sampler, x, n_thermalize=st["hmc_thermalize"], seconds=st["hmc_seconds"],
                    measure=lambda y: _measure(theory, y, k), min_sweeps=8)
    out = _stats(run["measurements"], theory.volume, run["wall_seconds"])
    out.update(acceptance=float(np.mean(run["acceptance"])), step_size=hmc.step_size, n_leapfrog=hmc.n_leapfrog,
               thermalize_seconds=run["thermalize_seconds"])
    if winding:
        out["winding_acceptance"] = sampler.winding_acceptance
    return out


def _train_flow(theory: Schwinger, previous, st: dict, seed: int) -> Trainer:
    """The default gauge-equivariant `u1` flow on the Schwinger target (exact log det in the reverse KL), float32,
    from the previous β's weights where there is one (its plaquette-marginal layer at this β)."""
    L = theory.shape[0]
    return train_gauge_flow(theory, previous, _per_l(st["train_batch"], L), _per_l(st["train_seconds"], L), seed)


def _run_nmcmc(flow, theory: Schwinger, st: dict, seed: int) -> dict[str, Any]:
    L, k = theory.shape[0], st["nmcmc_chains"]
    gen = torch.Generator().manual_seed(seed + 1)
    series, acc, lw = [], [], []
    t0 = time.perf_counter()
    for batch, _ in nmcmc_chains(flow, theory, _per_l(st["nmcmc_configs"], L) // k, max(1, st["nmcmc_batch"] // k), k,
                                 generator=gen):
        series.append(_measure(theory, batch.x, k))
        acc.append(batch.accepted)
        lw.append(batch.proposal_log_weight)
    out = _stats(series, theory.volume, time.perf_counter() - t0)
    out.update(acceptance=float(np.mean(np.concatenate(acc))), reverse_ess=reverse_ess(np.concatenate(lw)))
    return out


def run_schwinger_efficiency(*, quick: bool = False, points=None, settings: dict | None = None, seed: int = 0,
                             seconds: float | None = None, sizes=None, progress: Callable[[dict], None] | None = None,
                             plot: str | None = "bench_efficiency_schwinger.png") -> dict[str, Any]:
    """The three samplers at every (L, β, κ) of ``points`` (default `POINTS`; `QUICK_POINTS` with ``quick``;
    ``sizes`` keeps only those L); ``seconds`` overrides the HMC seconds per point. The flow is annealed in β at
    each L (all training counted in the NMCMC cost)."""
    st = {**(QUICK_SETTINGS if quick else SETTINGS), **(settings or {}),
          **({} if seconds is None else {"hmc_seconds": seconds})}
    pts = [p for p in (points or (QUICK_POINTS if quick else POINTS)) if not sizes or p[0] in sizes]
    out = result_header("efficiency", theory="schwinger", quick=quick, settings=st, points=[])
    previous, trained, last_l = None, 0.0, None
    for L, beta, kappa in pts:
        theory = Schwinger((L, L), beta=beta, kappa=kappa)
        if L != last_l:
            previous, trained, last_l = None, 0.0, L
        hmc = _run_hmc(theory, st, seed, winding=False)
        winding = _run_hmc(theory, st, seed, winding=True)
        trainer = _train_flow(theory, previous, st, seed)
        previous, trained = trainer.flow, trained + trainer.wall_time
        nm = _run_nmcmc(trainer.flow, theory, st, seed)
        nm.update(train_seconds=trainer.wall_time, train_seconds_total=trained, train_steps=trainer.step_count,
                  cost_1e4_seconds=nm["cost_1e4_seconds"] + trained)
        m_pi = winding["m_pi"]  # from winding HMC: plain HMC's chains freeze at large β
        out["points"].append({"L": L, "beta": beta, "kappa": kappa, "m_pi_L": None if math.isnan(m_pi) else m_pi * L,
                              "hmc": hmc, "winding_hmc": winding, "nmcmc": nm,
                              "cost_ratio": hmc["cost_1e4_seconds"] / nm["cost_1e4_seconds"],
                              "winding_cost_ratio": winding["cost_1e4_seconds"] / nm["cost_1e4_seconds"]})
        if progress:
            progress(out["points"][-1])
    if plot:
        out["plot"] = plot_schwinger(out, plot)
    return strict(out)


def _err(value: float | None, error: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f} ± {error:.1g}" if error is not None and error == error else f"{value:.{digits}f}"


def format_schwinger_table(result: dict[str, Any]) -> str:
    """One row per (L, β, sampler): τ_int(Q), τ_int(cos P), χ_t, Σ, m_π, configurations/s, cost, verdict."""
    rows = []
    for p in result["points"]:
        for name, _, _ in SAMPLERS:
            r, v = p[name], p[name]["verdict"]
            tau = f"{r['tau_int_q']:.3g}"
            tau = f"> {tau}" if r["tau_int_lower_bound"] else tau
            rows.append([p["L"], p["beta"], p["kappa"], name, tau, r["tau_int_plaquette"],
                         _err(r["chi_t"], r["chi_t_err"], 5), _err(r["condensate"], r["condensate_err"]),
                         _err(r["m_pi"], r["m_pi_err"], 3), r["configs_per_s"], r["acceptance"],
                         ("> " if r["cost_is_lower_bound"] else "") + f"{r['cost_1e4_seconds']:.3g} s",
                         " reliable" if v["reliable"] else " unreliable: " + "; ".join(v["reasons"])[:50]])
        extra = (f"; winding moves accepted {p['winding_hmc']['winding_acceptance']:.3f}"
                 if p["winding_hmc"].get("winding_acceptance") is not None else "")
        rows.append(f"    m_π L = {p['m_pi_L'] if p['m_pi_L'] is None else round(p['m_pi_L'], 2)}; cost HMC/NMCMC "
                    f"{p['cost_ratio']:.3g}, winding/NMCMC {p['winding_cost_ratio']:.3g} (NMCMC training "
                    f"{p['nmcmc']['train_seconds_total']:.0f} s counted; ESS {p['nmcmc']['reverse_ess']:.3f}){extra}")
    return text_table([("L", ">3"), ("beta", ">4g"), ("kappa", ">6g"), ("sampler", "<11"), ("tau(Q)", ">8"),
                       ("tau(cosP)", "9.3g"), ("chi_t", ">17"), ("Sigma", ">15"), ("m_pi", ">13"), ("cfg/s", "7.1f"),
                       ("acc", "5.2f"), ("t(1e4 Q)", ">11"), (" verdict", "")], rows)


def plot_schwinger(result: dict[str, Any], path: str) -> str:
    """τ_int(Q) and the cost of 10⁴ independent Q against β, one line per sampler and L (open: lower bounds)."""
    first = result["points"][0]["L"]
    kappas = ", ".join(f"β={p['beta']:g}: κ={p['kappa']:g}" for p in result["points"] if p["L"] == first)
    return plot_tau_and_cost(result, path, SAMPLERS, "Schwinger N_f = 2: autocorrelation of Q",
                             suptitle=f"2D U(1) + 2 Wilson fermions ({kappas})", legend_size=7)


def progress_line(p: dict) -> str:
    return (f"schwinger {p['L']}x{p['L']} beta={p['beta']:g} kappa={p['kappa']:g}: tau_int(Q) HMC "
            f"{p['hmc']['tau_int_q']:.3g}, winding {p['winding_hmc']['tau_int_q']:.3g}, NMCMC {p['nmcmc']['tau_int_q']:.3g}"
            f" (acceptance {p['nmcmc']['acceptance']:.2f}); m_pi L {p['m_pi_L']}")
