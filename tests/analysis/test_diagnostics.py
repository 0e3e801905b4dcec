"""Trust diagnostics: Pareto k̂ against weights of known tail index and against scipy's genpareto fit,
split-R̂ with and without a shifted chain, rejection runs, τ_int coverage."""
import math

import numpy as np
import pytest
from scipy import stats

from latticeflow.analysis.diagnostics import (fit_generalized_pareto, longest_rejection_run, pareto_khat,
                                              reverse_ess_with_error, split_rhat, tau_int_coverage)


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_pareto_khat_recovers_the_tail_index_of_generalized_pareto_weights(k):
    """w ~ GPD(k, σ = 1), N = 10⁴: the median k̂ over 10 seeds within ±0.1 of k. One k̂ uses only the
    M = 3√N = 300 largest weights, so its own spread is ≈ (1 + k)/√M ≈ 0.09; the median tests the bias."""
    khats = [pareto_khat(np.log(stats.genpareto.rvs(k, size=10_000, random_state=np.random.default_rng(s))))
             for s in range(10)]
    assert abs(np.median(khats) - k) < 0.1, khats
    assert all(abs(kh - k) < 0.3 for kh in khats), khats  # > 3σ of one estimate


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_generalized_pareto_fit_on_a_full_sample_recovers_k(k):
    """The Zhang–Stephens fit itself on all N = 10⁴ GPD draws (spread ≈ 0.015): within ±0.06 of k."""
    w = stats.genpareto.rvs(k, size=10_000, random_state=np.random.default_rng(11))
    assert abs(fit_generalized_pareto(w, prior_weight=0.0)[0] - k) < 0.06


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_generalized_pareto_fit_agrees_with_scipy_maximum_likelihood(k):
    """Independent check: scipy.stats.genpareto.fit (maximum likelihood, loc = 0) on the same exceedances
    as `pareto_khat` uses; the two estimates agree within 0.1."""
    rng = np.random.default_rng(7)
    lw = np.log(stats.genpareto.rvs(k, size=10_000, random_state=rng))
    lw = np.sort(lw)
    m = min(math.ceil(0.2 * lw.size), math.ceil(3 * math.sqrt(lw.size)))
    exceed = np.exp(lw[-m:]) - np.exp(lw[-m - 1])
    ours = fit_generalized_pareto(exceed, prior_weight=0.0)[0]
    theirs = stats.genpareto.fit(exceed, floc=0.0)[0]
    assert abs(ours - theirs) < 0.1, (ours, theirs)
    assert abs(pareto_khat(lw) - ours) < 0.05  # only the weak prior differs


def test_pareto_khat_of_light_tailed_weights_is_small():
    """Log-normal weights with small variance (a good flow): k̂ well below 0.5."""
    lw = np.random.default_rng(3).normal(0.0, 0.3, 10_000)
    assert pareto_khat(lw) < 0.3
    lw_bad = np.random.default_rng(3).normal(0.0, 3.0, 10_000)  # a poor flow: heavy effective tail
    assert pareto_khat(lw_bad) > 0.7


def test_split_rhat_is_one_for_mixed_chains_and_large_for_a_shifted_chain():
    rng = np.random.default_rng(0)
    good = rng.normal(size=(8, 1000))
    assert split_rhat(good) < 1.01
    bad = good.copy()
    bad[3] += 1.0
    assert split_rhat(bad) > 1.05
    drift = good + np.linspace(0, 2, 1000)  # non-stationary: caught by the split
    assert split_rhat(drift) > 1.05
    wide = good.copy()
    wide[0] *= 4  # same mean, different spread: caught by the tail R̂
    assert split_rhat(wide) > 1.05


def test_split_rhat_rejects_too_short_chains():
    with pytest.raises(ValueError, match="at least 4"):
        split_rhat(np.zeros((4, 3)))


def test_longest_rejection_run():
    assert longest_rejection_run(np.array([1, 0, 0, 1, 0, 0, 0, 1], dtype=bool)) == 3
    assert longest_rejection_run(np.array([0, 0], dtype=bool)) == 2
    assert longest_rejection_run(np.ones(5, dtype=bool)) == 0


def test_reverse_ess_error_and_tau_coverage():
    lw = np.random.default_rng(1).normal(0.0, 1.0, 20_000)
    ess, err = reverse_ess_with_error(lw)
    assert abs(ess - math.exp(-1.0)) < 4 * err + 0.01 and 0 < err < 0.05
    assert tau_int_coverage(1000, 10.0) == 100.0
    assert tau_int_coverage(1000, math.inf) == 0.0
