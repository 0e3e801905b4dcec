"""`latticeflow bench training`: reverse-KL training at equal wall time, ``standard`` vs ``fast_path``.

The paper's claim (Vaitl, Winkler, Richter, Kessel, ICLR 2024, arXiv 2403.15881): although a fast path
gradient step costs more than a standard (reparameterisation) step, training with it reaches a higher
effective sample size *at equal wall time*, because the path gradient drops the score term
E_q[∂_θ log q_θ] = 0 whose per-sample noise does not vanish at the optimum: near convergence the path
gradient's variance goes to zero ("sticking the landing") while the standard gradient's does not.

Protocol, per theory:
- φ⁴ 8×8 (κ = 0.25, λ = 0.5) and U(1) 8×8 (β = 6), each with the package's default flow
  (``{"family": "spline"}``: Fourier layer + Z2-mirrored spline couplings; ``{"family": "u1"}``:
  plaquette-marginal layer + circular-spline couplings). (Until issue 11 the cases were φ⁴ κ = 0.3,
  λ = 0.022 with Z2Nice FC [64, 64] and U(1) β = 2 with u1_ncp.) One flow is built from ``seed``; every
  estimator trains a deep copy of it (identical initial parameters) with ``Trainer(objective="reverse_kl",
  estimator=e, seed=seed)`` — same optimiser, learning rate, batch size and base-sample stream — for the
  same budget of ``seconds`` of wall time spent in ``Trainer.step``, one run after the other (or, with
  ``interleave=True``, alternating slices of ``eval_every`` seconds), after one untimed warm-up step on a
  throwaway copy.
- Every ``eval_every`` seconds of training time (and at the start and end) the clock is paused and the
  flow is evaluated on one fixed evaluation batch of ``eval_batch`` base samples (the same for every
  estimator): ``loss`` = mean(log q + S) = KL(q‖p) − log Z and the reverse ESS of the log-weights −S − log q.
  ``train_loss`` is the mean training-batch loss since the previous row.
- Every ``variance_every`` seconds (and at the start and end), also off the clock: at the current
  parameters, ``variance_batches`` independent batches of ``variance_batch_size`` base samples (the same
  batches for both estimators and for every run at the same evaluation index) give one flattened gradient
  each of ``standard`` and of ``fast_path``; ``var_<estimator>`` is the trace of the covariance of the
  estimator over batches (sum of the unbiased per-component variances), i.e. the expected squared distance
  of one mini-batch gradient from the full gradient; ``var_median_<estimator>`` is the same with the median
  over batches instead of the mean (insensitive to one heavy-tailed batch); ``gradsq_<estimator>`` is the
  squared norm of the mean gradient (its scale, for reading the variance as a signal-to-noise ratio).

`run_training_bench` returns (strict-JSON serialisable)::

    {"benchmark": "training", "seconds", "dtype", "device", "threads", "torch", "load_avg": {"start", "end"},
     "eval_batch", "variance_batches", "variance_every", "eval_every", "interleave", "seed",
     "theories": {theory: {"case", "shape", "couplings", "flow", "batch_size", "lr", "variance_batch_size",
                           "n_parameters",
                           "runs": {estimator: {"history": [{"wall_time", "step", "loss", "ess", "train_loss",
                                                             "var_standard", "var_fast_path", …}, …],
                                                "final": {"ess", "ess_tail_mean", "loss", "steps",
                                                          "train_seconds", "steps_per_s", "var_standard",
                                                          "var_fast_path", "eval_seconds", "n_skipped", …}}},
                           "comparison": {"steps_per_s_ratio", "final_ess", "ess_tail_mean",
                                          "ess_at_equal_steps", "final_loss", "winner_at_equal_time"}}},
     "plot": path (with ``plot_path``)}

``wall_time`` is training seconds (evaluation excluded); ``var_*`` are ``None`` in history rows without a
variance evaluation. The ESS of one evaluation fluctuates with the optimiser's noise, so ``ess_tail_mean``
(mean ESS over the last quarter of the budget) decides ``winner_at_equal_time``; ``steps_per_s_ratio`` is
fast_path/standard and ``ess_at_equal_steps`` compares both at the smaller step count (interpolated in
the histories), which separates "better per step" from "better per second".
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from actions import Phi4, U1Gauge
from ..analysis import reverse_ess
from ..flows import build_flow
from ..gradients import reverse_kl
from ..training import Trainer

__all__ = ["TrainingCase", "training_cases", "run_training_bench", "format_training_table", "plot_training_bench",
           "training_seed_summary", "format_training_seed_summary",
           "VARIANCE_ESTIMATORS"]

VARIANCE_ESTIMATORS = ("standard", "fast_path")


@dataclass
class TrainingCase:
    """One theory of the benchmark: lattice, couplings, flow config and optimiser settings."""

    theory: str
    shape: tuple[int, ...]
    couplings: dict[str, float]
    flow: dict[str, Any]
    batch_size: int
    lr: float
    variance_batch_size: int = 64
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def action(self):
        return Phi4(self.shape, **self.couplings) if self.theory == "phi4" else U1Gauge(self.shape, **self.couplings)


def training_cases(theories=("phi4", "u1")) -> list[TrainingCase]:
    """The default cases: sized so that a minute of CPU training moves the ESS well away from its start."""
    cases = []
    for theory in theories:
        if theory == "phi4":
            cases.append(TrainingCase("phi4", (8, 8), {"kappa": 0.25, "lam": 0.5}, {"family": "spline"},
                                      batch_size=256, lr=1e-3, variance_batch_size=64, name="phi4 8x8 spline"))
        elif theory == "u1":
            cases.append(TrainingCase("u1", (8, 8), {"beta": 6.0}, {"family": "u1"},
                                      batch_size=64, lr=1e-3, variance_batch_size=64, name="u1 8x8 b6 u1"))
        else:
            raise ValueError(f"bench training: theory must be 'phi4' or 'u1', got {theory!r}")
    return cases


# -- measurements (all off the training clock) --------------------------------------------------------
@torch.no_grad()
def _evaluate(flow, action, z_eval: torch.Tensor) -> tuple[float, float]:
    """(mean(log q + S), reverse ESS) on the fixed evaluation batch."""
    x, logdet = flow(z_eval)
    log_q = flow.base.log_prob(z_eval) - logdet
    s = action.action(x)
    log_w = -(s + log_q)
    return float((log_q + s).mean()), reverse_ess(log_w)


def _flat_grad(flow, action, z: torch.Tensor, estimator: str, params: list[torch.Tensor]) -> torch.Tensor:
    loss = reverse_kl(flow, action, z, estimator)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def _gradient_variance(flow, action, *, n_batches: int, batch_size: int, seed: int) -> dict[str, float]:
    """Trace of the covariance over ``n_batches`` mini-batch gradients of each of `VARIANCE_ESTIMATORS`,
    with the same batches for all of them, and the squared norm of their mean."""
    params = [p for p in flow.parameters() if p.requires_grad]
    gen = torch.Generator(device=flow.base._ref.device).manual_seed(seed)
    grads: dict[str, list[torch.Tensor]] = {e: [] for e in VARIANCE_ESTIMATORS}
    for _ in range(n_batches):
        z = flow.base.sample((batch_size,), generator=gen)
        for e in VARIANCE_ESTIMATORS:
            grads[e].append(_flat_grad(flow, action, z, e, params).double())
    out = {}
    for e, gs in grads.items():
        g = torch.stack(gs)
        if n_batches > 1:
            dev = (g - g.mean(0)).pow(2).sum(1) * (n_batches / (n_batches - 1))
            out[f"var_{e}"] = float(dev.mean())  # = tr of the unbiased covariance
            out[f"var_median_{e}"] = float(dev.median())
        else:
            out[f"var_{e}"] = out[f"var_median_{e}"] = float("nan")
        out[f"gradsq_{e}"] = float(g.mean(0).pow(2).sum())
    return out


def _interp(history: list[dict], step: float, key: str = "ess") -> float:
    """``key`` linearly interpolated in ``step`` along the history."""
    pts = [(r["step"], r[key]) for r in history if r.get(key) is not None]
    if not pts:
        return float("nan")
    if step <= pts[0][0]:
        return pts[0][1]
    for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return pts[-1][1]


# -- one run -------------------------------------------------------------------------------------------
class _Run:
    """Training of one estimator on its own clock (time inside `Trainer.step` only)."""

    def __init__(self, flow0, action, case: TrainingCase, estimator: str, *, seconds: float, batch_size: int,
                 z_eval: torch.Tensor, eval_every: float, variance_every: float, variance_batches: int,
                 seed: int, progress) -> None:
        # warm-up (lazy initialisations, allocator) on a throwaway copy, untimed
        Trainer(copy.deepcopy(flow0), action, objective="reverse_kl", estimator=estimator, batch_size=batch_size,
                lr=case.lr, seed=seed + 12345).step()
        self.flow = copy.deepcopy(flow0)
        self.trainer = Trainer(self.flow, action, objective="reverse_kl", estimator=estimator,
                               batch_size=batch_size, lr=case.lr, seed=seed)
        self.action, self.case, self.estimator = action, case, estimator
        self.seconds, self.z_eval, self.seed, self.progress = seconds, z_eval, seed, progress
        self.eval_every, self.variance_every, self.variance_batches = eval_every, variance_every, variance_batches
        self.history: list[dict[str, Any]] = []
        self.eval_seconds = 0.0
        self.train_time = 0.0
        self.n_var = 0
        self.recent: list[float] = []
        self.next_eval, self.next_var = eval_every, variance_every
        self._record(True)

    @property
    def done(self) -> bool:
        return self.train_time >= self.seconds

    def _record(self, with_variance: bool) -> None:
        t0 = time.perf_counter()
        loss, ess = _evaluate(self.flow, self.action, self.z_eval)
        row: dict[str, Any] = {"wall_time": self.train_time, "step": self.trainer.step_count, "loss": loss, "ess": ess}
        for e in VARIANCE_ESTIMATORS:
            row[f"var_{e}"] = None
        if with_variance:
            # the n-th variance evaluation of every run uses the same batches
            row.update(_gradient_variance(self.flow, self.action, n_batches=self.variance_batches,
                                          batch_size=self.case.variance_batch_size, seed=self.seed + 1000 + self.n_var))
            self.n_var += 1
        row["train_loss"] = sum(self.recent) / len(self.recent) if self.recent else None
        self.recent = []
        self.history.append(row)
        self.eval_seconds += time.perf_counter() - t0
        if self.progress is not None:
            self.progress({"theory": self.case.theory, "estimator": self.estimator, **row})

    def advance(self, until: float) -> None:
        """Train until ``until`` seconds on this run's clock (or the end of the budget), evaluating on the way."""
        until = min(until, self.seconds)
        while self.train_time < until:
            t0 = time.perf_counter()
            m = self.trainer.step()
            self.train_time += time.perf_counter() - t0
            if not m["skipped"]:
                self.recent.append(m["loss"])
            if self.done:
                self._record(True)  # the final evaluation, with variances
                return
            do_var = self.train_time >= self.next_var
            if self.train_time >= self.next_eval or do_var:
                self._record(do_var)
                while self.next_eval <= self.train_time:
                    self.next_eval += self.eval_every
                while do_var and self.next_var <= self.train_time:
                    self.next_var += self.variance_every

    def result(self) -> dict[str, Any]:
        last = self.history[-1]
        tail = [r["ess"] for r in self.history if r["wall_time"] >= 0.75 * self.seconds]
        final = {"ess": last["ess"], "ess_tail_mean": sum(tail) / len(tail), "loss": last["loss"],
                 "steps": self.trainer.step_count, "train_seconds": self.train_time,
                 "steps_per_s": self.trainer.step_count / self.train_time if self.train_time > 0 else float("nan"),
                 "eval_seconds": self.eval_seconds, "n_skipped": self.trainer.n_skipped}
        for e in VARIANCE_ESTIMATORS:
            for key in (f"var_{e}", f"var_median_{e}", f"gradsq_{e}"):
                final[key] = last[key]
        return {"history": self.history, "final": final}


