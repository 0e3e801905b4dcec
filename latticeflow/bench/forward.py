"""`latticeflow bench forward`: path-gradient maximum likelihood on a finite sample set.

Vaitl, Winkler, Richter, Kessel (ICLR 2024, arXiv 2403.15881), Sec. 4 and Figs. 1, 9: the fast path
gradient of the forward KL uses the target's force, ∇ log p, besides the samples, "has a regularizing
effect as it can take the form of a given target energy function into account", and overfits less than
plain maximum likelihood (``standard``) on a fixed training set. Here the three forward estimators
(``standard`` = ML, ``gdreg``, ``fast_path``; `latticeflow.gradients.forward_kl`) train the same flow from
the same initialisation on the same finite training set for the same wall time (evaluation excluded). Cases:

- ``gmm``: the product mixture in d = 6 (`actions.ProductMixture`, two Gaussians per coordinate at ±1,
  σ = 0.5, 2⁶ modes; ln Z = 0, so the NLL is exact; its entropy is 8.151 nats), 10 000 exact training and
  10 000 exact test samples, the package's spline flow (4 Z2-equivariant RQ-spline couplings, fully
  connected conditioners [256, 256], lr 1e-3): expressive enough to reach the 64 modes in seconds, and so
  to memorise the training set, which is the regime of the paper's claim;
- ``gmm_realnvp`` (not run by default): the same data with RealNVP 4 × fc [256]⁴, lr 3e-4. Affine couplings
  of a Gaussian base reach the modes only slowly (test NLL 8.43–8.58 after 1–5 minutes, 0.3–0.4 nats above the
  entropy): a capacity-limited flow that does not overfit on 2 cores;
- ``gmm_paper`` (not run by default): the same data with the paper's conditioner depth and width, RealNVP
  4 × fc [500]⁶, lr 1e-4, 300 s;
- ``phi4_1000`` / ``phi4_4000``: φ⁴ 8×8, κ = 0.25, λ = 0.5, trained on 1000 / 4000 HMC configurations with
  an independent HMC test set (another seed), the default spline flow.

Recorded against training wall time: the training NLL (on ≤ 2000 training samples), the test NLL
−⟨log q⟩_test, the forward ESS on the test set, and the reverse ESS. The φ⁴ NLL is up to the unknown
ln Z (the same constant for every estimator). Returns strict JSON::

    {"benchmark": "forward", "quick", "threads", "seconds", "seeds", "cases": {case: {"description",
     "n_train", "n_test", "flow", "train": {…}, "entropy" (gmm only), "estimators": {est: {"runs": [{"seed",
     "steps", "steps_per_s", "curve": [{"seconds", "step", "train_nll", "test_nll", "test_forward_ess", "reverse_ess"}, …],
     "final": {…}, "last_fifth": {…}, "best_test_nll", "overfit"}, …], "median": {…}, "median_last_fifth": {…}}},
     "fast_path_vs_standard": {"lower_test_nll", "higher_test_forward_ess", "…_last_fifth", "n_seeds"}}}, "plot"}

``final`` is the last evaluation; ``last_fifth`` the medians over the evaluations in the last fifth of the
budget (4 of the 20), since the forward ESS of a single evaluation is dominated by the few test samples
with the largest p/q and jumps between evaluations.

``overfit`` = the test NLL rose by more than 0.02 nats (d = 6) / 0.1 % (φ⁴) from its minimum while the
training NLL kept falling.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import numpy as np
import torch

from actions import ProductMixture
from ..analysis import forward_ess, reverse_ess
from ..flows import build_flow
from ..training import Trainer
from ._json import strict as _strict

__all__ = ["CASES", "ESTIMATORS", "run_forward_bench", "format_forward_table", "plot_forward_bench"]

ESTIMATORS = ("standard", "gdreg", "fast_path")
GMM_FLOW = {"family": "spline", "conditioner": "fc", "n_layers": 4, "hidden": [256, 256], "fourier": False,
            "vacua": False}
GMM_REALNVP = {"family": "realnvp", "conditioner": "fc", "n_layers": 4, "hidden": [256] * 4}
PHI4 = {"shape": (8, 8), "kappa": 0.25, "lam": 0.5}
CASES: dict[str, dict[str, Any]] = {
    "gmm": {"description": "product mixture d=6 (±1, σ=0.5, 64 modes), 10000 exact samples", "n_train": 10000,
            "n_test": 10000, "flow": GMM_FLOW, "train": {"batch_size": 500, "lr": 1e-3}},
    "gmm_realnvp": {"description": "product mixture d=6, 10000 exact samples, RealNVP 4 × fc [256]⁴", "n_train": 10000,
                    "n_test": 10000, "flow": GMM_REALNVP, "train": {"batch_size": 500, "lr": 3e-4}},
    "phi4_1000": {"description": "φ⁴ 8×8 κ=0.25 λ=0.5, 1000 HMC configurations", "n_train": 1000, "n_test": 4000,
                  "flow": {"family": "spline"}, "train": {"batch_size": 256, "lr": 1e-3}},
    "phi4_4000": {"description": "φ⁴ 8×8 κ=0.25 λ=0.5, 4000 HMC configurations", "n_train": 4000, "n_test": 4000,
                  "flow": {"family": "spline"}, "train": {"batch_size": 256, "lr": 1e-3}},
}
# The paper's conditioner size (6 hidden layers of 500; its script trains 6 couplings of 6 × 1000 at lr 1e-5,
# out of reach on 2 cores), at lr 1e-4: not run by default (`--targets gmm_paper`).
CASES["gmm_paper"] = dict(CASES["gmm"], description="product mixture d=6, 10000 exact samples, RealNVP 4 × fc [500]⁶",
                          flow={"family": "realnvp", "conditioner": "fc", "n_layers": 4, "hidden": [500] * 6},
                          train={"batch_size": 500, "lr": 1e-4})
DEFAULT_CASES = ("gmm", "phi4_1000", "phi4_4000")
SECONDS = {"gmm": 60.0, "gmm_realnvp": 60.0, "gmm_paper": 300.0, "phi4_1000": 60.0, "phi4_4000": 60.0}
QUICK = {"cases": ("gmm", "phi4_1000"), "seconds": 2.0, "n_train": 512, "n_test": 512,
         "gmm_flow": {"family": "spline", "conditioner": "fc", "n_layers": 2, "hidden": [32], "fourier": False,
                      "vacua": False}, "hmc_chains": 8}
N_EVAL = 20  # evaluations per run (evenly spaced in training time)
# "last_fifth": medians over the evaluations in the last fifth of the budget (the ESS of one evaluation is noisy)
OVERFIT_TOL = {"gmm": 0.02, "phi4": 1e-3}


def _phi4_action():
    from actions import Phi4

    return Phi4(PHI4["shape"], kappa=PHI4["kappa"], lam=PHI4["lam"])


def _phi4_samples(n: int, seed: int, chains: int) -> torch.Tensor:
    """n HMC configurations of the φ⁴ case (float64), `quality_reference.reference_ensemble`."""
    from .quality_targets import TARGETS
    from .quality_reference import reference_ensemble

    return reference_ensemble(TARGETS["phi4_8"], n_chains=chains, n_configurations=n, seed=seed)["x"][:n]


def _data(case: str, quick: bool, seed: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    spec = CASES[case]
    n_train = QUICK["n_train"] if quick else spec["n_train"]
    n_test = QUICK["n_test"] if quick else spec["n_test"]
    if case.startswith("gmm"):
        target = ProductMixture(dim=6, mu=1.0, sigma=0.5)
        g = torch.Generator().manual_seed(1000 + seed)
        return target, target.sample(n_train, generator=g), target.sample(n_test, generator=g)
    chains = QUICK["hmc_chains"] if quick else 16
    # the training set depends on the seed; the test set is one independent HMC run for all seeds
    return _phi4_action(), _phi4_samples(n_train, 2000 + seed, chains), _phi4_samples(n_test, 99991, chains)


@torch.no_grad()
def _evaluate(flow, target, train_sub: torch.Tensor, test: torch.Tensor, n_reverse: int) -> dict[str, float]:
    def nll_and_lw(x):
        lq = torch.cat([flow.log_prob(c) for c in torch.split(x, 4096)]).double()
        return float(-lq.mean()), (-target.action(x.double()) - lq).numpy()

    train_nll, _ = nll_and_lw(train_sub.to(next(flow.parameters()).dtype))
    test_nll, lw = nll_and_lw(test.to(next(flow.parameters()).dtype))
    xs, lq = flow.sample(n_reverse)
    rev = reverse_ess((-target.action(xs.double()) - lq.double()).numpy())
    return {"train_nll": train_nll, "test_nll": test_nll, "test_forward_ess": float(forward_ess(lw)),
            "reverse_ess": float(rev)}


def _overfit(curve: list[dict[str, float]], tol: float) -> bool:
    """Test NLL ends > tol above its minimum (relative for φ⁴ via the caller's tol) while train NLL fell."""
    test = np.array([c["test_nll"] for c in curve])
    train = np.array([c["train_nll"] for c in curve])
    if not np.isfinite(test).any():
        return False
    i = int(np.nanargmin(test))
    return bool(test[-1] - test[i] > tol and train[-1] < train[i])


def _run_one(case: str, estimator: str, seed: int, seconds: float, quick: bool, data, dtype,
             lr: float | None = None) -> dict[str, Any]:
    target, train, test = data
    spec = CASES[case]
    train_opts = dict(spec["train"], **({} if lr is None else {"lr": float(lr)}))
    flow_cfg = QUICK["gmm_flow"] if quick and case == "gmm" else spec["flow"]
    torch.manual_seed(seed)
    flow = build_flow(flow_cfg, target).to(dtype)
    trainer = Trainer(flow, target, objective="forward_kl", estimator=estimator, data=train, seed=seed,
                      grad_clip=1.0, **train_opts)
    train_sub = train[: min(2000, train.shape[0])]
    n_rev = 512 if quick else 4096
    curve = [{"seconds": 0.0, "step": 0, **_evaluate(flow, target, train_sub, test, n_rev)}]
    marks = [seconds * (k + 1) / N_EVAL for k in range(N_EVAL)]
    elapsed = 0.0
    while marks:
        t0 = time.perf_counter()
        trainer.step()
        elapsed += time.perf_counter() - t0
        if elapsed >= marks[0]:
            while marks and elapsed >= marks[0]:
                marks.pop(0)
            curve.append({"seconds": elapsed, "step": trainer.step_count,
                          **_evaluate(flow, target, train_sub, test, n_rev)})
    tol = OVERFIT_TOL["gmm"] if case.startswith("gmm") else OVERFIT_TOL["phi4"] * abs(curve[0]["test_nll"])
    tail = [c for c in curve if c["seconds"] >= 0.8 * seconds] or curve[-1:]
    last = {k: float(np.median([c[k] for c in tail])) for k in ("train_nll", "test_nll", "test_forward_ess", "reverse_ess")}
    return {"seed": seed, "steps": trainer.step_count, "steps_per_s": trainer.step_count / max(elapsed, 1e-9),
            "curve": curve, "final": curve[-1], "last_fifth": last, "best_test_nll": min(c["test_nll"] for c in curve),
            "overfit": _overfit(curve, tol)}


def run_forward_bench(*, quick: bool = False, seconds: float | None = None, seeds=(0, 1, 2), cases=None,
                      threads: int | None = None, dtype: str = "float32", plot: str | None = "bench_forward.png",
                      progress: Callable[[str], None] | None = None, lr: float | None = None) -> dict[str, Any]:
    """Run the benchmark; returns strict JSON (see the module docstring). ``lr`` overrides every case's
    learning rate (the same for all three estimators)."""
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < 1):
        raise ValueError(f"bench forward: lr must be a number in (0, 1), got {lr!r}")
    if threads:
        torch.set_num_threads(int(threads))
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    chosen = list(cases or (QUICK["cases"] if quick else DEFAULT_CASES))
    for c in chosen:
        if c not in CASES:
            raise ValueError(f"bench forward: unknown case {c!r} (known: {', '.join(CASES)})")
    seeds = [0] if quick else [int(s) for s in seeds]
    out: dict[str, Any] = {"benchmark": "forward", "quick": quick, "threads": torch.get_num_threads(),
                           "dtype": dtype, "seeds": seeds, "cases": {}}
    for case in chosen:
        budget = seconds if seconds is not None else (QUICK["seconds"] if quick else SECONDS[case])
        spec = CASES[case]
        train = dict(spec["train"], **({} if lr is None else {"lr": float(lr)}))
        entry: dict[str, Any] = {"description": spec["description"], "seconds": budget,
                                 "flow": QUICK["gmm_flow"] if quick and case == "gmm" else spec["flow"],
                                 "train": train, "estimators": {e: {"runs": []} for e in ESTIMATORS}}
        if case.startswith("gmm"):  # the exact NLL floor: test NLL − entropy is the flow's forward KL
            entry["entropy"] = ProductMixture(dim=6, mu=1.0, sigma=0.5).entropy
        for seed in seeds:
            data = _data(case, quick, seed)
            entry["n_train"], entry["n_test"] = int(data[1].shape[0]), int(data[2].shape[0])
            for est in ESTIMATORS:
                run = _run_one(case, est, seed, budget, quick, data, torch_dtype, lr)
                entry["estimators"][est]["runs"].append(run)
                if progress:
                    f = run["final"]
                    progress(f"{case} {est} seed {seed}: {run['steps']} steps, train NLL {f['train_nll']:.4f}, "
                             f"test NLL {f['test_nll']:.4f}, test fwd ESS {f['test_forward_ess']:.3f}, "
                             f"rev ESS {f['reverse_ess']:.3f}{' (overfits)' if run['overfit'] else ''}")
        for est, e in entry["estimators"].items():
            e["median"] = {k: float(np.median([r["final"][k] for r in e["runs"]]))
                           for k in ("train_nll", "test_nll", "test_forward_ess", "reverse_ess")}
            e["median_last_fifth"] = {k: float(np.median([r["last_fifth"][k] for r in e["runs"]]))
                                      for k in ("train_nll", "test_nll", "test_forward_ess", "reverse_ess")}
            e["median"]["steps_per_s"] = float(np.median([r["steps_per_s"] for r in e["runs"]]))
            e["n_overfit"] = int(sum(r["overfit"] for r in e["runs"]))
        fp, ml = entry["estimators"]["fast_path"]["runs"], entry["estimators"]["standard"]["runs"]
        entry["fast_path_vs_standard"] = {
            "n_seeds": len(seeds),
            "lower_test_nll": int(sum(a["final"]["test_nll"] < b["final"]["test_nll"] for a, b in zip(fp, ml))),
            "higher_test_forward_ess": int(sum(a["final"]["test_forward_ess"] > b["final"]["test_forward_ess"]
                                               for a, b in zip(fp, ml))),
            "lower_test_nll_last_fifth": int(sum(a["last_fifth"]["test_nll"] < b["last_fifth"]["test_nll"]
                                                 for a, b in zip(fp, ml))),
            "higher_test_forward_ess_last_fifth": int(sum(
                a["last_fifth"]["test_forward_ess"] > b["last_fifth"]["test_forward_ess"] for a, b in zip(fp, ml)))}
        out["cases"][case] = entry
    if plot:
        out["plot"] = plot_forward_bench(out, plot)
    return json.loads(json.dumps(_strict(out)))


