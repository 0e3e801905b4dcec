"""Shared fixtures for the analysis tests: a stationary AR(1) generator with known tau_int."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.signal import lfilter


def make_ar1(a: float, n: int, seed: int) -> np.ndarray:
    """Stationary AR(1) x_t = a x_{t-1} + sqrt(1-a^2) eps_t with unit variance.

    rho(t) = a^|t|, so tau_int = 1/2 + sum_{t>=1} a^t = (1 + a) / (2 (1 - a)).
    """
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(n)
    x_prev = rng.standard_normal()  # stationary start
    return lfilter([np.sqrt(1.0 - a * a)], [1.0, -a], eps, zi=[a * x_prev])[0]


@pytest.fixture
def ar1() -> Callable[[float, int, int], np.ndarray]:
    return make_ar1
