"""`latticeflow bench training`: reverse-KL training at equal wall time, ``standard`` vs ``fast_path``: ESS and
gradient variance against training time (Vaitl, Winkler, Richter, Kessel, ICLR 2024, arXiv 2403.15881).
Protocol: docs/benchmarks.md#training."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from dataclasses import dataclass
from typing import Any

import torch

from actions import build_theory
from ..analysis import figure, format_cell, interpolate_at, median_finite, reverse_ess, text_table
from ..flows import build_flow
from ..gradients import log_weights
from ..io import result_header, strict
from ..training import Callback, EvaluateEvery, Trainer, gradient_variance
from ..pipeline.common import resolve_dtype as torch_dtype
from ..training import warm_up

__all__ = ["TrainingCase", "CASES", "training_cases", "run_training_bench", "run_training_seeds",
           "format_training_table", "plot_training_bench", "training_seed_summary", "format_training_seed_summary",
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

    def action(self):
        return build_theory(self.theory, self.shape, self.couplings)


# sized so that a minute of CPU training moves the ESS well away from its start
CASES = {"phi4": TrainingCase("phi4", (8, 8), {"kappa": 0.25, "lam": 0.5}, {"family": "spline"}, 256, 1e-3,
                              name="phi4 8x8 spline"),
         "u1": TrainingCase("u1", (8, 8), {"beta": 6.0}, {"family": "u1"}, 64, 1e-3, name="u1 8x8 b6 u1")}


def training_cases(theories=("phi4", "u1")) -> list[TrainingCase]:
    unknown = [t for t in theories if t not in CASES]
    if unknown:
        raise ValueError(f"bench training: theory must be one of {', '.join(CASES)}, got {unknown[0]!r}")
    return [CASES[t] for t in theories]


def _gradient_variance(flow, action, **kw) -> dict[str, float]:
    """``var_<e>``, ``var_median_<e>``, ``gradsq_<e>`` of `VARIANCE_ESTIMATORS` (`training.gradient_variance`:
    the same batches for all of them), off the training clock."""
    return {f"{key}_{e}": v[stat] for e, v in gradient_variance(flow, action, estimators=VARIANCE_ESTIMATORS, **kw).items()
            for key, stat in (("var", "trace"), ("var_median", "median"), ("gradsq", "mean_sq"))}


class _Run(Callback):
    """One estimator's training on its own clock; `advance` trains on to a time, evaluating off the clock.
    As a callback of its trainer it collects the training losses and, at the step that exhausts the
    budget, records the final row (with variances) and stops."""

    def __init__(self, flow0, action, case: TrainingCase, estimator: str, *, seconds: float, batch_size: int,
                 z_eval, eval_every: float, variance_every: float, variance_batches: int, seed: int, progress):
        settings = dict(objective="reverse_kl", estimator=estimator, batch_size=batch_size, lr=case.lr)
        warm_up(flow0, action, seed=seed + 12345, **settings)
        self.flow, self.estimator, self.seconds = copy.deepcopy(flow0), estimator, seconds
        self.trainer = Trainer(self.flow, action, seed=seed, **settings)
        self.losses: list[float] = []
        n_var = itertools.count()

        def record(with_variance: bool):
            def row(wall_time: float, step: int) -> dict[str, Any] | None:
                if self.variance.history and self.variance.history[-1]["step"] == step:
                    return None  # this step has its row (with the variances) already
                weights = log_weights(self.flow, action, z_eval, from_base=True)
                out = {"wall_time": wall_time, "step": step, "loss": float(-weights.log_weight.mean()),
                       "ess": reverse_ess(weights.log_weight), **{f"var_{e}": None for e in VARIANCE_ESTIMATORS}}
                if with_variance:  # the n-th variance evaluation of every run uses the same batches
                    out.update(_gradient_variance(self.flow, action, n_batches=variance_batches, seed=seed + 1000
                                                  + next(n_var), batch_size=case.variance_batch_size))
                losses, self.losses = self.losses, []
                out["train_loss"] = sum(losses) / len(losses) if losses else None
                if progress is not None:
                    progress({"theory": case.theory, "estimator": estimator, **out})
                return out
            return row

        self.variance = EvaluateEvery(record(True), seconds=variance_every)
        self.evaluation = EvaluateEvery(record(False), seconds=eval_every, history=self.variance.history)
        self.variance.evaluate(self.trainer)

    @property
    def done(self) -> bool:
        return self.trainer.wall_time >= self.seconds

    def on_step(self, loop, metrics) -> None:
        if not metrics["skipped"]:
            self.losses.append(metrics["loss"])
        if self.done:
            with loop.clock.paused():
                self.variance.evaluate(self.trainer)  # the final row, with variances
            loop.stop = "seconds"

    def advance(self, until: float) -> None:
        """Train until ``until`` seconds on this run's clock (at most to the end of its budget)."""
        if not self.done and self.trainer.wall_time < until:
            self.trainer.train(None, seconds=min(until, self.seconds), log_every=10**9, progress=False,
                               callbacks=[self, self.variance, self.evaluation])

    def result(self) -> dict[str, Any]:
        history, t = self.variance.history, self.trainer
        tail = [r["ess"] for r in history if r["wall_time"] >= 0.75 * self.seconds]
        final = {"ess": history[-1]["ess"], "ess_tail_mean": sum(tail) / len(tail), "loss": history[-1]["loss"],
                 "steps": t.step_count, "train_seconds": t.wall_time, "steps_per_s": t.step_count / t.wall_time,
                 "eval_seconds": self.variance.seconds + self.evaluation.seconds, "n_skipped": t.n_skipped,
                 **{k: v for k, v in history[-1].items() if k.startswith(("var_", "gradsq_"))}}
        return {"history": history, "final": final}


