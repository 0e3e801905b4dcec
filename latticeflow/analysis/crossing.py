"""Crossing of two finite-size curves, e.g. Binder cumulants U_L(κ) and U_2L(κ), with a parametric bootstrap error.

At a continuous transition U_L(κ) = f((κ − κ_c) L^{1/ν}) up to corrections to scaling, so the curves of two
sizes cross near κ_c (Binder, Z. Phys. B 43, 119 (1981)). `binder_crossing` finds where the difference
D(κ) = U_L(κ) − U_2L(κ) changes sign between two scan points, fits each curve locally there (the ``2 · window``
points around the sign change) by a polynomial of degree ``degree`` in κ, weighted by 1/error (least squares,
``numpy.polyfit``), and returns the root of the difference of the two fits inside the window. Its error is the
standard deviation of that root over ``n_boot`` parametric bootstrap resamples, each point's U drawn from
N(mean, error²) independently (the scan points are independent runs), with the window held fixed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Crossing", "binder_crossing"]

_GRID = 2001  # points of the fine κ grid on which the fitted difference is searched for its root


@dataclass
class Crossing:
    """The crossing ``value`` ± ``error`` (NaN with a ``note`` where the curves do not cross in the scan), the
    fit ``window`` [κ_lo, κ_hi] with its ``n_points`` and ``degree``, and the bootstrap (``n_boot`` resamples
    from ``seed``; ``n_failed`` of them had no root in the window)."""

    value: float
    error: float
    window: tuple[float, float]
    n_points: int
    degree: int
    n_boot: int
    n_failed: int
    seed: int
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window)
        return d


def _as_arrays(kappas, *curves) -> list[np.ndarray]:
    out = [np.asarray(kappas, dtype=np.float64)]
    for c in curves:
        out.append(np.asarray(c, dtype=np.float64))
    n = len(out[0])
    if out[0].ndim != 1 or n < 2 or any(a.shape != (n,) for a in out):
        raise ValueError(f"binder_crossing needs 1-d arrays of equal length >= 2, got shapes "
                         f"{[a.shape for a in out]}")
    if not all(np.isfinite(a).all() for a in out):
        raise ValueError("binder_crossing: kappas, values and errors must be finite")
    if not (out[2] > 0).all() or not (out[4] > 0).all():
        raise ValueError("binder_crossing: errors must be > 0")
    if len(np.unique(out[0])) != n:
        raise ValueError(f"binder_crossing: kappas must be distinct, got {out[0].tolist()}")
    return out


def _roots(grid: np.ndarray, diff: np.ndarray) -> list[np.ndarray]:
    """Per column of ``diff (G, B)`` on ``grid (G,)``: the κ of every sign change (linear interpolation)."""
    s = np.sign(diff)
    out = []
    for b in range(diff.shape[1]):
        idx = np.nonzero(s[:-1, b] * s[1:, b] <= 0)[0]
        d0, d1 = diff[idx, b], diff[idx + 1, b]
        t = np.where(d0 == d1, 0.0, d0 / np.where(d0 == d1, 1.0, d0 - d1))
        out.append(grid[idx] + t * (grid[idx + 1] - grid[idx]))
    return out


def binder_crossing(kappas, u_small, err_small, u_large, err_large, *, window: int = 2, degree: int = 2,
                    n_boot: int = 1000, seed: int = 0) -> Crossing:
    """Where U_small(κ) = U_large(κ) between the scan points ``kappas`` (see the module docstring).

    Of several sign changes of D = U_small − U_large (noise), the most significant one is taken: the largest
    |D_i|/σ_i + |D_{i+1}|/σ_{i+1}. ``window`` points on each side of it enter the fits (fewer at the ends of the
    scan), the degree is at most the number of points − 1. No sign change: ``value`` NaN and a ``note``.

    Example:
        >>> k = np.linspace(0.3, 0.4, 11)
        >>> c = binder_crossing(k, 0.3 - (k - 0.35), np.full(11, 0.01), 0.3 - 2 * (k - 0.35), np.full(11, 0.01))
        >>> round(c.value, 6), c.n_points
        (0.35, 4)
    """
    if window < 1 or degree < 0 or n_boot < 2:
        raise ValueError(f"binder_crossing: window >= 1, degree >= 0 and n_boot >= 2 needed, got {window}, {degree}, "
                         f"{n_boot}")
    k, us, es, ul, el = _as_arrays(kappas, u_small, err_small, u_large, err_large)
    order = np.argsort(k)
    k, us, es, ul, el = k[order], us[order], es[order], ul[order], el[order]
    d, sigma = us - ul, np.hypot(es, el)
    changes = np.nonzero(d[:-1] * d[1:] <= 0)[0]
    if len(changes) == 0:
        sign = "U_small > U_large" if d[0] > 0 else "U_small < U_large"
        return Crossing(math.nan, math.nan, (float(k[0]), float(k[-1])), 0, degree, n_boot, n_boot, seed,
                        note=f"no crossing in [{k[0]:g}, {k[-1]:g}]: {sign} at every point")
    score = np.abs(d[changes]) / sigma[changes] + np.abs(d[changes + 1]) / sigma[changes + 1]
    i = int(changes[np.argmax(score)])
    lo, hi = max(0, i + 1 - window), min(len(k), i + 1 + window)
    x, scale = k[lo:hi], k[hi - 1] - k[lo]
    deg = min(degree, len(x) - 1)
    t = (x - x[0]) / scale  # a well-conditioned fit variable in [0, 1]
    grid = np.linspace(0.0, 1.0, _GRID)
    vander = np.vander(grid, deg + 1)
    w_s, w_l = 1 / es[lo:hi], 1 / el[lo:hi]

    def fitted_difference(ys: np.ndarray, yl: np.ndarray) -> np.ndarray:  # (m, B) each → (G, B)
        return vander @ (np.polyfit(t, ys, deg, w=w_s) - np.polyfit(t, yl, deg, w=w_l)).reshape(deg + 1, -1)

    # a linear interpolation of D between the two points of the sign change: the root to stay near
    t_lin = (k[i] - x[0]) / scale + (d[i] / (d[i] - d[i + 1]) if d[i] != d[i + 1] else 0.0) * (k[i + 1] - k[i]) / scale
    central = _roots(grid, fitted_difference(us[lo:hi, None], ul[lo:hi, None]))[0]
    if len(central) == 0:
        return Crossing(math.nan, math.nan, (float(x[0]), float(x[-1])), len(x), deg, n_boot, n_boot, seed,
                        note="the fitted curves do not cross inside the fit window")
    t0 = float(central[np.argmin(np.abs(central - t_lin))])
    rng = np.random.default_rng(seed)
    ys = us[lo:hi, None] + es[lo:hi, None] * rng.standard_normal((len(x), n_boot))
    yl = ul[lo:hi, None] + el[lo:hi, None] * rng.standard_normal((len(x), n_boot))
    boot = [r[np.argmin(np.abs(r - t0))] for r in _roots(grid, fitted_difference(ys, yl)) if len(r)]
    n_failed = n_boot - len(boot)
    error = float(np.std(boot, ddof=1) * scale) if len(boot) >= 2 else math.nan
    note = f"{n_failed} of {n_boot} resamples had no crossing in the window" if n_failed else ""
    return Crossing(float(x[0] + t0 * scale), error, (float(x[0]), float(x[-1])), len(x), deg, n_boot, n_failed,
                    seed, note)
