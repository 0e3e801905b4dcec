"""Diagnostics that say when an ensemble's numbers cannot be trusted: plain functions on arrays.

- `split_rhat`: rank-normalised split-R̂ across chains (Vehtari, Gelman, Simpson, Carpenter, Bürkner,
  Bayesian Analysis 16, 667 (2021)): the max of the bulk R̂ (rank-normalised draws) and the tail R̂
  (rank-normalised |draw − median|). R̂ > 1.01–1.05 means the chains have not mixed.
- `pareto_khat`: the shape k̂ of a generalized Pareto fit to the largest importance weights (Vehtari,
  Simpson, Gelman, Yao, Gabry, "Pareto smoothed importance sampling", JMLR 25 (2024)), fitted by the
  profile-likelihood/Bayesian-quadrature method of Zhang & Stephens, Technometrics 51, 316 (2009), with the
  weak prior of PSIS. k̂ > 0.7: the variance of the weights is effectively infinite and the weighted
  estimate (and the flow's reverse ESS) unreliable whatever N.
- `reverse_ess_with_error`: the reverse ESS/N with a delete-one-block jackknife error.
- `longest_rejection_run`: the longest run of rejected proposals of one Markov chain.
- `tau_int_coverage`: configurations per τ_int, N/(2 τ_int) independent samples' worth (Wolff 2004, whose
  error estimate itself needs N ≫ τ_int; below ~50 τ_int it is not to be trusted).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import ndtri

__all__ = ["split_rhat", "pareto_khat", "fit_generalized_pareto", "reverse_ess_with_error",
           "longest_rejection_run", "tau_int_coverage"]


def _rank_normalise(draws: np.ndarray) -> np.ndarray:
    """z = Φ⁻¹((r − 3/8)/(S + 1/4)) of the pooled average ranks r (Vehtari et al. 2021, eq. 14)."""
    flat = draws.ravel()
    order = flat.argsort(kind="mergesort")
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = np.arange(1, flat.size + 1)
    # average ranks of ties
    sorted_vals = flat[order]
    _, start, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    for s, c in zip(start[counts > 1], counts[counts > 1]):
        ranks[order[s:s + c]] = s + (c + 1) / 2.0
    return ndtri((ranks - 0.375) / (flat.size + 0.25)).reshape(draws.shape)


def _rhat(chains: np.ndarray) -> float:
    """Classic R̂ = sqrt(var⁺/W) of (M, N) draws, var⁺ = (N − 1)/N W + B/N (Gelman et al. BDA3)."""
    n = chains.shape[1]
    means = chains.mean(1)
    w = chains.var(1, ddof=1).mean()
    b = n * means.var(ddof=1)
    if w == 0:
        return 1.0 if b == 0 else math.inf
    return float(math.sqrt(((n - 1) / n * w + b / n) / w))


def split_rhat(chains: Sequence[np.ndarray] | np.ndarray) -> float:
    """Rank-normalised split-R̂ of one observable: ``chains`` is (M, N) or a list of M equal-length chains
    (longer ones are cut to the shortest). Each chain is split in halves; returns max(bulk, tail)."""
    arr = np.asarray([np.asarray(c, dtype=np.float64).ravel() for c in chains], dtype=object)
    n = min(len(c) for c in arr)
    if n < 4:
        raise ValueError(f"split_rhat needs chains of at least 4 draws, got {n}")
    x = np.stack([c[:n] for c in arr]).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("split_rhat: draws contain non-finite values")
    half = n // 2
    split = np.concatenate([x[:, :half], x[:, n - half:]], 0)
    if np.all(split == split.flat[0]):
        return 1.0
    bulk = _rhat(_rank_normalise(split))
    tail = _rhat(_rank_normalise(np.abs(split - np.median(split))))
    return max(bulk, tail)


def fit_generalized_pareto(x: np.ndarray, prior_weight: float = 10.0) -> tuple[float, float]:
    """(k, σ) of a generalized Pareto fit to exceedances ``x`` > 0 (Zhang & Stephens 2009).

    Candidates θ_j = 1/x_(n) + (1 − √(m/(j − ½)))/(3 x_(⌊n/4 + ½⌋)), j = 1 … m = 30 + ⌊√n⌋. With
    k(θ) = mean log(1 − θx) (the PSIS sign: k > 0 is a heavy tail) the profile log-likelihood is
    ℓ(θ) = n[log(−θ/k(θ)) − k(θ) − 1]; θ̂ = Σ_j θ_j w_j with w_j ∝ e^{ℓ(θ_j)}, k̂ = k(θ̂), σ̂ = −k̂/θ̂, and
    k̂ is shrunk towards ½ by ``prior_weight`` pseudo-observations, k̂ ← (n k̂ + ½ prior_weight)/(n + prior_weight)
    (the weak prior of PSIS).
    """
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = x.size
    if n < 5 or x[0] < 0:
        raise ValueError(f"fit_generalized_pareto needs at least 5 non-negative exceedances, got {n}")
    m = 30 + int(math.sqrt(n))
    j = np.arange(1, m + 1)
    quartile = x[max(int(n / 4 + 0.5) - 1, 0)]
    if x[-1] <= 0 or quartile <= 0:
        return 0.0, 0.0
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * quartile)
    k = np.log1p(-theta[:, None] * x[None, :]).mean(1)
    ell = n * (np.log(-theta / k) - k - 1.0)
    w = np.exp(ell - ell.max())
    w /= w.sum()
    theta_hat = float((theta * w).sum())
    k_hat = float(np.log1p(-theta_hat * x).mean())
    sigma = -k_hat / theta_hat
    k_hat = (n * k_hat + 0.5 * prior_weight) / (n + prior_weight)
    return k_hat, sigma


def pareto_khat(log_weight: np.ndarray) -> float:
    """Pareto k̂ of the importance weights w = e^{log_weight} (PSIS): a generalized Pareto fit to the
    M = min(⌈N/5⌉, ⌈3√N⌉) largest weights above the (M+1)-th largest. −inf weights are zeros."""
    lw = np.asarray(log_weight, dtype=np.float64).ravel()
    if lw.size < 20:
        raise ValueError(f"pareto_khat needs at least 20 weights, got {lw.size}")
    if np.any(np.isnan(lw)) or np.any(lw == np.inf):
        raise ValueError("pareto_khat: log-weights contain NaN or +inf")
    lw = np.sort(lw)
    m = min(int(math.ceil(0.2 * lw.size)), int(math.ceil(3 * math.sqrt(lw.size))))
    top = lw[-1]
    if top == -np.inf:
        raise ValueError("pareto_khat: all weights are zero")
    tail = np.exp(lw[-m:] - top)
    cut = math.exp(lw[-m - 1] - top) if lw[-m - 1] > -np.inf else 0.0
    exceed = tail - cut
    if np.all(exceed <= 0):
        return -math.inf  # constant weights: no tail at all
    return fit_generalized_pareto(exceed)[0]


def reverse_ess_with_error(log_weight: np.ndarray, n_blocks: int = 32) -> tuple[float, float]:
    """(ESS/N, its delete-one-block jackknife error) of log-weights on samples from the flow."""
    from .resampling import reverse_ess

    lw = np.asarray(log_weight, dtype=np.float64).ravel()
    ess = reverse_ess(lw)
    blocks = np.array_split(lw, min(n_blocks, lw.size))
    if len(blocks) < 2:
        return ess, math.nan
    loo = np.array([reverse_ess(np.concatenate(blocks[:i] + blocks[i + 1:])) for i in range(len(blocks))])
    nb = len(blocks)
    return ess, float(math.sqrt((nb - 1) / nb * np.sum((loo - loo.mean()) ** 2)))


def longest_rejection_run(accepted: np.ndarray) -> int:
    """Length of the longest run of consecutive rejections (False) in one chain's accept flags."""
    a = np.asarray(accepted, dtype=bool).ravel()
    if a.size == 0:
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate([[1], a.astype(np.int8), [1]])))
    # edges come in pairs: start of a rejection run (1 → 0), end (0 → 1)
    runs = edges[1::2] - edges[0::2]
    return int(runs.max()) if runs.size else 0


def tau_int_coverage(n_configurations: int, tau_int: float) -> float:
    """N/τ_int: how many integrated autocorrelation times the ensemble holds (∞ for τ_int ≤ 0)."""
    if math.isnan(tau_int) or tau_int == math.inf:
        return 0.0
    return math.inf if tau_int <= 0 else n_configurations / tau_int