def _comparison(runs: dict[str, dict]) -> dict[str, Any]:
    if not {"standard", "fast_path"} <= runs.keys():
        return {}
    std, fp = runs["standard"]["final"], runs["fast_path"]["final"]
    n = min(std["steps"], fp["steps"])
    both = lambda key: {"standard": std[key], "fast_path": fp[key]}  # noqa: E731
    return {"steps_per_s_ratio": fp["steps_per_s"] / std["steps_per_s"], "final_ess": both("ess"),
            "ess_at_equal_steps": {"step": n, **{e: interpolate_at([r["step"] for r in runs[e]["history"]],
                                                                   [r.get("ess") for r in runs[e]["history"]], n)
                                                    for e in ("standard", "fast_path")}},
            "ess_tail_mean": both("ess_tail_mean"), "final_loss": both("loss"),
            "winner_at_equal_time": "fast_path" if fp["ess_tail_mean"] > std["ess_tail_mean"] else "standard"}


def run_training_bench(*, seconds: float = 60.0, theories=("phi4", "u1"), estimators=("standard", "fast_path"),
                       batch_size: int | None = None, variance_every: float = 10.0, seed: int = 0,
                       dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
                       plot_path: str | None = None, progress=None, eval_every: float | None = None,
                       eval_batch: int = 2048, variance_batches: int = 16, variance_batch_size: int | None = None,
                       interleave: bool = False) -> dict[str, Any]:
    """Train the same initial flow once per estimator for ``seconds`` of training time each.

    ``batch_size`` / ``variance_batch_size`` override the per-theory sizes (`CASES`); ``eval_every``
    defaults to ``seconds / 20``; ``progress(row)`` after every evaluation; ``interleave`` alternates the
    estimators in slices of ``eval_every`` training seconds (in alternating order), so that drifts in machine
    load hit all alike; ``plot_path``: a PNG of ESS and gradient variance against training time.
    """
    device, dtype = torch.device(device), torch_dtype(dtype)
    eval_every = seconds / 20 if eval_every is None else eval_every
    out = result_header("training", seconds=seconds, dtype=str(dtype).replace("torch.", ""), device=str(device),
                        eval_batch=eval_batch, variance_batches=variance_batches, variance_every=variance_every,
                        eval_every=eval_every, interleave=interleave, seed=seed, theories={})
    for case in training_cases(theories):
        case = dataclasses.replace(case, variance_batch_size=variance_batch_size or case.variance_batch_size)
        action = case.action()
        torch.manual_seed(seed)
        flow0 = build_flow(case.flow, action).to(device=device, dtype=dtype)
        z_eval = flow0.base.sample((eval_batch,), generator=torch.Generator(device=device).manual_seed(seed + 1))
        kw = dict(seconds=seconds, batch_size=batch_size or case.batch_size, z_eval=z_eval, eval_every=eval_every,
                  variance_every=variance_every, variance_batches=variance_batches, seed=seed, progress=progress)
        if interleave:
            active, k = [_Run(flow0, action, case, e, **kw) for e in estimators], 0
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
            "batch_size": kw["batch_size"], "lr": case.lr, "variance_batch_size": case.variance_batch_size,
            "n_parameters": sum(p.numel() for p in flow0.parameters()), "runs": runs, "comparison": _comparison(runs)}
    out["load_avg"]["end"] = list(os.getloadavg())
    if plot_path:
        plot_training_bench(out, plot_path)
        out["plot"] = str(plot_path)
    return strict(out)


def run_training_seeds(*, seeds=(0,), plot: str | None = None, sequential: bool = False, **kwargs) -> dict[str, Any]:
    """`run_training_bench` once per seed of ``seeds`` (integers; ``latticeflow bench training``): one result, or
    with several seeds {"benchmark", "seeds", "runs", "summary"} (`training_seed_summary`); plots per seed."""
    values, base = list(seeds), plot or "bench_training.png"
    results = [run_training_bench(seed=s, interleave=not sequential, **kwargs,
                                  plot_path=base if len(values) == 1 else base.replace(".png", f"_seed{s}.png"))
               for s in values]
    if len(results) == 1:
        return results[0]
    return {"benchmark": "training", "seeds": values, "runs": results, "summary": training_seed_summary(results)}


