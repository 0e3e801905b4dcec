"""The analysis' correlator fit: the plateau search skips excited states (two-state correlator, known masses)."""
from __future__ import annotations

import numpy as np

from latticeflow.pipeline.analyze import _correlator_fit


def two_state(t: np.ndarray, L0: int) -> np.ndarray:
    cosh = lambda m: np.exp(-m * t) + np.exp(-m * (L0 - t))  # noqa: E731
    return 0.3 * cosh(0.45) + 0.8 * cosh(2.5)


def test_plateau_search_starts_the_fit_after_the_excited_state_and_finds_the_ground_state_mass():
    L0, rng = 16, np.random.default_rng(4)
    t = np.arange(L0)
    c = two_state(t, L0)
    # 8 replicas of 1000 correlated Gaussian fluctuations (5 % relative, correlated along t)
    corr = 0.9 ** np.abs(t[:, None] - t[None, :])
    chol = np.linalg.cholesky(corr * np.outer(0.05 * c, 0.05 * c))
    reps = [c + rng.normal(size=(1000, L0)) @ chol.T for _ in range(8)]
    out = _correlator_fit(reps, L0, S=2.0)
    fit = out["correlator_fit"]
    assert fit["plateau_found"] and fit["t_min"] > 1 and fit["p_value"] >= 0.05
    assert abs(fit["mass"] - 0.45) < 3 * fit["mass_error"], fit
    one_state = np.exp(-0.45 * t) + np.exp(-0.45 * (L0 - t))
    flat = _correlator_fit([0.3 * one_state + 1e-6 * rng.normal(size=(4000, L0)) for _ in range(4)], L0,
                           S=2.0)["correlator_fit"]
    assert flat["t_min"] == 1 and abs(flat["mass"] - 0.45) < 1e-3  # a pure cosh: the whole range fits
