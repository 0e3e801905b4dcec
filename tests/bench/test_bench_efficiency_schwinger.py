"""`bench efficiency --theory schwinger`: the JSON structure of the three samplers at one tiny point."""
import json
import math

import pytest
import torch

from latticeflow.bench.efficiency import format_efficiency_table, run_efficiency_bench
from latticeflow.bench.efficiency_schwinger import QUICK_SETTINGS, _pion_mass


def test_schwinger_efficiency_json_structure(tmp_path):
    torch.set_num_threads(1)
    settings = {**QUICK_SETTINGS, "hmc_seconds": 0.5, "nmcmc_configs": {4: 256}, "train_seconds": {4: 1.0}}
    plot = tmp_path / "s.png"
    result = run_efficiency_bench(theory="schwinger", quick=True, points=[(4, 2.0, 0.26)], settings=settings,
                                  plot=str(plot))
    json.dumps(result, allow_nan=False)
    (p,) = result["points"]
    assert (p["L"], p["beta"], p["kappa"]) == (4, 2.0, 0.26) and result["theory"] == "schwinger"
    for name in ("hmc", "winding_hmc", "nmcmc"):
        r = p[name]
        assert r["configs_per_s"] > 0 and r["tau_int_q"] > 0 and 0 < r["plaquette"] < 1 and r["condensate"] > 0
        assert set(r["verdict"]) == {"reliable", "reasons"}
    assert 0 <= p["winding_hmc"]["winding_acceptance"] <= 1
    assert p["nmcmc"]["cost_1e4_seconds"] >= p["nmcmc"]["train_seconds_total"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "winding_hmc" in format_efficiency_table(result)
    with pytest.raises(ValueError, match="--theory"):
        run_efficiency_bench(theory="qcd")


def test_pion_mass_of_a_pure_cosh():
    m, l0 = 0.7, 8
    t = torch.arange(l0, dtype=torch.float64)
    c = torch.cosh(m * (t - l0 / 2)).numpy()
    corr = c[None, None, :].repeat(4, 0).repeat(3, 1)  # (chains, n, L0)
    value, error = _pion_mass(corr)
    assert value == pytest.approx(m, abs=1e-12) and error == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(value)
