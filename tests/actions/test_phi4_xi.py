"""The φ⁴ observable F = |φ̃(p_min)|²/V and the second-moment correlation length ξ₂/L (issue 27)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actions import Phi4
from actions.exact import free_field_kernel, free_field_second_moment_xi
from actions.phi4 import second_moment_xi


def _direct_dft(phi: np.ndarray) -> np.ndarray:
    """|Σ_x φ_x e^{ipx}|²/V averaged over p = 2π/L e_μ for the axes μ of extent L = L0, by explicit sums."""
    shape = phi.shape[1:]
    length, volume = shape[0], math.prod(shape)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    axes = [mu for mu, n in enumerate(shape) if n == length]
    total = np.zeros(len(phi))
    for mu in axes:
        phase = np.exp(1j * 2 * np.pi * grids[mu] / length)
        total += np.abs((phi * phase).reshape(len(phi), -1).sum(-1)) ** 2
    return total / (len(axes) * volume)


@pytest.mark.parametrize("shape", [(6, 6), (4, 6), (6, 4), (4, 4, 4), (5,)])
def test_fourier_pmin_equals_a_direct_dft(shape):
    phi = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theory = Phi4(shape, kappa=0.1, lam=0.3)
    got = theory.observables(phi)["fourier_pmin"].numpy()
    assert got.shape == (3,)
    np.testing.assert_allclose(got, _direct_dft(phi.numpy()), rtol=1e-12)


@pytest.mark.parametrize("shape,kappa", [((8, 8), 0.2), ((16, 8), 0.1), ((4, 4, 4), 0.1), ((12,), 0.3)])
def test_free_second_moment_xi_is_sqrt_kappa_over_one_minus_2d_kappa(shape, kappa):
    assert free_field_second_moment_xi(shape, kappa) == pytest.approx(math.sqrt(kappa / (1 - 2 * len(shape) * kappa)),
                                                                      rel=1e-12)


def test_xi_of_free_field_samples_matches_the_exact_second_moment_xi():
    """Exact Gaussian samples φ = F⁻¹ A(p)^{-1/2} F η of the free field (λ = 0) through the observables and the
    table row's formula: ξ₂/L within 5 % (about 4σ at 40000 samples) of the free propagator's value."""
    shape, kappa, n = (8, 8), 0.2, 40000
    rng = np.random.default_rng(3)
    eta = rng.standard_normal((n, *shape))
    phi = np.fft.ifftn(np.fft.fftn(eta, axes=(1, 2)) / np.sqrt(free_field_kernel(shape, kappa)), axes=(1, 2)).real
    theory = Phi4(shape, kappa=kappa, lam=0.0)
    obs = theory.observables(torch.as_tensor(phi))
    m2, f = float(obs["m2"].mean()), float(obs["fourier_pmin"].mean())
    row = next(r for r in theory.table_rows() if r.name == "xi/L")
    xi_over_l = row.func(m2, f)
    assert row.exact == pytest.approx(free_field_second_moment_xi(shape, kappa) / 8)
    assert xi_over_l == pytest.approx(row.exact, rel=0.05)
    assert second_moment_xi(64 * m2, f, 8) == pytest.approx(8 * xi_over_l)


def test_second_moment_xi_has_no_estimate_where_chi2_over_f_is_below_one():
    assert math.isnan(second_moment_xi(1.0, 2.0, 8)) and math.isnan(second_moment_xi(1.0, 0.0, 8))
    assert second_moment_xi(2.0, 1.0, 4) == pytest.approx(1 / (2 * math.sin(math.pi / 4)))
    assert second_moment_xi(1.0, 2.0, 4, signed=True) == pytest.approx(-math.sqrt(0.5) / (2 * math.sin(math.pi / 4)))


def test_white_noise_fields_give_a_finite_xi_row_near_zero():
    """ξ = 0 (uncorrelated φ): χ₂/F fluctuates around 1, and the table row stays finite either side of it."""
    theory = Phi4((4, 4), kappa=0.25, lam=0.5)
    row = next(r for r in theory.table_rows() if r.name == "xi/L")
    for m2, f in ((0.06, 0.9998), (0.0625, 1.0), (0.07, 1.0)):
        assert math.isfinite(row.func(m2, f))


def test_an_ensemble_without_the_new_observable_is_analysed_without_its_row(tmp_path, monkeypatch):
    """Ensembles written before ``fourier_pmin`` existed: the analysis leaves out ξ₂/L and keeps the rest."""
    from latticeflow.config import config_from_dict
    from latticeflow.pipeline import analyze, sample

    original = Phi4.observables
    monkeypatch.setattr(Phi4, "observables",
                        lambda self, phi: {k: v for k, v in original(self, phi).items() if k != "fourier_pmin"})
    cfg = config_from_dict({"name": "old", "seed": 1, "action": {"theory": "phi4", "shape": [4, 4], "kappa": 0.2,
                                                                 "lam": 0.0},
                            "sampler": {"n_samples": 64, "n_chains": 4, "n_thermalize": 10},
                            "output": {"dir": str(tmp_path / "old")}})
    sample(cfg, progress=False)
    names = [r.name for r in analyze(str(tmp_path / "old" / "ensemble.h5")).rows]
    assert "xi/L" not in names and "binder U" in names and "chi2 = V<m^2>" in names
