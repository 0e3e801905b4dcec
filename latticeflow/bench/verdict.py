"""`latticeflow bench verdict`: calibration of the trust verdict on deliberately undertrained flows (silent
misses) and on well-trained ones (false alarms). Protocol: docs/benchmarks.md#verdict."""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from actions import build_theory
from ..analysis import pull, text_table
from ..io import strict

__all__ = ["GRID", "run_verdict_bench", "format_verdict_bench"]

_PHI4_FREE = {"theory": "phi4", "shape": [8, 8], "kappa": 0.2, "lam": 0.0}
_PHI4_TUTORIAL = {"theory": "phi4", "shape": [8, 8], "kappa": 0.25, "lam": 0.5}
_PHI4_BROKEN = {"theory": "phi4", "shape": [8, 8], "kappa": 0.3, "lam": 0.022}
_U1 = {"theory": "u1", "shape": [8, 8]}


def _grid() -> list[dict[str, Any]]:
    g = []
    for steps in (0, 50, 100, 300):
        for seed in (0, 1):
            g.append({"action": _PHI4_FREE, "family": "z2nice", "steps": steps, "seed": seed})
        g.append({"action": _PHI4_TUTORIAL, "family": "z2nice", "steps": steps, "seed": 0})
        g.append({"action": _PHI4_BROKEN, "family": "z2nice", "steps": steps, "seed": 0})
        for beta in (2.0, 4.0):
            g.append({"action": {**_U1, "beta": beta}, "family": "u1_ncp", "steps": steps, "seed": 0})
    for beta in (1.0, 3.0):
        g.append({"action": {**_U1, "beta": beta}, "family": "u1_ncp", "steps": 50, "seed": 1})
    g.append({"action": _PHI4_FREE, "family": "z2nice", "steps": 50, "seed": 2, "sampler": "flow"})
    g.append({"action": {**_U1, "beta": 2.0}, "family": "u1_ncp", "steps": 50, "seed": 2, "sampler": "flow"})
    return g


GRID = _grid()
WELL_TRAINED = ("configs/quickstart.yaml", "configs/phi4_8x8_flow.yaml", "configs/u1_8x8_beta6.yaml")
_REFERENCE_CACHE: dict[str, Any] = {}


def _config(point: dict[str, Any], out: Path, n_samples: int) -> dict[str, Any]:
    steps = point["steps"]
    return {"name": "verdict", "seed": point["seed"], "dtype": "float32", "action": point["action"],
            "flow": {"family": point["family"]},
            "train": {"steps": max(steps, 1), "lr": 1e-3 if steps else 1e-12, "batch_size": 64,
                      "checkpoint_every": max(steps, 1), "log_every": 10},
            "sampler": {"name": point.get("sampler", "nmcmc"), "n_samples": n_samples, "n_chains": 8,
                        "batch_size": 2048},
            "output": {"dir": str(out)}}


def _theory(action: dict[str, Any]):
    return build_theory(action["theory"], action["shape"], {k: v for k, v in action.items() if k not in ("theory", "shape")})


def _truth(action: dict[str, Any], main: tuple[str, ...], quick: bool) -> dict[str, tuple[float, float]]:
    """{observable: (value, error)}: the exact values of the analysis table where the theory is solved
    exactly (free field, 2D U(1); error 0), else a long HMC run (cached)."""
    key = json.dumps(action, sort_keys=True) + str(quick)
    if key in _REFERENCE_CACHE:
        return _REFERENCE_CACHE[key]
    from ..config import config_from_dict
    from ..pipeline import analyze, sample

    theory = _theory(action)
    if theory.log_z_exact() is not None:
        truth = {row.name: (row.exact, 0.0) for row in theory.table_rows() if row.main and row.exact is not None}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config_from_dict({"name": "reference", "seed": 99, "dtype": "float64", "action": action,
                                    "sampler": {"name": "hmc", "n_samples": 4096 if quick else 64000,
                                                "n_chains": 32, "n_thermalize": 300},
                                    "output": {"dir": tmp}})
            res = analyze(sample(cfg, "", progress=False).path)
            truth = {name: (res.row(name).result.mean, res.row(name).result.error) for name in main}
    _REFERENCE_CACHE[key] = truth
    return truth


