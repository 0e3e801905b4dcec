"""`bench efficiency --quick`: the JSON structure of the HMC / NMCMC comparison, the lower-bound rule for
τ_int, the β-annealed transfer (training time accumulates, the marginal layer keeps its β), and the plot."""
import json
import math

import numpy as np
import pytest
import torch

from actions import U1Gauge
from latticeflow.bench.efficiency import (QUICK_POINTS, _anneal_from, _series_stats, format_efficiency_table,
                                          run_efficiency_bench)
from latticeflow.flows import build_flow
from latticeflow.flows.u1_plaquette import PlaquetteMarginal


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    torch.set_num_threads(1)
    plot = tmp_path_factory.mktemp("eff") / "eff.png"
    return run_efficiency_bench(quick=True, plot=str(plot)), plot


def test_quick_efficiency_json_structure(quick):
    result, plot = quick
    json.dumps(result, allow_nan=False)
    assert [(p["L"], p["beta"]) for p in result["points"]] == [tuple(q) for q in QUICK_POINTS]
    keys = {"tau_int_q", "tau_int_plaquette", "tau_int_lower_bound", "configs_per_s", "chi_t", "chi_t_err",
            "chi_t_pull", "plaquette", "plaquette_pull", "verdict", "cost_1e4_seconds", "acceptance"}
    for p in result["points"]:
        for name in ("hmc", "winding_hmc", "nmcmc"):
            assert keys <= set(p[name]), keys - set(p[name])
            assert p[name]["configs_per_s"] > 0 and p[name]["tau_int_q"] >= 0.5
            assert set(p[name]["verdict"]) == {"reliable", "reasons"}
        assert p["exact"]["chi_t"] > 0 and 0 < p["exact"]["plaquette"] < 1
        assert p["hmc"]["n_leapfrog"] * p["hmc"]["step_size"] == pytest.approx(1.0, rel=0.5)  # trajectory ≈ 1
        assert p["nmcmc"]["train_seconds_total"] >= p["nmcmc"]["train_seconds"] > 0
        assert p["nmcmc"]["cost_1e4_seconds"] >= p["nmcmc"]["train_seconds_total"]
    first, second = result["points"]
    assert second["nmcmc"]["train_seconds_total"] == pytest.approx(
        first["nmcmc"]["train_seconds_total"] + second["nmcmc"]["train_seconds"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "HMC/NMCMC" in format_efficiency_table(result) and "winding/NMCMC" in format_efficiency_table(result)
    for p in result["points"]:
        assert 0 <= p["winding_hmc"]["winding_acceptance"] <= 1 and p["winding_cost_ratio"] > 0


def test_a_frozen_or_short_chain_reports_a_lower_bound():
    rng = np.random.default_rng(0)
    frozen = np.repeat(rng.integers(-1, 2, size=(8, 1)), 400, axis=1).astype(float)
    plaq = 0.9 + 0.01 * rng.normal(size=(8, 400))
    r = _series_stats(frozen, plaq, 64, 6.0, 1.0)
    assert r["tau_int_lower_bound"] and r["q_changes"] == 0 and r["tau_int_q"] == 400
    assert not r["verdict"]["reliable"]
    iid = rng.poisson(1.0, size=(8, 4000)) - rng.poisson(1.0, size=(8, 4000))
    r = _series_stats(iid.astype(float), 0.7 + 0.01 * rng.normal(size=(8, 4000)), 64, 2.0, 1.0)
    assert not r["tau_int_lower_bound"] and r["tau_int_q"] < 1.0


def test_annealed_transfer_keeps_the_marginal_layer_of_the_new_beta():
    torch.manual_seed(0)
    old = build_flow({"family": "u1"}, U1Gauge((8, 8), beta=4.0))
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.01)
    new = build_flow({"family": "u1"}, U1Gauge((8, 8), beta=6.0))
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    _anneal_from(new, old, (8, 8))
    marginal = [n for n, m in new.named_modules() if isinstance(m, PlaquetteMarginal)]
    assert marginal
    for k, v in new.state_dict().items():
        if any(k.startswith(m + ".") for m in marginal):
            assert torch.equal(v, fresh[k]), k
        elif v.is_floating_point() and k in dict(old.named_parameters()):
            assert torch.equal(v, old.state_dict()[k]), k
    assert math.isfinite(float(new.sample(4)[1].sum()))
