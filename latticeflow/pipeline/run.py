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
from ..config import Config
from ..io import open_ensemble
from .analyze import EnsembleAnalysis, analyze
from .report import write_report
from .sample import sample
from .train import train

__all__ = ["run", "comparison_table", "flow_forward_ess"]


@torch.no_grad()
def flow_forward_ess(cfg: Config, hmc_path: str | Path, checkpoint: str | None = None, batch: int = 4096) -> float:
    """Forward ESS/N of the trained flow on target (HMC) samples: 1/(mean_p(w) mean_p(1/w)), w = e^{−S}/q."""
    from .sample_flow import load_flow

    action, flow = load_flow(cfg, checkpoint)
    ref = next(flow.buffers())
    log_w = []
    with open_ensemble(hmc_path) as ens:
        for x in ens.iter_batches("samples", batch):
            xt = torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
            log_w.append((-action.action(xt) - flow.log_prob(xt)).double().cpu().numpy())
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


def run(cfg: Config, config_text: str = "", *, command: str | None = None, progress: bool = True,
        checkpoint: str | None = None, thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """Run the pipeline of ``cfg``; returns the summary (also written to ``summary.json``), with the
    trust verdict of every ensemble under ``"verdicts"`` (the flow ensemble's includes its pulls
    against the HMC reference; ``thresholds`` override the verdict's defaults)."""
    from ..distributed import get_world

    world = get_world()
    out = cfg.output_dir
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    world.barrier()
    summary: dict[str, Any] = {"name": cfg.name, "sampler": cfg.sampler.name}
    hmc = None
    if cfg.sampler.name != "hmc" and cfg.sampler.reference_hmc > 0:  # first: it may be the training data
        hmc_cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, name="hmc", n_samples=cfg.sampler.reference_hmc))
        hmc = sample(hmc_cfg, config_text, command=command, progress=progress, path=out / "ensemble_hmc.h5")
    if cfg.sampler.name != "hmc" and checkpoint is None:
        summary["training"] = train(cfg, config_text, progress=progress)
    sampled = sample(cfg, config_text, command=command, progress=progress, checkpoint=checkpoint)
    if not world.is_main:
        summary.update({"ensemble": sampled.as_dict(), "tables": [], "files": []})
        return summary
    results = {cfg.sampler.name: analyze(sampled.path, thresholds=thresholds)}
    if hmc is not None:
        results["hmc"] = analyze(hmc.path, thresholds=thresholds)
        results[cfg.sampler.name].judge(thresholds, reference=results["hmc"])
    tables = [results[cfg.sampler.name].table()]
    summary["verdicts"] = {name: r.extra["verdict"] for name, r in results.items()}
    if hmc is not None:
        summary["forward_ess"] = flow_forward_ess(cfg, hmc.path, checkpoint)
        tables.append(results["hmc"].table())
        tables.append(comparison_table(results))
        if "|m|" in [r.name for r in results["hmc"].rows]:
            summary["tau_int_abs_m"] = {k: results[k].row("|m|").result.tau_int for k in results}
    report = write_report(results[cfg.sampler.name], sampled, out, reference=results.get("hmc"))
    summary.update({"ensemble": sampled.as_dict(), "tables": tables, "files": [str(p) for p in report]})
    if cfg.sampler.name == "nmcmc":
        summary["acceptance"] = sampled.acceptance
    path = out / "summary.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(summary)
    path.write_text(json.dumps(merged, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else float(o)))
    return summary
