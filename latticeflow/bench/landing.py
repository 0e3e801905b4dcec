"""`latticeflow bench landing`: training from an exact start (issue 24, item 9), with and without the
sticking-the-landing gate of the `Trainer` (``train.landing_tol``).

Free field φ⁴ 16×8, κ = 0.24 (the default φ⁴ flow is exact at step 0): the reverse ESS of every step's
batch over the first ``steps`` default training steps (reverse KL, fast path, Adam lr 1e-3, clip 1), per
seed: its minimum, the first step below 0.999 and the steps landed (no update). Interacting φ⁴ 16×8
(κ = 0.3, λ = 0.022, the paper's broken phase): the same steps and seed with the gate off and on: the
reverse ESS at the end, seconds per step and the largest parameter difference between the two runs (0:
the gate never fired, the runs are the same).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from actions import Phi4
from ..analysis import text_table
from ..config import TrainConfig
from ..flows import build_flow
from ..pipeline.common import resolve_dtype as torch_dtype
from ..training import LANDING_TOL, Trainer

__all__ = ["run_landing_bench", "format_landing_table", "progress_line", "train_curve"]


def train_curve(kappa: float, lam: float, seed: int, steps: int, landing_tol: float | None,
                dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """``steps`` steps of the default training (every ``train:`` default) of the default φ⁴ flow on 16×8."""
    action = Phi4((16, 8), kappa=kappa, lam=lam)
    torch.manual_seed(seed)
    flow = build_flow({}, action).to(dtype)
    t = TrainConfig()
    trainer = Trainer(flow, action, objective=t.objective, estimator=t.estimator, batch_size=t.batch_size, lr=t.lr,
                      grad_clip=t.grad_clip, scheduler=t.scheduler, warmup_steps=t.warmup_steps, seed=seed,
                      landing_tol=landing_tol)
    ess, t0 = [], time.perf_counter()
    for _ in range(steps):
        ess.append(trainer.step()["reverse_ess"])
    seconds = time.perf_counter() - t0
    below = [k for k, e in enumerate(ess) if not e >= 0.999]
    return {"kappa": kappa, "lam": lam, "seed": seed, "gate": landing_tol is not None, "steps": steps,
            "min_ess": min(ess), "first_below": below[0] if below else None, "last_below": below[-1] if below else None,
            "final_ess": sum(ess[-10:]) / len(ess[-10:]), "n_landed": trainer.n_landed, "s_per_step": seconds / steps,
            "ess": ess, "params": torch.cat([p.detach().reshape(-1).double() for p in flow.parameters()])}


def run_landing_bench(quick: bool = False, seeds: list[int] | None = None, dtype: str = "float32",
                      progress=None) -> dict[str, Any]:
    seeds = seeds or ([0] if quick else [0, 1, 2])
    steps = 10 if quick else 100
    dt = torch_dtype(dtype)
    free, interacting = [], []
    for seed in seeds:
        for tol in (None, LANDING_TOL):
            r = train_curve(0.24, 0.0, seed, steps, tol, dt)
            r.pop("params")
            free.append(r)
            if progress:
                progress({k: v for k, v in r.items() if k != "ess"})
    runs = {tol: train_curve(0.3, 0.022, seeds[0], 5 if quick else 60, tol, dt) for tol in (None, LANDING_TOL)}
    diff = float((runs[None].pop("params") - runs[LANDING_TOL].pop("params")).abs().max())
    for r in runs.values():
        r["max_param_diff"] = diff
        interacting.append(r)
        if progress:
            progress({k: v for k, v in r.items() if k != "ess"})
    return {"benchmark": "landing", "dtype": dtype, "threads": torch.get_num_threads(), "landing_tol": LANDING_TOL,
            "free": free, "interacting": interacting}


def format_landing_table(result: dict[str, Any]) -> str:
    rows = [["free" if r["lam"] == 0 else "broken", r["seed"], "on" if r["gate"] else "off", r["steps"], r["min_ess"],
             str(r["first_below"]), str(r["last_below"]), r["final_ess"], r["n_landed"], r["s_per_step"]]
            for r in result["free"] + result["interacting"]]
    notes = [f"interacting runs, gate off vs on: largest parameter difference {result['interacting'][0]['max_param_diff']:.3g}"]
    return text_table([("target", "<7"), ("seed", "4d"), ("gate", "<4"), ("steps", "5d"), ("min ESS", "8.4f"),
                       ("first<0.999", ">11"), ("last<0.999", ">10"), ("ESS last 10", "11.4f"), ("landed", "6d"),
                       ("s/step", "7.3f")], rows, notes=notes,
                      title=f"training from an exact start (φ⁴ 16×8, {result['dtype']}, landing_tol "
                            f"{result['landing_tol']:g}, {result['threads']} threads)")


def progress_line(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
