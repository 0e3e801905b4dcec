"""`latticeflow bench quality`: the structure of a --quick run, the exact-ln Z normalisation of the KL
(an exact flow has KL = 0, the uniform U(1) flow KL = ln Σ_n I_n(β)^V), the HMC reference against exact
values, annealing, and one-line errors naming a bad target or family."""
import json
import math

import pytest
import torch

import latticeflow.bench.quality as quality
from actions.exact import u1_log_z
from latticeflow.bench.quality import format_quality_table, run_quality_bench
from latticeflow.bench.quality_targets import FAMILIES, TARGETS, reference_ensemble
from latticeflow.cli import main
from latticeflow.flows import build_flow
from latticeflow.training.diagnostics import log_q_plus_s

FINAL_KEYS = {"ess", "ess_err", "loss", "kl", "kl_err", "forward_ess", "forward_ess_err", "nmcmc_acceptance", "steps",
              "steps_per_s", "train_seconds", "n_parameters", "eval_seconds", "n_skipped", "error", "time_to_ess"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    torch.set_num_threads(1)
    plot_dir = tmp_path_factory.mktemp("bench_quality")
    rows = []
    result = run_quality_bench(quick=True, plot_dir=str(plot_dir), progress=rows.append)
    return result, plot_dir, rows


def test_quick_structure_and_values(quick):
    result, plot_dir, rows = quick
    json.dumps(result, allow_nan=False)  # strict JSON as returned
    assert result["benchmark"] == "quality" and result["quick"] is True and result["seeds"] == [0]
    assert {"torch", "threads", "dtype", "device", "date", "load_avg", "settings", "total_seconds"} <= result.keys()
    assert len(result["load_avg"]["start"]) == 3 and len(result["load_avg"]["end"]) == 3
    assert set(result["targets"]) == {"free8", "u1_b2"}
    for name, t in result["targets"].items():
        assert t["seconds"] == 1.5 and len(t["families"]) == 2
        assert t["log_z"] == pytest.approx(TARGETS[name].action().log_z_exact())
        assert t["reference"]["n_configurations"] > 0 and t["reference"]["seconds"] > 0
        for label, fam in t["families"].items():
            assert label in FAMILIES[name] and fam["n_parameters"] > 0 and set(fam["runs"]) == {"0"}
            f, h = fam["runs"]["0"]["final"], fam["runs"]["0"]["history"]
            assert FINAL_KEYS <= f.keys() and f["error"] is None
            assert f["steps"] > 0 and f["train_seconds"] >= 1.5 and isinstance(f["steps"], int)
            assert f["steps_per_s"] == pytest.approx(f["steps"] / f["train_seconds"])
            for key in ("ess", "forward_ess", "nmcmc_acceptance"):
                assert 0 <= f[key] <= 1, (name, label, key, f[key])
            assert f["ess_err"] >= 0 and f["forward_ess_err"] >= 0
            # KL(q‖p) ≥ 0 up to the statistical error of its estimate
            assert math.isfinite(f["kl"]) and f["kl"] >= -5 * f["kl_err"] - 1e-3
            assert f["kl"] == pytest.approx(f["loss"] + t["log_z"])
            # history: the training clock only, from t = 0 to the end of the budget
            times, steps = [r["wall_time"] for r in h], [r["step"] for r in h]
            assert times == sorted(times) and steps == sorted(steps) and times[0] == 0 and steps[0] == 0
            assert times[-1] == f["train_seconds"] and steps[-1] == f["steps"] and len(h) >= 3
            assert all(0 <= r["ess"] <= 1 and math.isfinite(r["loss"]) for r in h)
            s = fam["summary"]
            assert s["median"]["ess"] == f["ess"] and set(s["time_to_ess"]) == {"0.5", "0.8", "0.98"}
            for thr, v in s["time_to_ess"].items():
                assert v is None or (v >= 0 and any(r["ess"] >= float(thr) and r["wall_time"] == v for r in h))
    assert rows and {"target", "family", "seed", "wall_time", "step", "ess", "loss"} <= rows[0].keys()
    for name in result["targets"]:
        assert (plot_dir / f"{name}.png").stat().st_size > 0 and result["plots"][name].endswith(f"{name}.png")
    table = format_quality_table(result)
    assert all(label in table for t in result["targets"].values() for label in t["families"])


def test_kl_of_exact_free_field_flow_is_zero():
    """The spline family starts with a Fourier layer that makes the free field exact: KL = 0, ESS = 1."""
    target = TARGETS["free8"]
    action = target.action()
    flow = build_flow({"family": "spline"}, action).double()
    z = flow.base.sample((64,), generator=torch.Generator().manual_seed(0))
    a = log_q_plus_s(flow, action, z)  # log q + S = −ln Z for every sample of an exact flow
    assert abs(a + target.action().log_z_exact()).max() < 1e-6


def test_kl_of_uniform_u1_flow_is_u1_log_z():
    """log q₀ = −D ln 2π (density in dθ): KL(uniform‖p) = E_uniform[S] + ln Z = u1_log_z(β, V) ≥ 0."""
    for name in ("u1_b2", "u1_b6"):
        target = TARGETS[name]
        action = target.action()
        flow = build_flow({"family": "u1"}, action).double()
        z = flow.base.sample((8192,), generator=torch.Generator().manual_seed(0))
        s = action.action(z).double()
        kl = float((flow.base.log_prob(z).double() + s).mean()) + target.action().log_z_exact()
        err = float(s.std()) / math.sqrt(len(s))
        assert abs(kl - u1_log_z(target.couplings["beta"], 64)) < 5 * err and kl > 0


def test_hmc_reference_reproduces_exact_values():
    for name, observable in (("free8", "S/V"), ("u1_b2", "<cos P>"), ("u1_b6", "<cos P>")):
        ref = reference_ensemble(TARGETS[name], n_chains=8, n_thermalize=60, n_configurations=256, every=2)
        check = ref["record"]["checks"][observable]
        assert abs(check["value"] - check["exact"]) < 5 * check["error"] + 1e-3, (name, check)
        assert ref["x"].shape[0] == 256 and ref["chains"] == 8
    assert ref["record"]["note"] and "approximate" in ref["record"]["note"]  # u1_b6: frozen topology
    assert sorted(ref["record"]["initial_charges"]) == sorted(-q for q in ref["record"]["initial_charges"])


def test_annealed_family_counts_every_stage(monkeypatch, tmp_path):
    small = {"family": "u1", "n_layers": 2, "hidden": [4]}
    monkeypatch.setitem(FAMILIES, "u1_b6", {"tiny annealed": {"flow": small, "train": {"batch_size": 16},
                                                              "anneal": [[2.0, 0.5], [6.0, 0.5]]}})
    result = run_quality_bench(targets="u1_b6", seconds=1.0, quick=True, plot_dir=None)
    run = result["targets"]["u1_b6"]["families"]["tiny annealed"]["runs"]["0"]
    stages = [r["stage"] for r in run["history"]]
    assert stages == sorted(stages) and stages[0] == 0 and stages[-1] == 1 and 0 in stages
    assert run["final"]["train_seconds"] >= 1.0 and run["final"]["steps"] > 0
    assert run["final"]["kl"] >= -5 * run["final"]["kl_err"] - 1e-3


@pytest.mark.parametrize("entry, needle", [
    ({"flow": {"family": "no_such_family"}}, "no_such_family"),
    ({"flow": {"family": "u1"}, "anneal": [[2.0, 0.5], [6.0, 0.4]]}, "sum to 1"),
    ({"flow": {"family": "u1"}, "anneal": [[2.0, 0.5], [4.0, 0.5]]}, "last stage"),
    ({"flow": {"family": "u1"}, "train": {"lr_typo": 1.0}}, "lr_typo"),
])
def test_bad_family_entry_fails_before_training(monkeypatch, entry, needle):
    monkeypatch.setitem(FAMILIES, "u1_b6", {"future": entry})
    monkeypatch.setattr(quality, "_train_and_measure", lambda *a, **k: pytest.fail("trained despite a bad entry"))
    with pytest.raises(ValueError, match=needle) as err:
        run_quality_bench(targets="u1_b6", quick=True, plot_dir=None)
    assert "'future'" in str(err.value) and "'u1_b6'" in str(err.value)


@pytest.mark.parametrize("args, needle", [
    (["--targets", "free8,phi4_9"], "'phi4_9'"),
    (["--targets", "free8", "--families", "spline,bogus"], "'bogus'"),
    (["--seeds", "0,x"], "'0,x'"),
])
def test_cli_bad_value_is_one_line_error(capsys, args, needle):
    assert main(["bench", "quality", "--quick", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error: ") and needle in lines[0]
    assert captured.out == ""


def test_cli_json_one_target_one_family(capsys, tmp_path):
    assert main(["bench", "quality", "--quick", "--json", "--threads", "1", "--seconds", "0.5", "--targets", "free8",
                 "--families", "z2nice", "--plot-dir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["targets"]) == ["free8"] and list(result["targets"]["free8"]["families"]) == ["z2nice (old default)"]
    assert result["targets"]["free8"]["seconds"] == 0.5 and (tmp_path / "free8.png").exists()
