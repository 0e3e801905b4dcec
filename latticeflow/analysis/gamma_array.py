"""Gamma method for array observables, effective masses and correlated fits of correlators.

Array observable a_i = (a_i^1 .. a_i^k) per configuration i (any shape, flattened), replicas
r = 1..R as in :func:`latticeflow.analysis.gamma.gamma_method` (U. Wolff, Comput. Phys. Commun.
156 (2004) 143 [hep-lat/0306017]):

* each component gets exactly the scalar analysis (mean, error, tau_int, window W_a);
* cross autocovariance with global means, by FFT::

      Gamma_ab(t) = sum_r sum_{i=1}^{N_r-t} (a_i^r - abar)(b_{i+t}^r - bbar) / sum_r (N_r - t)

* covariance of the means over the window W_ab = max(W_a, W_b) (the slower of the two modes
  must be summed for the truncation bias to stay small; the noise grows only as sqrt(W))::

      C_ab = Gamma_ab(0) + sum_{t=1}^{W_ab} [Gamma_ab(t) + Gamma_ba(t)],   cov_ab = C_ab / N

  with Wolff's bias correction Gamma_ab(t) -> Gamma_ab(t) + C_ab/N, i.e.
  C_ab -> C_ab (1 + (2 W_ab + 1)/N), so that diag(cov) = error^2 exactly;
* a windowed covariance need not be positive semi-definite.  If it is not
  (``positive_semidefinite`` False), the correlation matrix cov_ab/(sigma_a sigma_b) has its
  negative eigenvalues set to 0 and is brought back to unit diagonal, then rescaled by the
  errors: the result is PSD, keeps diag = error^2, but may be singular.  (pyerrors'
  ``covariance`` instead always rescales the window-0 correlation Gamma_ab(0)/sqrt(Gamma_aa(0)
  Gamma_bb(0)) by the full errors, i.e. assumes tau_ab = sqrt(tau_a tau_b); ours measures the
  cross autocorrelation and agrees with that construction when it holds.)

Effective masses m(t) = arccosh[(C(t-1) + C(t+1))/(2 C(t))] ("cosh") or ln[C(t)/C(t+1)] ("log")
are derived quantities (:func:`gamma_method_derived`).  :func:`correlated_fit` fits
A (e^{-m t} + e^{-m (T-t)}) or A e^{-m t} by minimising chi^2 = r^T Cov^{-1} r, whitened with the
Cholesky factor Cov = L L^T, parameter covariance (J^T Cov^{-1} J)^{-1} (e.g. DeGrand & DeTar,
"Lattice methods for QCD", ch. 11).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as _fft

from .gamma import GammaResult, _analyse, _check_S, _max_lag, _to_numpy, gamma_method_derived

__all__ = ["GammaArrayResult", "gamma_method_array", "EffectiveMass", "effective_mass",
           "CorrelatorFit", "correlated_fit"]


@dataclass(frozen=True, eq=False)
class GammaArrayResult:
    """Per-component Gamma-method results (arrays of the observable's ``shape``) and the k x k
    ``covariance`` of the flattened means (``covariance_windowed`` before the PSD fix)."""

    shape: tuple[int, ...]
    mean: np.ndarray
    error: np.ndarray
    error_of_error: np.ndarray
    tau_int: np.ndarray
    tau_int_error: np.ndarray
    window: np.ndarray
    covariance: np.ndarray
    covariance_windowed: np.ndarray
    positive_semidefinite: bool
    n: int
    n_replicas: int

    def correlation(self) -> np.ndarray:
        """cov_ab / (sigma_a sigma_b), 0 where an error vanishes (1 on its diagonal)."""
        err = self.error.reshape(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = self.covariance / np.outer(err, err)
        corr[~np.isfinite(corr)] = 0.0
        np.fill_diagonal(corr, 1.0)
        return corr

    def component(self, index: int | tuple[int, ...]) -> GammaResult:
        """The scalar :class:`GammaResult` of one component (flat index or index tuple)."""
        idx = np.unravel_index(index, self.shape) if isinstance(index, (int, np.integer)) else index
        return GammaResult(float(self.mean[idx]), float(self.error[idx]),
                           float(self.error_of_error[idx]), float(self.tau_int[idx]),
                           float(self.tau_int_error[idx]), int(self.window[idx]), self.n,
                           self.n_replicas)


def _as_array_replicas(data: object, who: str) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Replicas as (N_r, k) float arrays and the per-configuration shape.

    One array (N, ...) is one replica (axis 0 = Monte Carlo time); a list of arrays (N_r, ...)
    is one replica each; a plain list of numbers is one scalar series."""
    data = _to_numpy(data)
    if isinstance(data, np.ndarray):
        reps = [data]
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if len(data) == 0:
            raise ValueError(f"{who} got no data (an empty list of replicas)")
        reps = [_to_numpy(d) for d in data]
        if all(np.ndim(d) == 0 for d in reps):
            reps = [np.asarray(reps)]
    else:
        raise ValueError(f"{who} expects an array (N, ...) or a list of replicas (N_r, ...), "
                         f"got {type(data).__name__}")
    out, shape = [], None
    for r, rep in enumerate(reps):
        arr = np.asarray(rep, dtype=np.float64)
        if arr.ndim == 0:
            raise ValueError(f"{who}: replica {r} must be an array (N_r, ...), got a scalar")
        if shape is None:
            shape = arr.shape[1:]
        elif arr.shape[1:] != shape:
            raise ValueError(f"{who}: replica {r} has per-configuration shape {arr.shape[1:]}, "
                             f"replica 0 has {shape}")
        if arr.shape[0] < 2:
            raise ValueError(f"{who} needs at least 2 samples per replica, got {arr.shape[0]}")
        if int(np.prod(shape)) == 0:
            raise ValueError(f"{who}: the observable has no components (shape {shape})")
        if not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))[0].tolist()
            raise ValueError(f"{who}: replica {r} contains a non-finite value at index {bad}")
        out.append(arr.reshape(arr.shape[0], -1))
    return out, tuple(shape)


