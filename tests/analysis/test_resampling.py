"""Jackknife, reweighting and effective sample sizes against closed-form values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latticeflow.analysis import forward_ess, jackknife, reverse_ess, reweight

MU = 0.5  # Gaussian tilt: x ~ N(0,1), w = exp(mu x - mu^2/2) targets N(mu, 1)


# ---------------------------------------------------------------- jackknife


def test_delete_one_jackknife_of_mean_is_standard_error():
    x = np.random.default_rng(1).normal(size=500)
    est, err = jackknife(lambda m: m, [x], n_bins=10_000)  # capped at N: delete-one
    assert est == pytest.approx(x.mean(), rel=1e-14)
    assert err == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=1e-10)


def test_binned_jackknife_of_mean_is_error_of_bin_means():
    x = np.random.default_rng(2).normal(size=1000)
    _, err = jackknife(lambda m: m, [x], n_bins=20)
    bins = x.reshape(20, 50).mean(axis=1)
    assert err == pytest.approx(bins.std(ddof=1) / math.sqrt(20), rel=1e-10)


def test_jackknife_rejects_bad_input():
    with pytest.raises(ValueError, match="same number of samples"):
        jackknife(lambda p, q: p / q, [np.ones(10), np.ones(9)])
    with pytest.raises(ValueError, match="at least 2 samples"):
        jackknife(lambda p: p, [np.ones(1)])
    with pytest.raises(ValueError, match="sequence of arrays"):
        jackknife(lambda p: p, np.ones(10))


# ---------------------------------------------------------------- ESS


def test_equal_weights_give_ess_one():
    lw = np.full(1000, -3.7)
    assert reverse_ess(lw) == pytest.approx(1.0, rel=1e-12)
    assert forward_ess(lw) == pytest.approx(1.0, rel=1e-12)
    assert reverse_ess(torch.full((64,), 5.0)) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("w", [3.0, 0.01, 1e6])
def test_two_point_weights_closed_form(w):
    """Half the samples with weight 1, half with weight w."""
    lw = np.log(np.repeat([1.0, w], 500))
    assert reverse_ess(lw) == pytest.approx((1 + w) ** 2 / (2 * (1 + w * w)), rel=1e-12)
    assert forward_ess(lw) == pytest.approx(4 * w / (1 + w) ** 2, rel=1e-12)


def test_ess_is_stable_for_huge_log_weights():
    lw = np.log(np.repeat([1.0, 3.0], 500))
    for offset in (1e4, -1e4):
        assert reverse_ess(lw + offset) == pytest.approx(0.8, rel=1e-9)
        assert forward_ess(lw + offset) == pytest.approx(0.75, rel=1e-9)
    # one sample dominating by e^{1e4}: ESS_q = 1 sample out of N
    assert reverse_ess(np.array([0.0, -1e4, -1e4, -1e4])) == pytest.approx(0.25, rel=1e-12)
    # zero weights (-inf) are allowed in the reverse ESS
    assert reverse_ess(np.array([0.0, 0.0, -np.inf, -np.inf])) == pytest.approx(0.5, rel=1e-12)


def test_ess_rejects_nan_and_all_zero_weights():
    with pytest.raises(ValueError, match="NaN"):
        reverse_ess(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="all weights are zero"):
        reverse_ess(np.full(3, -np.inf))
    with pytest.raises(ValueError, match="NaN"):
        forward_ess(np.array([np.inf, 0.0]))


def test_ess_of_gaussian_tilt_is_exp_minus_mu_squared():
    """For q = N(0,1), p = N(mu,1): ESS_q/N = ESS_p/N = exp(-mu^2) as N -> inf."""
    rng = np.random.default_rng(3)
    x_q = rng.standard_normal(100_000)
    x_p = rng.standard_normal(100_000) + MU
    exact = math.exp(-MU * MU)
    assert reverse_ess(MU * x_q - MU * MU / 2) == pytest.approx(exact, rel=0.01)
    assert forward_ess(torch.as_tensor(MU * x_p - MU * MU / 2)) == pytest.approx(exact, rel=0.01)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50.0, 50.0), min_size=1, max_size=200),
       st.floats(-1e4, 1e4))
def test_ess_in_unit_interval_and_shift_invariant(lw, shift):
    lw = np.asarray(lw)
    for ess in (reverse_ess, forward_ess):
        value = ess(lw)
        assert 0.0 < value <= 1.0
        assert ess(lw + shift) == pytest.approx(value, rel=1e-6, abs=1e-12)


# ---------------------------------------------------------------- reweighting


def test_reweighting_gaussian_tilt_recovers_mu():
    x = np.random.default_rng(4).standard_normal(100_000)
    lw = MU * x - MU * MU / 2
    mean, err = reweight(x, lw, n_bins=1000)
    assert abs(mean - MU) < 3.0 * err
    # asymptotic error of the ratio estimator:
    # sqrt(E_q[w^2 (x-mu)^2] / N) = sqrt(e^{mu^2} (1 + mu^2) / N)
    assert err == pytest.approx(math.sqrt(math.exp(MU * MU) * (1 + MU * MU) / x.size), rel=0.10)
    # an overall constant in the log-weights (unknown log Z) changes nothing
    mean2, err2 = reweight(x, lw + 1e4, n_bins=1000)
    assert (mean2, err2) == (pytest.approx(mean, rel=1e-12), pytest.approx(err, rel=1e-9))


def test_reweighting_with_equal_weights_is_plain_mean():
    x = np.random.default_rng(5).normal(2.0, 3.0, size=2000)
    mean, err = reweight(x, np.zeros(x.size), n_bins=x.size)
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert err == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=1e-9)


def test_reweight_rejects_mismatched_input():
    with pytest.raises(ValueError, match="samples but log_weight"):
        reweight(np.ones(5), np.zeros(4))
