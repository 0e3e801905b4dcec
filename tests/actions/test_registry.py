"""The theory registry: every theory builds from its config section, validates its couplings in one line,
and offers what the machinery asks of it (hot start, HMC update, table rows that its observables feed)."""
import math

import pytest
import torch

from actions import THEORIES, TableRow, Theory, build_theory

CASES = {"phi4": ([4, 4], {"kappa": 0.2, "lam": 0.1}), "u1": ([4, 4], {"beta": 2.0}),
         "schwinger": ([4, 4], {"beta": 2.0, "kappa": 0.25})}


def test_every_registered_theory_has_a_test_case():
    assert set(THEORIES) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_theory_offers_the_machinery_interface(name):
    shape, couplings = CASES[name]
    theory = build_theory(name, shape, couplings)
    assert isinstance(theory, Theory) and theory.theory == name
    gen = torch.Generator().manual_seed(0)
    x = theory.hot_start(5, gen, torch.float64, "cpu")
    assert x.shape == (5, *theory.field_shape) and x.dtype == torch.float64
    s = theory.action(x)
    assert s.shape == (5,) and torch.isfinite(s).all()
    p = torch.randn_like(x)
    # the HMC update is a flow on the field space: ε p then −ε p returns (up to the projection)
    back = theory.project(theory.update(theory.update(x, p, 0.1), p, -0.1))
    assert torch.allclose(torch.remainder(back - x + math.pi, 2 * math.pi) - math.pi, torch.zeros_like(x), atol=1e-12)
    obs = theory.observables(x)
    rows = theory.table_rows()
    assert rows and any(r.main for r in rows)
    for row in rows:
        assert isinstance(row, TableRow)
        for item in row.inputs:
            key, index = (item, None) if isinstance(item, str) else item
            assert key in obs, f"{row.name}: {key} is not an observable of {name}"
            if index is not None:
                assert obs[key][(slice(None), *index)].shape == (5,)
        if row.main:
            assert row.func is None  # main rows are primary series (R̂ and τ_int per chain)


@pytest.mark.parametrize("name,couplings,message", [
    ("phi4", {"kappa": 0.3}, "kappa must satisfy |kappa| < 0.25 at lam = 0"),
    ("phi4", {"kappa": 0.2, "lam": -1.0}, "lam must be >= 0, got -1.0"),
    ("phi4", {"kappa": 0.2, "m2": 1.0}, "either (kappa, lam) or (m2, lam4)"),
    ("phi4", {"kapa": 0.2}, "kapa is not a coupling of theory phi4 (did you mean 'kappa'?)"),
    ("u1", {"beta": -1.0}, "beta must be > 0, got -1.0"),
    ("schwinger", {"beta": 1.0, "kappa": 0.6}, "kappa must be in [0, 0.5), got 0.6"),
    ("o3", {}, "theory must be one of phi4, u1, schwinger, got 'o3'"),
])
def test_bad_couplings_are_one_line_naming_the_value(name, couplings, message):
    with pytest.raises(ValueError) as err:
        build_theory(name, [4, 4], couplings)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("shape", [[6], [4, 4, 4], [3, 3, 3, 3]])
def test_phi4_in_any_dimension_measures_every_table_row(shape):
    theory = build_theory("phi4", shape, {"kappa": 0.05, "lam": 0.0})
    x = theory.hot_start(3, torch.Generator().manual_seed(1))
    obs = theory.observables(x)
    assert obs["two_point"].shape == (3, *shape) and obs["zero_momentum_correlator"].shape == (3, shape[0])
    g_exact = theory.two_point_exact()
    assert g_exact.shape == tuple(shape)
    # the table's G(0) row is the free-field propagator at the origin
    row = next(r for r in theory.table_rows() if r.name.startswith("G(0"))
    assert row.exact == pytest.approx(float(g_exact[(0,) * len(shape)]))


def test_quadratic_kernel_is_the_free_field_kernel_at_lam_zero():
    from actions import exact

    theory = build_theory("phi4", [6, 4, 4], {"kappa": 0.1})
    assert torch.allclose(torch.as_tensor(theory.quadratic_kernel()),
                          torch.as_tensor(exact.free_field_kernel([6, 4, 4], 0.1)))