def _cross_sums(reps: Sequence[np.ndarray], means: np.ndarray, max_w: int) -> np.ndarray:
    """Gamma_ab(t), t = 0..max_w, as an array (k, k, max_w + 1)."""
    k = means.size
    total = np.zeros((k, k, max_w + 1))
    lags = np.arange(max_w + 1)
    counts = np.zeros(max_w + 1)
    for rep in reps:  # one FFT per replica and component, one inverse FFT per pair
        n = rep.shape[0]
        nfft = _fft.next_fast_len(n + max_w + 1, real=True)  # no circular wrap-around
        spec = _fft.rfft(rep - means, nfft, axis=0)  # (nf, k)
        for a in range(k):
            # sum_i delta_a(i) delta_b(i + t) = irfft(conj(A) B)(t)
            cc = _fft.irfft(np.conj(spec[:, a:a + 1]) * spec, nfft, axis=0)[: max_w + 1]
            total[a, :, : min(n, max_w + 1)] += cc[: min(n, max_w + 1)].T
        counts += np.maximum(n - lags, 0)
    return total / counts


def _make_psd(cov: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, bool]:
    """(cov, True) if PSD, else the eigenvalue-clipped, unit-diagonal correlation times errors."""
    live = err > 0
    if not live.any():
        return cov, True
    sub = cov[np.ix_(live, live)] / np.outer(err[live], err[live])
    lam, vec = np.linalg.eigh(sub)
    if lam.min() >= -1e-12 * max(lam.max(), 1.0):
        return cov, True
    fixed = (vec * np.clip(lam, 0.0, None)) @ vec.T
    d = np.sqrt(np.diag(fixed))
    fixed = fixed / np.outer(d, d)
    out = np.zeros_like(cov)
    out[np.ix_(live, live)] = fixed * np.outer(err[live], err[live])
    np.fill_diagonal(out, err**2)
    return out, False


def gamma_method_array(data: np.ndarray | Sequence[np.ndarray], S: float = 2.0
                       ) -> GammaArrayResult:
    """Gamma-method means, errors, tau_int per component and covariance of an array observable.

    ``data``: one array (N, ...) (one replica, axis 0 = Monte Carlo time) or a list of replicas
    (N_r, ...).  Component a equals ``gamma_method`` of that component; the covariance is
    C_ab/N with C_ab summed over W_ab = max(W_a, W_b) and bias-corrected (module docstring).
    """
    who = "gamma_method_array"
    S = _check_S(S, who)
    reps, shape = _as_array_replicas(data, who)
    k = reps[0].shape[1]
    n = int(sum(rep.shape[0] for rep in reps))
    means = sum(rep.sum(axis=0) for rep in reps) / n
    scalar = []
    for a in range(k):  # loop over components: exactly the scalar analysis
        comp = [rep[:, a] for rep in reps]
        mean_a = sum(float(c.sum()) for c in comp) / n
        scalar.append(_analyse(comp, mean_a, S, who))
    err = np.array([s.error for s in scalar])
    win = np.array([s.window for s in scalar], dtype=np.int64)
    max_w = min(int(win.max()), _max_lag(reps))
    gamma = _cross_sums(reps, means, max_w)
    w_ab = np.maximum.outer(win, win)
    csum = np.concatenate([np.zeros((k, k, 1)), np.cumsum(gamma[:, :, 1:], axis=2)], axis=2)
    partial = np.take_along_axis(csum, w_ab[:, :, None], axis=2)[:, :, 0]
    c_ab = gamma[:, :, 0] + partial + partial.T
    c_ab = c_ab * (1.0 + (2.0 * w_ab + 1.0) / n)  # Wolff's bias correction
    cov = c_ab / n
    dead = err == 0  # constant components and the scalar fallbacks: no fluctuation
    cov[dead, :] = 0.0
    cov[:, dead] = 0.0
    np.fill_diagonal(cov, err**2)
    fixed, psd = _make_psd(cov, err)

    def arr(name: str, dtype: type = np.float64) -> np.ndarray:
        return np.array([getattr(s, name) for s in scalar], dtype=dtype).reshape(shape)

    return GammaArrayResult(shape, arr("mean"), arr("error"), arr("error_of_error"),
                            arr("tau_int"), arr("tau_int_error"), arr("window", np.int64),
                            fixed, cov, psd, n, len(reps))


