"""`latticeflow bench main_job [--seeds 1,2,3,4,5]`: the README's main job (`configs/u1_8x8_beta6.yaml`, 2D U(1)
at β = 6) once per seed, each in a fresh directory. Per seed: the verdict of every ensemble as `run` printed it
(summary.json), the verdict `latticeflow analyze` gives on the same file (they must agree), the pulls of the main
observables against the exact values, and the reasons. Expected: NMCMC reliable, the frozen HMC reference
unreliable (R̂/τ_int of Q), in every seed."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ..analysis import text_table
from ..io import strict

__all__ = ["CONFIG", "run_main_job_bench", "format_main_job_bench"]

#: The README's main job.
CONFIG = "configs/u1_8x8_beta6.yaml"


def _one(seed: int, root: Path, quick: bool) -> dict[str, Any]:
    from ..config import config_from_dict, config_to_yaml
    from ..pipeline import analyze, run

    d = yaml.safe_load((Path(__file__).resolve().parents[2] / CONFIG).read_text())
    d["seed"] = seed
    d["output"] = {"dir": str(root / f"seed{seed}")}
    if quick:  # a smoke test of the protocol, not of the physics
        d["train"].update(steps=30, seconds=5)
        d["sampler"].update(n_samples=2048, reference_hmc=2048)
    cfg = config_from_dict(d)
    t0 = time.perf_counter()
    summary = run(cfg, config_to_yaml(cfg), progress=False)
    row: dict[str, Any] = {"seed": seed, "seconds": time.perf_counter() - t0, "ensembles": {}}
    for name, e in summary["ensembles"].items():
        again = analyze(e["path"])
        pulls = {r.name: r.pull() for r in again.rows if r.name in again.main and r.exact is not None}
        row["ensembles"][name] = {"reliable": e["verdict"]["reliable"], "reasons": e["verdict"]["reasons"],
                                  "analyze_reliable": again.extra["verdict"]["reliable"],
                                  "analyze_reasons": again.extra["verdict"]["reasons"],
                                  "same_verdict": e["verdict"] == again.extra["verdict"], "pulls": pulls}
    return row


def run_main_job_bench(*, seeds: list[int] | None = None, quick: bool = False, progress=None) -> dict[str, Any]:
    """Run the main job for each seed (default 1…5); ``quick``: seeds 1, 2 of a reduced job (30 steps)."""
    seeds = seeds or ([1, 2] if quick else [1, 2, 3, 4, 5])
    out: dict[str, Any] = {"benchmark": "main_job", "config": CONFIG, "quick": quick, "seeds": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            row = _one(seed, Path(tmp), quick)
            out["seeds"].append(row)
            if progress:
                progress(row)
    names = sorted({n for r in out["seeds"] for n in r["ensembles"]})
    out["summary"] = {n: {"reliable": sum(r["ensembles"][n]["reliable"] for r in out["seeds"]),
                          "same_verdict_as_analyze": sum(r["ensembles"][n]["same_verdict"] for r in out["seeds"]),
                          "of": len(out["seeds"])} for n in names}
    return strict(out)


def progress_line(row: dict[str, Any]) -> str:
    return f"seed {row['seed']}: " + "; ".join(
        f"{n} {'reliable' if e['reliable'] else 'unreliable'}" for n, e in row["ensembles"].items())


def format_main_job_bench(result: dict[str, Any]) -> str:
    rows = []
    for r in result["seeds"]:
        for n, e in r["ensembles"].items():
            worst = max(e["pulls"].items(), key=lambda kv: abs(kv[1]) if kv[1] == kv[1] else 0.0, default=("", 0.0))
            rows.append([r["seed"], n, "reliable" if e["reliable"] else "unreliable",
                         "yes" if e["same_verdict"] else "NO", f"{worst[0]} {worst[1]:+.1f}σ",
                         "; ".join(e["reasons"])[:90]])
    notes = [f"{n}: reliable in {s['reliable']} of {s['of']} seeds; analyze agrees with run in "
             f"{s['same_verdict_as_analyze']} of {s['of']}" for n, s in result["summary"].items()]
    return text_table([("seed", "4d"), ("ensemble", "<8"), ("verdict", "<10"), ("=analyze", "<8"),
                       ("largest pull vs exact", "<24"), ("reasons", "")], rows, notes=notes)
