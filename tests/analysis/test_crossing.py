"""`binder_crossing`: the crossing of two finite-size curves with parametric bootstrap errors (issue 27)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from latticeflow.analysis.crossing import binder_crossing

KAPPAS = np.linspace(0.30, 0.345, 10)
KAPPA_C = 0.3237


def _binder(length: int) -> np.ndarray:
    """A finite-size scaling form U_L(κ) = 1/3 + 1/3 tanh(2(κ − κ_c)L): every pair of sizes crosses at κ_c."""
    return 1 / 3 + np.tanh(2 * (KAPPAS - KAPPA_C) * length) / 3


def test_noise_free_curves_cross_at_the_known_kappa():
    err = np.full(10, 1e-3)
    c = binder_crossing(KAPPAS, _binder(16), err, _binder(32), err, n_boot=200, seed=1)
    assert c.value == pytest.approx(KAPPA_C, abs=3e-4)
    assert c.window[0] <= KAPPA_C <= c.window[1] and c.n_points == 4 and c.degree == 2
    assert 0 < c.error < 2e-3 and c.n_boot == 200 and c.seed == 1 and c.n_failed == 0


def test_lines_cross_exactly_and_the_order_of_points_does_not_matter():
    k = np.array([0.4, 0.2, 0.3, 0.1])
    a, b = 1 + (k - 0.25), 1 + 3 * (k - 0.25)
    c = binder_crossing(k, a, np.full(4, 0.01), b, np.full(4, 0.01), window=1, n_boot=50)
    assert c.value == pytest.approx(0.25, abs=1e-4) and c.window == (0.2, 0.3)


def test_curves_that_do_not_cross_give_nan_and_a_note():
    err = np.full(10, 0.01)
    c = binder_crossing(KAPPAS, _binder(16) + 0.2, err, _binder(32), err)
    assert math.isnan(c.value) and "no crossing" in c.note


@pytest.mark.parametrize("bad", [dict(err_small=np.zeros(10)), dict(kappas=np.zeros(10)),
                                 dict(u_small=np.full(10, np.nan)), dict(kappas=KAPPAS[:3])])
def test_bad_input_is_a_value_error(bad):
    args = dict(kappas=KAPPAS, u_small=_binder(16), err_small=np.full(10, 0.01), u_large=_binder(32),
                err_large=np.full(10, 0.01))
    args.update(bad)
    with pytest.raises(ValueError):
        binder_crossing(**args)


def test_bootstrap_errors_cover_the_true_crossing_of_noisy_curves():
    """200 noisy scans (σ = 0.01 on every point): about 68 % of the crossings lie within 1σ of κ_c, and the
    pulls have unit width."""
    rng = np.random.default_rng(5)
    err = np.full(10, 0.01)
    pulls = []
    for trial in range(200):
        c = binder_crossing(KAPPAS, _binder(16) + err * rng.standard_normal(10), err,
                            _binder(32) + err * rng.standard_normal(10), err, n_boot=200, seed=trial)
        pulls.append((c.value - KAPPA_C) / c.error)
    pulls = np.asarray(pulls)
    assert 0.58 <= np.mean(np.abs(pulls) < 1) <= 0.80
    assert 0.8 <= np.std(pulls) <= 1.2 and abs(np.mean(pulls)) < 0.25
