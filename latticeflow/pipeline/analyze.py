"""`latticeflow analyze`: observables of an HDF5 ensemble with Gamma-method errors and exact values.

Markov-chain ensembles (datasets ``chain``/``mc_index``) are split into one replica per chain and
analysed with the Gamma method (Wolff 2004); derived quantities (connected susceptibility, Binder
cumulant, effective mass) by linearised error propagation. Where the theory has an exact result
(free field at λ = 0; 2D U(1) on the torus) it is printed beside the estimate with the pull in σ.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actions import build_theory
from ..analysis import (GammaResult, ObservableRow, format_table, gamma_method, gamma_method_derived, jackknife,
                        reverse_ess, split_replicas)
from ..analysis.verdict import format_verdict, markov_checks, verdict, weight_checks
from ..io import open_ensemble

__all__ = ["EnsembleAnalysis", "REFERENCE_FILE", "analyze", "export_pyerrors", "reference_beside"]


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
    main: tuple[str, ...] = ()

    def row(self, name: str) -> ObservableRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no observable {name!r}; have {[r.name for r in self.rows]}")

    def table(self) -> str:
        coup = ", ".join(f"{k}={v:g}" for k, v in self.couplings.items())
        title = f"{self.path}: {self.theory} {'x'.join(map(str, self.shape))}, {coup}, {self.n_rows} configurations"
        from ..analysis.correlators import correlator_lines

        text = format_table(self.rows, title=title) + "".join("\n" + line for line in correlator_lines(self.extra))
        return text + ("\n" + format_verdict(self.extra["verdict"]) if "verdict" in self.extra else "")

    def judge(self, thresholds: dict[str, float] | None = None, reference: "EnsembleAnalysis | None" = None) -> dict:
        """(Re)compute the verdict with ``thresholds`` and, with a ``reference`` ensemble (HMC), the pulls
        of the main observables against it; stored in ``extra["verdict"]`` and returned.

        A main observable with an exact value is judged against that value only; the reference judges the
        others, and only if its own verdict is reliable (a frozen HMC reference cannot call a correct
        ensemble wrong: ``checks["reference_ignored"]`` says why it was not used)."""
        checks = dict(self.extra.get("checks", {}))
        pulls, ref_name = {}, "exact value"
        for r in self.rows:
            if r.name in self.main and r.exact is not None:
                p = r.pull()
                if p is not None:
                    pulls[f"{r.name} (exact)"] = p
        checks.pop("reference_ignored", None)
        if reference is not None and not reference.extra.get("verdict", {}).get("reliable", True):
            checks["reference_ignored"] = "the reference ensemble's own verdict is unreliable"
            reference = None
        if reference is not None:
            ref_name = "reference / exact value"
            for r in self.rows:
                if r.name not in self.main or r.exact is not None:
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
                "n_rows": self.n_rows, "main_observables": list(self.main), "observables": obs, **self.extra}


def _checks(ens, keys: set, chain, mc_index, rows: list, table_rows: list, weighted: bool) -> dict[str, Any]:
    """The figures of the verdict: R̂ and τ_int coverage (Markov chains), Pareto k̂, rejection runs."""
    checks: dict[str, Any] = {}
    if weighted:
        checks.update(weight_checks(ens["log_weight"], "flow weights"))
        return checks
    if chain is not None:
        series, taus = {}, {}
        by_name = {r.name: r for r in rows}
        for spec in table_rows:
            if not spec.main or spec.func is not None:
                continue
            key, name = spec.inputs[0], spec.name
            series[name] = [spec.factor * r for r in _replicas(ens, f"observables/{key}", chain, mc_index)]
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


class _Observables(Mapping):
    """``observables/<name>`` of an open ensemble as a read-only mapping, each loaded only when asked for."""

    def __init__(self, ens, keys: set) -> None:
        self._ens = ens
        self._names = sorted(k.split("/", 1)[1] for k in keys if k.startswith("observables/"))

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self._ens[f"observables/{name}"]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _series(ens, spec_input, chain, mc_index, cache: dict) -> list[np.ndarray]:
    """Replicas of one table input: an observable name, or ``(name, index)`` for one component of an array."""
    key, index = (spec_input, None) if isinstance(spec_input, str) else spec_input
    if key not in cache:
        cache[key] = _replicas(ens, f"observables/{key}", chain, mc_index)
    reps = cache[key]
    return reps if index is None else [r[(slice(None), *index)] for r in reps]


def _table(theory, ens, chain, mc_index, st: _Stats, rows: list) -> None:
    """The theory's table rows (`actions.TableRow`): primary means or derived functions of means; a row whose input
    the ensemble lacks (written before that observable existed) is left out."""
    cache: dict = {}
    stored = set(ens.keys())
    for spec in theory.table_rows():
        if any(f"observables/{i if isinstance(i, str) else i[0]}" not in stored for i in spec.inputs):
            continue
        data = [_series(ens, i, chain, mc_index, cache) for i in spec.inputs]
        if spec.func is None:
            result = st.primary([spec.factor * r for r in data[0]])
        else:
            result = st.derived(spec.func, data)
        rows.append(ObservableRow(spec.name, result, spec.exact))


def _measured(ens, keys: set, chain, mc_index, st: _Stats, rows: list, extra: dict) -> None:
    """Observables added by `latticeflow measure`: a scalar is one more table row; an array gets its per-component
    mean, error and τ_int in ``extra["measured"][name]`` (components beyond 256 are left to the user)."""
    from ..io.measured import MEASURED_ATTR

    for key in sorted(keys):
        if not key.startswith("observables/") or MEASURED_ATTR not in ens.dataset(key).attrs:
            continue
        name = key.split("/", 1)[1]
        reps = [np.asarray(r, dtype=np.float64) if np.isrealobj(r) else np.asarray(r.real, dtype=np.float64)
                for r in _replicas(ens, key, chain, mc_index)]
        if reps[0].ndim == 1:
            rows.append(ObservableRow(name, st.primary(reps), None))
            continue
        shape = reps[0].shape[1:]
        flat = [r.reshape(len(r), -1) for r in reps]
        comps = [st.primary([f[:, i] for f in flat]) for i in range(min(flat[0].shape[1], 256))]
        extra.setdefault("measured", {})[name] = {
            "shape": list(shape), "mean": [c.mean for c in comps], "error": [c.error for c in comps],
            "tau_int": [c.tau_int for c in comps]}


def _correlators(theory, ens, keys: set, chain, mc_index, st: _Stats, extra: dict) -> None:
    """G(t, 0, …) along axis 0 (with the theory's exact G where known) and the effective mass
    arccosh[(C(t−1) + C(t+1))/(2C(t))] of the zero-momentum correlator, for theories that measure them."""
    L0 = ens.shape[0]
    if "observables/two_point" in keys:
        g_exact = theory.two_point_exact() if hasattr(theory, "two_point_exact") else None
        origin = (0,) * (len(ens.shape) - 1)
        g_rows = _replicas(ens, "observables/two_point", chain, mc_index)
        correlator = []
        for t in range(L0 // 2 + 1):
            res = st.primary([r[(slice(None), t, *origin)] for r in g_rows])
            exact_g = float(g_exact[(t, *origin)]) if g_exact is not None else None
            correlator.append({"t": t, **res.as_dict(), "exact": exact_g})
        extra["two_point_G_t0"] = correlator
    name = "observables/" + getattr(theory, "correlator_observable", "zero_momentum_correlator")
    if name in keys:
        c_rows = _replicas(ens, name, chain, mc_index)
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
        extra["effective_mass"] = m_eff
        if st.w is None:  # Markov chains only: i.i.d. reweighted flow samples get m_eff(t) alone
            extra.update(_correlator_fit(c_rows, L0, st.S))


def _correlator_fit(c_rows: list[np.ndarray], L0: int, S: float, p_min: float = 0.05) -> dict[str, Any]:
    """C(t) with Gamma-method errors and the correlated fit A (e^{−m t} + e^{−m (L0−t)}) over t = t_min … L0/2
    (T = L0; C(L0 − t) = C(t) repeats the first half) with the full windowed covariance
    (`latticeflow.analysis.gamma_array`). t_min is the smallest t ≥ 1 whose fit has p ≥ ``p_min`` (excited
    states die off: the plateau search a physicist does by eye); with none, the largest t_min with a fit, flagged.
    Where the windowed covariance is not positive definite, the window-0 correlation scaled by the Gamma-method
    errors is used (pyerrors' choice), and said so. A failed fit is one line under "error"."""
    from ..analysis.gamma_array import correlated_fit, gamma_method_array

    res = gamma_method_array(c_rows, S=S)
    out: dict[str, Any] = {"correlator": [{"t": t, "mean": float(res.mean[t]), "error": float(res.error[t]),
                                           "tau_int": float(res.tau_int[t])} for t in range(L0)]}
    cov, how = res.covariance, "windowed (Gamma method)"
    if not res.positive_semidefinite or np.linalg.eigvalsh(cov[1:L0 // 2 + 1, 1:L0 // 2 + 1]).min() <= 0:
        x = np.concatenate([np.asarray(r, dtype=np.float64).reshape(len(r), -1) for r in c_rows])
        with np.errstate(invalid="ignore", divide="ignore"):
            rho0 = np.nan_to_num(np.corrcoef(x, rowvar=False))
        cov, how = rho0 * np.outer(res.error, res.error), "window-0 correlation × Gamma-method errors"
    t_max, chosen, last, error = L0 // 2, None, None, "no fit window with at least one degree of freedom"
    for t_min in range(1, max(t_max - 1, 1)):
        try:
            fit = correlated_fit(np.arange(L0), res.mean, cov, model="cosh", T=L0, t_min=t_min, t_max=t_max)
        except ValueError as err:
            error = str(err)
            continue
        last = fit
        if fit.p_value >= p_min:
            chosen = fit
            break
    if last is None:
        out["correlator_fit"] = {"error": error, "t_min": 1, "t_max": t_max}
        return out
    fit = chosen or last
    out["correlator_fit"] = {**fit.as_dict(), "covariance": how, "t_min_rule": f"smallest t_min with p >= {p_min:g}",
                             "plateau_found": chosen is not None,
                             "covariance_positive_semidefinite": res.positive_semidefinite}
    return out


def _free_energy(log_weight: np.ndarray, theory) -> dict[str, Any]:
    """ln Z = ln mean(w) with error √(1/ESS − 1/N) (delta method), reverse ESS, and the theory's exact ln Z
    (Lebesgue measure on the field space) where known."""
    n = len(log_weight)
    m = log_weight.max()
    log_z = float(m + np.log(np.mean(np.exp(log_weight - m))))
    ess = reverse_ess(log_weight)
    out = {"reverse_ess": ess, "log_z": log_z, "log_z_error": math.sqrt(max(1 / (ess * n) - 1 / n, 0.0))}
    exact_log_z = theory.log_z_exact()
    if exact_log_z is not None:
        out["log_z_exact"] = exact_log_z
    return out


def _check_integrity(ens) -> None:
    """Every batch's checksums too when the file is small enough to re-read cheaply (the datasets the analysis
    reads are checked as they are read anyway): a damaged file is one line, not a verdict."""
    from ..io.verify import RESUME_FULL_BYTES

    here = os.path.dirname(os.path.abspath(ens.path))
    files = [os.path.join(here, str(s)) for s in ens.attrs.get("shard_files", [])] or [ens.path]  # a master: its shards
    if sum(os.path.getsize(p) for p in files if os.path.exists(p)) <= RESUME_FULL_BYTES:
        report = ens.verify()
        if not report.ok:
            raise ValueError(f"damaged ensemble: {report.lines()[0]} (latticeflow verify {ens.path})")


#: The HMC reference ensemble `latticeflow run` writes beside a flow ensemble.
REFERENCE_FILE = "ensemble_hmc.h5"


def reference_beside(path: str | os.PathLike) -> str | None:
    """``<dir>/ensemble_hmc.h5`` beside the ensemble at ``path`` (not the reference itself), if it exists."""
    p = Path(path)
    ref = p.with_name(REFERENCE_FILE)
    return str(ref) if p.name != REFERENCE_FILE and ref.is_file() else None


def analyze(path: str, S: float = 2.0, thresholds: dict[str, float] | None = None,
            reference: "EnsembleAnalysis | str | None" = "auto") -> EnsembleAnalysis:
    """Analyse the ensemble at ``path``: observables, HMC diagnostics, exact values where known, and the
    trust verdict (`latticeflow.analysis.verdict`; ``thresholds`` override its defaults).

    ``reference``: an HMC reference (its analysis or its file) that judges the main observables without an
    exact value (`EnsembleAnalysis.judge`); ``"auto"`` (default) takes ``ensemble_hmc.h5`` beside ``path`` when
    `latticeflow run` wrote one, so that ``analyze`` and ``run`` give the same verdict on the same file;
    ``None``: no reference."""
    with open_ensemble(path) as ens:  # checks the structure, and the checksums of every dataset read
        _check_integrity(ens)
        if ens.n_rows < 2:
            raise ValueError(f"{path} holds {ens.n_rows} configurations; the analysis needs at least 2")
        keys = set(ens.keys())
        chain = ens["chain"] if "chain" in keys else None
        mc_index = ens["mc_index"] if "mc_index" in keys else None
        try:
            theory = build_theory(ens.theory, ens.shape, ens.couplings)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        table_rows = theory.table_rows()
        rows: list[ObservableRow] = []
        extra: dict[str, Any] = {}
        weighted = chain is None and "log_weight" in keys
        log_weight = ens["log_weight"] if "log_weight" in keys else None
        st = _Stats(S, log_weight if weighted else None)
        _table(theory, ens, chain, mc_index, st, rows)
        _correlators(theory, ens, keys, chain, mc_index, st, extra)
        _measured(ens, keys, chain, mc_index, st, rows, extra)
        extra.update(theory.extra_analysis(_Observables(ens, keys), st.w))
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
            fe = _free_energy(log_weight, theory)
            extra.update(fe)
            rows.append(ObservableRow("ln Z", st._result(fe["log_z"], fe["log_z_error"], len(log_weight)),
                                      fe.get("log_z_exact")))
        else:
            extra["estimator"] = "Gamma method (chains as replicas)"
        extra["checks"] = _checks(ens, keys, chain, mc_index, rows, table_rows, weighted)
        result = EnsembleAnalysis(path=str(path), theory=ens.theory, couplings=dict(ens.couplings),
                                  shape=tuple(ens.shape), n_rows=ens.n_rows, rows=rows, extra=extra,
                                  main=tuple(r.name for r in table_rows if r.main))
    if isinstance(reference, str):
        ref_path = reference_beside(path) if reference == "auto" else reference
        reference = None if ref_path is None else analyze(ref_path, S, thresholds, reference=None)
    if reference is not None:
        if (reference.theory, reference.couplings, reference.shape) != (result.theory, result.couplings, result.shape):
            raise ValueError(f"reference {reference.path} is {reference.theory} {reference.shape} {reference.couplings}, "
                             f"not the {result.theory} {result.shape} {result.couplings} of {path}")
        result.extra["reference"] = reference.path
    result.judge(thresholds, reference=reference)
    return result


def export_pyerrors(path: str, out: str) -> str:
    """Every per-configuration observable of a Markov-chain ensemble as a pyerrors json.gz file (replicas
    ``<file stem>|r01``, … one per chain, in Monte Carlo order): scalars as "Obs", C(t) as "Corr", higher-rank
    arrays such as G(x) as "Array" (`latticeflow.analysis.export`)."""

    from ..analysis import dump_pyerrors_json

    with open_ensemble(path) as ens:
        keys = set(ens.keys())
        if "chain" not in keys:
            raise ValueError(f"{path}: pyerrors export needs a Markov chain ensemble (hmc or nmcmc), not i.i.d. flow samples")
        chain, mc = ens["chain"], ens["mc_index"]
        obs = {}
        for key in sorted(k for k in keys if k.startswith("observables/")):  # scalars: "Obs"; arrays: "Corr"/"Array"
            values, name = ens[key], key.split("/", 1)[1]
            parts = {f"{name}.re": values.real, f"{name}.im": values.imag} if np.iscomplexobj(values) else {name: values}
            obs.update({n: split_replicas(v.astype(np.float64), chain, mc) for n, v in parts.items()})
        obs["action"] = split_replicas(ens["action"], chain, mc)
        theory = ens.theory
    written = dump_pyerrors_json(out, obs, ensemble=Path(path).stem, description=f"latticeflow {theory} ensemble {path}")
    return str(written)
