"""`bench cluster --quick`: the strict-JSON structure of the HMC / cluster comparison and its table."""
import json

import pytest
import torch

from latticeflow.bench.cluster import format_cluster_table, run_cluster_bench


def _reject_constant(c):
    raise ValueError(c)


@pytest.fixture(scope="module")
def quick():
    torch.set_num_threads(1)
    return run_cluster_bench(quick=True, seed=3)


def test_quick_cluster_bench_is_strict_json_with_both_samplers(quick):
    text = json.dumps(quick, allow_nan=False)
    assert json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == quick
    json.loads(text, parse_constant=_reject_constant)
    assert quick["benchmark"] == "cluster" and quick["quick"] and quick["shape"] == [8, 8]
    keys = {"n_leapfrog", "step_size", "acceptance", "chain_length", "configurations", "cpu_seconds",
            "cpu_seconds_per_configuration", "wall_seconds_per_configuration", "chi2", "chi2_err", "tau_int_chi2",
            "chi2_lower_bound", "abs_m", "tau_int_abs_m", "abs_m_lower_bound", "xi_second_moment",
            "cost_per_independent_chi2", "cost_is_lower_bound", "warnings"}
    for name in ("hmc", "cluster"):
        r = quick[name]
        assert keys <= set(r), keys - set(r)
        assert r["configurations"] == quick["n_chains"] * r["chain_length"] >= 16 * quick["n_chains"]
        assert r["tau_int_chi2"] > 0 and r["cpu_seconds_per_configuration"] > 0 and r["chi2"] > 0
        assert r["cost_per_independent_chi2"] == pytest.approx(
            2 * max(r["tau_int_chi2"], 0.5) * r["cpu_seconds_per_configuration"])
        assert r["cost_is_lower_bound"] == r["chi2_lower_bound"] == (r["chain_length"] < 50 * r["tau_int_chi2"])
        assert r["n_leapfrog"] * r["step_size"] == pytest.approx(1.0, rel=0.5)  # trajectory length ≈ 1
    assert quick["cluster"]["cluster_every"] == 1
    assert quick["cost_ratio"] == pytest.approx(
        quick["hmc"]["cost_per_independent_chi2"] / quick["cluster"]["cost_per_independent_chi2"])
    assert quick["cost_ratio_bound"] in {"estimate", "lower", "upper", "unknown"}
    assert quick["target"]["met"] == (quick["cost_ratio"] >= 10)
    assert "HMC/cluster" in format_cluster_table(quick)


def test_bench_rejects_a_single_chain():
    with pytest.raises(ValueError, match="n_chains must be >= 2"):
        run_cluster_bench(quick=True, n_chains=1)
