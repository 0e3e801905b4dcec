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
from ..analysis import (GammaResult, ObservableRow, format_table, gamma_method, gamma_method_derived, jackknife,
                        reverse_ess, split_replicas)
from ..analysis.verdict import format_verdict, markov_checks, verdict, weight_checks
from ..io import open_ensemble

__all__ = ["EnsembleAnalysis", "analyze", "export_pyerrors", "MAIN_OBSERVABLES"]


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
        text = format_table(self.rows, title=title)
        return text + ("\n" + format_verdict(self.extra["verdict"]) if "verdict" in self.extra else "")

    def judge(self, thresholds: dict[str, float] | None = None, reference: "EnsembleAnalysis | None" = None) -> dict:
        """(Re)compute the verdict with ``thresholds`` and, with a ``reference`` ensemble (HMC), the pulls
        of the main observables against it; stored in ``extra["verdict"]`` and returned."""
        checks = dict(self.extra.get("checks", {}))
        pulls, ref_name = {}, "exact value"
        for r in self.rows:
            if r.name in MAIN_OBSERVABLES.get(self.theory, ()) and r.exact is not None:
                p = r.pull()
                if p is not None:
                    pulls[f"{r.name} (exact)"] = p
        if reference is not None:
            ref_name = "reference / exact value"
            for r in self.rows:
                if r.name not in MAIN_OBSERVABLES.get(self.theory, ()):
                    continue
                try:
                    o = reference.row(r.name).result
                except KeyError:
                    continue
                err = math.hypot(r.result.error, o.error)
                if err > 0 and math.isfinite(err):
                    pulls[f"{r.name} (vs reference)"] = (r.result.mean - o.mean) / err
        checks["pulls"], checks["pull_reference"] = pulls, ref_name
        self.extra["checks"] = checks
        self.extra["verdict"] = verdict(checks, thresholds)
        return self.extra["verdict"]

    def as_dict(self) -> dict[str, Any]:
        obs = {}
        for r in self.rows:
            d = r.result.as_dict()
            d["exact"] = r.exact
            d["pull"] = r.pull()
            obs[r.name] = d
        return {"path": self.path, "theory": self.theory, "couplings": self.couplings, "shape": list(self.shape),
                "n_rows": self.n_rows, "observables": obs, **self.extra}


#: the observables whose R̂, τ_int coverage and pulls enter the verdict
MAIN_OBSERVABLES = {"phi4": ("m", "|m|", "chi2 = V<m^2>", "S/V"), "u1": ("<cos P>", "Q", "chi_t = <Q^2>/V", "S/V")}
_MAIN_SERIES = {"phi4": {"m": ("m", 1), "|m|": ("abs_m", 1), "chi2 = V<m^2>": ("m2", "V"), "S/V": ("action_density", 1)},
                "u1": {"<cos P>": ("plaquette", 1), "Q": ("topological_charge", 1), "chi_t = <Q^2>/V": ("q2", "1/V"),
                       "S/V": ("action_density", 1)}}


def _checks(ens, keys: set, chain, mc_index, rows: list, volume: int, weighted: bool) -> dict[str, Any]:
    """The figures of the verdict: R̂ and τ_int coverage (Markov chains), Pareto k̂, rejection runs."""
    checks: dict[str, Any] = {}
    if weighted:
        checks.update(weight_checks(ens["log_weight"], "flow weights"))
        return checks
    if chain is not None:
        series, taus = {}, {}
        by_name = {r.name: r for r in rows}
        for name, (key, scale) in _MAIN_SERIES[ens.theory].items():
            factor = {1: 1.0, "V": float(volume), "1/V": 1.0 / volume}[scale]
            series[name] = [factor * r for r in _replicas(ens, f"observables/{key}", chain, mc_index)]
            taus[name] = by_name[name].result.tau_int if name in by_name else math.nan
        checks.update(markov_checks(series, taus))
        checks["chain_length"] = int(min(len(r) for r in next(iter(series.values()))))
    if "proposal_log_weight" in keys:
        checks.update(weight_checks(ens["proposal_log_weight"], "NMCMC proposals"))
    if "longest_rejection_run" in ens.attrs:
        checks["longest_rejection_run"] = np.atleast_1d(np.asarray(ens.attrs["longest_rejection_run"])).tolist()
    return checks


def _replicas(ens, name: str, chain, mc_index) -> list[np.ndarray]:
    values = ens[name]
    return split_replicas(values, chain, mc_index) if chain is not None else [values]


