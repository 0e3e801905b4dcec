"""Summaries of repeated measurements, as the benchmarks report them: plain functions on arrays.

- `median_finite`, `median_over`, `median_time_to`, `first_time_at_least`: medians over seeds (missing and
  NaN values left out), and the time at which a curve first reaches a threshold.
- `block_jackknife`: the delete-one-block jackknife error of any statistic of one series (Efron & Stein
  1981): err² = (B − 1)/B Σ_b (θ₋b − mean θ₋b)², B contiguous blocks.
- `pull`: (a − b) / (δa² + δb²)^{1/2}, the deviation in units of the combined error.
- `tau_int_summary`: mean, error and τ_int of one observable from per-chain series by the Gamma method with
  the chains as replicas (Wolff 2004), with the rule that makes τ_int a lower bound: a chain shorter than
  ``min_tau_per_chain`` τ_int (Wolff's error estimate needs N ≫ τ_int), or a series that never changes.
- `chain_mean`: the mean of chain-major samples with the error from the spread of the per-chain means
  (which includes autocorrelation within a chain).
- `median_iqr`, `log_log_slope`, `trace_covariance`, `overfits`, `interpolate_at`: medians and
  interquartile ranges of timings, power-law exponents, the spread of gradient samples, the overfitting
  rule of a training curve, and a curve read at an abscissa.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .gamma import gamma_method

__all__ = ["median_finite", "median_over", "median_time_to", "first_time_at_least", "block_jackknife", "pull",
           "tau_int_summary", "chain_mean", "median_iqr", "log_log_slope", "trace_covariance", "overfits",
           "interpolate_at"]


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def median_finite(values: Iterable) -> float | None:
    """Median of the values that are neither None nor NaN (None if there are none).

    Example:
        >>> median_finite([3.0, None, float("nan"), 1.0, 2.0])
        2.0
    """
    vals = [v for v in values if _finite(v)]
    return float(np.median(vals)) if vals else None


def median_over(records: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, float]:
    """{key: np.median of ``record[key]`` over ``records``} (NaN propagates: a diverged run shows)."""
    return {k: float(np.median([r[k] for r in records])) for k in keys}


def first_time_at_least(times: Sequence[float], values: Sequence[float | None], threshold: float) -> float | None:
    """The first time at which ``value >= threshold`` (None values skipped), or None if never."""
    return next((t for t, v in zip(times, values) if v is not None and v >= threshold), None)


def median_time_to(times: Iterable[float | None]) -> float | None:
    """Median over seeds of times to reach something, a seed that never got there (None) counting as ∞;
    None if the median is ∞."""
    m = float(np.median([math.inf if t is None else t for t in times]))
    return m if math.isfinite(m) else None


def block_jackknife(stat: Callable[[np.ndarray], float], values: np.ndarray, n_blocks: int) -> float:
    """Delete-one-block jackknife error of ``stat(values)`` over ``n_blocks`` contiguous blocks (NaN for
    fewer than two blocks).

    Example:
        >>> x = np.arange(100.0)
        >>> round(block_jackknife(np.mean, x, 100), 6), round(float(x.std(ddof=1)) / 10, 6)
        (2.901149, 2.901149)
    """
    blocks = np.array_split(values, n_blocks)
    if len(blocks) < 2:
        return float("nan")
    loo = np.array([stat(np.concatenate(blocks[:i] + blocks[i + 1:])) for i in range(len(blocks))])
    return float(math.sqrt((len(blocks) - 1) / len(blocks) * np.sum((loo - loo.mean()) ** 2)))


def pull(value: float, error: float, reference: float, reference_error: float = 0.0) -> float | None:
    """(value − reference) / √(error² + reference_error²); None where that error is 0."""
    total = math.hypot(error, reference_error)
    return (value - reference) / total if total > 0 else None


def tau_int_summary(chains: np.ndarray, *, min_tau_per_chain: float = 50.0, frozen_is_lower_bound: bool = False,
                    exact: float | None = None) -> dict[str, Any]:
    """Gamma-method summary of one observable, ``chains: (n_chains, n)`` per-chain series (chains as replicas).

    Returns {"mean", "error", "tau_int", "tau_int_error", "lower_bound", "changes", "pull"}: ``lower_bound``
    when n < ``min_tau_per_chain`` · τ_int; with ``frozen_is_lower_bound`` a series that never changes in
    any chain (``changes`` = 0) has τ_int = n, a lower bound; ``pull`` against ``exact`` (None without).

    Example:
        >>> r = tau_int_summary(np.ones((4, 100)), frozen_is_lower_bound=True)
        >>> r["tau_int"], r["lower_bound"], r["changes"]
        (100.0, True, 0)
    """
    chains = np.asarray(chains, dtype=np.float64)
    n = chains.shape[1]
    g = gamma_method(list(chains))
    changes = int(np.sum(np.diff(chains, axis=1) != 0))
    frozen = frozen_is_lower_bound and changes == 0
    return {"mean": g.mean, "error": g.error, "tau_int": float(n) if frozen else g.tau_int,
            "tau_int_error": g.tau_int_error, "lower_bound": bool(frozen or n < min_tau_per_chain * g.tau_int),
            "changes": changes, "pull": None if exact is None else pull(g.mean, g.error, exact)}


def chain_mean(values: np.ndarray | Any, n_chains: int) -> tuple[float, float]:
    """(mean, error) of chain-major samples ``(n_chains · k,)`` (a numpy array or a torch tensor, computed in
    its own library): the error is the standard deviation of the ``n_chains`` per-chain means over
    √n_chains (NaN for one chain)."""
    per_chain = values.reshape(n_chains, -1).mean(1)
    if n_chains < 2:
        return float(per_chain.mean()), math.nan
    std = per_chain.std(ddof=1) if isinstance(per_chain, np.ndarray) else per_chain.std()
    return float(per_chain.mean()), float(std) / math.sqrt(n_chains)


def median_iqr(samples: Sequence[float]) -> tuple[float, float]:
    """(median, interquartile range) of timings (IQR 0 for a single sample)."""
    med = statistics.median(samples)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [med, med, med]
    return med, q[2] - q[0]


def log_log_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x: the exponent a of y ∝ x^a (NaN for fewer than 2 points).

    Example:
        >>> round(log_log_slope([1, 2, 4], [3, 12, 48]), 6)
        2.0
    """
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0]) if len(lx) >= 2 else float("nan")


