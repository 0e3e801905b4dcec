"""Plots and the text table of `latticeflow bench quality` (see `latticeflow.bench.quality`)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._common import figure, fmt

__all__ = ["plot_quality_bench", "format_quality_table"]


def _median_curve(runs: dict[str, dict[str, Any]], n: int = 61) -> tuple[np.ndarray, np.ndarray]:
    """Median over seeds of the ESS histories, linearly interpolated on a common time grid (a history
    is held at its last value beyond its end)."""
    grid = np.linspace(0.0, max(run["history"][-1]["wall_time"] for run in runs.values()), n)
    curves = [np.interp(grid, *zip(*pts)) for run in runs.values()
              if (pts := [(r["wall_time"], r["ess"]) for r in run["history"] if r["ess"] is not None])]
    return grid, (np.median(np.stack(curves), axis=0) if curves else np.full(n, np.nan))


def plot_quality_bench(result: dict[str, Any], plot_dir: str) -> dict[str, str]:
    """One PNG per target in ``plot_dir`` (``<target>.png``): reverse ESS (eval batch) vs training seconds,
    a line per family (median over seeds) and light lines per seed. Returns {target: path}."""
    os.makedirs(plot_dir, exist_ok=True)
    paths = {}
    for name, t in result["targets"].items():
        paths[name] = os.path.join(plot_dir, f"{name}.png")
        with figure(paths[name], figsize=(7, 4.2)) as (fig, axes):
            ax = axes[0, 0]
            for i, (label, fam) in enumerate(t["families"].items()):
                for run in fam["runs"].values():
                    h = [r for r in run["history"] if r["ess"] is not None]
                    ax.plot([r["wall_time"] for r in h], [r["ess"] for r in h], color=f"C{i}", alpha=0.25, lw=0.8)
                ax.plot(*_median_curve(fam["runs"]), color=f"C{i}", lw=2, label=f"{label} ({fam['n_parameters']} par.)")
            couplings = ", ".join(f"{k}={v:g}" for k, v in t["couplings"].items())
            ax.set(title=f"{name}: {t['theory']} {'x'.join(map(str, t['shape']))}, {couplings}",
                   xlabel="training wall time [s]", ylabel="reverse ESS/N (eval batch)", ylim=(0, 1.02))
            ax.legend(fontsize=8)
            fig.text(0.99, 0.01, f"{result['threads']} threads, {result['dtype']}, seeds {result['seeds']}",
                     ha="right", fontsize=7, alpha=0.7)
    return paths


def format_quality_table(result: dict[str, Any]) -> str:
    """One row per target × family: medians over seeds of the final figures and times to ESS 0.5 / 0.8."""
    load = result["load_avg"]
    lines = [f"flow quality at equal wall time: seeds {result['seeds']}, {result['threads']} threads, "
             f"{result['dtype']} {result['device']}, load avg {load['start'][0]:.2f} -> {load['end'][0]:.2f}",
             f"{'target':<10} {'budget':>7} {'family':<28} {'ESS':>14} {'fwd ESS':>7} {'KL':>8} {'acc':>5} "
             f"{'steps/s':>8} {'t(.5)':>7} {'t(.8)':>7}", "-" * 108]
    for name, t in result["targets"].items():
        for label, fam in t["families"].items():
            m, tt, n_errors = fam["summary"]["median"], fam["summary"]["time_to_ess"], fam["summary"]["n_errors"]
            ess = fmt(m["ess"], ".3f") + ("" if m["ess_err"] is None else f"±{m['ess_err']:.3f}")
            lines.append(f"{name:<10} {t['seconds']:>6g}s {label:<28} {ess:>14} {fmt(m['forward_ess'], '7.3f')} "
                         f"{fmt(m['kl'], '8.4f')} {fmt(m['nmcmc_acceptance'], '5.2f')} {fmt(m['steps_per_s'], '8.1f')} "
                         f"{fmt(tt['0.5'], '7.1f')} {fmt(tt['0.8'], '7.1f')}"
                         + (f"  ({n_errors} run(s) diverged)" if n_errors else ""))
        ref = t["reference"]
        lines.append(f"{'':<10} HMC reference: {ref['n_configurations']} configurations in {ref['seconds']:.1f} s "
                     f"(not training time)" + (f"; {ref['note']}" if ref.get("note") else ""))
    if result.get("skipped_targets"):
        lines.append(f"no selected family for target(s): {', '.join(result['skipped_targets'])}")
    lines.append("medians over seeds; ESS: reverse ESS/N on a fresh batch ± jackknife; fwd ESS on the HMC reference; "
                 "KL = KL(q‖p) in nats (exact ln Z; — where none); acc: independence-Metropolis acceptance; "
                 "t(x): training seconds to ESS ≥ x on the eval batch (— never)")
    return "\n".join(lines)