@dataclass(frozen=True, eq=False)
class EffectiveMass:
    """m_eff(t) with Gamma-method errors; NaN where the definition fails (e.g. arg < 1)."""

    kind: str
    t: np.ndarray
    mean: np.ndarray
    error: np.ndarray
    tau_int: np.ndarray


def _meff_cosh(cm: float, c0: float, cp: float) -> float:
    arg = (cm + cp) / (2.0 * c0)
    return math.acosh(arg) if arg >= 1.0 else math.nan


def _meff_log(c0: float, cp: float) -> float:
    ratio = c0 / cp
    return math.log(ratio) if ratio > 0 else math.nan


def effective_mass(replicas: np.ndarray | Sequence[np.ndarray], S: float = 2.0,
                   kind: str = "cosh") -> EffectiveMass:
    """m_eff(t) of a correlator C(t) given as (N, T) or a list of replicas (N_r, T).

    kind "cosh": arccosh[(C(t-1) + C(t+1))/(2 C(t))], t = 1..T-2; "log": ln[C(t)/C(t+1)],
    t = 0..T-2; errors by linearised propagation (:func:`gamma_method_derived`).
    """
    who = "effective_mass"
    if kind not in ("cosh", "log"):
        raise ValueError(f"{who}: kind must be 'cosh' or 'log', got {kind!r}")
    reps, shape = _as_array_replicas(replicas, who)
    if len(shape) != 1 or shape[0] < 3:
        raise ValueError(f"{who} needs a correlator C(t) with T >= 3 per configuration, "
                         f"got per-configuration shape {shape}")
    T = shape[0]
    ts = np.arange(1, T - 1) if kind == "cosh" else np.arange(0, T - 1)
    mean, error, tau = (np.full(ts.size, np.nan) for _ in range(3))
    for j, t in enumerate(ts):  # loop over time slices
        if kind == "cosh":
            func, cols = _meff_cosh, (t - 1, t, t + 1)
        else:
            func, cols = _meff_log, (t, t + 1)
        try:
            res = gamma_method_derived(func, [[r[:, c] for r in reps] for c in cols], S=S)
        except (ValueError, ZeroDivisionError):
            continue
        mean[j], error[j], tau[j] = res.mean, res.error, res.tau_int
    return EffectiveMass(kind, ts, mean, error, tau)


@dataclass(frozen=True, eq=False)
class CorrelatorFit:
    """Correlated fit of A (e^{-m t} + e^{-m (T-t)}) ("cosh") or A e^{-m t} ("exp")."""

    model: str
    amplitude: float
    amplitude_error: float
    mass: float
    mass_error: float
    chi2: float
    dof: int
    chi2_dof: float
    p_value: float
    t_min: int
    t_max: int
    T: float | None
    parameter_covariance: np.ndarray = field(repr=False)

    def model_values(self, t: np.ndarray) -> np.ndarray:
        """The fitted model at times ``t``."""
        return _model(self.model, self.T, np.asarray(t, dtype=np.float64),
                      np.array([self.amplitude, self.mass]))[0]

    def as_dict(self) -> dict:
        """Plain-Python dict (JSON-serialisable; non-finite floats become None)."""
        out: dict = {}
        for key in ("model", "amplitude", "amplitude_error", "mass", "mass_error", "chi2", "dof",
                    "chi2_dof", "p_value", "t_min", "t_max", "T"):
            val = getattr(self, key)
            if isinstance(val, float):
                val = val if math.isfinite(val) else None
            out[key] = val
        return out


