"""`latticeflow bench snf`: self-normalizing flows against their exact-gradient twins: step time against the
lattice volume D and held-out NLL (Keller et al. 2021). Protocol: docs/benchmarks.md#snf."""
from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from actions import Phi4
from ..analysis import log_log_slope, text_table
from ..flows import build_flow
from ..io import result_header
from ..training import Trainer, held_out_metrics, hmc_ensemble
from ..pipeline.common import resolve_dtype as torch_dtype

__all__ = ["run_snf_bench", "format_snf_table", "hmc_ensemble"]


def _trainer(layer: str, gradient: str, action, batch: int, dtype, data: torch.Tensor, lr: float = 1e-4) -> Trainer:
    """Maximum likelihood (forward KL, standard estimator) of an SNF flow or its exact-gradient twin."""
    torch.manual_seed(0)
    flow = build_flow({"family": "snf", "layer": layer, "gradient": gradient, "direction": "inverse"}, action).to(dtype=dtype)
    return Trainer(flow, action, objective="forward_kl", estimator="standard", batch_size=batch, lr=lr, data=data,
                   seed=0)


def _block(trainer: Trainer, n: int) -> float:
    """Seconds per step of ``n`` more steps of the training loop."""
    t0 = trainer.wall_time
    trainer.train(trainer.step_count + n, log_every=n, progress=False)
    return (trainer.wall_time - t0) / n


def step_times(sizes=(8, 16, 32, 64), layers=("dense", "conv"), batch: int = 64, repeats: int = 3,
               dtype=torch.float32, progress=None) -> list[dict[str, Any]]:
    rows = []
    for layer in layers:
        for L in sizes:
            data = torch.randn(4 * batch, L, L, dtype=dtype, generator=torch.Generator().manual_seed(0))
            tr = {g: _trainer(layer, g, Phi4((L, L), kappa=0.2, lam=0.022), batch, dtype, data)
                  for g in ("self_normalized", "exact")}
            refresh = next(m.refresh for m in tr["self_normalized"].flow.modules() if hasattr(m, "refresh"))
            n_steps = {"self_normalized": refresh if layer == "dense" else 5, "exact": 3 if L >= 64 else 5}
            for g in tr:
                _block(tr[g], 2)  # warm-up
            times: dict[str, list[float]] = {g: [] for g in tr}
            for _ in range(repeats):
                for g in tr:
                    times[g].append(_block(tr[g], n_steps[g]))
            row = {"layer": layer, "L": L, "D": L * L, "batch": batch,
                   "snf_s": statistics.median(times["self_normalized"]), "exact_s": statistics.median(times["exact"])}
            row["ratio"] = row["snf_s"] / row["exact_s"]
            rows.append(row)
            if progress:
                progress(row)
    return rows


def exponents(rows: list[dict[str, Any]], d_min: int = 256) -> dict[str, dict[str, float]]:
    out = {}
    for layer in sorted({r["layer"] for r in rows}):
        sel = [r for r in rows if r["layer"] == layer and r["D"] >= d_min]
        top = sorted(sel, key=lambda r: r["D"])[-2:]
        out[layer] = {f"{key}{tail}": log_log_slope([r["D"] for r in rs], [r[f"{key}_s"] for r in rs])
                      for tail, rs in (("", sel), ("_top", top)) for key in ("snf", "exact")}
    return out


def heldout_nll(steps: int = 600, layers=("dense", "conv"), dtype=torch.float64, progress=None) -> list[dict[str, Any]]:
    """Held-out NLL −⟨log q⟩ of both twins after ``steps`` maximum-likelihood steps on the same data."""
    action = Phi4((8, 8), kappa=0.2, lam=0.022)
    data = hmc_ensemble(action, 512, 40, dtype)
    train, test = data[: 3 * len(data) // 4], data[3 * len(data) // 4:]
    rows = []
    for layer in layers:
        row: dict[str, Any] = {"layer": layer, "L": 8, "steps": steps, "n_train": len(train), "n_test": len(test)}
        for g in ("self_normalized", "exact"):
            trainer = _trainer(layer, g, action, 256, dtype, train, lr=3e-3)
            trainer.train(steps, progress=False)
            row[f"{g}_seconds"] = trainer.wall_time
            row[f"{g}_nll"] = held_out_metrics(trainer.flow, action, test)["val_nll"]
        row["relative_difference"] = (row["self_normalized_nll"] - row["exact_nll"]) / abs(row["exact_nll"])
        rows.append(row)
        if progress:
            progress(row)
    return rows


def run_snf_bench(quick: bool = False, repeats: int = 3, dtype=torch.float32, progress=None) -> dict[str, Any]:
    dtype = torch_dtype(dtype)
    out = result_header("snf", dtype=str(dtype))
    rows = step_times(sizes=(8, 16, 32) if quick else (8, 16, 32, 48, 64), repeats=1 if quick else repeats, dtype=dtype,
                      progress=progress)
    return {**out, "step_times": rows, "exponents": exponents(rows, d_min=64 if quick else 1024),
            "dense_ratio_at_D1024": next((r["ratio"] for r in rows if (r["layer"], r["D"]) == ("dense", 1024)), None),
            "nll": heldout_nll(steps=100 if quick else 600, progress=progress)}


def format_snf_table(result: dict[str, Any]) -> str:
    rows = [[r["layer"], r["L"], r["D"], 1e3 * r["snf_s"], 1e3 * r["exact_s"], r["ratio"]] for r in result["step_times"]]
    notes = [f"fitted exponent of D ({layer}): snf {e['snf']:.2f}, exact {e['exact']:.2f}; "
             f"between the two largest D: snf {e['snf_top']:.2f}, exact {e['exact_top']:.2f}"
             for layer, e in result["exponents"].items()]
    notes.append("held-out NLL on φ⁴ 8×8 (κ = 0.2, λ = 0.022), same data and steps:")
    notes += [f"  {r['layer']:6} snf {r['self_normalized_nll']:.4f}  exact {r['exact_nll']:.4f}  "
              f"difference {100 * r['relative_difference']:+.3f} %  ({r['steps']} steps)" for r in result["nll"]]
    if any(not math.isfinite(v) for e in result["exponents"].values() for v in e.values()):
        notes.append("(exponents need at least two sizes with D >= 1024)")
    return text_table([("layer", "<6"), ("L", "4d"), ("D", "6d"), ("snf [ms]", "10.2f"), ("exact [ms]", "11.2f"),
                       ("snf/exact", "10.3f")], rows, notes=notes,
                      title=f"SNF vs exact twin: maximum-likelihood step time (batch {result['step_times'][0]['batch']}, "
                            f"{result['dtype']}, {result['threads']} threads)")


def progress_line(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
