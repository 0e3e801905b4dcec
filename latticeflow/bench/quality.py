"""`latticeflow bench quality`: flow quality against training wall time, per flow family and target.

This benchmark decides the project's default flows. Every family of `FAMILIES` is trained on every
target of `TARGETS` by reverse KL with ``Trainer(objective="reverse_kl", estimator="fast_path")`` for a
budget of training wall time (`latticeflow.training`; one untimed warm-up step on a throwaway copy first),
once per seed. The flow is built after ``torch.manual_seed(seed)``; the Trainer's base-sample stream is
seeded by ``seed``. A cosine schedule decays over the budget's seconds, its warm-up counted in steps.

Measured on the way, off the clock (`EvaluateEvery`): every ``eval_every`` = max(budget/30, 0.5) s of
training time, and at t = 0 and at the end, on one fixed batch of ``eval_batch`` base samples (generator
seeded by ``seed + 1``; the same batch for every family of a theory):

    loss = mean(log q + S) = KL(q‖p) − ln Z,      ESS/N = (Σw)² / (N Σw²),  log w = −S − log q   (reverse).

Measured at the end, also off the clock:

- ``ess``, ``ess_err``: reverse ESS/N on a fresh batch of ``final_batch`` samples (generator ``seed + 2``);
  the error is a delete-one-block jackknife over 32 blocks (heavy-tailed weights make any such error
  an underestimate when the ESS is small).
- ``kl``, ``kl_err``: KL(q‖p) = mean(log q + S) + ln Z in nats on the same batch, with the theory's exact
  ln Z in the flows' Lebesgue measure dφ or dθ (`log_z_exact`: the free field; 2D U(1), where the uniform
  base has log q₀ = −D ln 2π, so the untrained uniform flow has KL = u1_log_z ≥ 0); ``kl_err`` = std/√N;
  null where no exact ln Z exists.
- ``forward_ess``, ``forward_ess_err``: forward ESS/N = 1/(mean_p w · mean_p 1/w) on an HMC reference
  ensemble of the target (`reference_ensemble`, generated once per target, its time reported apart); the
  error is a jackknife over the HMC chains (which also accounts for autocorrelation within a chain).
- ``nmcmc_acceptance``: acceptance rate of an independence Metropolis chain
  (`latticeflow.samplers.nmcmc.metropolize`) fed with the ``final_batch`` proposals.

Annealing (optional key ``anneal`` of a family: ``[[β_1, f_1], [β_2, f_2], …]``, Σf = 1, the last β the
target's): the same flow is trained at β_i for f_i of the budget, one stage after the other, each by a
fresh ``Trainer`` (fresh Adam state, seed ``seed + i``). Every evaluation is against the *target* action,
and every stage's training time counts in ``wall_time``.

`run_quality_bench` returns strict JSON: per target its settings, exact ``log_z`` and HMC ``reference``
record, per family and seed the ``history`` of evaluations and the ``final`` figures (with ``steps``,
``steps_per_s``, ``train_seconds``, ``eval_seconds``, ``n_skipped``, ``error``: null unless training stopped
on repeated non-finite steps), and a ``summary``: medians over seeds and ``time_to_ess[thr]``, the median
over seeds of the first training ``wall_time`` with ESS ≥ thr (a seed that never got there counts as ∞;
null if the median is ∞).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..analysis import forward_ess, reverse_ess
from ..analysis.diagnostics import reverse_ess_with_error
from ..gradients import log_weights
from ..samplers.nmcmc import metropolize
from ..training import EvaluateEvery, Trainer, TrainingError
from ._common import header, median, threads as torch_threads, torch_dtype, warm_up
from ._json import strict_copy
from .quality_reference import exact_log_z, reference_ensemble
from .quality_report import format_quality_table, plot_quality_bench
from .quality_targets import (FAMILIES, JACKKNIFE_BLOCKS, QUICK_FAMILIES, QUICK_SECONDS, SIZES, TARGETS,  # noqa: F401  (re-exported)
                              TRAIN_DEFAULTS, Target, _anneal_stages, _build, _seeds, _train_settings, select)

__all__ = ["TARGETS", "FAMILIES", "QUICK_FAMILIES", "Target", "run_quality_bench", "format_quality_table",
           "plot_quality_bench", "reference_ensemble", "exact_log_z", "select"]

ESS_THRESHOLDS = (0.5, 0.8, 0.98)
SUMMARY_KEYS = ("ess", "ess_err", "loss", "kl", "forward_ess", "nmcmc_acceptance", "steps", "steps_per_s",
                "train_seconds", "n_parameters")


def _log_q_plus_s(flow, action, z: torch.Tensor) -> np.ndarray:
    """log q(x) + S(x) = −log w for x = T(z), float64."""
    return -log_weights(flow, action, z, from_base=True, chunk=1024).log_weight.cpu().numpy()


def _jackknife(stat: Callable[[np.ndarray], float], values: np.ndarray, n_blocks: int) -> float:
    """Delete-one-block jackknife error of ``stat`` over ``n_blocks`` contiguous blocks."""
    blocks = np.array_split(values, n_blocks)
    if len(blocks) < 2:
        return float("nan")
    loo = np.array([stat(np.concatenate(blocks[:i] + blocks[i + 1:])) for i in range(len(blocks))])
    return float(math.sqrt((len(blocks) - 1) / len(blocks) * np.sum((loo - loo.mean()) ** 2)))


def _safe(fn, lw: np.ndarray) -> float:
    return fn(lw) if np.all(np.isfinite(lw)) else float("nan")


def _final_figures(flow, action, z_final: torch.Tensor, log_u: np.ndarray, reference: dict[str, Any],
                   log_z: float | None) -> dict[str, Any]:
    a = _log_q_plus_s(flow, action, z_final)
    ess, ess_err = reverse_ess_with_error(-a, JACKKNIFE_BLOCKS) if np.all(np.isfinite(a)) else (math.nan, math.nan)
    out: dict[str, Any] = {"ess": ess, "ess_err": ess_err, "loss": float(a.mean()),
                           "kl": float(a.mean() + log_z) if log_z is not None else None,
                           "kl_err": float(a.std(ddof=1) / math.sqrt(a.size)) if log_z is not None else None}
    x_ref = reference["x"].to(dtype=z_final.dtype, device=z_final.device)
    lw_ref = log_weights(flow, action, x_ref, chunk=1024).log_weight.cpu().numpy()
    out["forward_ess"] = _safe(forward_ess, lw_ref)
    out["forward_ess_err"] = _safe(lambda v: _jackknife(forward_ess, v, reference["chains"]), lw_ref)
    idx = metropolize(-a, log_u, -math.inf) if np.all(np.isfinite(a)) else None
    out["nmcmc_acceptance"] = float(np.mean(idx[1:] != idx[:-1])) if idx is not None else float("nan")
    return out


def _time_to(history: list[dict[str, Any]], threshold: float) -> float | None:
    return next((r["wall_time"] for r in history if r["ess"] is not None and r["ess"] >= threshold), None)


def _train_and_measure(target: Target, label: str, entry: dict[str, Any], seed: int, *, seconds: float,
                       eval_every: float, sizes: dict[str, int], reference: dict[str, Any], log_z: float | None,
                       dtype, device, progress) -> tuple[dict[str, Any], int]:
    """One family and seed: training (stage by stage when annealed) with evaluations off the clock, then
    the final figures."""
    action, settings, stages = target.action(), _train_settings(target, label, entry), _anneal_stages(target, label, entry)
    torch.manual_seed(seed)
    flow = _build(target, label, entry, action, dtype, device)
    n_parameters = sum(p.numel() for p in flow.parameters() if p.requires_grad)
    z_eval = flow.base.sample((sizes["eval_batch"],), generator=torch.Generator(device=device).manual_seed(seed + 1))
    current = {"stage": 0} if len(stages) > 1 else {}  # the stage, recorded when annealed

    def evaluate(wall_time: float, step: int) -> dict[str, Any]:
        a = _log_q_plus_s(flow, action, z_eval)
        row = {"wall_time": wall_time, "step": step, "ess": _safe(reverse_ess, -a), "loss": float(a.mean()),
               **current}
        if progress is not None:
            progress({"target": target.name, "family": label, "seed": seed, **row})
        return row

    plain = {k: v for k, v in settings.items() if k not in ("scheduler", "warmup_steps", "lr_min")}
    warm_up(flow, action, objective="reverse_kl", seed=seed + 12345, **plain)
    evaluation = EvaluateEvery(evaluate, seconds=eval_every)
    evaluation.evaluate()
    error, n_skipped, train_time, steps = None, 0, 0.0, 0
    for i, (beta, fraction) in enumerate(stages):
        current.update({"stage": i} if current else {})
        stage_action = action if beta is None or beta == target.couplings.get("beta") else target.action(beta=beta)
        trainer = Trainer(flow, stage_action, objective="reverse_kl", seed=seed + i, **settings)
        budget = fraction * seconds if i < len(stages) - 1 else seconds - train_time
        evaluation.offset, evaluation.final = (train_time, steps), (False if i == len(stages) - 1 else None)
        try:
            if budget > 0:
                trainer.train(None, seconds=budget, log_every=10**9, progress=False, callbacks=[evaluation])
        except TrainingError as err:
            error = str(err)
        train_time, steps, n_skipped = train_time + trainer.wall_time, steps + trainer.step_count, n_skipped + trainer.n_skipped
        if error:
            break
    evaluation.offset = (train_time, steps)
    current.update({"stage": len(stages) - 1} if current else {})
    evaluation.evaluate()

    t0 = time.perf_counter()
    z_final = flow.base.sample((sizes["final_batch"],), generator=torch.Generator(device=device).manual_seed(seed + 2))
    log_u = np.log(np.random.default_rng(seed + 3).random(sizes["final_batch"]))
    final = _final_figures(flow, action, z_final, log_u, reference, log_z)
    history = evaluation.history
    final.update(steps=steps, train_seconds=train_time, steps_per_s=steps / train_time if train_time > 0 else math.nan,
                 n_parameters=n_parameters, eval_seconds=evaluation.seconds, final_eval_seconds=time.perf_counter() - t0,
                 n_skipped=n_skipped, error=error, time_to_ess={str(thr): _time_to(history, thr) for thr in ESS_THRESHOLDS})
    return {"history": history, "final": final}, n_parameters


def _summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    finals = [r["final"] for r in runs.values()]
    time_to = {}
    for thr in ESS_THRESHOLDS:
        m = float(np.median([math.inf if f["time_to_ess"][str(thr)] is None else f["time_to_ess"][str(thr)]
                             for f in finals]))
        time_to[str(thr)] = m if math.isfinite(m) else None
    return {"median": {k: median([f.get(k) for f in finals]) for k in SUMMARY_KEYS}, "time_to_ess": time_to,
            "n_seeds": len(finals), "n_errors": sum(f["error"] is not None for f in finals)}


def run_quality_bench(*, targets=None, families=None, seeds=None, seconds: float | None = None, quick: bool = False,
                      dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
                      threads: int | None = None, plot_dir: str | None = "bench_quality",
                      progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train every selected family on every selected target for its budget, once per seed (module doc).

    ``targets``: names of `TARGETS` (list or comma-separated; default all, ``quick``: free8 and u1_b2);
    ``families``: labels of `FAMILIES` or flow family names (default all; ``quick``: `QUICK_FAMILIES`);
    ``seeds``: default (0, 1, 2), ``quick``: (0,); ``seconds`` overrides every target's budget (``quick``:
    3 s); ``threads`` sets ``torch.set_num_threads`` for the call; ``plot_dir``: one PNG per target
    (None: no plots); ``progress(row)`` after every evaluation. Everything is validated (targets,
    families, flows, train keys, anneal schedules) before the first training step.
    """
    dtype, device = torch_dtype(dtype), torch.device(device)
    chosen = select(targets, families, quick)
    seeds = ([0] if quick else [0, 1, 2]) if seeds is None else _seeds(seeds)
    seconds = QUICK_SECONDS if seconds is None and quick else seconds
    if seconds is not None and not seconds > 0:
        raise ValueError(f"bench quality: seconds must be > 0, got {seconds}")
    sizes = SIZES["quick" if quick else "full"]
    ref_sizes = {k: sizes[k] for k in ("n_chains", "n_thermalize", "n_configurations", "every")}
    for name, entries in chosen.items():  # fail fast, before any training
        for label, entry in entries.items():
            _train_settings(TARGETS[name], label, entry)
            _anneal_stages(TARGETS[name], label, entry)
            _build(TARGETS[name], label, entry, TARGETS[name].action(), dtype, device)
    t_start = time.perf_counter()
    with torch_threads(threads):
        out = header("quality", dtype=str(dtype).replace("torch.", ""), device=str(device), quick=quick, seeds=seeds,
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
            reference, log_z = reference_ensemble(target, **ref_sizes, device=device), exact_log_z(target)
            t_out: dict[str, Any] = {"theory": target.theory, "shape": list(target.shape), "couplings": target.couplings,
                                     "seconds": budget, "eval_every": eval_every, "log_z": log_z,
                                     "reference": reference["record"], "families": {}}
            for label, entry in entries.items():
                runs, n_par = {}, None
                for seed in seeds:
                    runs[str(seed)], n_par = _train_and_measure(
                        target, label, entry, seed, seconds=budget, eval_every=eval_every, sizes=sizes,
                        reference=reference, log_z=log_z, dtype=dtype, device=device, progress=progress)
                t_out["families"][label] = {"flow": entry.get("flow") or {}, "train": _train_settings(target, label, entry),
                                            "anneal": entry.get("anneal"), "n_parameters": n_par, "runs": runs,
                                            "summary": _summary(runs)}
            out["targets"][name] = t_out
        out["load_avg"]["end"] = list(os.getloadavg())
        out["total_seconds"] = time.perf_counter() - t_start
    out = strict_copy(out)
    if plot_dir:
        out["plots"] = plot_quality_bench(out, plot_dir)
    return out


def progress_line(r: dict) -> str:
    return f"{r['target']} {r['family']} seed {r['seed']}: t={r['wall_time']:.1f}s step {r['step']} ESS {r['ess']}"