def _model(model: str, T: float | None, t: np.ndarray, p: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Model values and Jacobian (n, 2) with respect to (A, m)."""
    amp, m = p
    if model == "cosh":
        e1, e2 = np.exp(-m * t), np.exp(-m * (T - t))
        return amp * (e1 + e2), np.stack([e1 + e2, -amp * (t * e1 + (T - t) * e2)], axis=1)
    e1 = np.exp(-m * t)
    return amp * e1, np.stack([e1, -amp * t * e1], axis=1)


def correlated_fit(t: np.ndarray, mean: np.ndarray, covariance: np.ndarray,
                   model: str = "cosh", T: float | None = None, t_min: int | None = None,
                   t_max: int | None = None) -> CorrelatorFit:
    """Fully correlated least-squares fit of C(t), t_min <= t <= t_max, to ``model``.

    chi^2 = r^T Cov^{-1} r with r = f(t) - C(t), whitened by Cov = L L^T and minimised with
    ``scipy.optimize.least_squares``; errors from (J^T Cov^{-1} J)^{-1}, p-value from the chi^2
    distribution with dof = n_points - 2.  ``T`` (period, "cosh" only) defaults to len(t) when
    t = 0..len(t)-1.
    """
    who = "correlated_fit"
    if model not in ("cosh", "exp"):
        raise ValueError(f"{who}: model must be 'cosh' or 'exp', got {model!r}")
    t = np.asarray(_to_numpy(t), dtype=np.float64).reshape(-1)
    y = np.asarray(_to_numpy(mean), dtype=np.float64).reshape(-1)
    cov = np.asarray(_to_numpy(covariance), dtype=np.float64)
    if y.size != t.size or cov.shape != (t.size, t.size):
        raise ValueError(f"{who}: t has {t.size} points, mean {y.size} and covariance shape "
                         f"{cov.shape}; need n, n and (n, n)")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(cov))):
        raise ValueError(f"{who}: mean and covariance must be finite")
    if model == "cosh" and T is None:
        if not np.array_equal(t, np.arange(t.size)):
            raise ValueError(f"{who}: model 'cosh' needs the period T unless t = 0..n-1")
        T = float(t.size)
    lo = t.min() if t_min is None else t_min
    hi = t.max() if t_max is None else t_max
    sel = (t >= lo) & (t <= hi)
    if sel.sum() < 3:
        raise ValueError(f"{who}: fit range t_min={t_min}, t_max={t_max} holds {int(sel.sum())} "
                         "points; need at least 3 (2 parameters, dof >= 1)")
    ts, ys, cs = t[sel], y[sel], cov[np.ix_(sel, sel)]
    lam = np.linalg.eigvalsh(cs)
    if lam.min() <= 1e-14 * abs(lam.max()):
        raise ValueError(f"{who}: the covariance of t = {ts[0]:g}..{ts[-1]:g} is singular or not "
                         f"positive definite (eigenvalues {lam.min():.3g} .. {lam.max():.3g})")
    chol = np.linalg.cholesky(cs)

    def whiten(v: np.ndarray) -> np.ndarray:
        return np.linalg.solve(chol, v)  # L^{-1} v (small n: a dense solve is fine)

    ratio = ys[0] / ys[1] if ys[1] != 0 else math.nan
    m0 = math.log(ratio) if ratio > 1 else 0.5
    m0 = min(max(m0, 1e-3), 10.0)
    a0 = ys[0] / _model(model, T, ts[:1], np.array([1.0, m0]))[0][0]

    from scipy import optimize, stats  # here, not at import: scipy.stats costs every process ~0.3 s

    def solve(p0: np.ndarray) -> optimize.OptimizeResult:
        return optimize.least_squares(lambda p: whiten(_model(model, T, ts, p)[0] - ys), p0,
                                      jac=lambda p: whiten(_model(model, T, ts, p)[1]),
                                      x_scale="jac", method="lm")

    fit = solve(np.array([a0, m0]))
    if model == "cosh" and fit.x[1] < 0:  # m -> -m, A -> A e^{m T} is the same curve
        fit = solve(np.array([fit.x[0] * math.exp(fit.x[1] * T), -fit.x[1]]))
    if not fit.success:
        raise ValueError(f"{who}: the fit did not converge ({fit.message})")
    jw = fit.jac
    pcov = np.linalg.pinv(jw.T @ jw)
    chi2 = float(fit.fun @ fit.fun)
    dof = int(ts.size - 2)
    return CorrelatorFit(model, float(fit.x[0]), float(math.sqrt(max(pcov[0, 0], 0.0))),
                         float(fit.x[1]), float(math.sqrt(max(pcov[1, 1], 0.0))), chi2, dof,
                         chi2 / dof, float(stats.chi2.sf(chi2, dof)), int(ts[0]), int(ts[-1]),
                         None if T is None else float(T), pcov)
