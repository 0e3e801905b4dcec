"""Users' own scripts: `Ensemble.replicas` gives each chain in Markov order and `Ensemble.gamma` its Gamma-method
error; the rows as stored (sweep-major over chains) would underestimate τ_int and the error."""
import numpy as np
import pytest

from latticeflow.analysis import gamma_method
from latticeflow.config import config_from_dict
from latticeflow.io import open_ensemble
from latticeflow.pipeline import analyze, sample


@pytest.fixture(scope="module")
def broken_phase(tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    cfg = config_from_dict({"seed": 2, "action": {"theory": "phi4", "shape": [8, 8], "kappa": 0.26, "lam": 0.05},
                            "sampler": {"n_samples": 4096, "n_chains": 16, "n_thermalize": 50, "n_leapfrog": 3,
                                        "batch_size": 1024}, "output": {"dir": str(out)}})
    return sample(cfg, progress=False).path


def test_replicas_are_chains_in_markov_order(broken_phase):
    with open_ensemble(broken_phase) as ens:
        reps = ens.replicas("abs_m")
        chain, mc, values = ens["chain"], ens["mc_index"], ens["observables/abs_m"]
    assert len(reps) == 16 and all(len(r) == 256 for r in reps)
    for c, r in enumerate(reps):
        sel = chain == c
        assert np.array_equal(r, values[sel][np.argsort(mc[sel])])


def test_E_gamma_matches_analyze_and_the_naive_series_underestimates(broken_phase):
    with open_ensemble(broken_phase) as ens:
        mine = ens.gamma("abs_m")
        naive = gamma_method([ens["observables/abs_m"]])
        chi = ens.gamma("m2", lambda m2, am: 64 * (m2 - am**2), "abs_m")
    table = analyze(broken_phase)
    assert mine.mean == pytest.approx(table.row("|m|").result.mean)
    assert mine.error == pytest.approx(table.row("|m|").result.error)
    assert chi.mean == pytest.approx(table.row("chi = V(<m^2>-<|m|>^2)").result.mean)
    assert mine.tau_int > 2 * naive.tau_int and mine.error > 1.5 * naive.error


def test_unknown_names_are_refused(broken_phase):
    with open_ensemble(broken_phase) as ens:
        with pytest.raises(KeyError, match="no dataset or observable 'nope'"):
            ens.replicas("nope")
