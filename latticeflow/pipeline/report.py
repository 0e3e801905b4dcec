"""Run reports: ``summary.json`` and PNG plots of an analysed ensemble (matplotlib, Agg backend)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import open_ensemble
from .analyze import EnsembleAnalysis

__all__ = ["write_report"]


def _weights(ens) -> np.ndarray | None:
    """Importance weights of i.i.d. flow samples (None for Markov chains)."""
    keys = ens.keys()
    if "log_weight" in keys and "chain" not in keys:
        lw = ens["log_weight"]
        return np.exp(lw - lw.max())
    return None


def _plot_phi4(result: EnsembleAnalysis, ens, plots: Path, reference=None) -> list[Path]:
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    label = ens.attrs.get("sampler", "")
    ax.hist(ens["observables/m"], bins=60, density=True, color="C0", alpha=0.6, weights=_weights(ens), label=label)
    if reference is not None:
        with open_ensemble(reference.path) as ref:
            ax.hist(ref["observables/m"], bins=60, density=True, histtype="step", color="k", label="HMC")
    ax.legend()
    ax.set_xlabel("magnetisation m"); ax.set_ylabel("density"); ax.set_title("P(m)")
    fig.tight_layout(); out.append(plots / "magnetization_histogram.png"); fig.savefig(out[-1], dpi=110); plt.close(fig)

    corr = result.extra["two_point_G_t0"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    t = [c["t"] for c in corr]
    a1.errorbar(t, [c["mean"] for c in corr], [c["error"] for c in corr], fmt="o", label=label)
    if corr[0]["exact"] is not None:
        a1.plot(t, [c["exact"] for c in corr], "k--", label="exact (free field)")
    a1.set_xlabel("t"); a1.set_ylabel("G(t, 0)"); a1.set_yscale("log"); a1.legend()
    me = [m for m in result.extra["effective_mass"] if np.isfinite(m["mean"])]
    a2.errorbar([m["t"] for m in me], [m["mean"] for m in me], [m["error"] for m in me], fmt="o")
    a2.set_xlabel("t"); a2.set_ylabel("effective mass")
    fig.tight_layout(); out.append(plots / "correlator.png"); fig.savefig(out[-1], dpi=110); plt.close(fig)
    return out


def _plot_u1(result: EnsembleAnalysis, ens, plots: Path, reference=None) -> list[Path]:
    import matplotlib.pyplot as plt

    h = result.extra["charge_histogram"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    counts = np.asarray(h["count"], dtype=float)
    a1.bar(h["Q"], counts / counts.sum(), color="C0", alpha=0.8, label=ens.attrs.get("sampler", ""))
    if reference is not None:
        hr = reference.extra["charge_histogram"]
        cr = np.asarray(hr["count"], dtype=float)
        a1.step(hr["Q"], cr / cr.sum(), where="mid", color="C3", label="HMC")
    eq, ep = np.asarray(h["exact_Q"]), np.asarray(h["exact_P"])
    keep = ep > 1e-5 * ep.max()
    a1.plot(eq[keep], ep[keep], "k.--", label="exact")
    a1.set_xlabel("topological charge Q"); a1.set_ylabel("P(Q)"); a1.legend()
    plaq = ens["observables/plaquette"]
    if "chain" in ens.keys():
        chain, step = ens["chain"], ens["mc_index"]
        for c in np.unique(chain)[:3]:
            sel = chain == c
            order = np.argsort(step[sel])
            a2.plot(step[sel][order], plaq[sel][order], lw=0.5, label=f"chain {c}")
        a2.set_xlabel("trajectory"); a2.legend(fontsize=7)
    else:
        a2.plot(plaq, lw=0.4); a2.set_xlabel("configuration")
    a2.axhline(result.row("<cos P>").exact, color="k", ls="--")
    a2.set_ylabel("<cos P> per configuration")
    fig.tight_layout(); path = plots / "topology_and_plaquette.png"; fig.savefig(path, dpi=110); plt.close(fig)
    paths = [path]
    if reference is not None:
        paths.append(_plot_charge_histories(ens, reference, plots))
    return paths


def _charge_histories(ens, n_chains: int = 4) -> list[tuple[int, np.ndarray]]:
    q = ens["observables/topological_charge"]
    if "chain" not in ens.keys():
        return [(0, q)]
    chain, step = ens["chain"], ens["mc_index"]
    out = []
    for c in np.unique(chain)[:n_chains]:
        sel = chain == c
        out.append((int(c), q[sel][np.argsort(step[sel])]))
    return out


def _plot_charge_histories(ens, reference: EnsembleAnalysis, plots: Path) -> Path:
    """Q against Monte Carlo time: the HMC reference above, the flow ensemble below (same axes)."""
    import matplotlib.pyplot as plt

    with open_ensemble(reference.path) as ref:
        panels = [("HMC", _charge_histories(ref)), (str(ens.attrs.get("sampler", "flow")), _charge_histories(ens))]
    fig, axes = plt.subplots(2, 1, figsize=(9, 4.5), sharex=True, sharey=True)
    for ax, (label, series) in zip(axes, panels):
        for c, q in series:
            ax.plot(np.arange(len(q)), q, lw=0.6, label=f"chain {c}")
        ax.set_ylabel(f"Q ({label})")
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
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=float))
    with open_ensemble(result.path) as ens:
        plot = _plot_phi4 if result.theory == "phi4" else _plot_u1
        pngs = plot(result, ens, plots, reference)
    return [path, *pngs]
