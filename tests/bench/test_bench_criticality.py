"""`bench criticality --quick`: strict JSON with the three samplers at every L, the cost rule (training and its
transfer chain counted), the lower-bound flags, agreement and cost ratios, the fits and the plot; the κ line of
the shipped configs `configs/phi4_critical_L*.yaml`; `--sizes` on the command line."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import latticeflow.bench.criticality as crit
from latticeflow.bench.criticality import (KAPPAS, LAM, QUICK_SIZES, SAMPLERS, fit_exponent, format_criticality_table,
                                           observables, run_criticality_bench)
from latticeflow.cli import main
from latticeflow.config import load_config

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"n_chains", "chain_length", "configurations", "wall_seconds", "configs_per_s", "chi2", "chi2_err",
        "tau_int_chi2", "tau_int_chi2_err", "chi2_lower_bound", "abs_m", "abs_m_err", "tau_int_abs_m",
        "abs_m_lower_bound", "xi_second_moment", "train_seconds_total", "cost_1e4_seconds", "cost_is_lower_bound",
        "acceptance"}


def _refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    torch.set_num_threads(1)
    plot = tmp_path_factory.mktemp("crit") / "crit.png"
    rows = []
    return run_criticality_bench(quick=True, plot=str(plot), progress=rows.append), plot, rows


def test_quick_criticality_is_strict_json_with_three_samplers_per_size(quick):
    result, plot, rows = quick
    assert json.loads(json.dumps(result, allow_nan=False), parse_constant=_refuse) == result
    assert result["benchmark"] == "criticality" and result["sizes"] == list(QUICK_SIZES) and result["lam"] == LAM
    assert [p["L"] for p in result["points"]] == list(QUICK_SIZES)
    assert [(r["L"], r["sampler"]) for r in rows] == [(L, k) for L in QUICK_SIZES for k, _, _ in SAMPLERS]
    for p in result["points"]:
        assert p["kappa"] == KAPPAS[p["L"]] and p["volume"] == p["L"] ** 2
        for key, _, _ in SAMPLERS:
            r = p[key]
            assert KEYS <= set(r), KEYS - set(r)
            assert r["n_chains"] == result["n_chains"] and r["configurations"] == r["n_chains"] * r["chain_length"]
            assert r["chain_length"] >= 16 and r["configs_per_s"] > 0 and r["tau_int_chi2"] > 0
            assert r["chi2"] > 0 and r["chi2_err"] > 0 and 0 < r["abs_m"] < 2 and 0 <= r["acceptance"] <= 1
            assert r["chi2_lower_bound"] == (r["chain_length"] < 50 * r["tau_int_chi2"]) == r["cost_is_lower_bound"]
            assert r["cost_1e4_seconds"] == pytest.approx(
                r["train_seconds_total"] + 1e4 * 2 * max(r["tau_int_chi2"], 0.5) / r["configs_per_s"])
        for key in ("hmc", "cluster"):
            assert p[key]["train_seconds_total"] == 0
            assert p[key]["n_leapfrog"] * p[key]["step_size"] == pytest.approx(1.0, rel=0.5)  # trajectory ≈ 1
        nm = p["nmcmc"]
        assert 0 < nm["reverse_ess"] <= 1 and nm["train_steps"] >= 1 and nm["error"] is None
        assert nm["train_seconds_per_step"] == pytest.approx(nm["train_clock_seconds"] / nm["train_steps"])
        assert nm["train_peak_memory_mb"] > 0  # time and memory per step at every L
        assert nm["train_seconds"] >= nm["train_clock_seconds"] >= result["train_seconds"][str(p["L"])]
        assert set(p["agreement"]["pulls"]) == {"chi2", "abs_m"} and len(p["agreement"]["pulls"]["chi2"]) == 3
        assert p["agreement"]["agree"] == (p["agreement"]["max_abs_pull"] <= 4)
        ratio = p["cost_ratio"]["hmc/nmcmc"]
        assert ratio["value"] == pytest.approx(p["hmc"]["cost_1e4_seconds"] / nm["cost_1e4_seconds"])
        assert ratio["bound"] in {"estimate", "lower", "upper", "unknown"}
    small, large = result["points"]
    assert small["nmcmc"]["transferred_from"] is None and large["nmcmc"]["transferred_from"] == [8, 8]
    assert large["nmcmc"]["train_seconds_total"] == pytest.approx(  # the transfer chain is counted
        small["nmcmc"]["train_seconds"] + large["nmcmc"]["train_seconds"])
    for key, _, _ in SAMPLERS:
        fit = result["fits"][key]["cost"]
        assert fit["n_points"] == 2 and fit["exponent"] == pytest.approx(
            math.log(large[key]["cost_1e4_seconds"] / small[key]["cost_1e4_seconds"]) / math.log(2))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result["plot"] == str(plot)
    table = format_criticality_table(result)
    assert "t(1e4 chi2)" in table and "cost ~ L^" in table and "max |pull|" in table


def test_the_quick_line_has_the_right_correlation_length(quick):
    """ξ₂ ≈ L/4 from the cluster sampler (the best-decorrelated chains of the quick run), within 30 %."""
    for p in quick[0]["points"]:
        assert p["cluster"]["xi_second_moment"] == pytest.approx(p["L"] / 4, rel=0.3)


def test_sizes_are_validated():
    with pytest.raises(ValueError, match="no kappa on the line"):
        run_criticality_bench(sizes="8,24", quick=True, plot=None)
    with pytest.raises(ValueError, match="sizes must be integers"):
        run_criticality_bench(sizes="8,x", quick=True, plot=None)
    with pytest.raises(ValueError, match="n_chains must be >= 2"):
        run_criticality_bench(sizes=[8], quick=True, n_chains=1, plot=None)
    with pytest.raises(ValueError, match="train_seconds must be S or L:S"):
        run_criticality_bench(sizes=[8], quick=True, train_seconds="8:x", plot=None)
    with pytest.raises(ValueError, match="--flow must be a YAML mapping"):
        run_criticality_bench(sizes=[8], quick=True, flow="[spline]", plot=None)
    assert crit._parse_train_seconds("60") == 60.0
    assert crit._sizes(" 32, 16,16 ", False, KAPPAS) == [16, 32] and crit._sizes(None, False, KAPPAS) == [16, 32, 64, 128]


def test_fit_exponent_and_observables():
    r = fit_exponent([16, 32, 64, 128], [3 * L ** 2.0 * f for L, f in zip([16, 32, 64, 128], (1, 1.1, 0.9, 1))])
    assert r["exponent"] == pytest.approx(2.0, abs=0.1) and r["exponent_err"] > 0 and r["n_points"] == 4
    assert fit_exponent([16, 32], [1.0, None])["exponent"] is None
    x = torch.full((3, 8, 8), 0.5, dtype=torch.float32)
    x[1] = -0.5
    x[2] = torch.cos(2 * math.pi * torch.arange(8) / 8).view(8, 1).expand(8, 8)  # a wave at the smallest momentum
    m, f = observables(x).numpy()
    assert np.allclose(m, [0.5, -0.5, 0.0], atol=1e-6) and np.allclose(f[:2], 0, atol=1e-9)
    assert f[2] == pytest.approx((32 ** 2) / 64 / 2)  # |Σ φ e^{ipx}|² = (V/2)², over V and the 2 directions


def test_shipped_configs_are_the_kappa_line():
    for L in (16, 32, 64, 128):
        cfg, _ = load_config(ROOT / "configs" / f"phi4_critical_L{L}.yaml")
        assert cfg.action.theory == "phi4" and list(cfg.action.shape) == [L, L]
        assert cfg.action.couplings == {"kappa": KAPPAS[L], "lam": LAM}
        # the bench's flow: 16 colour couplings (L = 64 with 5x5 conditioner kernels, measured better there)
        flow = {k: v for k, v in cfg.flow.items() if not (L == 64 and k == "kernel_size" and v == 5)}
        assert cfg.dtype == "float32" and flow == crit.DEFAULT_FLOW
        assert cfg.sampler.name == "nmcmc" and cfg.sampler.n_chains == 16 and 0 < cfg.sampler.reference_hmc <= 8192
    seconds = [load_config(ROOT / "configs" / f"phi4_critical_L{L}.yaml")[0].train.seconds for L in (16, 32, 64, 128)]
    assert seconds == sorted(seconds) and len(set(seconds)) == 4


def test_cli_passes_sizes(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(crit, "run_criticality_bench", lambda **kw: seen.update(kw) or {"benchmark": "criticality"})
    assert main(["bench", "criticality", "--sizes", "16,32", "--seconds", "5", "--device", "cpu", "--json",
                 "--train-seconds", "16:300,32:1800", "--flow", "{family: spline, vacua: false}"]) == 0
    assert seen["sizes"] == "16,32" and seen["seconds"] == 5.0 and seen["device"] == "cpu"
    assert seen["train_seconds"] == "16:300,32:1800" and seen["flow"] == "{family: spline, vacua: false}"
    assert json.loads(capsys.readouterr().out) == {"benchmark": "criticality"}


def test_runs_take_trained_flows_and_count_their_whole_chain(tmp_path):
    """``--runs L:DIR``: the flow of a ``latticeflow train`` run at that L, its cost every second of its chain (a
    schedule over sizes, then a run started from it by ``train.init``); a run of another κ is refused."""
    from latticeflow.config import config_from_dict, config_to_yaml
    from latticeflow.pipeline import train as train_run
    from latticeflow.pipeline.sizes import training_chain_seconds

    def data(out, **extra):
        return {"name": "runs", "seed": 2, "dtype": "float32",
                "action": {"theory": "phi4", "shape": [8, 8], "kappa": KAPPAS[8], "lam": LAM},
                "flow": {"family": "spline", "n_layers": 2, "hidden": [4]},
                "train": {"steps": 100000, "seconds": 1.0, "batch_size": 8, "log_every": 5, "checkpoint_every": 10,
                          **extra}, "output": {"dir": str(out)}}

    def train(cfg, _text, **kw):
        return train_run(cfg, config_to_yaml(cfg), **kw)

    torch.set_num_threads(1)
    first = train(config_from_dict(data(tmp_path / "a", sizes=[4, 8])), "x", progress=False)
    second = train(config_from_dict(data(tmp_path / "b", init=str(tmp_path / "a"))), "x", progress=False)
    chain = training_chain_seconds(tmp_path / "b")
    assert chain == pytest.approx(first["wall_time_total"] + second["wall_time"]) and chain >= 2.0
    result = run_criticality_bench(sizes=[8], quick=True, runs=f"8:{tmp_path / 'b'}", plot=None)
    flow = result["points"][0]["nmcmc"]
    assert flow["from_run"] == str(tmp_path / "b") and flow["train_seconds_total"] == pytest.approx(chain)
    assert flow["train_steps"] == second["steps"] and result["runs"] == {"8": str(tmp_path / "b")}
    assert flow["cost_1e4_seconds"] > chain and 0 < flow["acceptance"] <= 1
    train(config_from_dict({**data(tmp_path / "c"), "action": {"theory": "phi4", "shape": [8, 8], "kappa": 0.25,
                                                               "lam": LAM}}), "x", progress=False)
    with pytest.raises(ValueError, match="kappa 0.25"):
        run_criticality_bench(sizes=[8], quick=True, runs={8: str(tmp_path / "c")}, plot=None)
    with pytest.raises(ValueError, match="not among the sizes"):
        run_criticality_bench(sizes=[8], quick=True, runs={16: str(tmp_path / "b")}, plot=None)
    with pytest.raises(ValueError, match="no training record"):
        training_chain_seconds(tmp_path / "nowhere")
