"""`latticeflow run`: the whole pipeline in one run directory.

HMC configs: sample → analyse → report. Flow configs (``sampler.name: nmcmc | flow``): optionally an HMC
reference ensemble of ``sampler.reference_hmc`` configurations (``ensemble_hmc.h5``; with
``train.data: reference`` it is also the forward-KL training data) → train (resumes) → sample with the
trained flow (resumes) → the forward ESS of the flow on the HMC ensemble → analyse → comparison table flow vs HMC vs exact, ``summary.json`` and plots. An interrupted run is
resumed by rerunning the same command. Under ``mpiexec -n N`` sampling and training run on every rank
(shards, data-parallel training); rank 0 alone analyses and writes the report.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis import forward_ess
from ..config import Config, build_action
from ..io import open_ensemble, write_json
from ..io.lock import directory_lock
from ..samplers import REFERENCE_SAMPLER, SAMPLERS, WINDING_SAMPLER
from .analyze import EnsembleAnalysis, analyze
from .report import write_report
from .sample import sample
from .train import train

__all__ = ["run", "comparison_table", "cost_comparison", "format_cost_comparison", "flow_forward_ess"]


@torch.no_grad()
def flow_forward_ess(cfg: Config, hmc_path: str | Path, checkpoint: str | None = None, batch: int = 1024,
                     progress: bool = False) -> float:
    """Forward ESS/N of the trained flow on target (HMC) samples: 1/(mean_p(w) mean_p(1/w)), w = e^{−S}/q.
    A pass of the flow over the whole reference ensemble, in chunks of ``batch`` (1024: see
    ``samplers.flow.SAMPLE_CHUNK``) with a progress bar (it can take as long as sampling)."""
    import sys

    from tqdm.auto import tqdm

    from .sample_flow import load_flow

    action, flow = load_flow(cfg, checkpoint)
    ref = next(flow.buffers())
    log_w = []
    with open_ensemble(hmc_path) as ens, tqdm(total=ens.n_rows, desc="forward ESS", unit="cfg", file=sys.stderr,
                                              disable=not progress, mininterval=0.5) as bar:
        for x in ens.iter_batches("samples", batch):
            xt = torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
            log_w.append((-action.action(xt) - flow.log_prob(xt)).double().cpu().numpy())
            bar.update(len(x))
    return forward_ess(np.concatenate(log_w))


def comparison_table(results: dict[str, EnsembleAnalysis]) -> str:
    """observable | one column per ensemble (estimate(error)) | exact."""
    from ..analysis.table import format_value_error

    names = list(results)
    first = results[names[0]]
    lines = [f"{'observable':<24}" + "".join(f"{n:>22}" for n in names) + f"{'exact':>14}", "-" * (24 + 22 * len(names) + 14)]
    for row in first.rows:
        cells = []
        for n in names:
            try:
                r = results[n].row(row.name).result
                cells.append(format_value_error(r.mean, r.error))
            except KeyError:
                cells.append("—")
        exact = "—" if row.exact is None else f"{row.exact:.6g}"
        lines.append(f"{row.name:<24}" + "".join(f"{c:>22}" for c in cells) + f"{exact:>14}")
    return "\n".join(lines)


def cost_comparison(results: dict[str, EnsembleAnalysis], rates: dict[str, float | None],
                    train_seconds: float, n_independent: float = 1e4, observable: str = "Q",
                    estimate: str = "chi_t = <Q^2>/V", trained: tuple[str, ...] | None = None) -> dict[str, Any]:
    """τ_int(Q), χ_t and the cost of ``n_independent`` independent Q samples for each ensemble (U(1): the
    theory's ``cost_observable`` and ``cost_estimate`` rows; the output keys keep the names of Q and χ_t).

    cost = t_train + n_independent · 2τ_int(Q) / rate, with ``rate`` the ensemble's configurations/s
    (``None`` where this process did not sample it) and t_train counted for the ensembles in ``trained`` (default:
every ensemble but the reference HMC). τ_int is a
    lower bound (and so is the cost) where the shortest chain holds fewer than 50 τ_int(Q) or Q never moved.
    """
    out: dict[str, Any] = {}
    for name, r in results.items():
        q, chi = r.row(observable).result, r.row(estimate)
        cover = r.extra.get("checks", {}).get("tau_per_chain", {}).get(observable)
        lower = cover is not None and math.isfinite(cover) and cover < 50
        rate = rates.get(name)
        t = train_seconds if (name in trained if trained is not None else name != REFERENCE_SAMPLER) else 0.0
        out[name] = {"tau_int_q": q.tau_int, "tau_int_q_err": q.tau_int_error, "tau_int_lower_bound": bool(lower),
                     "chi_t": chi.result.mean, "chi_t_err": chi.result.error, "chi_t_exact": chi.exact,
                     "configs_per_s": rate, "train_seconds": t,
                     "cost_seconds": None if not rate else t + n_independent * 2 * q.tau_int / rate}
    costs = {n: o["cost_seconds"] for n, o in out.items()}
    ref, refs = REFERENCE_SAMPLER, (REFERENCE_SAMPLER, WINDING_SAMPLER)
    flows = [n for n in costs if n not in refs]
    if len(flows) == 1 and costs[flows[0]]:
        flow = flows[0]
        for name, prefix in ((ref, ""), (WINDING_SAMPLER, "winding_")):
            if name in costs and costs[name]:
                out[f"{prefix}cost_ratio"] = costs[name] / costs[flow]
                out[f"{prefix}tau_ratio"] = out[name]["tau_int_q"] / out[flow]["tau_int_q"]
    return out


def format_cost_comparison(cost: dict[str, Any], n_independent: float = 1e4) -> str:
    names = [n for n in cost if isinstance(cost[n], dict)]
    lines = [f"{'cost of independent Q':<24}" + "".join(f"{n:>22}" for n in names), "-" * (24 + 22 * len(names))]

    def cell(o, what):
        lb = "> " if o["tau_int_lower_bound"] else ""
        if what == "tau":
            return f"{lb}{o['tau_int_q']:.3g} ± {o['tau_int_q_err']:.2g}"
        if what == "chi":
            pull = ("" if not o["chi_t_err"] or o["chi_t_exact"] is None
                    else f" ({(o['chi_t'] - o['chi_t_exact']) / o['chi_t_err']:+.1f}σ)")
            return f"{o['chi_t']:.5f}({1e5 * o['chi_t_err']:.0f}){pull}"
        if what == "rate":
            return "—" if not o["configs_per_s"] else f"{o['configs_per_s']:.0f}"
        if what == "train":
            return f"{o['train_seconds']:.0f} s"
        return "—" if o["cost_seconds"] is None else f"{lb}{o['cost_seconds']:.3g} s"

    for label, what in (("tau_int(Q)", "tau"), ("chi_t (pull vs exact)", "chi"), ("configurations/s", "rate"),
                        ("training", "train"), (f"time to {n_independent:.0e} indep. Q", "cost")):
        lines.append(f"{label:<24}" + "".join(f"{cell(cost[n], what):>22}" for n in names))
    exact = next(cost[n]["chi_t_exact"] for n in names)
    for name, prefix, label in ((REFERENCE_SAMPLER, "", "HMC"), (WINDING_SAMPLER, "winding_", "winding HMC")):
        if f"{prefix}cost_ratio" in cost:
            lower = "> " if cost[name]["tau_int_lower_bound"] else ""
            lines.append(f"{label} / flow: tau_int(Q) {lower}{cost[f'{prefix}tau_ratio']:.3g}, cost "
                         f"{lower}{cost[f'{prefix}cost_ratio']:.3g} (training counted)"
                         + ("" if exact is None else f"; exact chi_t {exact:.6g}"))
    return "\n".join(lines)


def run(cfg: Config, config_text: str = "", *, command: str | None = None, progress: bool = True,
        checkpoint: str | None = None, thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Run the pipeline of ``cfg``; returns the summary (also written to ``summary.json``). The trust
    verdict {"reliable": bool, "reasons": [str, …]} of every analysed ensemble is under
    ``"ensembles": {sampler: {"path", "verdict"}}`` (``"hmc"`` for the reference), and the run's own
    ensemble's is also the top-level ``"verdict"`` (a flow ensemble's includes its pulls against the HMC
    reference; ``thresholds`` override the verdict's defaults)."""
    from ..distributed import get_world

    world = get_world()
    with directory_lock(cfg.output_dir, command, world):  # one lock over the whole pipeline (nested calls re-enter)
        return _run(cfg, config_text, command=command, progress=progress, checkpoint=checkpoint,
                    thresholds=thresholds, world=world)


def _check_steps(cfg: Config, config_text: str, checkpoint: str | None, world) -> None:
    """Read-only: the checks of every step of the run that can refuse it (the reference and the run's own ensemble
    with their damage and resume state, the checkpoint to resume or ``--checkpoint``, ``train.init``,
    ``config.yaml``), run before the first step writes anything. Collective under MPI: if one rank refuses,
    every rank raises `ConfigError` with its line."""
    from ..config import ConfigError
    from ..distributed import collective_check
    from ..flows import build_flow
    from ..io import shard_path
    from ..io.shards import rank_count_problem
    from .rundir import config_problem
    from .sample_chains import check_resume
    from .sample_flow import load_flow
    from .train import init_flow_from, load_resume_checkpoint

    out = cfg.output_dir
    entry, ref, s = SAMPLERS[cfg.sampler.name], REFERENCE_SAMPLER, cfg.sampler
    replica = world.rank if world.distributed else 0

    def checks() -> None:
        action = build_action(cfg.action)
        files = []
        if s.name != ref and s.reference_hmc > 0:
            files.append((out / "ensemble_hmc.h5", ref, s.n_chains, -1))
        if s.name != WINDING_SAMPLER and s.reference_winding > 0:
            files.append((out / f"ensemble_{WINDING_SAMPLER}.h5", WINDING_SAMPLER, s.n_chains, -1))
        files.append((out / "ensemble.h5", s.name, s.n_chains if entry.markov else None,
                      1 if entry.needs_flow else -1))
        for path, name, n_chains, default in files:
            problem = rank_count_problem(path, world.size) if world.is_main else None
            if problem:
                raise ConfigError(problem)
            own = shard_path(path, world.rank) if world.distributed else path
            check_resume(own, action, name, cfg.dtype, n_chains, replica * (n_chains or 0), default_n_chains=default)
        if entry.needs_flow and checkpoint is not None:
            load_flow(cfg, checkpoint)
        elif entry.needs_flow:
            flow = build_flow(cfg.flow, action)
            ckpt = out / "checkpoints" / "latest.pt"
            if ckpt.exists():
                state = load_resume_checkpoint(ckpt, cfg, action)
                try:
                    flow.load_state_dict(state["flow"])
                except (KeyError, RuntimeError, TypeError, ValueError) as err:
                    detail = (str(err).splitlines() or [type(err).__name__])[0][:200]
                    raise ConfigError(f"{ckpt} cannot be resumed by this config ({type(err).__name__}: {detail}); "
                                      f"use another output.dir") from None
            elif cfg.train.init:
                init_flow_from(flow, cfg.train.init, action)
        problem = config_problem(out, config_text) if world.is_main else None
        if problem:
            raise ConfigError(problem)

    if not world.distributed:
        checks()
        return
    problem = None
    try:
        checks()
    except Exception as err:  # noqa: BLE001 — every rank learns of it below
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
    collective_check(world, problem, ConfigError)


def _run(cfg: Config, config_text: str, *, command: str | None, progress: bool, checkpoint: str | None,
         thresholds: dict[str, float] | None, world) -> dict[str, Any]:
    out = cfg.output_dir
    _check_steps(cfg, config_text, checkpoint, world)  # every step's refusals before the first step writes
    summary: dict[str, Any] = {"name": cfg.name, "sampler": cfg.sampler.name}
    entry, ref = SAMPLERS[cfg.sampler.name], REFERENCE_SAMPLER
    hmc = None
    if cfg.sampler.name != ref and cfg.sampler.reference_hmc > 0:  # first: it may be the training data
        hmc_cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, name=ref, options={},
                                                                       n_samples=cfg.sampler.reference_hmc))
        hmc = sample(hmc_cfg, config_text, command=command, progress=progress, path=out / "ensemble_hmc.h5")
    winding = None
    if cfg.sampler.name != WINDING_SAMPLER and cfg.sampler.reference_winding > 0:  # gauge theories: HMC + instantons
        w_cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, name=WINDING_SAMPLER, options={},
                                                                     n_samples=cfg.sampler.reference_winding))
        winding = sample(w_cfg, config_text, command=command, progress=progress,
                         path=out / f"ensemble_{WINDING_SAMPLER}.h5")
    if entry.needs_flow and checkpoint is None:
        summary["training"] = train(cfg, config_text, progress=progress)
    sampled = sample(cfg, config_text, command=command, progress=progress, checkpoint=checkpoint)
    if not world.is_main:
        summary.update({"ensemble": sampled.as_dict(), "tables": [], "files": []})
        return summary
    # the same verdict as `latticeflow analyze` on the file: it too is judged with ensemble_hmc.h5 beside it
    reference = analyze(hmc.path, thresholds=thresholds, reference=None) if hmc is not None else "auto"
    results = {cfg.sampler.name: analyze(sampled.path, thresholds=thresholds, reference=reference)}
    if hmc is not None:
        results[ref] = reference
    if winding is not None:
        results[WINDING_SAMPLER] = analyze(winding.path, thresholds=thresholds,
                                           reference=reference if hmc is not None else None)
    tables = [results[cfg.sampler.name].table()]
    summary["verdict"] = results[cfg.sampler.name].extra["verdict"]
    summary["ensembles"] = {name: {"path": r.path, "verdict": r.extra["verdict"]} for name, r in results.items()}
    if hmc is not None:
        if entry.needs_flow:
            summary["forward_ess"] = flow_forward_ess(cfg, hmc.path, checkpoint, progress=progress)
        tables.append(results[ref].table())
        if winding is not None:
            tables.append(results[WINDING_SAMPLER].table())
        tables.append(comparison_table(results))
        theory = build_action(cfg.action)
        if theory.cost_observable is not None:
            rates = {cfg.sampler.name: sampled.n_new / sampled.seconds if sampled.n_new else None,
                     ref: hmc.n_new / hmc.seconds if hmc.n_new else None}
            if winding is not None:
                rates[WINDING_SAMPLER] = winding.n_new / winding.seconds if winding.n_new else None
            t_train = float((summary.get("training") or {}).get("final", {}).get("wall_time") or 0.0)
            summary["cost"] = cost_comparison(results, rates, t_train, observable=theory.cost_observable,
                                              estimate=theory.cost_estimate,
                                              trained=(cfg.sampler.name,) if entry.needs_flow else ())
            tables.append(format_cost_comparison(summary["cost"]))
        if "|m|" in [r.name for r in results[ref].rows]:
            summary["tau_int_abs_m"] = {k: results[k].row("|m|").result.tau_int for k in results}
    report = write_report(results[cfg.sampler.name], sampled, out, reference=results.get(ref))
    summary.update({"ensemble": sampled.as_dict(), "tables": tables, "files": [str(p) for p in report]})
    if entry.markov and entry.needs_flow:  # the Metropolis acceptance of flow proposals
        summary["acceptance"] = sampled.acceptance
    path = out / "summary.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(summary)
    write_json(path, merged)
    return summary
