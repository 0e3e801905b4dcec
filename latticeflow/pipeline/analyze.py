"""`latticeflow analyze`: observables of an HDF5 ensemble with Gamma-method errors and exact values.

Markov-chain ensembles (datasets ``chain``/``mc_index``) are split into one replica per chain and
analysed with the Gamma method (Wolff 2004); derived quantities (connected susceptibility, Binder
cumulant, effective mass) by linearised error propagation. Where the theory has an exact result
(free field at λ = 0; 2D U(1) on the torus) it is printed beside the estimate with the pull in σ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from actions import exact
from ..analysis import GammaResult, ObservableRow, format_table, gamma_method, gamma_method_derived, split_replicas
from ..io import open_ensemble

__all__ = ["EnsembleAnalysis", "analyze"]


@dataclass
class EnsembleAnalysis:
    """Rows of the observable table, correlators, and the file's metadata."""

    path: str
    theory: str
    couplings: dict[str, float]
    shape: tuple[int, ...]
    n_rows: int
    rows: list[ObservableRow]
    extra: dict[str, Any]

    def row(self, name: str) -> ObservableRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no observable {name!r}; have {[r.name for r in self.rows]}")

    def table(self) -> str:
        coup = ", ".join(f"{k}={v:g}" for k, v in self.couplings.items())
        title = f"{self.path}: {self.theory} {'x'.join(map(str, self.shape))}, {coup}, {self.n_rows} configurations"
        return format_table(self.rows, title=title)

    def as_dict(self) -> dict[str, Any]:
        obs = {}
        for r in self.rows:
            d = r.result.as_dict()
            d["exact"] = r.exact
            d["pull"] = r.pull()
            obs[r.name] = d
        return {"path": self.path, "theory": self.theory, "couplings": self.couplings, "shape": list(self.shape),
                "n_rows": self.n_rows, "observables": obs, **self.extra}


def _replicas(ens, name: str, chain, mc_index) -> list[np.ndarray]:
    values = ens[name]
    return split_replicas(values, chain, mc_index) if chain is not None else [values]


def _exact_phi4(couplings: dict, shape: tuple[int, ...]) -> dict[str, Any]:
    if couplings.get("lam", 1.0) != 0.0:
        return {}
    kappa = couplings["kappa"]
    g = exact.free_field_propagator(shape, kappa)
    return {"m": 0.0, "chi2": exact.free_field_chi2(shape, kappa), "binder": 0.0,
            "action_density": exact.free_field_action_density(), "G": g}