def _comparison(runs: dict[str, dict]) -> dict[str, Any]:
    if not {"standard", "fast_path"} <= runs.keys():
        return {}
    std, fp = runs["standard"], runs["fast_path"]
    n = min(std["final"]["steps"], fp["final"]["steps"])
    return {
        "steps_per_s_ratio": fp["final"]["steps_per_s"] / std["final"]["steps_per_s"],
        "final_ess": {"standard": std["final"]["ess"], "fast_path": fp["final"]["ess"]},
        "ess_at_equal_steps": {"step": n, "standard": _interp(std["history"], n), "fast_path": _interp(fp["history"], n)},
        "ess_tail_mean": {"standard": std["final"]["ess_tail_mean"], "fast_path": fp["final"]["ess_tail_mean"]},
        "final_loss": {"standard": std["final"]["loss"], "fast_path": fp["final"]["loss"]},
        "winner_at_equal_time": ("fast_path" if fp["final"]["ess_tail_mean"] > std["final"]["ess_tail_mean"]
                                 else "standard"),
    }


def run_training_bench(*, seconds: float = 60.0, theories=("phi4", "u1"), estimators=("standard", "fast_path"),
                       batch_size: int | None = None, variance_every: float = 10.0, seed: int = 0,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                       plot_path: str | None = None, progress=None, eval_every: float | None = None,
                       eval_batch: int = 2048, variance_batches: int = 16, variance_batch_size: int | None = None,
                       threads: int | None = None, interleave: bool = False) -> dict[str, Any]:
    """Train the same initial flow once per estimator for ``seconds`` of wall time each (see module doc).

    ``batch_size`` / ``variance_batch_size`` override the per-theory training / variance batch sizes
    (`training_cases`); ``eval_every`` defaults to ``seconds / 20``; ``progress(row)`` is called after every evaluation with ``{"theory", "estimator",
    "wall_time", "step", "loss", "ess", …}``; ``threads`` sets ``torch.set_num_threads`` for the run (default:
    leave it; on a loaded machine one thread avoids oversubscription). ``interleave=True`` alternates the
    estimators' runs in slices of ``eval_every`` training seconds (in alternating order) instead of running
    them one after the other, so that drifts in machine load hit all estimators alike; each still gets
    ``seconds`` on its own clock. With ``plot_path`` a PNG with ESS and gradient variance vs training time
    is written.
    """
    device = torch.device(device)
    if seconds <= 0:
        raise ValueError(f"bench training: seconds must be > 0, got {seconds}")
    if eval_every is None:
        eval_every = seconds / 20
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        out: dict[str, Any] = {"benchmark": "training", "seconds": seconds, "dtype": str(dtype).replace("torch.", ""),
                               "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "load_avg": {"start": list(os.getloadavg())}, "eval_batch": eval_batch,
                               "variance_batches": variance_batches, "variance_every": variance_every,
                               "eval_every": eval_every, "interleave": interleave, "seed": seed, "theories": {}}
        for case in training_cases(theories):
            bs = batch_size or case.batch_size
            if variance_batch_size:
                case = dataclasses.replace(case, variance_batch_size=variance_batch_size)
            action = case.action()
            torch.manual_seed(seed)
            flow0 = build_flow(case.flow, action).to(device=device, dtype=dtype)
            gen = torch.Generator(device=device).manual_seed(seed + 1)
            z_eval = flow0.base.sample((eval_batch,), generator=gen)
            kw = dict(seconds=seconds, batch_size=bs, z_eval=z_eval, eval_every=eval_every,
                      variance_every=variance_every, variance_batches=variance_batches, seed=seed, progress=progress)
            if interleave:
                active = [_Run(flow0, action, case, e, **kw) for e in estimators]
                k = 0
                while not all(r.done for r in active):
                    k += 1
                    for r in (active if k % 2 else active[::-1]):
                        r.advance(k * eval_every)
            else:
                active = []
                for e in estimators:
                    active.append(_Run(flow0, action, case, e, **kw))
                    active[-1].advance(seconds)
            runs = {r.estimator: r.result() for r in active}
            out["theories"][case.theory] = {
                "case": case.name, "shape": list(case.shape), "couplings": case.couplings, "flow": case.flow,
                "batch_size": bs, "lr": case.lr, "variance_batch_size": case.variance_batch_size,
                "n_parameters": sum(p.numel() for p in flow0.parameters()), "runs": runs,
                "comparison": _comparison(runs)}
        out["load_avg"]["end"] = list(os.getloadavg())
    finally:
        torch.set_num_threads(old_threads)
    if plot_path:
        plot_training_bench(out, plot_path)
        out["plot"] = str(plot_path)
    return out


