"""The two panels of the gauge-theory efficiency benchmarks: τ_int(Q) and the cost of 10⁴ independent Q against β,
one line per sampler and lattice size (open markers: lower bounds)."""
from __future__ import annotations

from typing import Any

from ..analysis import figure

__all__ = ["plot_tau_and_cost"]


def plot_tau_and_cost(result: dict[str, Any], path: str, samplers, title: str, suptitle: str | None = None,
                      legend_size: int = 8) -> str:
    """``result["points"]``: dicts with ``L``, ``beta`` and per sampler key of ``samplers`` ((key, label, colour),
    …) its ``tau_int_q``, ``cost_1e4_seconds`` and ``tau_int_lower_bound``; samplers missing at a size are skipped."""
    with figure(path, 1, 2, figsize=(10, 4)) as (fig, axes):
        ax1, ax2 = axes[0]
        for L, ls in zip(sorted({p["L"] for p in result["points"]}), ("-", "--", ":")):
            pts = [p for p in result["points"] if p["L"] == L]
            b = [p["beta"] for p in pts]
            for name, label, colour in samplers:
                if any(name not in p for p in pts):
                    continue
                for ax, key in ((ax1, "tau_int_q"), (ax2, "cost_1e4_seconds")):
                    ax.plot(b, [p[name][key] for p in pts], ls, color=colour, label=f"{label} {L}x{L}")
                    for p in pts:
                        ax.plot([p["beta"]], [p[name][key]], "o", color=colour,
                                mfc="none" if p[name]["tau_int_lower_bound"] else colour)
        ax1.set(yscale="log", xlabel="β", ylabel="τ_int(Q)", title=title)
        ax2.set(yscale="log", xlabel="β", ylabel="seconds", title="time to 10⁴ independent Q (training included)")
        for ax in (ax1, ax2):
            ax.legend(fontsize=legend_size)
        if suptitle:
            fig.suptitle(suptitle, fontsize=9)
    return path
