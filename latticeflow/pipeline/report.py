"""Run reports: ``summary.json`` and PNG plots of an analysed ensemble (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import open_ensemble, write_json
from .analyze import EnsembleAnalysis

__all__ = ["write_report"]


def _weights(ens) -> np.ndarray | None:
    """Importance weights of i.i.d. flow samples (None for Markov chains)."""
    keys = ens.keys()
    if "log_weight" in keys and "chain" not in keys:
        lw = ens["log_weight"]
        return np.exp(lw - lw.max())
    return None


def _title(result: EnsembleAnalysis) -> str:
    coup = ", ".join(f"{k}={v:g}" for k, v in result.couplings.items())
    return f"{result.theory} {'×'.join(map(str, result.shape))}, {coup}"


def _plot_histogram(result: EnsembleAnalysis, ens, plots: Path, key: str, reference=None) -> list[Path]:
    """P(O) of the theory's histogram observable: bars with the exact distribution for an integer charge
    (``charge_histogram`` of the analysis), a density histogram otherwise; the HMC reference on top."""
    import matplotlib.pyplot as plt

    label = ens.attrs.get("sampler", "")
    h = result.extra.get("charge_histogram")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if h is not None:
        counts = np.asarray(h["count"], dtype=float)
        ax.bar(h["Q"], counts / counts.sum(), color="C0", alpha=0.8, label=label)
        if reference is not None and "charge_histogram" in reference.extra:
            hr = reference.extra["charge_histogram"]
            cr = np.asarray(hr["count"], dtype=float)
            ax.step(hr["Q"], cr / cr.sum(), where="mid", color="C3", label="HMC")
        if "exact_P" in h:  # pure gauge theory: the exact P(Q) on the torus
            eq, ep = np.asarray(h["exact_Q"]), np.asarray(h["exact_P"])
            keep = ep > 1e-5 * ep.max()
            ax.plot(eq[keep], ep[keep], "k.--", label="exact")
        ax.set_xlabel("topological charge Q"); ax.set_ylabel("P(Q)")
        name = "topology_histogram.png"
    else:
        ax.hist(ens[f"observables/{key}"], bins=60, density=True, color="C0", alpha=0.6, weights=_weights(ens),
                label=label)
        if reference is not None:
            with open_ensemble(reference.path) as ref:
                ax.hist(ref[f"observables/{key}"], bins=60, density=True, histtype="step", color="k", label="HMC")
        ax.set_xlabel(f"{key} per configuration"); ax.set_ylabel("density")
        name = f"{key}_histogram.png" if key != "m" else "magnetization_histogram.png"
    ax.legend(); ax.set_title(_title(result), fontsize=9)
    fig.tight_layout(); path = plots / name; fig.savefig(path, dpi=110); plt.close(fig)
    return [path]


def _plot_correlator(result: EnsembleAnalysis, label: str, plots: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    corr = result.extra["two_point_G_t0"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    t = [c["t"] for c in corr]
    a1.errorbar(t, [c["mean"] for c in corr], [c["error"] for c in corr], fmt="o", label=label)
    if corr[0]["exact"] is not None:
        a1.plot(t, [c["exact"] for c in corr], "k--", label="exact (free field)")
    a1.set_xlabel("t"); a1.set_ylabel("G(t, 0)"); a1.set_yscale("log"); a1.legend()
    me = [m for m in result.extra.get("effective_mass", []) if m["mean"] is not None and np.isfinite(m["mean"])]
    a2.errorbar([m["t"] for m in me], [m["mean"] for m in me], [m["error"] for m in me], fmt="o")
    a2.set_xlabel("t"); a2.set_ylabel("effective mass")
    fig.suptitle(_title(result), fontsize=9)
    fig.tight_layout(); path = plots / "correlator.png"; fig.savefig(path, dpi=110); plt.close(fig)
    return [path]


def _plot_history(result: EnsembleAnalysis, ens, plots: Path, table_rows: list) -> list[Path]:
    """The first main observable against Monte Carlo time (three chains), its exact value dashed."""
    import matplotlib.pyplot as plt

    row = next((r for r in result.rows if r.name in result.main), None)
    spec = next((s for s in table_rows if row is not None and s.name == row.name), None)
    if spec is None or spec.func is not None:
        return []
    series = ens[f"observables/{spec.inputs[0]}"] * spec.factor
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if "chain" in ens.keys():
        chain, step = ens["chain"], ens["mc_index"]
        for c in np.unique(chain)[:3]:
            sel = chain == c
            order = np.argsort(step[sel])
            ax.plot(step[sel][order], series[sel][order], lw=0.5, label=f"chain {c}")
        ax.set_xlabel("Monte Carlo time"); ax.legend(fontsize=7)
    else:
        ax.plot(series, lw=0.4); ax.set_xlabel("configuration")
    if row.exact is not None:
        ax.axhline(row.exact, color="k", ls="--")
    ax.set_ylabel(f"{row.name} per configuration"); ax.set_title(_title(result), fontsize=9)
    fig.tight_layout(); path = plots / "history.png"; fig.savefig(path, dpi=110); plt.close(fig)
    return [path]


def _theory(result: EnsembleAnalysis):
    from actions import build_theory

    return build_theory(result.theory, result.shape, result.couplings)


def _charge_histories(ens, key: str, n_chains: int = 4) -> list[tuple[int, np.ndarray]]:
    q = ens[f"observables/{key}"]
    if "chain" not in ens.keys():
        return [(0, q)]
    chain, step = ens["chain"], ens["mc_index"]
    out = []
    for c in np.unique(chain)[:n_chains]:
        sel = chain == c
        out.append((int(c), q[sel][np.argsort(step[sel])]))
    return out


def _plot_charge_histories(ens, reference: EnsembleAnalysis, plots: Path, key: str, label: str) -> Path:
    """The theory's slowest observable (U(1): Q) against Monte Carlo time: the HMC reference above, the run's
    ensemble below (same axes); ``plots/topology_history.png``."""
    import matplotlib.pyplot as plt

    with open_ensemble(reference.path) as ref:
        panels = [("HMC", _charge_histories(ref, key)),
                  (str(ens.attrs.get("sampler", "flow")), _charge_histories(ens, key))]
    fig, axes = plt.subplots(2, 1, figsize=(9, 4.5), sharex=True, sharey=True)
    name = label
    for ax, (label, series) in zip(axes, panels):
        for c, q in series:
            ax.plot(np.arange(len(q)), q, lw=0.6, label=f"chain {c}")
        ax.set_ylabel(f"{name} ({label})")
        ax.legend(fontsize=7, loc="upper right", ncol=len(series))
    axes[-1].set_xlabel("Monte Carlo time (trajectories / Metropolis steps)")
    fig.tight_layout(); path = plots / "topology_history.png"; fig.savefig(path, dpi=110); plt.close(fig)
    return path


def write_report(result: EnsembleAnalysis, sample_summary, out_dir: Path, reference: EnsembleAnalysis | None = None) -> list[Path]:
    """Write ``summary.json`` and ``plots/*.png`` for an analysed ensemble; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    summary = {"sampling": sample_summary.as_dict() if sample_summary is not None else None,
               "analysis": result.as_dict()}
    if reference is not None:
        summary["reference_analysis"] = reference.as_dict()
    path = write_json(out_dir / "summary.json", summary)
    theory = _theory(result)
    table_rows = theory.table_rows()
    pngs: list[Path] = []
    with open_ensemble(result.path) as ens:
        if theory.histogram_observable is not None:
            pngs += _plot_histogram(result, ens, plots, theory.histogram_observable, reference)
        if "two_point_G_t0" in result.extra:
            pngs += _plot_correlator(result, str(ens.attrs.get("sampler", "")), plots)
        pngs += _plot_history(result, ens, plots, table_rows)
        cost = next((r for r in table_rows if r.name == theory.cost_observable and r.func is None), None)
        if reference is not None and cost is not None:
            pngs.append(_plot_charge_histories(ens, reference, plots, cost.inputs[0], cost.name))
    return [path, *pngs]
