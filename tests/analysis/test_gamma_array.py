"""Gamma method for array observables, effective masses and correlated fits.

Vector AR(1) x_{i+1}^a = a_a x_i^a + sqrt(1 - a_a^2) (L eps_i)^a with L L^T = Sigma (unit diagonal):

* stationary covariance V_ab = sqrt((1 - a_a^2)(1 - a_b^2)) Sigma_ab / (1 - a_a a_b) (V = Sigma
  for a common a);
* Gamma_ab(t) = <x_i^a x_{i+t}^b> = a_b^t V_ab (t >= 0) and Gamma_ab(-t) = Gamma_ba(t), so
  C_ab = sum_t Gamma_ab(t) = V_ab [1 + a_a/(1 - a_a) + a_b/(1 - a_b)]; for a common a this is
  Sigma_ab 2 tau_int with tau_int = (1 + a)/(2 (1 - a));
* covariance of the means C_ab / N.

Tolerances are 4 sigma, sigma from Wolff's error of the error (error: sigma sqrt((W+1/2)/N),
tau_int: eq. (42)) and, for an off-diagonal element, the Gaussian (Bartlett) variance of a
windowed cross covariance: var(cov_ab) = (2 W_ab + 1)/N (cov_aa cov_bb + cov_ab^2).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from latticeflow.analysis import (correlated_fit, effective_mass, gamma_method, gamma_method_array,
                                  gamma_method_derived)


def vector_ar1(a: np.ndarray, sigma: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n x k stationary vector AR(1) with per-component a (module docstring)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(a, dtype=float)
    k = a.size
    v = np.sqrt(np.outer(1 - a**2, 1 - a**2)) * sigma / (1 - np.outer(a, a))
    x0 = np.linalg.cholesky(v) @ rng.standard_normal(k)  # stationary start
    eps = rng.standard_normal((n, k)) @ np.linalg.cholesky(sigma).T
    return np.stack([lfilter([np.sqrt(1 - a[c] ** 2)], [1.0, -a[c]], eps[:, c], zi=[a[c] * x0[c]])[0]
                     for c in range(k)], axis=1)


SIGMA = np.array([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]])


def _cov_sigma(res, true_cov: np.ndarray) -> np.ndarray:
    w = np.maximum.outer(res.window, res.window)
    return np.sqrt((2 * w + 1) / res.n * (np.outer(np.diag(true_cov), np.diag(true_cov)) + true_cov**2))


def test_vector_ar1_common_a_means_errors_tau_and_covariance():
    a, n = 0.8, 200_000
    x = vector_ar1(np.full(3, a), SIGMA, n, seed=11) + np.array([1.0, -2.0, 0.5])
    res = gamma_method_array(x)
    tau = (1 + a) / (2 * (1 - a))
    true_cov = SIGMA * 2 * tau / n
    assert np.all(np.abs(res.mean - [1.0, -2.0, 0.5]) < 4 * res.error)
    np.testing.assert_array_less(np.abs(res.error - np.sqrt(np.diag(true_cov))), 4 * res.error_of_error)
    np.testing.assert_array_less(np.abs(res.tau_int - tau), 4 * res.tau_int_error)
    assert res.positive_semidefinite
    np.testing.assert_array_less(np.abs(res.covariance - true_cov), 4 * _cov_sigma(res, true_cov))
    np.testing.assert_array_equal(np.diag(res.covariance), res.error**2)
    np.testing.assert_allclose(res.correlation(), SIGMA, atol=0.03)


def test_vector_ar1_per_component_a_gives_the_derived_cross_covariance():
    a, n = np.array([0.3, 0.6, 0.85]), 200_000
    x = vector_ar1(a, SIGMA, n, seed=5)
    res = gamma_method_array(x)
    v = np.sqrt(np.outer(1 - a**2, 1 - a**2)) * SIGMA / (1 - np.outer(a, a))
    true_cov = v * (1 + (a / (1 - a))[:, None] + (a / (1 - a))[None, :]) / n
    np.testing.assert_array_less(np.abs(res.tau_int - (1 + a) / (2 * (1 - a))), 4 * res.tau_int_error)
    np.testing.assert_array_less(np.abs(res.covariance - true_cov), 4 * _cov_sigma(res, true_cov))
    assert res.positive_semidefinite


def test_components_agree_with_scalar_gamma_method_with_replicas_and_any_shape():
    reps = [vector_ar1(np.full(3, 0.7), SIGMA, n, seed=s)[:, [0, 1, 2, 0, 1, 2]].reshape(n, 2, 3)
            for s, n in ((1, 3000), (2, 1700), (3, 2500))]
    for r in reps:
        r[:, 1, 2] = 4.0  # a constant component: error 0, tau_int 1/2, no covariance
    res = gamma_method_array(reps, S=1.5)
    assert res.shape == (2, 3) and res.n == 7200 and res.n_replicas == 3
    for idx in np.ndindex(2, 3):
        want = gamma_method([r[(slice(None), *idx)] for r in reps], S=1.5)
        got = res.component(idx)
        for key in ("mean", "error", "error_of_error", "tau_int", "tau_int_error"):
            assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-12, abs=1e-15)
        assert got.window == want.window
    np.testing.assert_array_equal(np.diag(res.covariance), res.error.reshape(-1) ** 2)
    assert np.all(res.covariance[5] == 0) and np.all(res.covariance[:, 5] == 0)
    # components 0 and 3 are the same series: their covariance is the variance
    assert res.covariance[0, 3] == pytest.approx(res.error.reshape(-1)[0] ** 2, rel=1e-10)


def test_non_positive_semidefinite_windowed_covariance_is_fixed_keeping_the_diagonal():
    # independent, strongly autocorrelated components, few samples (N/W ~ k): the windowed matrix
    # (unlike Gamma_ab(0)) goes indefinite
    rng = np.random.default_rng(0)
    x = lfilter([1.0], [1.0, -0.9], rng.standard_normal((60, 8)), axis=0)
    res = gamma_method_array(x)
    assert not res.positive_semidefinite
    assert np.linalg.eigvalsh(res.covariance_windowed).min() < 0
    assert np.linalg.eigvalsh(res.covariance).min() > -1e-12 * np.abs(res.covariance).max()
    np.testing.assert_allclose(np.diag(res.covariance), res.error**2, rtol=1e-12)
    assert np.all(np.abs(res.correlation()) <= 1 + 1e-12)


def _cosh_correlator(T: int, m: float, n: int, seed: int, a: float = 0.5, noise: float = 0.05):
    """C(t) = cosh model plus AR(1)-in-time noise correlated across t (exp(-|t-t'|/3))."""
    t = np.arange(T)
    c = np.exp(-m * t) + np.exp(-m * (T - t))
    sigma = np.exp(-np.abs(t[:, None] - t[None, :]) / 3.0)
    return t, c + noise * c * vector_ar1(np.full(T, a), sigma, n, seed)


def test_effective_mass_matches_gamma_method_derived_and_the_input_mass():
    t, x = _cosh_correlator(16, 0.4, 20_000, seed=3)
    em = effective_mass(x, kind="cosh")
    assert em.t.tolist() == list(range(1, 15))
    assert np.all(np.abs(em.mean - 0.4) < 4 * em.error)

    def meff(cm, c0, cp):
        return np.arccosh((cm + cp) / (2 * c0))

    want = gamma_method_derived(meff, [x[:, 2], x[:, 3], x[:, 4]])
    assert em.mean[2] == pytest.approx(want.mean, rel=1e-12) and em.error[2] == pytest.approx(want.error, rel=1e-9)
    log = effective_mass([x[:10_000], x[10_000:]], kind="log")
    assert log.t.tolist() == list(range(15))
    assert np.all(np.abs(log.mean[:4] - np.log(np.cosh(0.4 * (t[:4] - 8)) / np.cosh(0.4 * (t[:4] - 7))))
                  < 4 * log.error[:4])
    noisy = effective_mass(np.array([1.0, 2.0, 1.0, 3.0]) * (1 + 0.01 * x[:, :4]), kind="cosh")
    assert np.isnan(noisy.mean[0]) and np.isfinite(noisy.mean[1])  # arg < 1 at t = 1 (C(0)+C(2) < 2 C(1))


def test_correlated_cosh_fit_recovers_the_mass_with_chi2_per_dof_near_one():
    pulls, chi2_dof = [], []
    for seed in range(8):
        t, x = _cosh_correlator(16, 0.4, 10_000, seed=100 + seed)
        res = gamma_method_array(x)
        fit = correlated_fit(t, res.mean, res.covariance, model="cosh", T=16, t_min=1, t_max=8)
        assert (fit.t_min, fit.t_max, fit.dof) == (1, 8, 6)
        assert abs(fit.mass - 0.4) < 3 * fit.mass_error
        assert abs(fit.amplitude - 1.0) < 3 * fit.amplitude_error
        assert 0 < fit.p_value < 1 and fit.chi2_dof == pytest.approx(fit.chi2 / 6)
        pulls.append((fit.mass - 0.4) / fit.mass_error)
        chi2_dof.append(fit.chi2_dof)
    # mean of 8 chi2/dof with dof 6: 1 +- sqrt(2/48) = 0.2
    assert abs(np.mean(chi2_dof) - 1) < 4 * np.sqrt(2 / 48)
    assert 0.3 < np.sqrt(np.mean(np.square(pulls))) < 1.8
    d = fit.as_dict()
    assert d["model"] == "cosh" and d["T"] == 16.0 and set(d) >= {"mass", "mass_error", "chi2_dof", "p_value"}
    np.testing.assert_allclose(fit.model_values(np.array([0.0, 8.0])),
                               fit.amplitude * np.array([1 + np.exp(-16 * fit.mass), 2 * np.exp(-8 * fit.mass)]))


def test_exp_fit_and_default_period():
    t = np.arange(10)
    y = 2.0 * np.exp(-0.3 * t)
    cov = np.diag((0.01 * y) ** 2)
    fit = correlated_fit(t, y, cov, model="exp")
    assert fit.mass == pytest.approx(0.3, rel=1e-8) and fit.amplitude == pytest.approx(2.0, rel=1e-8)
    assert fit.chi2 == pytest.approx(0.0, abs=1e-12) and fit.dof == 8
    yc = np.exp(-0.5 * t) + np.exp(-0.5 * (10 - t))
    fit = correlated_fit(t, yc, np.diag((0.01 * yc) ** 2), model="cosh", t_min=2, t_max=5)
    assert fit.T == 10.0 and fit.mass == pytest.approx(0.5, rel=1e-8)


@pytest.mark.parametrize("call, needle", [
    (lambda: gamma_method_array(np.ones((5, 2)), S=0), "S must be a positive number"),
    (lambda: gamma_method_array([]), "empty list"),
    (lambda: gamma_method_array([np.ones((5, 2)), np.ones((5, 3))]), r"replica 1 has per-configuration shape \(3,\)"),
    (lambda: gamma_method_array(np.ones((1, 3))), "at least 2 samples"),
    (lambda: gamma_method_array(np.array([[1.0, np.nan], [2.0, 3.0]])), r"non-finite value at index \[0, 1\]"),
    (lambda: gamma_method_array(np.ones((5, 0))), "no components"),
    (lambda: gamma_method_array("abc"), "got str"),
    (lambda: effective_mass(np.ones((5, 4)), kind="sinh"), "kind must be 'cosh' or 'log', got 'sinh'"),
    (lambda: effective_mass(np.ones((5, 2, 2))), r"per-configuration shape \(2, 2\)"),
    (lambda: correlated_fit(np.arange(5), np.ones(5), np.eye(5), model="pow"), "model must be 'cosh' or 'exp'"),
    (lambda: correlated_fit(np.arange(5), np.ones(4), np.eye(5)), "t has 5 points, mean 4"),
    (lambda: correlated_fit(np.arange(5), np.ones(5), np.eye(5), t_min=3, t_max=4), "holds 2 points"),
    (lambda: correlated_fit(np.arange(5), np.ones(5), np.ones((5, 5))), "singular or not positive definite"),
    (lambda: correlated_fit(np.arange(5), np.ones(5), -np.eye(5)), "singular or not positive definite"),
    (lambda: correlated_fit(np.arange(1, 6), np.ones(5), np.eye(5)), "needs the period T"),
    (lambda: correlated_fit(np.arange(5), np.array([1, 2, np.inf, 1, 1.0]), np.eye(5)), "must be finite"),
])
def test_bad_inputs_are_one_clear_value_error(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