def _one(cfg_dict: dict[str, Any], quick: bool) -> dict[str, Any]:
    from ..config import config_from_dict
    from ..pipeline import analyze, run

    t0 = time.perf_counter()
    summary = run(config_from_dict(cfg_dict), yaml.safe_dump(cfg_dict), progress=False)
    res = analyze(summary["ensemble"]["path"], thresholds={"pull_max": math.inf})
    main = tuple(row.name for row in _theory(cfg_dict["action"]).table_rows() if row.main)
    truth = _truth(cfg_dict["action"], main, quick)
    pulls = {}
    for name in (n for n in main if n in truth):
        r, (value, err) = res.row(name).result, truth[name]
        p = pull(r.mean, r.error, value, err)
        pulls[name] = p if p is not None else (0.0 if r.mean == value else math.inf)
    finite = [abs(p) for p in pulls.values() if not math.isnan(p)]
    max_pull = max(finite) if finite else math.nan
    v = res.extra["verdict"]
    return {"verdict": v, "pulls": pulls, "max_abs_pull": max_pull,
            "miss": bool(max_pull > 4 and v["reliable"]), "off": bool(max_pull > 4),
            "acceptance": summary.get("acceptance"), "reverse_ess": summary.get("training", {}).get("final", {})
            .get("reverse_ess"), "khat": res.extra["checks"].get("khat"), "seconds": time.perf_counter() - t0}


def run_verdict_bench(*, quick: bool = False, well_trained: bool = True, progress=None) -> dict[str, Any]:
    """Run the grid (``quick``: 3 points, 2000 samples each, no well-trained configs)."""
    grid = GRID[:1] + GRID[4:5] + GRID[-1:] if quick else GRID
    n_samples = 2000 if quick else 16000
    out: dict[str, Any] = {"benchmark": "verdict", "quick": quick, "n_samples": n_samples, "runs": [],
                           "well_trained": []}
    t0 = time.perf_counter()
    for point in grid:
        with tempfile.TemporaryDirectory() as tmp:
            row = {"theory": point["action"]["theory"], "couplings": {k: v for k, v in point["action"].items()
                                                                      if k not in ("theory", "shape")},
                   "family": point["family"], "steps": point["steps"], "seed": point["seed"],
                   "sampler": point.get("sampler", "nmcmc")}
            row.update(_one(_config(point, Path(tmp) / "run", n_samples), quick))
        out["runs"].append(row)
        if progress:
            progress(row)
    if well_trained and not quick:
        root = Path(__file__).resolve().parents[2]
        for name in WELL_TRAINED:
            with tempfile.TemporaryDirectory() as tmp:
                d = yaml.safe_load((root / name).read_text())
                d["output"] = {"dir": str(Path(tmp) / "run")}
                d["sampler"]["reference_hmc"] = 0
                row = {"name": name, "theory": d["action"]["theory"], "family": d.get("flow", {}).get("family"),
                       "steps": d["train"]["steps"], "seed": d.get("seed", 0), "sampler": d["sampler"]["name"]}
                row.update(_one(d, quick))
            out["well_trained"].append(row)
            if progress:
                progress(row)
    runs, good = out["runs"], out["well_trained"]
    out["summary"] = {"n_runs": len(runs), "n_unreliable": sum(not r["verdict"]["reliable"] for r in runs),
                      "n_off": sum(r["off"] for r in runs), "silent_misses": sum(r["miss"] for r in runs),
                      "n_well_trained": len(good), "false_alarms": sum(not r["verdict"]["reliable"] for r in good),
                      "seconds": time.perf_counter() - t0}
    return strict(out)


def format_verdict_bench(result: dict[str, Any]) -> str:
    s = result["summary"]
    return text_table([("theory", "<6"), ("couplings", "<22"), ("family", "<8"), ("steps", "5d"), ("sampler", "<7"),
                       ("max|pull|", "9.1f"), ("k̂", "6.2f"), ("acc", "5.2f"), (" verdict", "")],
                      [[r["theory"], r.get("name") or ", ".join(f"{k}={v:g}" for k, v in r.get("couplings", {}).items()),
                        str(r["family"]), r["steps"], r["sampler"], r["max_abs_pull"], r.get("khat"), r.get("acceptance"),
                        (" reliable" if r["verdict"]["reliable"] else " unreliable: " + "; ".join(r["verdict"]["reasons"])[:80])
                        + ("  SILENT MISS" if r["miss"] else "")] for r in result["runs"] + result["well_trained"]],
                      notes=[f"{s['n_runs']} undertrained runs: {s['n_off']} off by > 4σ, {s['n_unreliable']} called "
                             f"unreliable, {s['silent_misses']} silent misses; well-trained: {s['false_alarms']} false "
                             f"alarms of {s['n_well_trained']}"])


def progress_line(r: dict[str, Any]) -> str:
    return (f"{r['theory']} {r.get('couplings', r.get('name'))} {r['family']} {r['steps']} steps: "
            f"max|pull| {r['max_abs_pull']}, reliable {r['verdict']['reliable']}")
