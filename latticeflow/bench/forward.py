"""`latticeflow bench forward`: path-gradient maximum likelihood on a finite sample set: test NLL and forward ESS
against wall time of the three forward-KL estimators (Vaitl et al., ICLR 2024, Sec. 4, Figs. 1 and 9).
Protocol: docs/benchmarks.md#forward."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from actions import Phi4, ProductMixture
from ..analysis import figure, forward_ess, median_over, overfits, reverse_ess, text_table
from ..flows import build_flow
from ..gradients import log_weights
from ..io import result_header, strict
from ..training import EvaluateEvery, Trainer
from ..pipeline.common import resolve_dtype as torch_dtype
from . import names

__all__ = ["CASES", "ESTIMATORS", "run_forward_bench", "format_forward_table", "plot_forward_bench"]

ESTIMATORS = ("standard", "gdreg", "fast_path")
N_EVAL = 20  # evaluations per run (evenly spaced in training time)
# "last_fifth": medians over the evaluations in the last fifth of the budget (the ESS of one evaluation is noisy)
MEASURES = ("train_nll", "test_nll", "test_forward_ess", "reverse_ess")


def _mixture(n_train: int, n_test: int, seed: int, chains: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The d = 6 product mixture and exact training / test samples (generator 1000 + seed)."""
    target, g = ProductMixture(dim=6, mu=1.0, sigma=0.5), torch.Generator().manual_seed(1000 + seed)
    return target, target.sample(n_train, generator=g), target.sample(n_test, generator=g)