class _Stats:
    """Primary and derived estimates: Gamma method for Markov chains (replicas = chains), or
    importance reweighting ⟨O⟩ = Σ w O / Σ w with a binned jackknife for i.i.d. flow samples."""

    def __init__(self, S: float, log_weight: np.ndarray | None = None, n_bins: int = 50) -> None:
        self.S, self.n_bins = S, n_bins
        self.w = None if log_weight is None else np.exp(log_weight - log_weight.max())

    def _result(self, mean: float, error: float, n: int) -> GammaResult:
        return GammaResult(mean=mean, error=error, error_of_error=error / math.sqrt(2 * (self.n_bins - 1)),
                           tau_int=0.5, tau_int_error=0.0, window=0, n=n, n_replicas=1)

    def primary(self, replicas: list[np.ndarray]) -> GammaResult:
        if self.w is None:
            return gamma_method(replicas, S=self.S)
        o = np.concatenate(replicas).astype(np.float64)
        mean, err = jackknife(lambda w, wo: wo / w, [self.w, self.w * o], n_bins=self.n_bins)
        return self._result(mean, err, len(o))

    def derived(self, func, data: list[list[np.ndarray]]) -> GammaResult:
        if self.w is None:
            return gamma_method_derived(func, data, S=self.S)
        arrays = [np.concatenate(d).astype(np.float64) for d in data]
        mean, err = jackknife(lambda w, *wo: func(*[v / w for v in wo]), [self.w, *[self.w * a for a in arrays]],
                              n_bins=self.n_bins)
        return self._result(mean, err, len(arrays[0]))


def _exact_phi4(couplings: dict, shape: tuple[int, ...]) -> dict[str, Any]:
    if couplings.get("lam", 1.0) != 0.0:
        return {}
    kappa = couplings["kappa"]
    g = exact.free_field_propagator(shape, kappa)
    return {"m": 0.0, "chi2": exact.free_field_chi2(shape, kappa), "binder": 0.0,
            "action_density": exact.free_field_action_density(), "G": g}


