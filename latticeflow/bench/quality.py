"""`latticeflow bench quality`: flow quality against training wall time, per flow family and target.

This benchmark decides the project's default flows. Every family of `FAMILIES` is trained on every
target of `TARGETS` by reverse KL with ``Trainer(objective="reverse_kl", estimator="fast_path")`` for a
budget of training wall time (the time spent in ``Trainer.step``, measured with ``time.perf_counter``;
one untimed warm-up step on a throwaway copy first), once per seed. The flow is built after
``torch.manual_seed(seed)``; the Trainer's base-sample stream is seeded by ``seed``.

Measured on the way (the clock paused): every ``eval_every`` = max(budget/30, 0.5) s of training time,
and at t = 0 and at the end, on one fixed batch of ``eval_batch`` base samples (generator seeded by
``seed + 1``; the same batch for every family of a theory):

    loss = mean(log q + S) = KL(q‖p) − ln Z,      ESS/N = (Σw)² / (N Σw²),  log w = −S − log q   (reverse).

Measured at the end, also off the clock:

- ``ess``, ``ess_err``: reverse ESS/N on a fresh batch of ``final_batch`` samples (generator ``seed + 2``);
  the error is a delete-one-block jackknife over 32 blocks (heavy-tailed weights make any such error
  an underestimate when the ESS is small).
- ``kl``, ``kl_err``: KL(q‖p) = mean(log q + S) + ln Z in nats on the same batch, where ln Z is exact: the
  free field (`actions.exact.free_field_log_z`, Lebesgue measure dφ, like the Gaussian base density) and
  2D U(1) (`actions.exact.u1_log_z` is for the measure ∏ dθ/2π; the flows' log q is a density in dθ,
  the uniform base having log q₀ = −D ln 2π, so ln Z here = u1_log_z + D ln 2π with D = 2V links; the
  untrained uniform flow then has KL = u1_log_z ≥ 0). ``kl_err`` = std/√N. Null where no exact ln Z exists.
- ``forward_ess``, ``forward_ess_err``: forward ESS/N = 1/(mean_p w · mean_p 1/w) of log w = −S − log q on
  an HMC reference ensemble of the target (`reference_ensemble`, generated once per target and cached
  for the call; its generation time is reported separately and is not training time); the error is a
  jackknife over the HMC chains (which also accounts for autocorrelation within a chain).
- ``nmcmc_acceptance``: acceptance rate of an independence Metropolis chain
  (`latticeflow.samplers.nmcmc.metropolize`) fed with the ``final_batch`` proposals.

Annealing (optional key ``anneal`` of a family: ``[[β_1, f_1], [β_2, f_2], …]``, U(1) only, Σf = 1, the
last β the target's): the same flow is trained at U1Gauge(shape, β_i) for f_i of the budget, one stage
after the other, each by a fresh ``Trainer`` (fresh Adam state, seed ``seed + i``). Every evaluation is
against the *target* action, and every stage's training time counts in ``wall_time``.

`run_quality_bench` returns strict-JSON data (NaN and inf are null)::

    {"benchmark": "quality", "date", "torch", "threads", "dtype", "device", "load_avg": {"start", "end"},
     "quick", "seeds", "settings": {"eval_batch", "final_batch", "jackknife_blocks", "reference": {…}},
     "total_seconds",
     "targets": {target: {"theory", "shape", "couplings", "seconds", "eval_every", "log_z",
                          "reference": {"n_configurations", "n_chains", "seconds", "acceptance", "step_size",
                                        "checks": {…}, "note"},
                          "families": {label: {"flow", "train", "anneal", "n_parameters",
                                               "runs": {seed: {"history": [{"wall_time", "step", "ess", "loss"}, …],
                                                               "final": {"ess", "ess_err", "loss", "kl", "kl_err",
                                                                         "forward_ess", "forward_ess_err",
                                                                         "nmcmc_acceptance", "steps", "steps_per_s",
                                                                         "train_seconds", "n_parameters",
                                                                         "eval_seconds", "n_skipped", "error"}}},
                                               "summary": {"median": {…the final figures…},
                                                           "time_to_ess": {"0.5", "0.8", "0.98"}}}}}},
     "skipped_targets": [...], "plots": {target: path}}

``seed`` keys are strings (JSON). ``time_to_ess[thr]`` is the median over seeds of the first training
``wall_time`` at which the history's ESS ≥ thr, a seed that never got there counting as ∞ (null if the
median is ∞). ``error`` is null unless training stopped on repeated non-finite steps (the final
figures are then those of the flow as it stood).
"""
from __future__ import annotations

