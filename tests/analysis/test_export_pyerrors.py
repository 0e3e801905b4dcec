"""pyerrors reads every exported entry ("Obs", "Corr", "Array") and its Gamma method agrees with ours.

Convention difference (measured below): both use Wolff's automatic window (S = 2), Gamma(t)
normalised by sum_r (N_r - t) and the same bias-corrected error sqrt(C_F(W)(1 + (2W+1)/N)/N), so
on one chain the errors agree to rounding; pyerrors' tau_int = tau(W)(1 + (2W+1)/N)/(1 + 1/N)
differs from ours, C_F'/(2 Gamma'(0)), by the factor (1 + 2 tau/N)/(1 + 1/N).  With R replicas
pyerrors subtracts each replica's own mean, ours the global mean (Wolff's convention): its
Gamma(t) lacks the spread of the replica means and its error is smaller by about
(R - 1)(2W + 1)/(2N) (1-2 % for 16 chains of 1000, the 1-4 % of issue 27).
"""
from __future__ import annotations

import numpy as np
import pyerrors as pe
import pytest

from latticeflow.analysis import (dump_pyerrors_json, effective_mass, gamma_method, gamma_method_array,
                                  load_pyerrors_json)

from .conftest import make_ar1
from .test_gamma_array import _cosh_correlator


def _pe_errors(obs) -> None:
    for o in np.ravel(obs):
        o.gamma_method(S=2.0)


def test_pyerrors_reads_scalars_correlator_and_array_back(tmp_path):
    reps_c = [_cosh_correlator(8, 0.5, n, seed=s)[1] for s, n in ((1, 600), (2, 400))]
    scalar = [make_ar1(0.7, 600, 3) + 2.0, make_ar1(0.7, 400, 4) + 2.0]
    arr = [np.random.default_rng(5).normal(size=(n, 3, 4)) + np.arange(12).reshape(3, 4) for n in (600, 400)]
    cfgs = [np.arange(0, 1200, 2), np.arange(7, 407)]
    path = dump_pyerrors_json(tmp_path / "all.json.gz", {"m": scalar, "C": reps_c, "G": arr, "m2": [s**2 for s in scalar]},
                              ensemble="phi4_L8", config_numbers=cfgs)
    m, corr, g, m2 = pe.input.json.load_json(str(path), verbose=False)
    assert isinstance(m, pe.Obs) and m.tag == "m" and m2.tag == "m2"
    assert m.value == pytest.approx(np.concatenate(scalar).mean(), rel=1e-14)
    assert m.idl["phi4_L8|r01"] == range(0, 1200, 2) and sorted(m.names) == ["phi4_L8|r01", "phi4_L8|r02"]
    np.testing.assert_allclose(m.deltas["phi4_L8|r02"] + m.r_values["phi4_L8|r02"], scalar[1], rtol=0, atol=1e-13)
    assert isinstance(corr, pe.Corr) and corr.T == 8 and corr.N == 1 and corr.tag == "C"
    c_mean = np.concatenate(reps_c).mean(axis=0)
    np.testing.assert_allclose([corr.content[t][0].value for t in range(8)], c_mean, rtol=1e-14)
    assert g.shape == (3, 4) and g[1, 2].tag == "G"
    np.testing.assert_allclose([[o.value for o in row] for row in g], np.concatenate(arr).mean(axis=0), rtol=1e-14)
    back = load_pyerrors_json(path)
    assert list(back) == ["m", "C", "G", "m2"]
    for got, want in zip(back["C"], reps_c):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
    np.testing.assert_allclose(back["G"][1], arr[1], rtol=0, atol=1e-13)
    assert back["m"][0].ndim == 1
    # pyerrors' errors of the correlator vs ours (2 replicas of a few hundred: replica-mean term small);
    # consecutive config numbers, as pyerrors measures lags in config numbers (gaps are missing data)
    corr = pe.input.json.load_json(str(dump_pyerrors_json(tmp_path / "c.json.gz", {"C": reps_c}, "e")), verbose=False)
    _pe_errors(corr.content)
    ours = gamma_method_array(reps_c)
    ratio = np.array([corr.content[t][0].dvalue for t in range(8)]) / ours.error
    assert np.all((ratio > 0.9) & (ratio < 1 + 1e-9))


def test_one_long_chain_errors_agree_to_rounding_and_tau_int_by_the_known_factor():
    x = make_ar1(0.9, 100_000, 7)
    o = pe.Obs([x], ["e"])
    o.gamma_method(S=2.0)
    ours = gamma_method(x)
    assert o.dvalue == pytest.approx(ours.error, rel=1e-10)
    assert o.e_windowsize["e"] == ours.window
    n, tau = ours.n, ours.tau_int
    assert o.e_tauint["e"] / tau == pytest.approx((1 + 2 * tau / n) / (1 + 1 / n), rel=1e-6)


def test_with_replicas_pyerrors_errors_are_smaller_by_the_replica_mean_term():
    # 4 long replicas: within 5 % (measured: 0.1-1 %)
    reps = [make_ar1(0.9, 25_000, 10 + r) for r in range(4)]
    o = pe.Obs(reps, [f"e|r{r}" for r in range(4)])
    o.gamma_method(S=2.0)
    assert 0.95 < o.dvalue / gamma_method(reps).error < 1 + 1e-9
    # 16 chains of 1024 (an HMC ensemble's chains as replicas): mean ratio - 1 = -(R-1)(2W+1)/(2N)
    diffs, predicted = [], []
    for seed in range(6):
        reps = [make_ar1(0.6, 1024, 100 * seed + r) for r in range(16)]
        o = pe.Obs(reps, [f"e|r{r:02d}" for r in range(16)])
        o.gamma_method(S=2.0)
        ours = gamma_method(reps)
        diffs.append(o.dvalue / ours.error - 1)
        predicted.append(-15 * (2 * ours.window + 1) / (2 * ours.n))
    assert all(-0.05 < d < 0 for d in diffs)
    assert abs(np.mean(diffs) - np.mean(predicted)) < 0.01


def test_pyerrors_corr_effective_masses_agree_with_ours(tmp_path):
    _, c = _cosh_correlator(12, 0.45, 20_000, seed=21)
    path = dump_pyerrors_json(tmp_path / "c.json.gz", {"C": [c]}, ensemble="ens")
    corr = pe.input.json.load_json(str(path), verbose=False)
    for kind, variant in (("cosh", "arccosh"), ("log", "log")):
        ours = effective_mass([c], kind=kind)
        theirs = corr.m_eff(variant)
        for t, mean, err in zip(ours.t, ours.mean, ours.error):
            o = theirs.content[t][0]
            o.gamma_method(S=2.0)
            assert o.value == pytest.approx(mean, rel=1e-12)
            assert o.dvalue == pytest.approx(err, rel=1e-6)  # one replica: same convention