def plot_training_bench(result: dict, path: str) -> None:
    """One PNG: per theory, ESS vs training time (left) and gradient variance vs training time (right, log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theories = list(result["theories"])
    fig, axes = plt.subplots(len(theories), 2, figsize=(11, 3.6 * len(theories)), squeeze=False)
    colors = {"standard": "tab:blue", "fast_path": "tab:red", "path_inverse": "tab:green"}
    styles = {"standard": "-", "fast_path": "--"}
    for row, theory in zip(axes, theories):
        t = result["theories"][theory]
        for e, run in t["runs"].items():
            h = run["history"]
            c = colors.get(e)
            row[0].plot([r["wall_time"] for r in h], [r["ess"] for r in h], marker=".", color=c, label=f"trained with {e}")
            for v in VARIANCE_ESTIMATORS:
                pts = [(r["wall_time"], r[f"var_{v}"]) for r in h if r.get(f"var_{v}") is not None and r[f"var_{v}"] > 0]
                if pts:
                    row[1].plot(*zip(*pts), styles[v], marker="o", ms=3, color=c,
                                label=f"var {v} @ params of {e} run")
        row[0].set(title=f"{t['case']}: reverse ESS", xlabel="training wall time [s]", ylabel="ESS (eval batch)",
                   ylim=(0, 1.02))
        row[1].set(title=f"{t['case']}: tr Cov[grad], batch {t['variance_batch_size']}",
                   xlabel="training wall time [s]", ylabel="tr Cov[grad]", yscale="log")
        row[0].legend(fontsize=8)
        row[1].legend(fontsize=7)
        for ax in row:
            ax.grid(alpha=0.3)
    fig.suptitle(f"reverse KL at equal wall time ({result['seconds']:g} s each, {result['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_training_table(result: dict) -> str:
    """End values per theory and estimator, plus the equal-steps / equal-time comparison."""
    load = result["load_avg"]
    lines = [f"reverse KL at equal wall time: {result['seconds']:g} s per estimator"
             f"{' (interleaved)' if result.get('interleave') else ''}, {result['threads']} threads, "
             f"{result['dtype']} {result['device']}, load avg {load['start'][0]:.2f} -> "
             f"{load.get('end', [float('nan')])[0]:.2f}",
             f"{'case':<26} {'estimator':<10} {'steps':>6} {'steps/s':>8} {'loss':>9} {'ESS':>6} {'ESS q4':>6} "
             f"{'var std':>9} {'var fast':>9}  (variance: tr Cov of the gradient at the final parameters)",
             "-" * 100]
    for t in result["theories"].values():
        for e, run in t["runs"].items():
            f = run["final"]
            lines.append(f"{t['case']:<26} {e:<10} {f['steps']:>6d} {_fmt(f['steps_per_s'], '8.1f')} "
                         f"{_fmt(f['loss'], '9.3f')} {_fmt(f['ess'], '6.3f')} {_fmt(f.get('ess_tail_mean'), '6.3f')} "
                         f"{_fmt(f['var_standard'], '9.3g')} {_fmt(f['var_fast_path'], '9.3g')}")
        c = t.get("comparison")
        if c:
            eq = c["ess_at_equal_steps"]
            lines.append(f"{'':<26} fast_path/standard steps/s {c['steps_per_s_ratio']:.2f}; ESS at step {eq['step']}: "
                         f"standard {_fmt(eq['standard'], '.3f')}, fast_path {_fmt(eq['fast_path'], '.3f')}; "
                         f"equal time (ESS q4) -> {c['winner_at_equal_time']}")
    lines.append("ESS q4: mean ESS over the last quarter of the budget (single evaluations fluctuate)")
    return "\n".join(lines)


def training_seed_summary(results: list[dict]) -> dict[str, Any]:
    """Per theory: every seed's final ESS q4 per estimator, their medians, and the wins of fast_path."""
    out: dict[str, Any] = {}
    for r in results:
        for theory, t in r["theories"].items():
            row = out.setdefault(theory, {"case": t["case"], "seeds": [], "ess_q4": {}})
            row["seeds"].append(r["seed"])
            for e, run in t["runs"].items():
                row["ess_q4"].setdefault(e, []).append(run["final"].get("ess_tail_mean"))
    for row in out.values():
        row["median"] = {e: float(np.median([v for v in vals if v is not None])) if any(v is not None for v in vals)
                         else None for e, vals in row["ess_q4"].items()}
        fast, std = row["ess_q4"].get("fast_path"), row["ess_q4"].get("standard")
        if fast and std:
            row["fast_path_wins"] = sum(1 for a, b in zip(fast, std) if a is not None and b is not None and a > b)
    return out


def format_training_seed_summary(summary: dict[str, Any]) -> str:
    lines = ["medians over seeds (ESS q4 at equal wall time):"]
    for row in summary.values():
        med = ", ".join(f"{e} {_fmt(v, '.3f')}" for e, v in row["median"].items())
        per = "; ".join(f"{e} " + "/".join(_fmt(v, '.3f') for v in vals) for e, vals in row["ess_q4"].items())
        lines.append(f"  {row['case']}: {med}  (seeds {row['seeds']}: {per}; fast_path ahead in "
                     f"{row.get('fast_path_wins', 0)} of {len(row['seeds'])})")
    return "\n".join(lines)