import copy
import datetime
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..analysis import forward_ess, reverse_ess
from ..samplers.nmcmc import metropolize
from .quality_reference import exact_log_z, reference_ensemble
from .quality_report import format_quality_table, plot_quality_bench
from .quality_targets import (FAMILIES, JACKKNIFE_BLOCKS, QUICK_FAMILIES, QUICK_SECONDS, SIZES, TARGETS,  # noqa: F401  (re-exported)
                              TRAIN_DEFAULTS, Target, _anneal_stages, _build, _seeds, _train_settings, select)
from ._json import strict as _strict

__all__ = ["TARGETS", "FAMILIES", "QUICK_FAMILIES", "Target", "run_quality_bench", "format_quality_table",
           "plot_quality_bench", "reference_ensemble", "exact_log_z", "select"]

ESS_THRESHOLDS = (0.5, 0.8, 0.98)


# -- measurements (off the clock) ----------------------------------------------------------------------
@torch.no_grad()
def _log_q_plus_s(flow, action, z: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """log q(x) + S(x) for x = T(z), float64, in chunks."""
    out = []
    for zc in z.split(chunk):
        x, logdet = flow(zc)
        out.append((flow.base.log_prob(zc).double() - logdet.double() + action.action(x).double()).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def _log_q_plus_s_on(flow, action, x: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """log q(x) + S(x) on given configurations (the flow's inverse), float64, in chunks."""
    out = []
    for xc in x.split(chunk):
        out.append((flow.log_prob(xc).double() + action.action(xc).double()).cpu())
    return torch.cat(out).numpy()


def _jackknife(stat: Callable[[np.ndarray], float], values: np.ndarray, n_blocks: int) -> float:
    """Delete-one-block jackknife error of ``stat`` over ``n_blocks`` contiguous blocks."""
    blocks = np.array_split(values, n_blocks)
    if len(blocks) < 2:
        return float("nan")
    loo = np.array([stat(np.concatenate(blocks[:i] + blocks[i + 1:])) for i in range(len(blocks))])
    n = len(blocks)
    return float(math.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def _safe(fn, lw: np.ndarray) -> float:
    if not np.all(np.isfinite(lw)):
        return float("nan")
    return fn(lw)


def _final_figures(flow, action, target: Target, z_final: torch.Tensor, log_u: np.ndarray,
                   reference: dict[str, Any], log_z: float | None) -> dict[str, Any]:
    a = _log_q_plus_s(flow, action, z_final)
    lw = -a
    out: dict[str, Any] = {"ess": _safe(reverse_ess, lw),
                           "ess_err": _safe(lambda v: _jackknife(reverse_ess, v, JACKKNIFE_BLOCKS), lw),
                           "loss": float(a.mean())}
    out["kl"] = float(a.mean() + log_z) if log_z is not None else None
    out["kl_err"] = float(a.std(ddof=1) / math.sqrt(a.size)) if log_z is not None else None
    a_ref = _log_q_plus_s_on(flow, action, reference["x"].to(dtype=z_final.dtype, device=z_final.device))
    out["forward_ess"] = _safe(forward_ess, -a_ref)
    out["forward_ess_err"] = _safe(lambda v: _jackknife(forward_ess, v, reference["chains"]), -a_ref)
    if np.all(np.isfinite(lw)):
        idx = metropolize(lw, log_u, -math.inf)
        out["nmcmc_acceptance"] = float(np.mean(idx[1:] != idx[:-1]))
    else:
        out["nmcmc_acceptance"] = float("nan")
    return out


# -- one run -------------------------------------------------------------------------------------------
def _follow_wall_time(sched, seconds: float) -> None:
    """Make a cosine schedule decay over ``seconds`` of training time, its warm-up still counted in steps:
    η = cosine_lr(t/seconds) · min(1, (step + 1)/warmup_steps)."""
    from ..training import cosine_lr

    warmup = sched.warmup_steps
    sched.steps, sched.seconds, sched.warmup_steps = 2 ** 62, seconds, 0

    def set_lr(step: int, wall_time: float) -> float:
        lr = cosine_lr(sched.progress(step, wall_time), sched.lr, sched.lr_min)
        if warmup:
            lr *= min(1.0, (step + 1) / warmup)
        for group in sched.optimizer.param_groups:
            group["lr"] = lr
        return lr

    sched.set_lr = set_lr


def _train_one(target: Target, label: str, entry: dict[str, Any], seed: int, *, seconds: float, eval_every: float,
               sizes: dict[str, int], reference: dict[str, Any], log_z: float | None, dtype, device,
               progress) -> tuple[dict[str, Any], int]:
    from ..training import Trainer, TrainingError

    action = target.action()
    settings = _train_settings(target, label, entry)
    stages = _anneal_stages(target, label, entry)
    torch.manual_seed(seed)
    flow = _build(target, label, entry, action, dtype, device)
    n_parameters = sum(p.numel() for p in flow.parameters() if p.requires_grad)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    z_eval = flow.base.sample((sizes["eval_batch"],), generator=gen)

    history: list[dict[str, Any]] = []
    state = {"train_time": 0.0, "steps": 0, "eval_seconds": 0.0, "next_eval": eval_every}

    def record(stage: int | None) -> None:
        t0 = time.perf_counter()
        a = _log_q_plus_s(flow, action, z_eval)
        row = {"wall_time": state["train_time"], "step": state["steps"], "ess": _safe(reverse_ess, -a),
               "loss": float(a.mean())}
        if stage is not None:
            row["stage"] = stage
        history.append(row)
        state["eval_seconds"] += time.perf_counter() - t0
        if progress is not None:
            progress({"target": target.name, "family": label, "seed": seed, **row})

    # untimed warm-up (lazy initialisations, allocator) on a throwaway copy
    plain = {k: v for k, v in settings.items() if k not in ("scheduler", "warmup_steps", "lr_min")}
    Trainer(copy.deepcopy(flow), action, objective="reverse_kl", seed=seed + 12345, **plain).step()
    annealed = len(stages) > 1
    record(0 if annealed else None)
    error, n_skipped = None, 0
    for i, (beta, fraction) in enumerate(stages):
        stage_action = action if beta is None or beta == target.couplings.get("beta") else target.action(beta=beta)
        trainer = Trainer(flow, stage_action, objective="reverse_kl", seed=seed + i, **settings)
        sched = trainer.scheduler
        timed_schedule = hasattr(sched, "steps") and hasattr(sched, "seconds")  # the cosine schedule
        stage_seconds = fraction * seconds
        if timed_schedule:
            _follow_wall_time(sched, stage_seconds)
        end = state["train_time"] + stage_seconds if i < len(stages) - 1 else seconds
        stage_start = state["train_time"]
        try:
            while state["train_time"] < end:
                if timed_schedule:
                    trainer._elapsed = state["train_time"] - stage_start  # the schedule's clock (Trainer.train sets it)
                t0 = time.perf_counter()
                trainer.step()
                state["train_time"] += time.perf_counter() - t0
                state["steps"] += 1
                if state["train_time"] >= state["next_eval"] and state["train_time"] < seconds:
                    record(i if annealed else None)
                    while state["next_eval"] <= state["train_time"]:
                        state["next_eval"] += eval_every
        except TrainingError as err:
            error = str(err)
            n_skipped += trainer.n_skipped
            break
        n_skipped += trainer.n_skipped
    record(len(stages) - 1 if annealed else None)

    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(seed + 2)
    z_final = flow.base.sample((sizes["final_batch"],), generator=gen)
    log_u = np.log(np.random.default_rng(seed + 3).random(sizes["final_batch"]))
    final = _final_figures(flow, action, target, z_final, log_u, reference, log_z)
    train_time = state["train_time"]
    final.update(steps=state["steps"], train_seconds=train_time,
                 steps_per_s=state["steps"] / train_time if train_time > 0 else float("nan"),
                 n_parameters=n_parameters, eval_seconds=state["eval_seconds"],
                 final_eval_seconds=time.perf_counter() - t0, n_skipped=n_skipped, error=error,
                 time_to_ess={str(thr): _time_to(history, thr) for thr in ESS_THRESHOLDS})
    return {"history": history, "final": final}, n_parameters


def _time_to(history: list[dict[str, Any]], threshold: float) -> float | None:
    for row in history:
        if row["ess"] is not None and not math.isnan(row["ess"]) and row["ess"] >= threshold:
            return row["wall_time"]
    return None


def _median(values: list) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.median(vals)) if vals else None


SUMMARY_KEYS = ("ess", "ess_err", "loss", "kl", "forward_ess", "nmcmc_acceptance", "steps", "steps_per_s",
                "train_seconds", "n_parameters")


def _summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    finals = [r["final"] for r in runs.values()]
    median = {k: _median([f.get(k) for f in finals]) for k in SUMMARY_KEYS}
    time_to = {}
    for thr in ESS_THRESHOLDS:
        ts = [f["time_to_ess"][str(thr)] for f in finals]
        m = float(np.median([math.inf if t is None else t for t in ts]))
        time_to[str(thr)] = m if math.isfinite(m) else None
    return {"median": median, "time_to_ess": time_to, "n_seeds": len(finals),
            "n_errors": sum(f["error"] is not None for f in finals)}


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
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"bench quality: dtype must be float32 or float64, got {dtype!r}")
        dtype = getattr(torch, dtype)
    device = torch.device(device)
    chosen = select(targets, families, quick)
    seeds = ([0] if quick else [0, 1, 2]) if seeds is None else _seeds(seeds)
    if seconds is None and quick:
        seconds = QUICK_SECONDS
    if seconds is not None and not seconds > 0:
        raise ValueError(f"bench quality: seconds must be > 0, got {seconds}")
    sizes = SIZES["quick" if quick else "full"]
    for name, entries in chosen.items():  # fail fast, before any training
        target = TARGETS[name]
        for label, entry in entries.items():
            _train_settings(target, label, entry)
            _anneal_stages(target, label, entry)
            _build(target, label, entry, target.action(), dtype, device)

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    try:
        out: dict[str, Any] = {
            "benchmark": "quality", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "load_avg": {"start": list(os.getloadavg())}, "quick": quick, "seeds": seeds,
            "settings": {"eval_batch": sizes["eval_batch"], "final_batch": sizes["final_batch"],
                         "jackknife_blocks": JACKKNIFE_BLOCKS, "eval_every": "max(budget/30, 0.5) s",
                         "reference": {k: sizes[k] for k in ("n_chains", "n_thermalize", "n_configurations", "every")},
                         "train_defaults": TRAIN_DEFAULTS},
            "targets": {}, "skipped_targets": []}
        for name, entries in chosen.items():
            target = TARGETS[name]
            if not entries:
                out["skipped_targets"].append(name)
                continue
            budget = float(seconds if seconds is not None else target.seconds)
            eval_every = max(budget / 30, 0.5)
            reference = reference_ensemble(target, **{k: sizes[k] for k in ("n_chains", "n_thermalize",
                                                                            "n_configurations", "every")},
                                           device=device)
            log_z = exact_log_z(target)
            t_out: dict[str, Any] = {"theory": target.theory, "shape": list(target.shape), "couplings": target.couplings,
                                     "seconds": budget, "eval_every": eval_every, "log_z": log_z,
                                     "reference": reference["record"], "families": {}}
            for label, entry in entries.items():
                runs, n_par = {}, None
                for seed in seeds:
                    runs[str(seed)], n_par = _train_one(target, label, entry, seed, seconds=budget, eval_every=eval_every,
                                                        sizes=sizes, reference=reference, log_z=log_z, dtype=dtype,
                                                        device=device, progress=progress)
                t_out["families"][label] = {"flow": entry.get("flow") or {}, "train": _train_settings(target, label, entry),
                                            "anneal": entry.get("anneal"), "n_parameters": n_par, "runs": runs,
                                            "summary": _summary(runs)}
            out["targets"][name] = t_out
        out["load_avg"]["end"] = list(os.getloadavg())
        out["total_seconds"] = time.perf_counter() - t_start
    finally:
        torch.set_num_threads(old_threads)
    out = json.loads(json.dumps(_strict(out), allow_nan=False))
    if plot_dir:
        out["plots"] = plot_quality_bench(out, plot_dir)
    return out