def _analyze_phi4(ens, chain, mc_index, volume: int, st: _Stats, rows: list, extra: dict) -> None:
    ex = _exact_phi4(ens.couplings, ens.shape)
    rep = {k: _replicas(ens, f"observables/{k}", chain, mc_index) for k in ("m", "abs_m", "m2", "m4", "action_density")}
    rows.append(ObservableRow("m", st.primary(rep["m"]), ex.get("m", 0.0)))
    rows.append(ObservableRow("|m|", st.primary(rep["abs_m"]), None))
    rows.append(ObservableRow("chi2 = V<m^2>", st.primary([volume * r for r in rep["m2"]]), ex.get("chi2")))
    rows.append(ObservableRow("chi = V(<m^2>-<|m|>^2)", st.derived(
        lambda m2, am: volume * (m2 - am**2), [rep["m2"], rep["abs_m"]]), None))
    rows.append(ObservableRow("binder U", st.derived(
        lambda m4, m2: 1 - m4 / (3 * m2**2), [rep["m4"], rep["m2"]]), ex.get("binder")))
    rows.append(ObservableRow("S/V", st.primary(rep["action_density"]), ex.get("action_density")))
    # two-point function along axis 0 and the zero-momentum correlator with its effective mass
    L0 = ens.shape[0]
    g_rows = _replicas(ens, "observables/two_point", chain, mc_index)
    c_rows = _replicas(ens, "observables/zero_momentum_correlator", chain, mc_index)
    correlator = []
    for t in range(L0 // 2 + 1):
        res = st.primary([r[:, t, 0] if r.ndim == 3 else r[:, t] for r in g_rows])
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
            m_eff.append({"t": t, **st.derived(meff, data).as_dict()})
        except (ValueError, ZeroDivisionError):
            m_eff.append({"t": t, "mean": float("nan"), "error": float("nan")})
    extra["two_point_G_t0"] = correlator
    extra["effective_mass"] = m_eff


def _analyze_u1(ens, chain, mc_index, volume: int, st: _Stats, rows: list, extra: dict) -> None:
    beta = ens.couplings["beta"]
    plaq = exact.u1_mean_plaquette(beta, volume)
    rep = {k: _replicas(ens, f"observables/{k}", chain, mc_index)
           for k in ("plaquette", "topological_charge", "q2", "action_density", "wilson_loop_1x1", "wilson_loop_2x2", "polyakov_loop")}
    rows.append(ObservableRow("<cos P>", st.primary(rep["plaquette"]), plaq))
    rows.append(ObservableRow("S/V", st.primary(rep["action_density"]), -beta * plaq))
    rows.append(ObservableRow("Q", st.primary(rep["topological_charge"]), 0.0))
    rows.append(ObservableRow("chi_t = <Q^2>/V", st.primary([r / volume for r in rep["q2"]]),
                              exact.u1_topological_susceptibility(beta, volume)))
    rows.append(ObservableRow("W(1x1)", st.primary(rep["wilson_loop_1x1"]), exact.u1_wilson_loop(beta, volume, 1)))
    rows.append(ObservableRow("W(2x2)", st.primary(rep["wilson_loop_2x2"]), exact.u1_wilson_loop(beta, volume, 4)))
    rows.append(ObservableRow("|Polyakov loop|", st.primary(rep["polyakov_loop"]), None))
    q = np.concatenate(rep["topological_charge"]).round().astype(int)
    values, inverse = np.unique(q, return_inverse=True)
    counts = np.bincount(inverse, weights=st.w if st.w is not None else None)
    counts = counts / counts.sum() * len(q)
    qs, probs = exact.u1_charge_distribution(beta, volume)
    extra["charge_histogram"] = {"Q": values.tolist(), "count": counts.tolist(),
                                 "exact_Q": np.asarray(qs).tolist(), "exact_P": np.asarray(probs).tolist()}


def _free_energy(log_weight: np.ndarray, theory: str, couplings: dict, shape: tuple) -> dict[str, Any]:
    """ln Z = ln mean(w) with error √(1/ESS − 1/N) (delta method), reverse ESS, and the exact ln Z
    (Lebesgue measure: for U(1) the (2π)^{2V} of the uniform base is included) where known."""
    n = len(log_weight)
    m = log_weight.max()
    log_z = float(m + np.log(np.mean(np.exp(log_weight - m))))
    ess = reverse_ess(log_weight)
    out = {"reverse_ess": ess, "log_z": log_z, "log_z_error": math.sqrt(max(1 / (ess * n) - 1 / n, 0.0))}
    volume = int(np.prod(shape))
    if theory == "phi4" and couplings.get("lam", 1.0) == 0.0:
        out["log_z_exact"] = exact.free_field_log_z(shape, couplings["kappa"])
    elif theory == "u1":
        out["log_z_exact"] = exact.u1_log_z(couplings["beta"], volume) + 2 * volume * math.log(2 * math.pi)
    return out


def analyze(path: str, S: float = 2.0, thresholds: dict[str, float] | None = None) -> EnsembleAnalysis:
    """Analyse the ensemble at ``path``: observables, HMC diagnostics, exact values where known, and the
    trust verdict (`latticeflow.analysis.verdict`; ``thresholds`` override its defaults)."""
    with open_ensemble(path) as ens:
        if ens.n_rows < 2:
            raise ValueError(f"{path} holds {ens.n_rows} configurations; the analysis needs at least 2")
        keys = set(ens.keys())
        chain = ens["chain"] if "chain" in keys else None
        mc_index = ens["mc_index"] if "mc_index" in keys else None
        volume = int(np.prod(ens.shape))
        rows: list[ObservableRow] = []
        extra: dict[str, Any] = {}
        weighted = chain is None and "log_weight" in keys
        log_weight = ens["log_weight"] if "log_weight" in keys else None
        st = _Stats(S, log_weight if weighted else None)
        if ens.theory == "phi4":
            _analyze_phi4(ens, chain, mc_index, volume, st, rows, extra)
        elif ens.theory == "u1":
            _analyze_u1(ens, chain, mc_index, volume, st, rows, extra)
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
        extra["sampler"] = ens.attrs.get("sampler")
        if "longest_rejection_run" in ens.attrs:  # per NMCMC chain (one value in files of one chain)
            runs = np.atleast_1d(np.asarray(ens.attrs["longest_rejection_run"], dtype=np.int64))
            extra["longest_rejection_run"] = int(runs.max())
            extra["longest_rejection_run_per_chain"] = runs.tolist()
        if weighted:
            extra["estimator"] = "reweighting (jackknife errors)"
            fe = _free_energy(log_weight, ens.theory, ens.couplings, ens.shape)
            extra.update(fe)
            rows.append(ObservableRow("ln Z", st._result(fe["log_z"], fe["log_z_error"], len(log_weight)),
                                      fe.get("log_z_exact")))
        else:
            extra["estimator"] = "Gamma method (chains as replicas)"
        extra["checks"] = _checks(ens, keys, chain, mc_index, rows, volume, weighted)
        result = EnsembleAnalysis(path=str(path), theory=ens.theory, couplings=dict(ens.couplings),
                                  shape=tuple(ens.shape), n_rows=ens.n_rows, rows=rows, extra=extra)
    result.judge(thresholds)
    return result


def export_pyerrors(path: str, out: str) -> str:
    """Scalar per-configuration observables of a Markov-chain ensemble as a pyerrors json.gz file
    (replicas ``<file stem>|r01``, … one per chain, in Monte Carlo order)."""
    from pathlib import Path

    from ..analysis import dump_pyerrors_json

    with open_ensemble(path) as ens:
        keys = set(ens.keys())
        if "chain" not in keys:
            raise ValueError(f"{path}: pyerrors export needs a Markov chain ensemble (hmc or nmcmc), not i.i.d. flow samples")
        chain, mc = ens["chain"], ens["mc_index"]
        obs = {}
        for key in sorted(k for k in keys if k.startswith("observables/")):
            values = ens[key]
            if values.ndim == 1:
                obs[key.split("/", 1)[1]] = split_replicas(values.astype(np.float64), chain, mc)
        obs["action"] = split_replicas(ens["action"], chain, mc)
        theory = ens.theory
    written = dump_pyerrors_json(out, obs, ensemble=Path(path).stem, description=f"latticeflow {theory} ensemble {path}")
    return str(written)