def _analyze_phi4(ens, chain, mc_index, volume: int, S: float, rows: list, extra: dict) -> None:
    ex = _exact_phi4(ens.couplings, ens.shape)
    rep = {k: _replicas(ens, f"observables/{k}", chain, mc_index) for k in ("m", "abs_m", "m2", "m4", "action_density")}
    rows.append(ObservableRow("m", gamma_method(rep["m"], S=S), ex.get("m", 0.0)))
    rows.append(ObservableRow("|m|", gamma_method(rep["abs_m"], S=S), None))
    rows.append(ObservableRow("chi2 = V<m^2>", gamma_method([volume * r for r in rep["m2"]], S=S), ex.get("chi2")))
    rows.append(ObservableRow("chi = V(<m^2>-<|m|>^2)", gamma_method_derived(
        lambda m2, am: volume * (m2 - am**2), [rep["m2"], rep["abs_m"]], S=S), None))
    rows.append(ObservableRow("binder U", gamma_method_derived(
        lambda m4, m2: 1 - m4 / (3 * m2**2), [rep["m4"], rep["m2"]], S=S), ex.get("binder")))
    rows.append(ObservableRow("S/V", gamma_method(rep["action_density"], S=S), ex.get("action_density")))
    # two-point function along axis 0 and the zero-momentum correlator with its effective mass
    L0 = ens.shape[0]
    g_rows = _replicas(ens, "observables/two_point", chain, mc_index)
    c_rows = _replicas(ens, "observables/zero_momentum_correlator", chain, mc_index)
    correlator = []
    for t in range(L0 // 2 + 1):
        res = gamma_method([r[:, t, 0] if r.ndim == 3 else r[:, t] for r in g_rows], S=S)
        exact_g = float(ex["G"][t, 0]) if "G" in ex else None
        if t in (0, 1, L0 // 2):
            rows.append(ObservableRow(f"G({t},0)", res, exact_g))
        correlator.append({"t": t, **res.as_dict(), "exact": exact_g})
    m_eff = []
    for t in range(1, L0 // 2):
        data = [[r[:, t - 1] for r in c_rows], [r[:, t] for r in c_rows], [r[:, t + 1] for r in c_rows]]

        def meff(cm, c0, cp):
            arg = (cm + cp) / (2 * c0)
            return math.acosh(arg) if arg >= 1 else float("nan")

        try:
            m_eff.append({"t": t, **gamma_method_derived(meff, data, S=S).as_dict()})
        except (ValueError, ZeroDivisionError):
            m_eff.append({"t": t, "mean": float("nan"), "error": float("nan")})
    extra["two_point_G_t0"] = correlator
    extra["effective_mass"] = m_eff


def _analyze_u1(ens, chain, mc_index, volume: int, S: float, rows: list, extra: dict) -> None:
    beta = ens.couplings["beta"]
    plaq = exact.u1_mean_plaquette(beta, volume)
    rep = {k: _replicas(ens, f"observables/{k}", chain, mc_index)
           for k in ("plaquette", "topological_charge", "q2", "action_density", "wilson_loop_1x1", "wilson_loop_2x2", "polyakov_loop")}
    rows.append(ObservableRow("<cos P>", gamma_method(rep["plaquette"], S=S), plaq))
    rows.append(ObservableRow("S/V", gamma_method(rep["action_density"], S=S), -beta * plaq))
    rows.append(ObservableRow("Q", gamma_method(rep["topological_charge"], S=S), 0.0))
    rows.append(ObservableRow("chi_t = <Q^2>/V", gamma_method([r / volume for r in rep["q2"]], S=S),
                              exact.u1_topological_susceptibility(beta, volume)))
    rows.append(ObservableRow("W(1x1)", gamma_method(rep["wilson_loop_1x1"], S=S), exact.u1_wilson_loop(beta, volume, 1)))
    rows.append(ObservableRow("W(2x2)", gamma_method(rep["wilson_loop_2x2"], S=S), exact.u1_wilson_loop(beta, volume, 4)))
    rows.append(ObservableRow("|Polyakov loop|", gamma_method(rep["polyakov_loop"], S=S), None))
    q = np.concatenate(rep["topological_charge"]).round().astype(int)
    values, counts = np.unique(q, return_counts=True)
    qs, probs = exact.u1_charge_distribution(beta, volume)
    extra["charge_histogram"] = {"Q": values.tolist(), "count": counts.tolist(),
                                 "exact_Q": np.asarray(qs).tolist(), "exact_P": np.asarray(probs).tolist()}


def analyze(path: str, S: float = 2.0) -> EnsembleAnalysis:
    """Analyse the ensemble at ``path``: observables, HMC diagnostics, exact values where known."""
    with open_ensemble(path) as ens:
        if ens.n_rows < 2:
            raise ValueError(f"{path} holds {ens.n_rows} configurations; the analysis needs at least 2")
        keys = set(ens.keys())
        chain = ens["chain"] if "chain" in keys else None
        mc_index = ens["mc_index"] if "mc_index" in keys else None
        volume = int(np.prod(ens.shape))
        rows: list[ObservableRow] = []
        extra: dict[str, Any] = {}
        if ens.theory == "phi4":
            _analyze_phi4(ens, chain, mc_index, volume, S, rows, extra)
        elif ens.theory == "u1":
            _analyze_u1(ens, chain, mc_index, volume, S, rows, extra)
        else:
            raise ValueError(f"{path}: no analysis for theory {ens.theory!r}")
        if "accepted" in keys:
            acc = [r.astype(np.float64) for r in _replicas(ens, "accepted", chain, mc_index)]
            rows.append(ObservableRow("acceptance", gamma_method(acc, S=S), None))
        if "observables/delta_h" in keys:
            dh = _replicas(ens, "observables/delta_h", chain, mc_index)
            rows.append(ObservableRow("<exp(-dH)>", gamma_method([np.exp(-r) for r in dh], S=S), 1.0))
        if chain is not None:
            extra["n_chains"] = int(len(np.unique(chain)))
        return EnsembleAnalysis(path=str(path), theory=ens.theory, couplings=dict(ens.couplings),
                                shape=tuple(ens.shape), n_rows=ens.n_rows, rows=rows, extra=extra)
