"""Text lines and figure of a correlator analysis: C(t) with errors and the fitted
A (e^{-m t} + e^{-m (T-t)}), and m_eff(t) = arccosh[(C(t-1) + C(t+1))/(2 C(t))] with the fitted
mass as a band (`latticeflow analyze FILE --plot PNG`).

Both read the plain dict ``extra`` of an analysis: ``extra["correlator"]`` (list of {t, mean,
error}), ``extra["effective_mass"]`` (list of {t, mean, error}) and ``extra["correlator_fit"]``
(:meth:`latticeflow.analysis.gamma_array.CorrelatorFit.as_dict`, or {"error": …} when it failed).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .plots import figure
from .table import format_value_error

__all__ = ["correlator_lines", "plot_correlator"]


def correlator_lines(extra: Mapping[str, Any]) -> list[str]:
    """m_eff(t) and the correlated cosh fit as text lines (none without a correlator)."""
    lines = []
    if extra.get("effective_mass"):
        cells = [f"{m['t']}: {format_value_error(m['mean'], m['error'])}" for m in extra["effective_mass"]]
        lines.append("m_eff(t) = arccosh[(C(t-1) + C(t+1))/(2 C(t))]: " + ", ".join(cells))
    fit = extra.get("correlator_fit")
    if fit and "error" in fit:
        lines.append(f"correlated cosh fit of C(t), t = {fit['t_min']}..{fit['t_max']}: failed ({fit['error']})")
    elif fit:
        lines.append(f"correlated cosh fit of C(t), t = {fit['t_min']}..{fit['t_max']} (T = {fit['T']:g}): "
                     f"m = {format_value_error(fit['mass'], fit['mass_error'])}, "
                     f"A = {format_value_error(fit['amplitude'], fit['amplitude_error'])}, "
                     f"chi2/dof = {fit['chi2_dof']:.2f} (dof {fit['dof']}, p = {fit['p_value']:.2g})"
                     + ("" if fit.get("plateau_found", True) else "; no t_min with p >= 0.05: no plateau, excited states")
                     + ("" if fit.get("covariance", "windowed").startswith("windowed") else f"; covariance: {fit['covariance']}"))
    return lines


def _cosh(fit: Mapping[str, Any], t: np.ndarray) -> np.ndarray:
    m, T = fit["mass"], fit["T"]
    return fit["amplitude"] * (np.exp(-m * t) + np.exp(-m * (T - t)))


def plot_correlator(path: str, extra: Mapping[str, Any], title: str) -> str:
    """Two panels saved to ``path``: C(t) ± error (log scale) with the fitted cosh over its range,
    and m_eff(t) ± error with the fitted mass ± error as a band; returns ``path``."""
    corr = extra.get("correlator")
    if not corr:
        raise ValueError("no correlator to plot: the ensemble has no correlator observable, or holds "
                         "reweighted flow samples (fit only for Markov chains)")
    fit = extra.get("correlator_fit") or {}
    fitted = "mass" in fit and fit["mass"] is not None
    t = np.array([c["t"] for c in corr], dtype=float)
    c_mean = np.array([c["mean"] for c in corr], dtype=float)
    c_err = np.array([c["error"] for c in corr], dtype=float)
    with figure(path, 1, 2, figsize=(10, 4)) as (fig, axes):
        ax = axes[0, 0]
        ax.errorbar(t, c_mean, yerr=c_err, fmt="o", ms=4, capsize=2, label="C(t)")
        if fitted:
            tt = np.linspace(fit["t_min"], fit["t_max"], 200)
            ax.plot(tt, _cosh(fit, tt), "-", color="C1",
                    label=f"cosh fit, m = {format_value_error(fit['mass'], fit['mass_error'])}")
            full = np.linspace(0.0, float(t.max()), 200)
            ax.plot(full, _cosh(fit, full), "--", color="C1", alpha=0.5)
        if np.all(c_mean > 0):
            ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_ylabel("C(t)")
        ax.legend()
        ax = axes[0, 1]
        meff = [m for m in extra.get("effective_mass", []) if m["mean"] is not None and math.isfinite(m["mean"])]
        if meff:
            ax.errorbar([m["t"] for m in meff], [m["mean"] for m in meff],
                        yerr=[m["error"] if m["error"] is not None else 0.0 for m in meff],
                        fmt="o", ms=4, capsize=2, label="m_eff(t)")
        if fitted:
            lo, hi = fit["mass"] - fit["mass_error"], fit["mass"] + fit["mass_error"]
            ax.axhspan(lo, hi, alpha=0.3, color="C1", label=f"fit, chi2/dof = {fit['chi2_dof']:.2f}")
            ax.axhline(fit["mass"], color="C1")
        ax.set_xlabel("t")
        ax.set_ylabel("m_eff(t)")
        if meff or fitted:
            ax.legend()
        fig.suptitle(title)
    return path
