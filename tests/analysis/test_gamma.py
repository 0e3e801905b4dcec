"""Gamma method: AR(1) series with known tau_int, replicas, derived quantities, properties."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latticeflow.analysis import (GammaResult, autocorrelation, gamma_method,
                                  gamma_method_derived, jackknife, split_replicas)

N_AR1 = 200_000


def tau_exact(a: float) -> float:
    return (1.0 + a) / (2.0 * (1.0 - a))


# ---------------------------------------------------------------- primary observables


@pytest.mark.parametrize("a", [0.0, 0.5, 0.9])
def test_gamma_recovers_ar1_tau_int(ar1, a):
    x = ar1(a, N_AR1, 1234)
    res = gamma_method(x)
    tau = tau_exact(a)
    # tau_int within 3 of its own stated errors (Wolff eq. 42)
    assert abs(res.tau_int - tau) < 3.0 * res.tau_int_error, res
    # error of the mean vs the exact sqrt(2 tau_int var / N), var = 1: within 10 %
    exact_error = math.sqrt(2.0 * tau / N_AR1)
    assert res.error == pytest.approx(exact_error, rel=0.10), res
    # the mean is 0 within 4 sigma; bookkeeping fields are consistent
    assert abs(res.mean) < 4.0 * res.error
    assert (res.n, res.n_replicas) == (N_AR1, 1)
    assert 1 <= res.window <= N_AR1 // 2
    assert res.error_of_error == pytest.approx(res.error * math.sqrt((res.window + 0.5) / N_AR1))


def test_gamma_iid_error_is_naive_error():
    x = np.random.default_rng(7).normal(3.0, 2.0, size=50_000)
    res = gamma_method(x)
    assert res.error == pytest.approx(x.std() / math.sqrt(x.size), rel=0.03)
    assert res.tau_int == pytest.approx(0.5, abs=3 * res.tau_int_error + 1e-3)


@pytest.mark.parametrize("value", [0.0, 0.1, -7.3e5])
def test_gamma_constant_series(value):
    res = gamma_method(np.full(1000, value))
    assert (res.mean, res.error, res.error_of_error) == (pytest.approx(value), 0.0, 0.0)
    assert (res.tau_int, res.tau_int_error, res.window) == (0.5, 0.0, 0)
    assert all(math.isfinite(v) for v in res.as_dict().values())
    reps = gamma_method([np.full(10, value), np.full(7, value)])
    assert reps.error == 0.0 and reps.n == 17 and reps.n_replicas == 2


def test_gamma_input_errors_speak_to_the_user():
    with pytest.raises(ValueError, match="at least 2 samples per replica, got 1"):
        gamma_method(np.array([1.0]))
    with pytest.raises(ValueError, match="non-finite"):
        gamma_method(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="S must be a positive"):
        gamma_method(np.arange(10.0), S=0.0)
    with pytest.raises(ValueError, match="shape"):
        gamma_method(np.zeros((2, 3, 4)))


def test_anticorrelated_series_falls_back_to_naive_error():
    x = np.tile([1.0, -1.0], 500) + 0.01 * np.random.default_rng(2).standard_normal(1000)
    with pytest.warns(RuntimeWarning, match="naive error"):
        res = gamma_method(x)
    assert (res.window, res.tau_int) == (0, pytest.approx(0.5))
    assert res.error == pytest.approx(x.std() / math.sqrt(x.size), rel=0.01)


def test_as_dict_is_json_serialisable(ar1):
    res = gamma_method(ar1(0.5, 1000, 3))
    back = json.loads(json.dumps(res.as_dict()))
    assert back == pytest.approx(res.as_dict())
    assert GammaResult(**back) == res


def test_autocorrelation_matches_direct_sum():
    """FFT Gamma(t) with replicas = direct double sum with global mean and sum_r (N_r - t)."""
    rng = np.random.default_rng(11)
    reps = [rng.normal(size=n) + 0.3 for n in (40, 57, 33)]
    abar = np.concatenate(reps).mean()
    max_lag = 16
    direct = np.array([
        sum(((r[: r.size - t] - abar) * (r[t:] - abar)).sum() for r in reps)
        / sum(r.size - t for r in reps)
        for t in range(max_lag + 1)
    ])
    np.testing.assert_allclose(autocorrelation(reps, max_lag), direct / direct[0], rtol=1e-10,
                               atol=1e-12)


def test_ar1_autocorrelation_is_geometric(ar1):
    rho = autocorrelation(ar1(0.8, N_AR1, 5), max_lag=5)
    np.testing.assert_allclose(rho, 0.8 ** np.arange(6), atol=0.02)


# ---------------------------------------------------------------- replicas


def test_splitting_into_four_replicas_is_consistent(ar1):
    x = ar1(0.5, N_AR1, 99)
    one = gamma_method(x)
    four = gamma_method(np.split(x, 4))
    assert four.mean == pytest.approx(one.mean, rel=1e-12, abs=1e-15)
    assert (four.n, four.n_replicas) == (N_AR1, 4)
    assert four.error == pytest.approx(one.error, rel=0.05)
    assert abs(four.tau_int - one.tau_int) < one.tau_int_error
    # a 2-D array is read as one replica per row
    assert gamma_method(x.reshape(4, -1)) == four


def test_independent_replicas_of_unequal_length_recover_tau(ar1):
    reps = [ar1(0.7, n, seed) for seed, n in enumerate((60_000, 45_000, 80_000, 15_000))]
    res = gamma_method(reps)
    n = sum(r.size for r in reps)
    assert (res.n, res.n_replicas) == (n, 4)
    assert abs(res.tau_int - tau_exact(0.7)) < 3.0 * res.tau_int_error
    assert res.error == pytest.approx(math.sqrt(2 * tau_exact(0.7) / n), rel=0.10)


def test_split_replicas_reorders_rows():
    rng = np.random.default_rng(0)
    chain = np.repeat([2, 0, 1], [5, 7, 6])
    mc_index = np.concatenate([rng.permutation(5) * 3, rng.permutation(7), 10 + rng.permutation(6)])
    values = chain * 1000.0 + mc_index
    perm = rng.permutation(values.size)
    reps = split_replicas(values[perm], chain[perm], mc_index[perm])
    assert [r.size for r in reps] == [7, 6, 5]  # chain 0, 1, 2
    np.testing.assert_array_equal(reps[0], np.arange(7.0))
    np.testing.assert_array_equal(reps[1], 1000.0 + 10 + np.arange(6))
    np.testing.assert_array_equal(reps[2], 2000.0 + 3 * np.arange(5))
    # multi-dimensional rows keep their trailing shape
    field = np.stack([values, -values, 2 * values], axis=1)
    reps3 = split_replicas(field[perm], chain[perm], mc_index[perm])
    assert reps3[2].shape == (5, 3)
    np.testing.assert_array_equal(reps3[2][:, 1], -(2000.0 + 3 * np.arange(5)))


def test_split_replicas_rejects_bad_input():
    with pytest.raises(ValueError, match="twice"):
        split_replicas(np.arange(4.0), np.array([0, 0, 1, 1]), np.array([1, 1, 0, 1]))
    with pytest.raises(ValueError, match="rows"):
        split_replicas(np.arange(4.0), np.array([0, 0, 1]), np.array([0, 1, 0]))


def test_split_replicas_feeds_gamma_method(ar1):
    reps = [ar1(0.5, 5000, s) for s in (1, 2, 3)]
    values = np.concatenate(reps)
    chain = np.repeat([0, 1, 2], 5000)
    mc_index = np.tile(np.arange(5000), 3)
    perm = np.random.default_rng(4).permutation(values.size)
    assert gamma_method(split_replicas(values[perm], chain[perm], mc_index[perm])) == \
        gamma_method(reps)


# ---------------------------------------------------------------- derived quantities


def test_derived_ratio_matches_jackknife_and_delta_method():
    rng = np.random.default_rng(21)
    n = 20_000
    z1, z2 = rng.standard_normal((2, n))
    a = 1.0 + 0.1 * z1
    b = 2.0 + 0.2 * (0.6 * z1 + 0.8 * z2)  # cov(a, b) = 0.012
    res = gamma_method_derived(lambda x, y: x / y, [a, b])
    # exact delta method: var = s_a^2/mu_b^2 + mu_a^2 s_b^2/mu_b^4 - 2 mu_a cov/mu_b^3 = 0.002
    assert res.error == pytest.approx(math.sqrt(0.002 / n), rel=0.10)
    _, jk_error = jackknife(lambda x, y: x / y, [a, b], n_bins=1000)
    assert res.error == pytest.approx(jk_error, rel=0.10)
    assert abs(res.mean - 0.5) < 3.0 * res.error
    assert res.mean == pytest.approx(a.mean() / b.mean(), rel=1e-14)


def test_binder_cumulant_of_gaussian_is_zero(ar1):
    x = ar1(0.5, N_AR1, 8)
    res = gamma_method_derived(lambda m2, m4: 1.0 - m4 / (3.0 * m2**2), [x**2, x**4])
    assert abs(res.mean) < 3.0 * res.error, res
    _, jk_error = jackknife(lambda m2, m4: 1.0 - m4 / (3.0 * m2**2), [x**2, x**4], n_bins=400)
    assert res.error == pytest.approx(jk_error, rel=0.12)


def test_connected_susceptibility_of_ar1(ar1):
    """chi = <x^2> - <x>^2 = 1; projected series ~ x^2 with tau_int (1+a^2)/(2(1-a^2))."""
    a = 0.5
    x = ar1(a, N_AR1, 17)
    res = gamma_method_derived(lambda m1, m2: m2 - m1**2, [x, x**2])
    tau_x2 = (1 + a * a) / (2 * (1 - a * a))
    assert abs(res.mean - 1.0) < 3.0 * res.error
    assert abs(res.tau_int - tau_x2) < 3.0 * res.tau_int_error
    assert res.error == pytest.approx(math.sqrt(2.0 * 2.0 * tau_x2 / N_AR1), rel=0.10)


def test_derived_with_replicas_and_errors(ar1):
    reps_x = [ar1(0.3, 3000, s) + 2.0 for s in range(3)]
    res = gamma_method_derived(lambda m: m**2, [reps_x])
    prim = gamma_method(reps_x)
    assert res.n_replicas == 3
    assert res.error == pytest.approx(2 * abs(prim.mean) * prim.error, rel=1e-6)
    with pytest.raises(ValueError, match="replica lengths"):
        gamma_method_derived(lambda p, q: p + q, [reps_x, reps_x[:2]])
    with pytest.raises(ValueError, match="at the means .* is nan"):
        gamma_method_derived(lambda m: math.nan, [reps_x])
    centre = prim.mean
    with pytest.raises(ValueError, match="gradient of func .* is not finite"):
        gamma_method_derived(lambda m: 0.0 if m == centre else math.inf, [reps_x])
    const = gamma_method_derived(lambda p, q: 3.0, [reps_x, reps_x])
    assert (const.mean, const.error, const.tau_int) == (3.0, 0.0, 0.5)


# ---------------------------------------------------------------- properties

series = st.builds(
    lambda seed, n, a: np.random.default_rng(seed).standard_normal(n).cumsum() * a
    + np.random.default_rng(seed + 1).standard_normal(n),
    st.integers(0, 2**32 - 2), st.integers(4, 400), st.floats(0.0, 0.3))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # very short series may warn
@settings(max_examples=40, deadline=None)
@given(x=series, shift=st.floats(-100.0, 100.0))
def test_shift_moves_mean_and_keeps_error(x, shift):
    base, shifted = gamma_method(x), gamma_method(x + shift)
    assert shifted.mean == pytest.approx(base.mean + shift, abs=1e-9 * (1 + abs(shift)))
    assert shifted.error == pytest.approx(base.error, rel=1e-6)
    assert shifted.tau_int == pytest.approx(base.tau_int, rel=1e-6)
    assert shifted.window == base.window


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=40, deadline=None)
@given(x=series, scale=st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3))
def test_scale_and_identity_derived(x, scale):
    base = gamma_method(x)
    scaled = gamma_method(scale * x)
    assert scaled.error == pytest.approx(abs(scale) * base.error, rel=1e-6)
    assert scaled.tau_int == pytest.approx(base.tau_int, rel=1e-6)
    ident = gamma_method_derived(lambda m: m, [x])
    assert ident.error == pytest.approx(base.error, rel=1e-6)
    assert ident.mean == base.mean
    assert base.error >= 0 and math.isfinite(base.tau_int)


def test_torch_and_list_inputs_are_accepted(ar1):
    torch = pytest.importorskip("torch")
    x = ar1(0.3, 4000, 6)
    ref = gamma_method(x)
    assert gamma_method(torch.as_tensor(x)) == ref
    assert gamma_method(x.tolist()) == ref
    assert gamma_method([torch.as_tensor(x[:2000]), x[2000:]]) == gamma_method(np.split(x, 2))


@pytest.mark.parametrize("a", [-0.3, -0.5, -0.7])
def test_anticorrelated_ar1_tau_int_is_recovered(ar1, a):
    """ρ(t) = aᵗ oscillates; Wolff's stop at τ_int(1) <= 1/2 would give τ ≈ 1/2 + a. The window widens to
    Geyer's initial positive sequence and recovers τ_int = (1 + a)/(2(1 − a)) (N = 2·10⁵)."""
    res = gamma_method(ar1(a, 200_000, 11))
    exact = (1 + a) / (2 * (1 - a))
    assert res.window > 1
    assert abs(res.tau_int - exact) < 4 * res.tau_int_error + 0.01, (res, exact)


def test_damped_oscillating_autocorrelation_is_not_underestimated():
    """AR(2) x_t = −0.8 x_{t−1} − 0.3 x_{t−2} + ε (ρ(1) = −0.62, then damped oscillation): exact
    τ_int = 0.064. W = 1 would give 0.5 + ρ(1) < 0 (→ the naive 1/2) or, for milder cases, far too little;
    the paired window is conservative: τ ≤ τ̂ < 2τ."""
    from scipy.signal import lfilter

    e = np.random.default_rng(4).standard_normal(200_000)
    x = lfilter([1.0], [1.0, 0.8, 0.3], e)
    a1, a2 = -0.8, -0.3
    exact = (1 + a2) * ((1 - a2) ** 2 - a1 ** 2) / (2 * (1 - a2) * (1 - a1 - a2) ** 2)
    res = gamma_method(x)
    assert exact <= res.tau_int < 2 * exact, (res, exact)
