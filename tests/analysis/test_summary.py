"""Summaries of repeated measurements (`latticeflow.analysis.summary`) against closed forms and independent
computations: medians over seeds, block jackknife, pulls, the τ_int lower-bound rule, per-chain means, timing
spreads, power laws, gradient spreads and the overfitting rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latticeflow.analysis import reverse_ess
from latticeflow.analysis.diagnostics import reverse_ess_with_error
from latticeflow.analysis.summary import (block_jackknife, chain_mean, first_time_at_least, interpolate_at,
                                          log_log_slope, median_finite, median_iqr, median_over, median_time_to,
                                          overfits, pull, tau_int_summary, trace_covariance)


def test_medians_over_seeds():
    assert median_finite([None, float("nan")]) is None and median_finite([1.0, None, 4.0]) == 2.5
    assert median_over([{"a": 1.0}, {"a": 3.0}, {"a": 2.0}], ["a"]) == {"a": 2.0}
    assert math.isnan(median_over([{"a": 1.0}, {"a": float("nan")}], ["a"])["a"])  # a diverged run shows
    assert median_time_to([1.0, None, 3.0]) == 3.0 and median_time_to([1.0, None, None]) is None
    assert first_time_at_least([0, 1, 2, 3], [0.1, None, 0.6, 0.9], 0.5) == 2
    assert first_time_at_least([0, 1], [0.1, 0.2], 0.5) is None


def test_delete_one_block_jackknife_of_the_mean_is_the_standard_error():
    x = np.random.default_rng(0).normal(size=400)
    assert block_jackknife(np.mean, x, 400) == pytest.approx(x.std(ddof=1) / 20, rel=1e-10)
    assert math.isnan(block_jackknife(np.mean, x, 1))


def test_block_jackknife_of_reverse_ess_matches_the_diagnostic():
    lw = np.random.default_rng(1).normal(scale=0.7, size=2048)
    assert block_jackknife(reverse_ess, lw, 32) == pytest.approx(reverse_ess_with_error(lw, 32)[1], rel=1e-12)


def test_pull():
    assert pull(1.5, 0.3, 1.0, 0.4) == pytest.approx(1.0) and pull(1.0, 0.0, 2.0) is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the slow AR(1) series is too short, on purpose
def test_tau_int_of_white_noise_and_the_lower_bound_rules(ar1):
    rng = np.random.default_rng(2)
    iid = rng.normal(size=(8, 4000))
    r = tau_int_summary(iid, exact=0.0)
    assert abs(r["tau_int"] - 0.5) < 0.1 and not r["lower_bound"] and abs(r["pull"]) < 4
    assert r["error"] == pytest.approx(iid.std() / math.sqrt(iid.size), rel=0.15)
    slow = np.stack([ar1(0.99, 2000, s) for s in range(4)])  # τ_int = 99.5 ≫ 2000/50
    assert tau_int_summary(slow)["lower_bound"]
    frozen = np.repeat(rng.integers(-1, 2, size=(8, 1)), 400, axis=1).astype(float)
    r = tau_int_summary(frozen, frozen_is_lower_bound=True)
    assert r["tau_int"] == 400 and r["lower_bound"] and r["changes"] == 0
    assert tau_int_summary(frozen)["tau_int"] != 400


def test_chain_mean_error_is_the_spread_of_chain_means():
    x = np.arange(12.0)  # chains [0..3], [4..7], [8..11]: means 1.5, 5.5, 9.5
    mean, err = chain_mean(x, 3)
    assert mean == 5.5 and err == pytest.approx(4.0 / math.sqrt(3))
    assert math.isnan(chain_mean(x, 1)[1])


def test_timing_spread_and_power_law():
    assert median_iqr([1.0, 2.0, 3.0, 4.0, 100.0])[0] == 3.0 and median_iqr([2.0]) == (2.0, 0.0)
    assert log_log_slope([64, 256, 1024], [1.0, 16.0, 256.0]) == pytest.approx(2.0)
    assert math.isnan(log_log_slope([64], [1.0]))


def test_trace_covariance_torch_and_numpy_agree():
    g = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, n = trace_covariance(g), trace_covariance(g.numpy())
    assert t["trace"] == pytest.approx(float(torch.cov(g.T).trace()), rel=1e-12)
    dev = (g - g.mean(0)).pow(2).sum(1) * 5 / 4
    assert t["median"] == float(dev.median())  # torch's lower median
    for k in t:
        assert t[k] == pytest.approx(n[k], rel=1e-12)
    assert math.isnan(trace_covariance(g[:1])["trace"])


def test_overfitting_rule_and_interpolation():
    train = [5 - 0.1 * i for i in range(10)]
    assert overfits(train, [5 - 0.1 * i if i < 5 else 4.5 + 0.05 * (i - 5) for i in range(10)], 0.02)
    assert not overfits(train, train, 0.02) and not overfits(train, [float("nan")] * 10, 0.02)
    assert interpolate_at([0, 10, 20], [0.0, None, 1.0], 5) == 0.25 and interpolate_at([0, 10], [1.0, 2.0], 30) == 2
    assert math.isnan(interpolate_at([0], [None], 0))
