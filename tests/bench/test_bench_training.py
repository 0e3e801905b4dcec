"""`latticeflow bench training`: structure of a quick equal-wall-time run, identical starts, the plot (the
gradient-variance measurement itself is tested in tests/training/test_data_and_diagnostics.py)."""
import json
import math

import pytest
import torch

from latticeflow.bench.training import VARIANCE_ESTIMATORS, format_training_table, run_training_bench



ROW_KEYS = {"wall_time", "step", "loss", "ess", "var_standard", "var_fast_path"}
FINAL_KEYS = {"ess", "ess_tail_mean", "loss", "steps", "train_seconds", "steps_per_s", "var_standard", "var_fast_path"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    torch.set_num_threads(1)
    plot = tmp_path_factory.mktemp("bench") / "training.png"
    rows = []
    result = run_training_bench(seconds=2.0, theories=("phi4", "u1"), batch_size=32, variance_every=1.0,
                                eval_every=0.5, eval_batch=256, variance_batches=4, variance_batch_size=16,
                                plot_path=str(plot), progress=rows.append)
    return result, plot, rows


def test_structure_and_values(quick):
    result, _, rows = quick
    assert result["benchmark"] == "training" and result["seconds"] == 2.0
    assert set(result["theories"]) == {"phi4", "u1"}
    for theory, t in result["theories"].items():
        assert set(t["runs"]) == {"standard", "fast_path"}
        assert t["batch_size"] == 32 and t["variance_batch_size"] == 16
        for e, run in t["runs"].items():
            hist, final = run["history"], run["final"]
            assert FINAL_KEYS <= final.keys()
            assert len(hist) >= 3
            for row in hist:
                assert ROW_KEYS <= row.keys()
                assert 0 < row["ess"] <= 1 and math.isfinite(row["loss"])
            # training clock only: monotone, within the budget plus one step
            times = [r["wall_time"] for r in hist]
            steps = [r["step"] for r in hist]
            assert times == sorted(times) and steps == sorted(steps) and times[0] == 0 and steps[0] == 0
            assert 2.0 <= final["train_seconds"] < 2.0 + 5.0 and final["steps"] == steps[-1] > 0
            assert final["steps_per_s"] == pytest.approx(final["steps"] / final["train_seconds"])
            with_var = [r for r in hist if r["var_standard"] is not None]
            assert len(with_var) >= 2 and hist[0] in with_var and hist[-1] in with_var
            for r in with_var:
                for v in VARIANCE_ESTIMATORS:
                    for key in (f"var_{v}", f"var_median_{v}", f"gradsq_{v}"):
                        assert math.isfinite(r[key]) and r[key] >= 0
            assert final["ess"] == hist[-1]["ess"] and final["var_fast_path"] == hist[-1]["var_fast_path"]
        c = t["comparison"]
        assert c["steps_per_s_ratio"] > 0 and c["winner_at_equal_time"] in ("standard", "fast_path")
        assert c["ess_at_equal_steps"]["step"] == min(r["final"]["steps"] for r in t["runs"].values())
    assert {"theory", "estimator", "ess", "step"} <= rows[0].keys() and len(rows) >= 12
    json.dumps(result, allow_nan=False)  # strict JSON for `bench training --json`


def test_interleaved_runs_keep_their_own_clocks():
    result = run_training_bench(seconds=1.0, theories=("phi4",), batch_size=32, variance_every=0.5, eval_every=0.25,
                                eval_batch=128, variance_batches=3, variance_batch_size=8, interleave=True)
    assert result["interleave"] is True
    runs = result["theories"]["phi4"]["runs"]
    for run in runs.values():
        assert 1.0 <= run["final"]["train_seconds"] < 3.0 and run["final"]["steps"] > 0
        assert 0 < run["final"]["ess"] <= 1
    assert runs["standard"]["history"][0]["loss"] == runs["fast_path"]["history"][0]["loss"]


def test_identical_start(quick):
    """Both estimators train a copy of the same initial flow and are evaluated on the same batches."""
    result, _, _ = quick
    for t in result["theories"].values():
        h0 = {e: run["history"][0] for e, run in t["runs"].items()}
        std, fp = h0["standard"], h0["fast_path"]
        assert std["loss"] == fp["loss"] and std["ess"] == fp["ess"]
        assert std["var_standard"] == fp["var_standard"] and std["var_fast_path"] == fp["var_fast_path"]


def test_table_and_plot(quick):
    result, plot, _ = quick
    table = format_training_table(result)
    for t in result["theories"].values():
        assert t["case"] in table
    assert "fast_path" in table and "steps/s" in table
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["plot"] == str(plot)
