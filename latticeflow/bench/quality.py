"""`latticeflow bench quality`: flow quality (reverse and forward ESS, KL, NMCMC acceptance) against training wall
time, per flow family and target; it decides the project's default flows. Protocol: docs/benchmarks.md#quality."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..analysis import figure, first_time_at_least, format_cell, median_finite, median_time_to, reverse_ess, text_table
from ..io import result_header, strict
from ..training import EvaluateEvery, flow_quality, train_annealed
from ..training.diagnostics import log_q_plus_s
from ..pipeline.common import resolve_dtype as torch_dtype
from ..training import warm_up
from .quality_targets import (JACKKNIFE_BLOCKS, QUICK_SECONDS, SIZES, TARGETS, TRAIN_DEFAULTS, Target, check_entry,
                              reference_ensemble, select)

__all__ = ["run_quality_bench", "format_quality_table", "plot_quality_bench"]

ESS_THRESHOLDS = (0.5, 0.8, 0.98)
SUMMARY_KEYS = ("ess", "ess_err", "loss", "kl", "forward_ess", "nmcmc_acceptance", "steps", "steps_per_s",
                "train_seconds", "n_parameters")


def _train_and_measure(target: Target, label: str, entry: dict[str, Any], seed: int, *, seconds: float,
                       eval_every: float, sizes: dict[str, int], reference: dict[str, Any], log_z: float | None,
                       dtype, device, progress) -> dict[str, Any]:
    """One family and seed: training (stage by stage when annealed) with evaluations off the clock, then
    the final figures."""
    action = target.action()
    torch.manual_seed(seed)
    settings, stages, flow = check_entry(target, label, entry, dtype, device)
    n_parameters = sum(p.numel() for p in flow.parameters() if p.requires_grad)
    z_eval = flow.base.sample((sizes["eval_batch"],), generator=torch.Generator(device=device).manual_seed(seed + 1))
    current = {"stage": 0} if len(stages) > 1 else {}  # the stage, recorded when annealed

    def evaluate(wall_time: float, step: int) -> dict[str, Any]:
        a = log_q_plus_s(flow, action, z_eval)
        row = {"wall_time": wall_time, "step": step, "ess": reverse_ess(-a) if np.isfinite(a).all() else math.nan,
               "loss": float(a.mean()), **current}
        if progress is not None:
            progress({"target": target.name, "family": label, "seed": seed, **row})
        return row

    plain = {k: v for k, v in settings.items() if k not in ("scheduler", "warmup_steps", "lr_min")}
    warm_up(flow, action, objective="reverse_kl", seed=seed + 12345, **plain)
    evaluation = EvaluateEvery(evaluate, seconds=eval_every)
    evaluation.evaluate()
    trained = train_annealed(flow, [(action if beta is None or beta == target.couplings.get("beta")
                                     else target.action(beta=beta), fraction) for beta, fraction in stages],
                             seconds=seconds, seed=seed, evaluation=evaluation, objective="reverse_kl",
                             on_stage=lambda i: current.update({"stage": i} if current else {}), **settings)
    current.update({"stage": len(stages) - 1} if current else {})
    evaluation.evaluate()
    train_time, steps = trained["seconds"], trained["steps"]

    t0 = time.perf_counter()
    z_final = flow.base.sample((sizes["final_batch"],), generator=torch.Generator(device=device).manual_seed(seed + 2))
    log_u = np.log(np.random.default_rng(seed + 3).random(sizes["final_batch"]))
    final = flow_quality(flow, action, z_final, x_target=reference["x"], target_chains=reference["chains"], log_u=log_u,
                         log_z=log_z, n_blocks=JACKKNIFE_BLOCKS)
    history = evaluation.history
    times, ess = [r["wall_time"] for r in history], [r["ess"] for r in history]
    final.update(steps=steps, train_seconds=train_time, steps_per_s=steps / train_time if train_time > 0 else math.nan,
                 n_parameters=n_parameters, eval_seconds=evaluation.seconds, final_eval_seconds=time.perf_counter() - t0,
                 n_skipped=trained["n_skipped"], error=trained["error"],
                 time_to_ess={str(thr): first_time_at_least(times, ess, thr) for thr in ESS_THRESHOLDS})
    return {"history": history, "final": final}


def _summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    finals = [r["final"] for r in runs.values()]
    return {"median": {k: median_finite([f.get(k) for f in finals]) for k in SUMMARY_KEYS},
            "time_to_ess": {str(thr): median_time_to(f["time_to_ess"][str(thr)] for f in finals) for thr in ESS_THRESHOLDS},
            "n_seeds": len(finals), "n_errors": sum(f["error"] is not None for f in finals)}


def run_quality_bench(*, targets=None, families=None, seeds=None, seconds: float | None = None, quick: bool = False,
                      dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
                      plot_dir: str | None = "bench_quality", progress: Callable[[dict], None] | None = None,
                      ) -> dict[str, Any]:
    """Train every selected family on every selected target for its budget, once per seed.

    ``targets``: names of `TARGETS` (list or comma-separated; default all, ``quick``: free8 and u1_b2);
    ``families``: labels of `FAMILIES` or flow family names (default all; ``quick``: `QUICK_FAMILIES`);
    ``seeds``: integers, default (0, 1, 2), ``quick``: (0,); ``seconds`` overrides every target's budget
    (``quick``: 1.5 s); ``plot_dir``: one PNG per target (None: no plots); ``progress(row)`` after every
    evaluation. Everything is validated (targets, families, flows, train keys, anneal schedules) before the
    first training step.
    """
    dtype, device = torch_dtype(dtype), torch.device(device)
    chosen = select(targets, families, quick)
    seeds = ([0] if quick else [0, 1, 2]) if seeds is None else list(seeds)
    seconds = QUICK_SECONDS if seconds is None and quick else seconds
    sizes = SIZES["quick" if quick else "full"]
    ref_sizes = {k: sizes[k] for k in ("n_chains", "n_thermalize", "n_configurations", "every")}
    train = {(name, label): check_entry(TARGETS[name], label, entry, dtype, device)[0]  # fail fast, before training
             for name, entries in chosen.items() for label, entry in entries.items()}
    t_start = time.perf_counter()
    out = result_header("quality", dtype=str(dtype).replace("torch.", ""), device=str(device), quick=quick, seeds=seeds,
                        settings={"eval_batch": sizes["eval_batch"], "final_batch": sizes["final_batch"],
                                  "jackknife_blocks": JACKKNIFE_BLOCKS, "eval_every": "max(budget/30, 0.5) s",
                                  "reference": ref_sizes, "train_defaults": TRAIN_DEFAULTS},
                        targets={}, skipped_targets=[])
    for name, entries in chosen.items():
        target = TARGETS[name]
        if not entries:
            out["skipped_targets"].append(name)
            continue
        budget = float(seconds if seconds is not None else target.seconds)
        eval_every = max(budget / 30, 0.5)
        reference, log_z = reference_ensemble(target, **ref_sizes, device=device), target.action().log_z_exact()
        t_out: dict[str, Any] = {"theory": target.theory, "shape": list(target.shape), "couplings": target.couplings,
                                 "seconds": budget, "eval_every": eval_every, "log_z": log_z,
                                 "reference": reference["record"], "families": {}}
        for label, entry in entries.items():
            runs = {str(seed): _train_and_measure(target, label, entry, seed, seconds=budget, eval_every=eval_every,
                                                  sizes=sizes, reference=reference, log_z=log_z, dtype=dtype,
                                                  device=device, progress=progress) for seed in seeds}
            n_parameters = runs[str(seeds[-1])]["final"]["n_parameters"]
            t_out["families"][label] = {"flow": entry.get("flow") or {}, "anneal": entry.get("anneal"),
                                        "train": train[name, label], "n_parameters": n_parameters, "runs": runs,
                                        "summary": _summary(runs)}
        out["targets"][name] = t_out
    out["load_avg"]["end"] = list(os.getloadavg())
    out["total_seconds"] = time.perf_counter() - t_start
    out = strict(out)
    if plot_dir:
        out["plots"] = plot_quality_bench(out, plot_dir)
    return out


def progress_line(r: dict) -> str:
    return f"{r['target']} {r['family']} seed {r['seed']}: t={r['wall_time']:.1f}s step {r['step']} ESS {r['ess']}"


def _median_curve(runs: dict[str, dict[str, Any]], n: int = 61) -> tuple[np.ndarray, np.ndarray]:
    """Median over seeds of the ESS histories, linearly interpolated on a common time grid (a history
    is held at its last value beyond its end)."""
    grid = np.linspace(0.0, max(run["history"][-1]["wall_time"] for run in runs.values()), n)
    curves = [np.interp(grid, *zip(*pts)) for run in runs.values()
              if (pts := [(r["wall_time"], r["ess"]) for r in run["history"] if r["ess"] is not None])]
    return grid, (np.median(np.stack(curves), axis=0) if curves else np.full(n, np.nan))


def plot_quality_bench(result: dict[str, Any], plot_dir: str) -> dict[str, str]:
    """One PNG per target in ``plot_dir`` (``<target>.png``): reverse ESS (eval batch) vs training seconds,
    a line per family (median over seeds) and light lines per seed. Returns {target: path}."""
    os.makedirs(plot_dir, exist_ok=True)
    paths = {}
    for name, t in result["targets"].items():
        paths[name] = os.path.join(plot_dir, f"{name}.png")
        with figure(paths[name], figsize=(7, 4.2)) as (fig, axes):
            ax = axes[0, 0]
            for i, (label, fam) in enumerate(t["families"].items()):
                for run in fam["runs"].values():
                    h = [r for r in run["history"] if r["ess"] is not None]
                    ax.plot([r["wall_time"] for r in h], [r["ess"] for r in h], color=f"C{i}", alpha=0.25, lw=0.8)
                ax.plot(*_median_curve(fam["runs"]), color=f"C{i}", lw=2, label=f"{label} ({fam['n_parameters']} par.)")
            couplings = ", ".join(f"{k}={v:g}" for k, v in t["couplings"].items())
            ax.set(title=f"{name}: {t['theory']} {'x'.join(map(str, t['shape']))}, {couplings}",
                   xlabel="training wall time [s]", ylabel="reverse ESS/N (eval batch)", ylim=(0, 1.02))
            ax.legend(fontsize=8)
            fig.text(0.99, 0.01, f"{result['threads']} threads, {result['dtype']}, seeds {result['seeds']}",
                     ha="right", fontsize=7, alpha=0.7)
    return paths


def format_quality_table(result: dict[str, Any]) -> str:
    """One row per target × family: medians over seeds of the final figures and times to ESS 0.5 / 0.8."""
    load, rows = result["load_avg"], []
    for name, t in result["targets"].items():
        for label, fam in t["families"].items():
            m, tt, n_errors = fam["summary"]["median"], fam["summary"]["time_to_ess"], fam["summary"]["n_errors"]
            ess = format_cell(m["ess"], ".3f") + ("" if m["ess_err"] is None else f"±{m['ess_err']:.3f}")
            rows.append([name, f"{t['seconds']:g}s", label, ess, m["forward_ess"], m["kl"], m["nmcmc_acceptance"],
                         m["steps_per_s"], tt["0.5"], tt["0.8"], f"({n_errors} run(s) diverged)" if n_errors else ""])
        ref = t["reference"]
        rows.append(f"{'':<10} HMC reference: {ref['n_configurations']} configurations in {ref['seconds']:.1f} s "
                    f"(not training time)" + (f"; {ref['note']}" if ref.get("note") else ""))
    if result.get("skipped_targets"):
        rows.append(f"no selected family for target(s): {', '.join(result['skipped_targets'])}")
    return text_table([("target", "<10"), ("budget", ">7"), ("family", "<28"), ("ESS", ">14"), ("fwd ESS", "7.3f"),
                       ("KL", "8.4f"), ("acc", "5.2f"), ("steps/s", "8.1f"), ("t(.5)", "7.1f"), ("t(.8)", "7.1f"), ("", "")],
                      rows, title=f"flow quality at equal wall time: seeds {result['seeds']}, {result['threads']} threads, "
                                  f"{result['dtype']} {result['device']}, load avg {load['start'][0]:.2f} -> "
                                  f"{load['end'][0]:.2f}",
                      notes=["medians over seeds; ESS: reverse ESS/N on a fresh batch ± jackknife; fwd ESS on the HMC "
                             "reference; KL = KL(q‖p) in nats (exact ln Z; — where none); acc: independence-Metropolis "
                             "acceptance; t(x): training seconds to ESS ≥ x on the eval batch (— never)"])