def plot_forward_bench(result: dict[str, Any], path: str) -> str:
    """One panel per case: test NLL (solid) and training NLL (dashed) against training seconds, one colour
    per estimator, the median over seeds (as in the paper's Figs. 1 and 9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 3.8), squeeze=False)
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
        ax.set_ylabel("NLL −⟨log q⟩" + (" (exact, ln Z = 0)" if case.startswith("gmm") else " (+ ln Z)"))
        finals = [r["final"]["test_nll"] for e in entry["estimators"].values() for r in e["runs"]]
        finals += [entry["entropy"]] if "entropy" in entry else []
        lo, hi = np.percentile(finals, [0, 100])
        ax.set_ylim(lo - 0.5 * (hi - lo + 0.05 * abs(lo) + 1e-3), hi + 2 * (hi - lo + 0.01 * abs(lo) + 1e-3))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_forward_table(result: dict[str, Any]) -> str:
    """Median final figures per case and estimator, and the fast_path-vs-ML seed counts."""
    lines = [f"bench forward ({result['threads']} threads, {result['dtype']}, seeds {result['seeds']})",
             f"{'case':<10} {'estimator':<10} {'steps/s':>8} {'train NLL':>10} {'test NLL':>10} {'fwd ESS':>8} "
             f"{'rev ESS':>8} {'overfit':>7}"]
    for case, entry in result["cases"].items():
        for est, e in entry["estimators"].items():
            m = e["median"]
            lines.append(f"{case:<10} {est:<10} {m['steps_per_s']:>8.1f} {m['train_nll']:>10.4f} {m['test_nll']:>10.4f} "
                         f"{m['test_forward_ess']:>8.3f} {m['reverse_ess']:>8.3f} {e['n_overfit']:>4}/{len(e['runs'])}")
        c = entry["fast_path_vs_standard"]
        lines.append(f"{'':<10} fast_path vs ML: lower test NLL in {c['lower_test_nll']}/{c['n_seeds']} seeds, "
                     f"higher test forward ESS in {c['higher_test_forward_ess']}/{c['n_seeds']} (last fifth: "
                     f"{c['lower_test_nll_last_fifth']}/{c['n_seeds']}, {c['higher_test_forward_ess_last_fifth']}/"
                     f"{c['n_seeds']})")
    return "\n".join(lines)