def trace_covariance(samples: Any) -> dict[str, float]:
    """Spread of vector samples ``(n, p)`` (e.g. mini-batch gradients; a numpy array or a torch tensor, computed
    in its own library): ``trace`` of the unbiased covariance = mean over samples of |g − ḡ|² · n/(n − 1),
    ``median`` the same with the lower median over samples, ``mean_sq`` = |ḡ|²; NaN spreads for n = 1."""
    g, n = samples, samples.shape[0]
    dev = ((g - g.mean(0)) ** 2).sum(1) * (n / max(n - 1, 1))
    return {"trace": float(dev.mean()) if n > 1 else float("nan"),
            "median": float(sorted(dev.tolist())[(n - 1) // 2]) if n > 1 else float("nan"),
            "mean_sq": float((g.mean(0) ** 2).sum())}


def overfits(train: Sequence[float], test: Sequence[float], tolerance: float) -> bool:
    """Overfitting of a training curve: the last test loss lies more than ``tolerance`` above its minimum
    while the training loss at the end is below its value at that minimum."""
    test_, train_ = np.asarray(test, dtype=np.float64), np.asarray(train, dtype=np.float64)
    if not np.isfinite(test_).any():
        return False
    i = int(np.nanargmin(test_))
    return bool(test_[-1] - test_[i] > tolerance and train_[-1] < train_[i])


def interpolate_at(x: Sequence[float], y: Sequence[float | None], at: float) -> float:
    """``y`` linearly interpolated at ``at`` along ``x`` (held at the ends; None values skipped; NaN if none)."""
    pts = [(a, b) for a, b in zip(x, y) if b is not None]
    return float(np.interp(at, *zip(*pts))) if pts else float("nan")
