"""Jackknife errors, importance-weight reweighting and effective sample sizes.

* Binned jackknife of F = f(<A_1>, ..., <A_k>): leave-one-bin-out means theta_b,
  ``err^2 = (B-1)/B sum_b (theta_b - mean_b theta_b)^2`` (Efron & Stein 1981; binning
  removes short autocorrelations).
* Reweighting (importance sampling) ``<O>_p = sum_i w_i O_i / sum_i w_i`` with
  ``w_i = p(x_i)/q(x_i)`` known up to a constant, jackknife error of the ratio.
* Reverse ESS from flow samples x ~ q (Kong 1992; used for normalizing flows e.g. by
  Albergo, Kanwar, Shanahan 2019): ``ESS_q/N = (sum w)^2 / (N sum w^2)``.
* Forward ESS from target samples x ~ p (Nicoli et al. 2021):
  ``ESS_p/N = 1 / (mean_p(w) mean_p(1/w))``.

Both ESS are invariant under w -> c w and are evaluated with logsumexp on log-weights, so
log-weights of any magnitude (e.g. ~1e4, the unnormalised log Z offset) are safe.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import logsumexp

from .gamma import _to_numpy

__all__ = ["jackknife", "reweight", "reverse_ess", "forward_ess"]


def _samples(x: object, who: str, what: str = "values") -> np.ndarray:
    arr = np.asarray(_to_numpy(x), dtype=np.float64)
    if arr.ndim == 0:
        raise ValueError(f"{who}: {what} must be an array of samples, got a scalar")
    return arr


def jackknife(func: Callable[..., float], data: Sequence[np.ndarray],
              n_bins: int = 20) -> tuple[float, float]:
    """Binned jackknife of ``func(mean(data[0]), ..., mean(data[k-1]))``.

    Each ``data[i]`` holds N samples along axis 0 (the same N for all i); they are cut into
    ``n_bins`` contiguous bins of (nearly) equal size; ``n_bins`` is capped at N, which gives
    the delete-one jackknife.  Returns ``(func(full means), error)``.
    """
    who = "jackknife"
    if isinstance(data, np.ndarray) and data.ndim == 1:
        raise ValueError(f"{who}: data must be a sequence of arrays, e.g. [x] for one")
    arrays = [_samples(d, who, f"data[{i}]") for i, d in enumerate(data)]
    if not arrays:
        raise ValueError(f"{who} needs at least one array of samples, got none")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"{who}: all arrays need the same number of samples, got "
                         f"{[a.shape[0] for a in arrays]}")
    if n < 2:
        raise ValueError(f"{who} needs at least 2 samples, got {n}")
    if int(n_bins) < 2:
        raise ValueError(f"{who} needs n_bins >= 2, got {n_bins}")
    for i, a in enumerate(arrays):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{who}: data[{i}] contains non-finite values")
    n_bins = min(int(n_bins), n)
    edges = np.linspace(0, n, n_bins + 1).round().astype(np.int64)
    counts = np.diff(edges).astype(np.float64)
    loo = []  # leave-one-bin-out means, shape (n_bins, ...) per observable
    for a in arrays:
        bin_sums = np.add.reduceat(a, edges[:-1], axis=0)
        shape = (n_bins,) + (1,) * (a.ndim - 1)
        loo.append((a.sum(axis=0) - bin_sums) / (n - counts).reshape(shape))
    estimate = float(func(*(a.mean(axis=0) for a in arrays)))
    thetas = np.array([float(func(*(m[b] for m in loo))) for b in range(n_bins)])
    if not np.all(np.isfinite(thetas)):
        raise ValueError(f"{who}: func is not finite on some jackknife bins")
    error = math.sqrt((n_bins - 1) / n_bins * float(np.sum((thetas - thetas.mean()) ** 2)))
    return estimate, error


def _log_weights(log_weight: object, who: str) -> np.ndarray:
    lw = _samples(log_weight, who, "log_weight").reshape(-1)
    if lw.size == 0:
        raise ValueError(f"{who} needs at least one log-weight, got none")
    if np.any(np.isnan(lw)) or np.any(lw == np.inf):
        raise ValueError(f"{who}: log-weights contain NaN or +inf")
    return lw


def reverse_ess(log_weight: np.ndarray | object) -> float:
    """Reverse effective sample size ESS_q/N = (sum w)^2 / (N sum w^2) in (0, 1].

    ``log_weight`` = log p(x) - log q(x) (up to a constant) on samples x ~ q, as a numpy
    array or torch tensor; -inf entries are zero weights.
    """
    lw = _log_weights(log_weight, "reverse_ess")
    if np.all(lw == -np.inf):
        raise ValueError("reverse_ess: all weights are zero (every log-weight is -inf)")
    log_ess = 2.0 * logsumexp(lw) - logsumexp(2.0 * lw) - math.log(lw.size)
    return float(min(1.0, math.exp(log_ess)))


def forward_ess(log_weight_on_target_samples: np.ndarray | object) -> float:
    """Forward effective sample size ESS_p/N = 1 / (mean_p(w) mean_p(1/w)) in [0, 1].

    ``log_weight_on_target_samples`` = log p(x) - log q(x) (up to a constant) on samples
    x ~ p (e.g. HMC); a -inf entry (q infinitely larger than p) gives 0.
    """
    lw = _log_weights(log_weight_on_target_samples, "forward_ess")
    if np.any(lw == -np.inf):
        return 0.0
    log_n = math.log(lw.size)
    log_prod = (logsumexp(lw) - log_n) + (logsumexp(-lw) - log_n)
    return float(min(1.0, math.exp(-log_prod)))


def reweight(values: np.ndarray, log_weight: np.ndarray,
             n_bins: int = 20) -> tuple[float, float]:
    """Reweighted mean ``sum w O / sum w`` with ``w = exp(log_weight)`` and its jackknife error.

    ``values`` and ``log_weight`` are 1-D arrays (or tensors) of the same length N;
    ``n_bins`` as in :func:`jackknife`.
    """
    who = "reweight"
    vals = _samples(values, who).reshape(-1)
    lw = _log_weights(log_weight, who)
    if vals.size != lw.size:
        raise ValueError(f"{who}: values has {vals.size} samples but log_weight has {lw.size}")
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"{who}: values contain non-finite entries")
    if np.all(lw == -np.inf):
        raise ValueError(f"{who}: all weights are zero (every log-weight is -inf)")
    w = np.exp(lw - lw.max())
    return jackknife(lambda wo, wsum: wo / wsum, [w * vals, w], n_bins=n_bins)