def progress_line(r: dict) -> str:
    return f"{r.get('theory')} {r.get('estimator')}: t={r.get('wall_time', 0):.0f}s step {r.get('step')} ESS {r.get('ess')}"


def plot_training_bench(result: dict, path: str) -> None:
    """One PNG: per theory, ESS vs training time (left) and gradient variance vs training time (right, log)."""
    theories = list(result["theories"])
    colors = {"standard": "tab:blue", "fast_path": "tab:red", "path_inverse": "tab:green"}
    with figure(path, len(theories), 2, figsize=(11, 3.6 * len(theories))) as (fig, axes):
        for row, theory in zip(axes, theories):
            t = result["theories"][theory]
            for e, run in t["runs"].items():
                h, c = run["history"], colors.get(e)
                row[0].plot([r["wall_time"] for r in h], [r["ess"] for r in h], marker=".", color=c,
                            label=f"trained with {e}")
                for v, style in zip(VARIANCE_ESTIMATORS, ("-", "--")):
                    pts = [(r["wall_time"], r[f"var_{v}"]) for r in h if (r.get(f"var_{v}") or 0) > 0]
                    if pts:
                        row[1].plot(*zip(*pts), style, marker="o", ms=3, color=c, label=f"var {v} @ params of {e} run")
            row[0].set(title=f"{t['case']}: reverse ESS", xlabel="training wall time [s]", ylabel="ESS (eval batch)",
                       ylim=(0, 1.02))
            row[1].set(title=f"{t['case']}: tr Cov[grad], batch {t['variance_batch_size']}",
                       xlabel="training wall time [s]", ylabel="tr Cov[grad]", yscale="log")
            row[0].legend(fontsize=8)
            row[1].legend(fontsize=7)
        fig.suptitle(f"reverse KL at equal wall time ({result['seconds']:g} s each, {result['threads']} threads)")


def format_training_table(result: dict) -> str:
    """End values per theory and estimator, plus the equal-steps / equal-time comparison (or, for several
    seeds, every seed's table and the summary)."""
    if "runs" in result:
        return "\n\n".join(map(format_training_table, result["runs"])) + "\n" + \
            format_training_seed_summary(result["summary"])
    load, rows = result["load_avg"], []
    for t in result["theories"].values():
        for e, run in t["runs"].items():
            f = run["final"]
            rows.append([t["case"], e, f["steps"], f["steps_per_s"], f["loss"], f["ess"], f.get("ess_tail_mean"),
                         f["var_standard"], f["var_fast_path"]])
        c = t.get("comparison")
        if c:
            eq = c["ess_at_equal_steps"]
            rows.append(f"{'':<26} fast_path/standard steps/s {c['steps_per_s_ratio']:.2f}; ESS at step {eq['step']}: "
                        f"standard {format_cell(eq['standard'], '.3f')}, fast_path {format_cell(eq['fast_path'], '.3f')}; "
                        f"equal time (ESS q4) -> {c['winner_at_equal_time']}")
    return text_table([("case", "<26"), ("estimator", "<10"), ("steps", "6d"), ("steps/s", "8.1f"), ("loss", "9.3f"),
                       ("ESS", "6.3f"), ("ESS q4", "6.3f"), ("var std", "9.3g"), ("var fast", "9.3g")], rows,
                      title=f"reverse KL at equal wall time: {result['seconds']:g} s per estimator"
                            f"{' (interleaved)' if result.get('interleave') else ''}, {result['threads']} threads, "
                            f"{result['dtype']} {result['device']}, load avg {load['start'][0]:.2f} -> "
                            f"{load.get('end', [float('nan')])[0]:.2f}",
                      notes=["(variance: tr Cov of the gradient at the final parameters)",
                             "ESS q4: mean ESS over the last quarter of the budget (single evaluations fluctuate)"])


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
        row["median"] = {e: median_finite(vals) for e, vals in row["ess_q4"].items()}
        fast, std = row["ess_q4"].get("fast_path"), row["ess_q4"].get("standard")
        if fast and std:
            row["fast_path_wins"] = sum(1 for a, b in zip(fast, std) if a is not None and b is not None and a > b)
    return out


def format_training_seed_summary(summary: dict[str, Any]) -> str:
    lines = ["medians over seeds (ESS q4 at equal wall time):"]
    for row in summary.values():
        med = ", ".join(f"{e} {format_cell(v, '.3f')}" for e, v in row["median"].items())
        per = "; ".join(f"{e} " + "/".join(format_cell(v, '.3f') for v in vals) for e, vals in row["ess_q4"].items())
        lines.append(f"  {row['case']}: {med}  (seeds {row['seeds']}: {per}; fast_path ahead in "
                     f"{row.get('fast_path_wins', 0)} of {len(row['seeds'])})")
    return "\n".join(lines)