def _phi4(n_train: int, n_test: int, seed: int, chains: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """φ⁴ 8×8 (κ = 0.25, λ = 0.5: target ``phi4_8`` of bench quality) and HMC configurations
    (`quality_targets.reference_ensemble`): the training set depends on the seed, the test set is one
    independent HMC run for all seeds."""
    from .quality_targets import TARGETS, reference_ensemble

    def samples(n: int, s: int) -> torch.Tensor:
        return reference_ensemble(TARGETS["phi4_8"], n_chains=chains, n_configurations=n, seed=s)["x"][:n]

    return Phi4((8, 8), kappa=0.25, lam=0.5), samples(n_train, 2000 + seed), samples(n_test, 99991)


GMM_FLOW = {"family": "spline", "conditioner": "fc", "n_layers": 4, "hidden": [256, 256], "fourier": False,
            "vacua": False}
GMM = {"data": _mixture, "n_train": 10000, "n_test": 10000, "overfit": (0.02, False), "seconds": 60.0,
       "quick_flow": {**GMM_FLOW, "n_layers": 2, "hidden": [32]}}
PHI4 = {"data": _phi4, "n_test": 4000, "overfit": (1e-3, True), "seconds": 60.0, "flow": {"family": "spline"},
        "train": {"batch_size": 256, "lr": 1e-3}}
# a case: its data (target, train, test), sizes, flow, Trainer settings, budget, and the overfitting tolerance
# (value, relative to the initial test NLL?); "quick_flow": the flow of --quick
CASES: dict[str, dict[str, Any]] = {
    "gmm": {**GMM, "description": "product mixture d=6 (±1, σ=0.5, 64 modes), 10000 exact samples",
            "flow": GMM_FLOW, "train": {"batch_size": 500, "lr": 1e-3}},
    "gmm_realnvp": {**GMM, "description": "product mixture d=6, 10000 exact samples, RealNVP 4 × fc [256]⁴",
                    "flow": {"family": "realnvp", "conditioner": "fc", "n_layers": 4, "hidden": [256] * 4},
                    "train": {"batch_size": 500, "lr": 3e-4}, "quick_flow": None},
    # the paper's conditioner size (6 hidden layers of 500; its script trains 6 couplings of 6 × 1000 at lr
    # 1e-5, out of reach on 2 cores), at lr 1e-4: not run by default (`--targets gmm_paper`)
    "gmm_paper": {**GMM, "description": "product mixture d=6, 10000 exact samples, RealNVP 4 × fc [500]⁶",
                  "flow": {"family": "realnvp", "conditioner": "fc", "n_layers": 4, "hidden": [500] * 6},
                  "train": {"batch_size": 500, "lr": 1e-4}, "seconds": 300.0, "quick_flow": None},
    "phi4_1000": {**PHI4, "description": "φ⁴ 8×8 κ=0.25 λ=0.5, 1000 HMC configurations", "n_train": 1000},
    "phi4_4000": {**PHI4, "description": "φ⁴ 8×8 κ=0.25 λ=0.5, 4000 HMC configurations", "n_train": 4000},
}
DEFAULT_CASES = ("gmm", "phi4_1000", "phi4_4000")
QUICK = {"cases": ("gmm", "phi4_1000"), "seconds": 1.0, "n_train": 512, "n_test": 512, "hmc_chains": 8}


def _evaluate(flow, target, train_sub: torch.Tensor, test: torch.Tensor, n_reverse: int) -> dict[str, float]:
    dtype = next(flow.parameters()).dtype
    test_weights = log_weights(flow, target, test.to(dtype))
    return {"train_nll": float(-log_weights(flow, target, train_sub.to(dtype)).log_q.mean()),
            "test_nll": float(-test_weights.log_q.mean()),
            "test_forward_ess": float(forward_ess(test_weights.log_weight)),
            "reverse_ess": float(reverse_ess(log_weights(flow, target, n_reverse).log_weight))}


def _overfit(curve: list[dict[str, float]], tol: float) -> bool:
    """Test NLL ends > tol above its minimum while the training NLL fell (`analysis.summary.overfits`)."""
    return overfits([c["train_nll"] for c in curve], [c["test_nll"] for c in curve], tol)


def _run_one(spec: dict[str, Any], entry: dict[str, Any], estimator: str, seed: int, quick: bool, data,
             dtype) -> dict[str, Any]:
    """One estimator and seed: the ``entry``'s flow and Trainer settings trained for its ``seconds``, ``N_EVAL``
    evaluations off the clock (and one at 0)."""
    (target, train, test), seconds = data, entry["seconds"]
    torch.manual_seed(seed)
    flow = build_flow(entry["flow"], target).to(dtype)
    trainer = Trainer(flow, target, objective="forward_kl", estimator=estimator, data=train, seed=seed,
                      grad_clip=1.0, **entry["train"])
    train_sub, n_rev = train[: min(2000, train.shape[0])], 512 if quick else 4096
    evaluation = EvaluateEvery(lambda t, step: {"seconds": t, "step": step,
                                                **_evaluate(flow, target, train_sub, test, n_rev)},
                               seconds=seconds / N_EVAL, final=True)
    evaluation.evaluate()
    trainer.train(None, seconds=seconds, log_every=10**9, progress=False, callbacks=[evaluation])
    curve = evaluation.history
    tol, relative = spec["overfit"]
    tail = [c for c in curve if c["seconds"] >= 0.8 * seconds] or curve[-1:]
    return {"seed": seed, "steps": trainer.step_count, "steps_per_s": trainer.step_count / max(trainer.wall_time, 1e-9),
            "curve": curve, "final": curve[-1], "last_fifth": median_over(tail, MEASURES),
            "best_test_nll": min(c["test_nll"] for c in curve),
            "overfit": _overfit(curve, tol * abs(curve[0]["test_nll"]) if relative else tol)}


def run_forward_bench(*, quick: bool = False, seconds: float | None = None, seeds=(0, 1, 2), cases=None,
                      dtype: str = "float32", plot: str | None = "bench_forward.png",
                      progress: Callable[[dict], None] | None = None, lr: float | None = None) -> dict[str, Any]:
    """Run the benchmark; returns strict JSON. ``cases``: names of `CASES` (a list or comma-separated);
    ``seeds``: integers (``quick``: 0 only); ``lr`` overrides every case's learning rate (the same for all
    three estimators); ``progress(run)`` after every run."""
    chosen = names(cases) or list(QUICK["cases"] if quick else DEFAULT_CASES)
    for c in chosen:
        if c not in CASES:
            raise ValueError(f"bench forward: unknown case {c!r} (known: {', '.join(CASES)})")
    seeds = [0] if quick else list(seeds)
    out = result_header("forward", quick=quick, dtype=dtype, seeds=seeds, cases={})
    for case in chosen:
        spec = CASES[case]
        sizes = QUICK if quick else {**spec, "hmc_chains": 16}
        budget = seconds if seconds is not None else sizes["seconds"]
        entry: dict[str, Any] = {"description": spec["description"], "seconds": budget,
                                 "flow": (spec.get("quick_flow") or spec["flow"]) if quick else spec["flow"],
                                 "train": dict(spec["train"], **({} if lr is None else {"lr": float(lr)})),
                                 "estimators": {e: {"runs": []} for e in ESTIMATORS}}
        for seed in seeds:
            data = spec["data"](sizes["n_train"], sizes["n_test"], seed, sizes["hmc_chains"])
            if hasattr(data[0], "entropy"):  # the exact NLL floor: test NLL − entropy is the flow's forward KL
                entry["entropy"] = data[0].entropy
            entry["n_train"], entry["n_test"] = int(data[1].shape[0]), int(data[2].shape[0])
            for est in ESTIMATORS:
                run = _run_one(spec, entry, est, seed, quick, data, torch_dtype(dtype))
                entry["estimators"][est]["runs"].append(run)
                if progress:
                    progress({"case": case, "estimator": est, **run})
        for est, e in entry["estimators"].items():
            e["median"] = median_over([r["final"] for r in e["runs"]], MEASURES)
            e["median_last_fifth"] = median_over([r["last_fifth"] for r in e["runs"]], MEASURES)
            e["median"].update(median_over(e["runs"], ["steps_per_s"]))
            e["n_overfit"] = int(sum(r["overfit"] for r in e["runs"]))
        fp, ml = entry["estimators"]["fast_path"]["runs"], entry["estimators"]["standard"]["runs"]
        wins = lambda part, key, sign: int(sum(sign * (a[part][key] - b[part][key]) > 0 for a, b in zip(fp, ml)))  # noqa: E731
        entry["fast_path_vs_standard"] = {
            "n_seeds": len(seeds), "lower_test_nll": wins("final", "test_nll", -1),
            "higher_test_forward_ess": wins("final", "test_forward_ess", 1),
            "lower_test_nll_last_fifth": wins("last_fifth", "test_nll", -1),
            "higher_test_forward_ess_last_fifth": wins("last_fifth", "test_forward_ess", 1)}
        out["cases"][case] = entry
    if plot:
        out["plot"] = plot_forward_bench(out, plot)
    return strict(out)


def progress_line(run: dict[str, Any]) -> str:
    f = run["final"]
    return (f"{run['case']} {run['estimator']} seed {run['seed']}: {run['steps']} steps, train NLL {f['train_nll']:.4f}, "
            f"test NLL {f['test_nll']:.4f}, test fwd ESS {f['test_forward_ess']:.3f}, "
            f"rev ESS {f['reverse_ess']:.3f}{' (overfits)' if run['overfit'] else ''}")


def plot_forward_bench(result: dict[str, Any], path: str) -> str:
    """One panel per case: test NLL (solid) and training NLL (dashed) against training seconds, one colour
    per estimator, the median over seeds (as in the paper's Figs. 1 and 9)."""
    cases = result["cases"]
    with figure(path, 1, len(cases), figsize=(5 * len(cases), 3.8)) as (fig, axes):
        for ax, (case, entry) in zip(axes[0], cases.items()):
            for i, (est, e) in enumerate(entry["estimators"].items()):
                n = min(len(r["curve"]) for r in e["runs"])
                t = np.median([[c["seconds"] for c in r["curve"][:n]] for r in e["runs"]], axis=0)
                for key, style in (("test_nll", "-"), ("train_nll", "--")):
                    y = np.median([[c[key] for c in r["curve"][:n]] for r in e["runs"]], axis=0)
                    ax.plot(t, y, style, color=f"C{i}", label=f"{est} ({'test' if key == 'test_nll' else 'train'})")
            if "entropy" in entry:
                ax.axhline(entry["entropy"], color="k", lw=0.8, ls=":", label="entropy of the target (exact)")
            ax.set_title(f"{case}: n_train = {entry.get('n_train')}", fontsize=10)
            ax.set_xlabel("training wall time [s]")
            ax.set_ylabel("NLL −⟨log q⟩" + (" (exact, ln Z = 0)" if "entropy" in entry else " (+ ln Z)"))
            finals = [r["final"]["test_nll"] for e in entry["estimators"].values() for r in e["runs"]]
            lo, hi = np.percentile(finals + ([entry["entropy"]] if "entropy" in entry else []), [0, 100])
            ax.set_ylim(lo - 0.5 * (hi - lo + 0.05 * abs(lo) + 1e-3), hi + 2 * (hi - lo + 0.01 * abs(lo) + 1e-3))
            ax.legend(fontsize=7)
    return path


def format_forward_table(result: dict[str, Any]) -> str:
    """Median final figures per case and estimator, and the fast_path-vs-ML seed counts."""
    rows = []
    for case, entry in result["cases"].items():
        for est, e in entry["estimators"].items():
            m = e["median"]
            rows.append([case, est, m["steps_per_s"], m["train_nll"], m["test_nll"], m["test_forward_ess"],
                         m["reverse_ess"], f"{e['n_overfit']}/{len(e['runs'])}"])
        c, n = entry["fast_path_vs_standard"], entry["fast_path_vs_standard"]["n_seeds"]
        rows.append(f"{'':<10} fast_path vs ML: lower test NLL in {c['lower_test_nll']}/{n} seeds, higher test forward "
                    f"ESS in {c['higher_test_forward_ess']}/{n} (last fifth: {c['lower_test_nll_last_fifth']}/{n}, "
                    f"{c['higher_test_forward_ess_last_fifth']}/{n})")
    return text_table([("case", "<10"), ("estimator", "<10"), ("steps/s", "8.1f"), ("train NLL", "10.4f"),
                       ("test NLL", "10.4f"), ("fwd ESS", "8.3f"), ("rev ESS", "8.3f"), ("overfit", ">7")], rows,
                      title=f"bench forward ({result['threads']} threads, {result['dtype']}, seeds {result['seeds']})")
